//! Fault injection, compiled only with the `fault-injection` feature (the
//! test suite builds with it; release builds never contain it).
//!
//! A client that sends a magic marker makes the worker serving it fail in
//! a chosen way, so tests can prove what the daemon does when a bug or a
//! wedge happens in connection handling: a panic must close that
//! connection only, a wedged worker must stop the watchdog pings, and a
//! worker whose loop dies must be replaced at its own place in the pool.
//! [`SYSLOG_SOCKET`] points the syslog log target at a socket of the
//! test's choosing.

/// Environment variable naming the Unix socket the syslog target sends
/// to instead of /dev/log, so a test can stand in for a syslog daemon
/// (one that never reads, to stall the log writer).
pub(crate) const SYSLOG_SOCKET: &str = "ECHO_LAB_SYSLOG_SOCKET";

/// Makes the worker panic while serving the connection.
pub const PANIC: &[u8] = b"ECHO-LAB-FAULT:PANIC";

/// Makes the worker hang (sleep for an hour) while serving the connection.
pub const HANG: &[u8] = b"ECHO-LAB-FAULT:HANG";

/// Makes the worker's whole loop die (a panic that the per-connection
/// guard lets through), as a bug outside connection handling would.
pub const KILL_WORKER: &[u8] = b"ECHO-LAB-FAULT:KILL-WORKER";

/// The panic payload that [`KILL_WORKER`] raises.
struct KillWorker;

/// Checks a chunk read from a client for a fault marker.
pub(crate) fn check(chunk: &[u8]) {
    if memchr::memmem::find(chunk, KILL_WORKER).is_some() {
        log::warn!("fault injected by a client: this worker's loop dies");
        std::panic::panic_any(KillWorker);
    }
    if memchr::memmem::find(chunk, PANIC).is_some() {
        panic!("fault injected by a client");
    }
    if memchr::memmem::find(chunk, HANG).is_some() {
        log::warn!("fault injected by a client: this worker hangs");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Re-raises a caught panic if it is [`KILL_WORKER`]'s, so it ends the
/// worker's loop instead of one connection.
pub(crate) fn propagate_worker_kill(panic: Box<dyn std::any::Any + Send>) {
    if panic.is::<KillWorker>() {
        std::panic::resume_unwind(panic);
    }
}
