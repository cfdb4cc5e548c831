//! echo-lab: a TCP echo daemon (RFC 862) built the way trusted Linux daemons
//! are built.
//!
//! This crate is the daemon; its binary (`src/bin/echo-lab.rs`) is thin.
//! What it shares with its client, `echo-labctl` (crates/echo-labctl), is
//! in crates of its own: the config (`echo-lab-config`, which the client
//! reads to find the daemon) and what crosses a process boundary
//! (`echo-lab-proto`: the control protocol, the status document, the
//! notices, the exit codes). The client's line editor and load generator
//! are not compiled into the daemon. A reader finds each concern in the
//! module named for it:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the config file (re-exported from `echo-lab-config`) |
//! | [`net`] | binding listening sockets with a backlog |
//! | [`sockets`] | the TCP listening sockets by address: opened, reused on reload, taken from systemd |
//! | `listener` | the accept loop: the only thread touching listeners |
//! | [`admission`] | who may connect: access rules, per-source limits, the source table |
//! | `pool` | the workers: their table, where each connection goes, resizing, replacing |
//! | `worker` | a pool thread's event loop and the connections it owns |
//! | `connection` | one client: echo, backpressure, closing |
//! | [`session`] | one session's record and its log line |
//! | [`protocol`] | what bytes mean: `disconnect`, notices (re-exported from `echo-lab-proto`) |
//! | [`proxy`] | the PROXY protocol header (v1, v2) on listeners behind a proxy |
//! | `timeouts` | O(1) idle deadlines (a FIFO per timeout value) |
//! | `throttle` | at most one log line per interval about a recurring event |
//! | `wake_timer` | a worker's alarm at its next deadline, so its poll needs no timeout |
//! | [`affinity`] | CPUs: pinning, arrival CPU, the placement policy |
//! | [`server`] | starting, reloading and draining the whole |
//! | [`startup`] | the daemon's start, step by step, and its exit codes |
//! | [`daemon`] | the supervisor: signals and requests to actions |
//! | [`supervise`] | watched threads: a long-lived thread's death reported to the supervisor |
//! | [`reload`] | a reload's outcome: what changed, or which part refused |
//! | [`event`] | the supervisor's inbox (events) and its answers (status) |
//! | [`notify`] | the systemd notify protocol and watchdog |
//! | [`activation`] | sockets passed by systemd (activation, fd store) |
//! | [`control`] | the control socket and its access rule |
//! | [`limits`] | RLIMIT_NOFILE |
//! | [`logging`] | the log target (stderr / journal / syslog / file) and format |
//! | `log_writer` | the log writer thread, its bounded queue and the sink it owns |
//! | [`metrics`] | the Prometheus endpoint (`metrics_listen`) |
//! | [`stats`] | counters and the merged snapshot `status` shows |
//! | [`udp`] | UDP echo: batches, source guard, per-source rate |
//! | `fault` | test-only fault hooks (feature `fault-injection`) |
//!
//! Modules without a link are internal (`pub(crate)`).

pub mod activation;
pub mod admission;
pub mod affinity;
pub(crate) mod connection;
pub mod control;
pub mod daemon;
pub mod event;
#[cfg(feature = "fault-injection")]
pub(crate) mod fault;
pub mod limits;
pub(crate) mod listener;
pub(crate) mod log_writer;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod notify;
pub(crate) mod pool;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod session;
pub mod sockets;
pub mod startup;
pub mod stats;
pub mod supervise;
pub(crate) mod throttle;
pub(crate) mod timeouts;
pub mod udp;
pub(crate) mod wake_timer;
pub(crate) mod worker;

pub use echo_lab_config as config;
pub use echo_lab_proto::exit::{EX_CONFIG, EX_OSERR, EX_SOFTWARE, EX_UNAVAILABLE};
pub use echo_lab_proto::protocol;
