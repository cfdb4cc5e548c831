//! echo-lab: a TCP echo daemon (RFC 862) built the way trusted Linux daemons
//! are built.
//!
//! The library holds everything; the two binaries are thin. A reader finds
//! each concern in the module named for it:
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the config file: keys, defaults, parsing, located errors |
//! | [`net`] | binding listening sockets with a backlog |
//! | [`sockets`] | the TCP listening sockets by address: opened, reused on reload, taken from systemd |
//! | `listener` | the accept loop: the only thread touching listeners |
//! | [`admission`] | who may connect: access rules, per-source limits, the source table |
//! | `pool` | the workers: their table, where each connection goes, resizing, replacing |
//! | `worker` | a pool thread's event loop and the connections it owns |
//! | `connection` | one client: echo, backpressure, closing |
//! | [`session`] | one session's record and its log line |
//! | [`protocol`] | what bytes mean: `disconnect`, notices |
//! | [`proxy`] | the PROXY protocol header (v1, v2) on listeners behind a proxy |
//! | `timeouts` | O(1) idle deadlines (a FIFO per timeout value) |
//! | `wake_timer` | a worker's alarm at its next deadline, so its poll needs no timeout |
//! | [`affinity`] | CPUs: pinning, arrival CPU, the placement policy |
//! | [`server`] | starting, reloading and draining the whole |
//! | [`daemon`] | the supervisor: signals and requests to actions |
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
//! | [`client`] | `echo-labctl connect` |
//! | [`client_udp`] | `echo-labctl connect --udp` |
//! | [`bench`] | `echo-labctl bench` |
//! | `fault` | test-only fault hooks (feature `fault-injection`) |
//!
//! Modules without a link are internal (`pub(crate)`).

pub mod activation;
pub mod admission;
pub mod affinity;
pub mod bench;
pub mod client;
pub mod client_udp;
pub mod config;
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
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod session;
pub mod sockets;
pub mod stats;
pub(crate) mod timeouts;
pub mod udp;
pub(crate) mod wake_timer;
pub(crate) mod worker;

/// sysexits(3) EX_CONFIG: the config is invalid.
pub const EX_CONFIG: i32 = 78;
/// sysexits(3) EX_UNAVAILABLE: the daemon cannot be reached.
pub const EX_UNAVAILABLE: i32 = 69;
/// sysexits(3) EX_OSERR: the OS refused something the daemon needs.
pub const EX_OSERR: i32 = 71;
