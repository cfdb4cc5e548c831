//! A log sink that stops taking bytes must never stop the echo: with the
//! daemon's stderr in a FIFO nobody reads, or its syslog socket never
//! read, thousands of short sessions (each logging its session line) and
//! a ping-pong load on other connections are all served, each round trip
//! within the harness's 10 s bound; the lines the sink could not take are
//! dropped, counted in `echo-labctl status` (`log_lines_dropped`) and
//! `/metrics` (`echo_lab_log_lines_dropped_total`), and reported in one
//! line once the sink drains.

mod support;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use support::*;

/// Short sessions: connect, one round trip, close.
const SESSIONS: usize = 2_000;
/// Threads opening them.
const CHURNERS: usize = 4;
/// Long connections doing round trips meanwhile.
const PINGERS: usize = 4;

const CONFIG: &str = "pool_size = 2\n[log]\nsessions = true\n";

/// The count in the writer's `log sink was blocked: N lines dropped`.
fn dropped_in(line: &str) -> u64 {
    line.split("log sink was blocked: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

/// What the load did.
struct Served {
    sessions: usize,
    pings: Latencies,
    failures: Vec<String>,
}

/// Runs [`SESSIONS`] short sessions on [`CHURNERS`] threads while
/// [`PINGERS`] connections do round trips until they are done.
fn load(d: &Daemon) -> Served {
    let addr = d.addr();
    let done = Arc::new(AtomicBool::new(false));
    let pingers: Vec<JoinHandle<(Latencies, Vec<String>)>> = (0..PINGERS)
        .map(|i| {
            let done = done.clone();
            let mut c = connect(addr);
            std::thread::spawn(move || {
                let msg = format!("ping {i} {}\n", "p".repeat(48));
                let (mut lat, mut failures) = (Latencies::default(), Vec::new());
                while !done.load(Ordering::Relaxed) && failures.is_empty() {
                    match try_round_trip(&mut c, msg.as_bytes()) {
                        Ok(t) => lat.push(t),
                        Err(e) => failures.push(format!("ping-pong {i}: {e}")),
                    }
                }
                (lat, failures)
            })
        })
        .collect();
    let churners: Vec<JoinHandle<(usize, Vec<String>)>> = (0..CHURNERS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut served = 0;
                // The first failure ends the thread: a stalled daemon
                // fails the test in one timeout, not one per session.
                for n in 0..SESSIONS / CHURNERS {
                    let mut c = connect(addr);
                    if let Err(e) = try_round_trip(&mut c, format!("session {i}/{n}\n").as_bytes())
                    {
                        failures.push(format!("session {i}/{n}: {e}"));
                        break;
                    }
                    served += 1;
                }
                (served, failures)
            })
        })
        .collect();
    let mut out = Served {
        sessions: 0,
        pings: Latencies::default(),
        failures: Vec::new(),
    };
    for c in churners {
        let (n, f) = c.join().expect("session thread");
        out.sessions += n;
        out.failures.extend(f);
    }
    done.store(true, Ordering::Relaxed);
    for p in pingers {
        let (lat, f) = p.join().expect("ping-pong thread");
        out.pings.extend(lat);
        out.failures.extend(f);
    }
    out
}

/// Asserts that everything was served and prints the figures.
fn assert_served(what: &str, served: &Served) {
    assert!(
        served.failures.is_empty(),
        "{what}: {} round trips failed, first: {:?}",
        served.failures.len(),
        &served.failures[..served.failures.len().min(5)]
    );
    assert_eq!(served.sessions, SESSIONS, "{what}: sessions served");
    assert!(served.pings.len() > 0, "{what}: no ping-pong round trip");
    eprintln!(
        "{what}: {} sessions and {} ping-pong round trips served; ping-pong {}",
        served.sessions,
        served.pings.len(),
        served.pings.summary()
    );
}

/// `log_lines_dropped` from `echo-labctl status --json`.
fn status_dropped(d: &Daemon) -> u64 {
    let s = ctl_status(d);
    s["log_lines_dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no log_lines_dropped in {s}"))
}

