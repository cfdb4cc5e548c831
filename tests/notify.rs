//! The systemd notify protocol, checked on a real NOTIFY_SOCKET (a Unix
//! datagram socket the test binds): the sequence for start, reload, failed
//! reload and drain, the fd store hand-over, and a watchdog that stops
//! pinging when a worker wedges (with the `fault-injection` feature, which
//! wedges it).

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::*;

fault_injection_tests_not_built!();

/// The test's end of NOTIFY_SOCKET.
struct NotifySocket {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            _dir: dir,
            path,
        }
    }

    /// The next message, as its KEY=VALUE lines.
    fn next(&self, timeout: Duration) -> Option<Vec<String>> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 8192];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string)
                    .collect(),
            ),
            Err(_) => None,
        }
    }

    /// Skips messages until one has `key` (e.g. "READY=1"); returns it.
    fn expect(&self, key: &str) -> Vec<String> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .next(left.max(Duration::from_millis(1)))
                .unwrap_or_else(|| panic!("no {key} message within {IO_TIMEOUT:?}"));
            if msg.iter().any(|l| l == key) {
                return msg;
            }
            assert!(Instant::now() < deadline, "no {key} message");
        }
    }
}

fn field<'a>(msg: &'a [String], key: &str) -> &'a str {
    msg.iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {msg:?}"))
}

#[test]
fn start_reload_failed_reload_and_drain() {
    let n = NotifySocket::new();
    let mut d = Daemon::start_env("", &[("NOTIFY_SOCKET", n.path.to_str().unwrap())]);
    // The listening socket goes to the fd store, then READY with a status.
    let store = n.expect("FDSTORE=1");
    assert_eq!(field(&store, "FDNAME"), "listener");
    let ready = n.expect("READY=1");
    assert!(
        field(&ready, "STATUS").contains("serving 0 connection(s)"),
        "{ready:?}"
    );

    std::fs::write(
        d.config_path(),
        "host = \"127.0.0.1\"\nport = 0\nidle_timeout = 7\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let reloading = n.expect("RELOADING=1");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC").parse().unwrap();
    assert!(usec > 0);
    let done = n.expect("READY=1");
    assert!(
        field(&done, "STATUS").contains("reload applied: idle_timeout: 5m -> 7s"),
        "{done:?}"
    );

    std::fs::write(
        d.config_path(),
        "host = \"127.0.0.1\"\nport = 0\nidle_timeout = \"soon\"\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    n.expect("RELOADING=1");
    let failed = n.expect("READY=1");
    let status = field(&failed, "STATUS");
    assert!(
        status.contains("reload failed") && status.contains("idle_timeout"),
        "{status}"
    );

    let mut c = connect(d.addr());
    round_trip(&mut c, b"x\n");
    d.signal(libc::SIGTERM);
    let stopping = n.expect("STOPPING=1");
    assert!(
        field(&stopping, "STATUS").contains("draining 1 connection(s)"),
        "{stopping:?}"
    );
    drop(c);
    assert!(d.wait_exit(Duration::from_secs(15)).success());
}

#[cfg(feature = "fault-injection")]
#[test]
fn watchdog_pings_while_working_and_stops_when_a_worker_wedges() {
    let n = NotifySocket::new();
    let d = Daemon::start_env(
        "pool_size = 2\n",
        &[
            ("NOTIFY_SOCKET", n.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    n.expect("READY=1");
    // Pings come at about half the interval.
    for _ in 0..3 {
        n.expect("WATCHDOG=1");
    }
    // Wedge one worker (test-only fault hook): both workers get a
    // connection, so one of the two clients lands on the wedged one.
    let mut a = connect(d.addr());
    let mut b = connect(d.addr());
    round_trip(&mut a, b"a\n");
    round_trip(&mut b, b"b\n");
    use std::io::Write;
    a.write_all(b"ECHO-LAB-FAULT:HANG").unwrap();
    d.wait_for_log("this worker hangs", IO_TIMEOUT);
    d.wait_for_log("withholding the watchdog ping", IO_TIMEOUT);
    // Pings sent before the stall was noticed are already queued (the
    // supervisor pings and logs from one thread, in order): drop them.
    n.sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 8192];
    while n.sock.recv(&mut buf).is_ok() {}
    n.sock.set_nonblocking(false).unwrap();
    // Then no ping for well over the watchdog interval.
    let quiet_until = Instant::now() + Duration::from_millis(2000);
    while let Some(msg) = n.next(
        quiet_until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ) {
        assert!(
            !msg.iter().any(|l| l == "WATCHDOG=1"),
            "pinged while wedged: {msg:?}"
        );
        if Instant::now() >= quiet_until {
            break;
        }
    }
}
