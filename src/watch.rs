//! Watched threads: every long-lived thread of the daemon is started here,
//! so that its death is never silent.
//!
//! [`Watcher::spawn`] runs a named closure on a thread of that name,
//! inside `catch_unwind`. When the closure panics, or returns an error
//! (a loop that gave up, such as the metrics endpoint whose poll failed),
//! the thread logs why and hands a [`Death`] to the report the watcher
//! was made with (the supervisor's: a send to its inbox). A closure that returns `Ok` has
//! stopped because it was asked to, and nothing is reported.
//!
//! Each watched thread has an id ([`Watched::id`]), so the supervisor can
//! tell the death of the thread in service from that of one already
//! replaced (a reload may have swapped the metrics endpoint while its old
//! thread was dying). What to do about a death is the supervisor's
//! decision, not this module's (the supervisor's module says it): it restarts the
//! accept loop, the UDP thread, the control thread and the metrics thread
//! from state it still holds, and exits non-zero when a thread dies too
//! often or is one it cannot rebuild.
//!
//! This module must never decide policy, never block the dying thread on
//! the supervisor (the report must not wait), and never swallow a
//! death: with no supervisor ([`Watcher::none`], as in library use and
//! tests that start a service alone) the death is still logged. It knows
//! nothing of the supervisor, so every thread that is watched can depend
//! on it without depending on what watches it.

use std::any::Any;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Ids of watched threads, never reused within a process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A watched thread that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The thread's name (`accept`, `udp`, `control`, `metrics-accept`...).
    pub name: String,
    /// Which thread of that name ([`Watched::id`]).
    pub id: u64,
    /// The panic message, or the error the closure returned.
    pub cause: String,
}

/// What a watcher does with a death: called on the dying thread, so it
/// must not wait.
type Report = Arc<dyn Fn(Death) + Send + Sync>;

/// Where watched threads report their death: the supervisor, or nobody
/// (the death is then only logged).
#[derive(Clone, Default)]
pub struct Watcher {
    report: Option<Report>,
}

impl Watcher {
    /// Deaths are handed to `report` (the supervisor's: a send to its
    /// inbox), after they are logged.
    pub fn new(report: impl Fn(Death) + Send + Sync + 'static) -> Watcher {
        Watcher {
            report: Some(Arc::new(report)),
        }
    }

    /// Deaths are logged, reported to no one.
    pub fn none() -> Watcher {
        Watcher { report: None }
    }

    /// Runs `f` on a new thread called `name`. `f` returns `Ok` when it
    /// stopped as asked; a panic or an `Err` is a death, logged and
    /// reported.
    pub fn spawn<F>(&self, name: &str, f: F) -> io::Result<Watched>
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let report = self.report.clone();
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let cause = match catch_unwind(AssertUnwindSafe(f)) {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(panic) => format!("panicked: {}", panic_message(&*panic)),
                };
                log::error!("the {thread_name} thread died: {cause}");
                if let Some(report) = report {
                    report(Death {
                        name: thread_name,
                        id,
                        cause,
                    });
                }
            })?;
        Ok(Watched { id, handle })
    }
}

/// A thread started by [`Watcher::spawn`].
pub struct Watched {
    id: u64,
    handle: JoinHandle<()>,
}

impl Watched {
    /// This thread's id, as its [`Death`] would carry it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the thread to end. Its death, if it died, was reported
    /// already, so there is nothing to return.
    pub fn join(self) {
        let _ = self.handle.join();
    }

    /// True once the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// A watched thread driven by commands: a channel into its loop and a
/// waker into its poller. The one place where a command is sent (queued,
/// then the poller woken) and where such a thread is stopped (its stop
/// command, then a join) — the accept loop, the UDP thread and the
/// metrics endpoint are all run this way.
pub(crate) struct Commanded<C> {
    /// The thread's name, for the line when a wakeup fails.
    name: &'static str,
    tx: Sender<C>,
    waker: mio::Waker,
    thread: Option<Watched>,
}

impl<C> Commanded<C> {
    /// A running thread that reads `tx`'s other end when `waker` wakes it.
    pub(crate) fn new(
        name: &'static str,
        tx: Sender<C>,
        waker: mio::Waker,
        thread: Watched,
    ) -> Self {
        Commanded {
            name,
            tx,
            waker,
            thread: Some(thread),
        }
    }

    /// Queues `cmd` and wakes the thread; false if the thread is gone.
    pub(crate) fn send(&self, cmd: C) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the {} thread: {e}", self.name);
        }
        true
    }

    /// Sends `stop` and returns once the thread has ended (at once if it
    /// was stopped before).
    pub(crate) fn stop(&mut self, stop: C) {
        if let Some(t) = self.thread.take() {
            self.send(stop);
            t.join();
        }
    }

    /// The id of the thread in service ([`Death::id`]).
    pub(crate) fn id(&self) -> Option<u64> {
        self.thread.as_ref().map(Watched::id)
    }

    /// True while the thread runs.
    pub(crate) fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Puts `new` in service in place of this thread, which died: its
    /// handle is joined (it has ended) and let go.
    pub(crate) fn replace(&mut self, new: Commanded<C>) {
        let old = std::mem::replace(self, new);
        if let Some(t) = old.thread {
            t.join();
        }
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn death_of(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> Option<Death> {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Watcher::new(move |d| {
            let _ = tx.send(d);
        })
        .spawn("test-thread", f)
        .unwrap();
        let id = t.id();
        t.join();
        let d = rx.recv_timeout(Duration::from_secs(5)).ok()?;
        assert_eq!(d.id, id);
        Some(d)
    }

    #[test]
    fn a_panic_is_reported_with_its_message() {
        let d = death_of(|| panic!("boom {}", 7)).expect("a death");
        assert_eq!(d.name, "test-thread");
        assert_eq!(d.cause, "panicked: boom 7");
    }

    #[test]
    fn an_error_is_reported_and_a_clean_stop_is_not() {
        let d = death_of(|| Err("poll failed".into())).expect("a death");
        assert_eq!(d.cause, "poll failed");
        assert_eq!(death_of(|| Ok(())), None);
    }

    #[test]
    fn ids_are_distinct() {
        let w = Watcher::none();
        let a = w.spawn("a", || Ok(())).unwrap();
        let b = w.spawn("b", || Ok(())).unwrap();
        assert_ne!(a.id(), b.id());
        a.join();
        b.join();
    }
}