/// Creates a FIFO at `path`; returns its read end (non-blocking, not read
/// until the test says so) and its write end.
fn fifo(path: &Path) -> (File, File) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the FIFO's read end");
    // The smallest pipe buffer (one page), so the sink stalls after a few
    // dozen lines whatever the system's default size.
    // SAFETY: fcntl on a descriptor `reader` owns.
    let rc = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        rc >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    // A reader exists, so this does not block.
    let writer = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the FIFO's write end");
    (reader, writer)
}

/// Reads the FIFO until a line containing `needle` has arrived; returns
/// that line.
fn read_fifo_until(r: &mut File, needle: &str) -> String {
    let deadline = Instant::now() + IO_TIMEOUT * 3;
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line containing {needle:?} in the FIFO; it held {} bytes, ending {:?}",
            text.len(),
            &text[text.len().saturating_sub(500)..]
        );
        match r.read(&mut buf) {
            Ok(0) => panic!("the FIFO's writer closed before {needle:?}"),
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == ErrorKind::WouldBlock => wait_readable(r),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read the FIFO: {e}"),
        }
    }
}

/// Waits (at most 100 ms) until `r` has something to read.
fn wait_readable(r: &File) {
    let mut pfd = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd for at most 100 ms.
    unsafe { libc::poll(&mut pfd, 1, 100) };
}

/// `echo_lab_log_lines_dropped_total` from the daemon's `/metrics`.
fn metrics_dropped(d: &Daemon) -> u64 {
    let status = ctl_status(d);
    let addr: std::net::SocketAddr = status["metrics"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {status}"));
    let mut c = connect(addr);
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send the scrape");
    let body = String::from_utf8_lossy(&read_to_eof(&mut c)).to_string();
    body.lines()
        .find_map(|l| l.strip_prefix("echo_lab_log_lines_dropped_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no echo_lab_log_lines_dropped_total in {body}"))
}

#[test]
fn stderr_into_a_fifo_nobody_reads_stops_no_echo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut reader, writer) = fifo(&dir.path().join("stderr"));
    let d = Daemon::start_with_stderr(
        &format!("metrics_listen = \"127.0.0.1:0\"\n{CONFIG}"),
        &[],
        Stdio::from(writer),
    );
    let served = load(&d);
    assert_served("stderr FIFO not read", &served);
    let dropped_while_stalled = status_dropped(&d);
    assert!(
        dropped_while_stalled > 0,
        "no log line dropped: did the sink stall?"
    );
    let report = read_fifo_until(&mut reader, "log sink was blocked");
    let n = dropped_in(&report);
    assert!(n > 0, "{report}");
    let total = status_dropped(&d);
    assert!(total >= n, "status says {total} dropped, the log {n}");
    let scraped = metrics_dropped(&d);
    assert!(scraped >= total, "/metrics says {scraped}, status {total}");
    eprintln!(
        "stderr FIFO not read: {report:?}; status log_lines_dropped = {total}; \
         echo_lab_log_lines_dropped_total = {scraped}"
    );
}

#[test]
fn a_syslog_socket_nobody_reads_stops_no_echo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&path).expect("bind the syslog socket");
    let stderr = File::create(dir.path().join("stderr")).expect("stderr file");
    let d = Daemon::start_with_stderr(
        &format!("{CONFIG}target = \"syslog\"\n"),
        &[("ECHO_LAB_SYSLOG_SOCKET", path.to_str().unwrap())],
        Stdio::from(stderr),
    );
    let served = load(&d);
    assert_served("syslog socket not read", &served);
    let dropped_while_stalled = status_dropped(&d);
    assert!(
        dropped_while_stalled > 0,
        "no log line dropped: did the sink stall?"
    );
    syslog
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    let deadline = Instant::now() + IO_TIMEOUT * 3;
    let mut buf = vec![0u8; 64 * 1024];
    let report = loop {
        assert!(Instant::now() < deadline, "no drop report on syslog");
        let n = syslog.recv(&mut buf).expect("receive a syslog message");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.contains("log sink was blocked") {
            break msg;
        }
    };
    assert!(report.starts_with("<28>"), "daemon.warning: {report}");
    let n = dropped_in(&report);
    assert!(n > 0, "{report}");
    let total = status_dropped(&d);
    assert!(total >= n, "status says {total} dropped, the log {n}");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert!(
        !stderr.contains("cannot log to syslog"),
        "syslog unreachable: {stderr}"
    );
    eprintln!("syslog socket not read: {report:?}; status log_lines_dropped = {total}");
}
