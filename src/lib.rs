//! echo-lab: a TCP and UDP echo daemon (RFC 862) built the way trusted
//! Linux daemons are built.
//!
//! This crate is the daemon; its binary (`src/bin/echo-lab.rs`) only
//! parses arguments and calls [`startup`]. What it shares with its client,
//! `echo-labctl` (crates/echo-labctl), is in crates of its own: the config
//! (`echo-lab-config`, which the client reads to find the daemon) and what
//! crosses a process boundary (`echo-lab-proto`: the control protocol, the
//! status document, the notices, the exit codes). The client's line
//! editor and load generator are not compiled into the daemon.
//!
//! Each group of concerns is a folder, each concern a module named for it:
//!
//! | module | owns |
//! |---|---|
//! | [`startup`] | the daemon's start, step by step, and its exit codes |
//! | `supervisor` | the one deciding thread: signals and requests to actions, reload prepared whole, drain, restarting watched threads, the control socket, RLIMIT_NOFILE |
//! | `systemd` | the notify protocol, watchdog, socket activation and fd store |
//! | [`tcp`] | the TCP path: listening sockets, the accept loop, the pool and its workers, the connection state machine, TLS, PROXY headers, idle deadlines, placement |
//! | [`udp`] | UDP echo: batches, source guard, per-source rate |
//! | `admission` | who may connect: access rules, per-source limits, the source table |
//! | `observe` | what the daemon tells: the log (and its writer thread), counters, session lines, the Prometheus endpoint |
//! | [`net`] | binding listening sockets (TCP, UDP, metrics) with a backlog |
//! | `throttle` | at most one log line per interval about a recurring event |
//! | `watch` | watched threads: a long-lived thread's death logged and reported, never silent |
//! | `who` | the `mode = "who"` reply: its fields and the instance's identity it carries |
//! | [`config`] | the config file (the `echo-lab-config` crate) |
//! | [`protocol`] | what bytes mean: `disconnect`, notices (from `echo-lab-proto`) |
//! | `fault` | test-only fault hooks (feature `fault-injection`) |
//!
//! Modules without a link are internal (`pub(crate)`); the public ones
//! are what the binary, the integration tests and the fuzz targets use.

pub(crate) mod admission;
#[cfg(feature = "fault-injection")]
pub(crate) mod fault;
pub mod net;
pub(crate) mod observe;
pub mod startup;
pub(crate) mod supervisor;
pub(crate) mod systemd;
pub mod tcp;
pub(crate) mod throttle;
pub mod udp;
pub(crate) mod watch;
pub(crate) mod who;

pub use echo_lab_config as config;
pub use echo_lab_proto::exit::{EX_CONFIG, EX_OSERR, EX_SOFTWARE, EX_UNAVAILABLE};
pub use echo_lab_proto::protocol;
