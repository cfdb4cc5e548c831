//! The supervisor's inbox and its answers: the [`Event`]s that signals,
//! the control socket and the metrics endpoint send to the daemon's one
//! deciding thread, and the [`Status`] it answers with.
//!
//! They live apart from the supervisor (`crate::daemon`) so that the
//! threads which only forward requests (control, metrics) depend on this
//! small vocabulary, not on the supervisor that owns them.

use std::sync::mpsc::Sender;

use crate::admission::SourceView;
use crate::stats::Snapshot;
use crate::udp::UdpSnapshot;

/// Something the supervisor must act on.
pub enum Event {
    /// Reload the config; the answer goes back if someone waits for it.
    Reload(Option<Sender<Result<String, String>>>),
    /// Start the drain (first time) or stop now (second time).
    Terminate,
    /// Report status.
    Status(Sender<Status>),
    /// Reopen the log file (SIGUSR1).
    ReopenLogs,
    /// Report the `n` busiest sources (`echo-labctl sources`).
    Sources(usize, Sender<Vec<SourceView>>),
}

/// Reload counts, for status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Reloads {
    /// Reloads applied.
    pub ok: u64,
    /// Reloads refused (bad file, address in use...).
    pub failed: u64,
    /// Configs in force since start: 1, plus one per applied reload.
    pub generation: u64,
}

/// The outcome of the last reload, for status.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LastReload {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// What changed, or empty on error.
    pub applied: Option<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// What `echo-labctl status` shows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Daemon version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Config file path, or "embedded defaults".
    pub config: String,
    /// Addresses listened on.
    pub listen: Vec<String>,
    /// Sockets came from the service manager.
    pub socket_activated: bool,
    /// Draining (SIGTERM received).
    pub draining: bool,
    /// Counters.
    pub stats: Snapshot,
    /// Addresses UDP echo is served on.
    #[serde(default)]
    pub udp_listen: Vec<String>,
    /// UDP counters, when UDP is served.
    #[serde(default)]
    pub udp: Option<UdpSnapshot>,
    /// The last reload, if any.
    pub last_reload: Option<LastReload>,
    /// Reloads applied and refused.
    #[serde(default)]
    pub reloads: Reloads,
    /// The metrics endpoint's address, if on.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Log lines dropped because the log sink did not keep up (see
    /// `crate::log_writer`).
    #[serde(default)]
    pub log_lines_dropped: u64,
}
