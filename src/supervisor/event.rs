//! The supervisor's inbox and its answers: the [`Event`]s that signals,
//! the control socket and the metrics endpoint send to the daemon's one
//! deciding thread, and the [`Status`] it answers with.
//!
//! They live apart from the supervisor (`crate::supervisor`) so that the
//! threads which only forward requests (control, metrics) depend on this
//! small vocabulary, not on the supervisor that owns them.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::SourceView;
pub use echo_lab_proto::status::{LastReload, Reloads, Status};

use crate::observe::metrics::StatusSource;
use crate::supervisor::reload::{ReloadError, Reloaded};
use crate::watch::{Death, Watcher};

/// Something the supervisor must act on.
pub enum Event {
    /// Reload the config; the answer goes back if someone waits for it.
    Reload(Option<Sender<Result<Reloaded, ReloadError>>>),
    /// Start the drain (first time) or stop now (second time).
    Terminate,
    /// Report status.
    Status(Sender<Status>),
    /// Reopen the log file (SIGUSR1).
    ReopenLogs,
    /// Report the `n` busiest sources (`echo-labctl sources`).
    Sources(usize, Sender<Vec<SourceView>>),
    /// A watched thread died ([`crate::watch`]).
    ThreadDied(Death),
    /// Put the instance in rotation (`true`) or take it out
    /// (`echo-labctl ready on|off`); the answer is the readiness now and
    /// why not.
    Ready(bool, Sender<(bool, Option<String>)>),
}

/// How long a thread that reports the status (the metrics endpoint) waits
/// for the supervisor's answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A watcher whose deaths arrive in the supervisor's inbox as
/// [`Event::ThreadDied`].
pub(crate) fn watcher(events: &Sender<Event>) -> Watcher {
    let events = events.clone();
    Watcher::new(move |death| {
        let _ = events.send(Event::ThreadDied(death));
    })
}

/// The status document asked of the supervisor through its inbox, with a
/// bounded wait: what the metrics endpoint reports on each scrape.
pub(crate) fn status_source(events: &Sender<Event>) -> StatusSource {
    let events = events.clone();
    Arc::new(move || {
        let (tx, rx) = std::sync::mpsc::channel();
        events
            .send(Event::Status(tx))
            .map_err(|_| "the daemon is stopping".to_string())?;
        rx.recv_timeout(STATUS_TIMEOUT)
            .map_err(|_| "the daemon did not answer in time".to_string())
    })
}
