//! The supervisor's inbox and its answers: the [`Event`]s that signals,
//! the control socket and the metrics endpoint send to the daemon's one
//! deciding thread, and the [`Status`] it answers with.
//!
//! They live apart from the supervisor (`crate::daemon`) so that the
//! threads which only forward requests (control, metrics) depend on this
//! small vocabulary, not on the supervisor that owns them.

use std::sync::mpsc::Sender;

use crate::admission::SourceView;
pub use echo_lab_proto::status::{LastReload, Reloads, Status};

use crate::reload::{ReloadError, Reloaded};
use crate::supervise::Death;

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
    /// A watched thread died ([`crate::supervise`]).
    ThreadDied(Death),
}
