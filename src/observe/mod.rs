//! What the daemon tells about itself: its log, its counters, a line per
//! session, and the Prometheus endpoint.
//!
//! | module | owns | never |
//! |---|---|---|
//! | `logging` | the `log` facade's backend: target (stderr, journal, syslog, file), format, reopen | writes from a thread that serves clients |
//! | `log_line` | a record rendered once (text or JSON) and how a line is written | |
//! | `log_writer` | the one thread that writes to the log sink, and its bounded queue | blocks a sender that may not wait |
//! | `stats` | counters, each written by one thread on lines of its own, merged into the status document when asked | takes a lock on the echo path |
//! | `session` | one session's record and its log line | |
//! | `metrics` | the Prometheus endpoint (`metrics_listen`), `/metrics`, `/healthz`, `/readyz` | runs on the echo path |
//! | `probe` | readiness and health as the probes read them, the instance's host name | asks the supervisor, or waits on a serving thread |
//!
//! Observing never costs a client service: the echo path only bumps
//! counters and offers lines to a queue that drops (and counts) rather
//! than waits.

pub(crate) mod log_line;
pub(crate) mod log_writer;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod probe;
pub(crate) mod session;
pub(crate) mod stats;
