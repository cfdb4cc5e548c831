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
//! | [`listener`] | the accept loop: the only thread touching listeners |
//! | [`worker`] | a pool thread's event loop and the connections it owns |
//! | [`connection`] | one client: echo, backpressure, closing |
//! | [`protocol`] | what bytes mean: `disconnect`, notices |
//! | [`timeouts`] | O(1) idle deadlines (a FIFO per timeout value) |
//! | [`server`] | starting, reloading and draining the whole |
//! | [`daemon`] | the supervisor: signals and requests to actions |
//! | [`notify`] | the systemd notify protocol and watchdog |
//! | [`activation`] | sockets passed by systemd (activation, fd store) |
//! | [`control`] | the control socket and its access rule |
//! | [`limits`] | RLIMIT_NOFILE |
//! | [`logging`] | stderr / journal / syslog log sink |
//! | [`stats`] | counters |
//! | [`udp`] | UDP echo: batches, source guard, per-source rate |
//! | [`client`] | `echo-labctl connect` |
//! | [`client_udp`] | `echo-labctl connect --udp` |
//! | [`bench`] | `echo-labctl bench` |

pub mod activation;
pub mod affinity;
pub mod bench;
pub mod client;
pub mod client_udp;
pub mod config;
pub mod connection;
pub mod control;
pub mod daemon;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod net;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod timeouts;
pub mod udp;
pub mod worker;

/// sysexits(3) EX_CONFIG: the config is invalid.
pub const EX_CONFIG: i32 = 78;
/// sysexits(3) EX_UNAVAILABLE: the daemon cannot be reached.
pub const EX_UNAVAILABLE: i32 = 69;
/// sysexits(3) EX_OSERR: the OS refused something the daemon needs.
pub const EX_OSERR: i32 = 71;
