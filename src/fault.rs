//! Fault injection, compiled only with the `fault-injection` feature (the
//! test suite builds with it; release builds never contain it).
//!
//! A client that sends a magic marker makes the worker serving it fail in
//! a chosen way, so tests can prove what the daemon does when a bug or a
//! wedge happens in connection handling: a panic must close that
//! connection only, and a wedged worker must stop the watchdog pings.

/// Makes the worker panic while serving the connection.
pub const PANIC: &[u8] = b"ECHO-LAB-FAULT:PANIC";

/// Makes the worker hang (sleep for an hour) while serving the connection.
pub const HANG: &[u8] = b"ECHO-LAB-FAULT:HANG";

/// Checks a chunk read from a client for a fault marker.
pub fn check(chunk: &[u8]) {
    if memchr::memmem::find(chunk, PANIC).is_some() {
        panic!("fault injected by a client");
    }
    if memchr::memmem::find(chunk, HANG).is_some() {
        log::warn!("fault injected by a client: this worker hangs");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
