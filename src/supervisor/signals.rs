//! The signal thread: SIGHUP, SIGTERM, SIGINT and SIGUSR1 turned into
//! events in the supervisor's inbox.
//!
//! signal-hook's iterator runs the handlers' work on a thread of its own,
//! so a handler does nothing but note the signal; this thread forwards
//! each to the supervisor as an [`Event`]. It is watched like every other
//! long-lived thread: without it the daemon would ignore `systemctl
//! reload` and `stop` while serving on, so its death is reported and the
//! supervisor starts a new one (a new registration of the same handlers).
//!
//! It never decides anything: what a signal means is the supervisor's.

use std::io;
use std::sync::mpsc::Sender;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use super::event::{self, Event};
use crate::watch::Watched;

/// The thread's name (what its death is reported as).
pub(crate) const THREAD: &str = "signals";

/// The running signal thread and what a new one needs.
pub(crate) struct Signals {
    events: Sender<Event>,
    thread: Watched,
}

impl Signals {
    /// Registers the handlers and starts forwarding to `events`.
    pub(crate) fn start(events: Sender<Event>) -> io::Result<Signals> {
        let thread = launch(&events)?;
        Ok(Signals { events, thread })
    }

    /// Starts a new thread if `id` is the one in service (it died); true
    /// if so.
    pub(crate) fn revive(&mut self, id: u64) -> io::Result<bool> {
        if self.thread.id() != id {
            return Ok(false);
        }
        self.thread = launch(&self.events)?;
        Ok(true)
    }
}

/// Registers the handlers (before the thread starts: a signal that comes
/// meanwhile waits in the iterator) and starts the forwarding thread.
fn launch(events: &Sender<Event>) -> io::Result<Watched> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])?;
    let tx = events.clone();
    event::watcher(events).spawn(THREAD, move || {
        for sig in signals.forever() {
            #[cfg(feature = "fault-injection")]
            crate::fault::thread_event(THREAD);
            let event = match sig {
                SIGHUP => Event::Reload(None),
                SIGUSR1 => Event::ReopenLogs,
                _ => Event::Terminate,
            };
            if tx.send(event).is_err() {
                break;
            }
        }
        Ok(())
    })
}
