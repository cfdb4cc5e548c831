//! Fault injection, compiled only with the `fault-injection` feature (the
//! test suite builds with it; release builds never contain it).
//!
//! A client that sends a magic marker makes the worker serving it fail in
//! a chosen way, so tests can prove what the daemon does when a bug or a
//! wedge happens in connection handling: a panic must close that
//! connection only, a wedged worker must stop the watchdog pings, and a
//! worker whose loop dies must be replaced at its own place in the pool.
//!
//! The other long-lived threads (the accept loop, the UDP thread, the
//! control thread, the metrics thread) read no marker a client could
//! send before they hand it on, so they are made to die through the
//! environment instead: [`THREAD_PANIC_ENV`] names the threads that panic
//! at their next event ([`thread_event`]), which shows what the
//! supervisor does about a thread's death (`crate::watch`). Another
//! fault is set from the environment too, as it strikes before a
//! client's bytes are read: a poller that refuses every connection
//! ([`REGISTER_FAILS`]), which must tell the client and count the close.
//! Last, [`SYSLOG_SOCKET`] points the syslog log target at a socket of the
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

/// Set in the daemon's environment (any value), makes every worker's
/// registration of a connection with its poller fail with ENOSPC, as when
/// `fs.epoll.max_user_watches` is reached.
pub const REGISTER_FAILS: &str = "ECHO_LAB_FAULT_REGISTER_FAILS";

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

/// Names the threads that panic at an event of theirs, comma-separated:
/// `accept` (a connection accepted), `udp` (datagrams received),
/// `control` (a control connection accepted), `metrics-accept` (a metrics
/// connection accepted), `signals` (a signal taken), `log-writer` (a log
/// line taken). `NAME` panics once; `NAME:always` at every event.
pub const THREAD_PANIC_ENV: &str = "ECHO_LAB_FAULT_THREAD_PANIC";

/// A thread [`THREAD_PANIC_ENV`] names, and whether it panicked already.
struct Doomed {
    name: String,
    always: bool,
    fired: std::sync::atomic::AtomicBool,
}

fn doomed() -> &'static [Doomed] {
    static DOOMED: std::sync::OnceLock<Vec<Doomed>> = std::sync::OnceLock::new();
    DOOMED.get_or_init(|| {
        let spec = std::env::var(THREAD_PANIC_ENV).unwrap_or_default();
        spec.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (name, always) = match s.strip_suffix(":always") {
                    Some(name) => (name, true),
                    None => (s, false),
                };
                Doomed {
                    name: name.to_string(),
                    always,
                    fired: std::sync::atomic::AtomicBool::new(false),
                }
            })
            .collect()
    })
}

/// Called by thread `name` at each of its events: panics if
/// [`THREAD_PANIC_ENV`] says so.
pub(crate) fn thread_event(name: &str) {
    let Some(d) = doomed().iter().find(|d| d.name == name) else {
        return;
    };
    if d.always || !d.fired.swap(true, std::sync::atomic::Ordering::Relaxed) {
        panic!("fault injected: the {name} thread panics");
    }
}

/// The error a registration fails with when [`REGISTER_FAILS`] is set.
pub(crate) fn fail_registration() -> std::io::Result<()> {
    static FAILS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *FAILS.get_or_init(|| std::env::var_os(REGISTER_FAILS).is_some()) {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}
