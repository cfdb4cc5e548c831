//! Shared helpers for the integration tests: the real `echo-lab` binary on
//! an ephemeral loopback port, clients whose every read and write is
//! bounded, and waits that poll a condition under a deadline.
//!
//! In the style of tiny-http's test support: a test says
//! `let d = Daemon::start("pool_size = 2")`, talks to `d.addr()`, and the
//! daemon is killed when `d` goes out of scope. Its stderr is collected the
//! whole time and printed if the test fails, so a failure shows what the
//! daemon said.
//!
//! Nothing here sleeps to wait for readiness: the daemon is ready when it
//! logs its `listening on` line, and every other wait is a loop over a
//! condition with a deadline. The deadlines are generous (the suite must
//! pass on a loaded 2-core machine); they only bound how long a bug takes
//! to fail.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The daemon binary under test.
pub const ECHO_LAB: &str = env!("CARGO_BIN_EXE_echo-lab");
/// The client binary under test. It is another package's binary
/// (crates/echo-labctl), built beside the daemon's in the same target
/// directory by `cargo test` at the workspace root (the client package's
/// own tests make cargo build it); [`ctl`] says so if it is missing.
pub const ECHO_LABCTL: &str = concat!(env!("CARGO_BIN_EXE_echo-lab"), "ctl");

/// Bound on one read or write, and on anything that should take
/// milliseconds; only a bug gets near it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the daemon logging its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The notices, as sent (see `crates/echo-lab-proto/src/protocol.rs`).
pub const GOODBYE: &[u8] = b"[echo-lab] goodbye\r\n";
pub const SHUTTING_DOWN: &[u8] = b"[echo-lab] shutting down\r\n";

pub fn idle_notice(secs: u64) -> Vec<u8> {
    format!("[echo-lab] idle for {secs}s, closing\r\n").into_bytes()
}

pub fn busy_notice(max: usize) -> Vec<u8> {
    format!("[echo-lab] busy: {max} connections already open, try again later\r\n").into_bytes()
}

/// Log lines as the test has received them, and the channel they come on.
struct LogState {
    rx: Receiver<String>,
    seen: Vec<String>,
}

/// A running `echo-lab`; killed on drop.
pub struct Daemon {
    child: Child,
    addrs: Vec<SocketAddr>,
    /// Every stderr line so far (the reader thread appends), for the dump
    /// on failure.
    log: Arc<Mutex<Vec<String>>>,
    state: Mutex<LogState>,
    reader: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
    /// Keeps the config file alive as long as the daemon.
    _config: tempfile::NamedTempFile,
    /// Holds the daemon's control socket (one per test daemon, so tests
    /// running in parallel never share one).
    control_dir: tempfile::TempDir,
}

/// Writes `text` to a fresh temporary `.toml` file.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("echo-lab-test-")
        .suffix(".toml")
        .tempfile()
        .expect("create temp config");
    f.write_all(text.as_bytes()).expect("write temp config");
    f.flush().expect("flush temp config");
    f
}

impl Daemon {
    /// Starts the daemon on 127.0.0.1 with an ephemeral port; `config_toml`
    /// holds the other settings (it must not set `host` or `port`).
    pub fn start(config_toml: &str) -> Daemon {
        Daemon::start_raw(&format!("host = \"127.0.0.1\"\nport = 0\n{config_toml}"))
    }

    /// Like [`Daemon::start`], with extra environment variables (e.g.
    /// `NOTIFY_SOCKET`).
    pub fn start_env(config_toml: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(
            &format!("host = \"127.0.0.1\"\nport = 0\n{config_toml}"),
            env,
        )
    }

    /// Starts the daemon with exactly this config text (plus a private
    /// control socket unless the text names one).
    pub fn start_raw(config_toml: &str) -> Daemon {
        Daemon::spawn(config_toml, &[])
    }

    fn spawn(config_toml: &str, env: &[(&str, &str)]) -> Daemon {
        let control_dir = tempfile::tempdir().expect("control socket dir");
        let control = control_dir.path().join("control.sock");
        let mut text = config_toml.to_string();
        if !text.contains("control_socket") {
            // Top-level keys must come before any table.
            text = format!("control_socket = {:?}\n{text}", control.to_str().unwrap());
        }
        let config = config_file(&text);
        let mut child = spawn_echo_lab(config.path(), env, Stdio::piped());
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                            log.lock().unwrap().push(line.clone());
                            let _ = tx.send(line);
                        }
                    }
                }
            })
        };
        let mut daemon = Daemon {
            child,
            addrs: Vec::new(),
            log,
            state: Mutex::new(LogState {
                rx,
                seen: Vec::new(),
            }),
            reader: Some(reader),
            exited: None,
            _config: config,
            control_dir,
        };
        let line = daemon.wait_for_log("listening on ", START_TIMEOUT);
        daemon.addrs = parse_listening(&line);
        daemon
    }

    /// The first address the daemon listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every address from the `listening on` line.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's private control socket.
    pub fn control_path(&self) -> std::path::PathBuf {
        self.control_dir.path().join("control.sock")
    }

    /// The config file the daemon was started with.
    pub fn config_path(&self) -> &Path {
        self._config.path()
    }

    fn status_field(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {path}"))
    }

    /// Resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    pub fn thread_count(&self) -> u64 {
        self.status_field("Threads:")
    }

    /// The daemon's open descriptor numbers, from /proc.
    pub fn fd_numbers(&self) -> Vec<i32> {
        let path = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    pub fn fd_count(&self) -> usize {
        let path = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .count()
    }

    /// Waits for a stderr line containing `needle` (it may have been logged
    /// already) and returns it; panics after `timeout` or if the daemon
    /// closes its stderr first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let mut st = self.state.lock().unwrap();
        if let Some(line) = st.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match st.rx.recv_timeout(left) {
                Ok(line) => {
                    st.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("echo-lab logged no line containing {needle:?} within {timeout:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("echo-lab closed stderr (exited?) before logging {needle:?}")
                }
            }
        }
    }

    /// Every stderr line so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// Waits until the daemon exits; `None` if it is still running after
    /// `timeout`.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, timeout);
            if self.exited.is_some() {
                self.read_to_end_of_log(IO_TIMEOUT);
            }
        }
        self.exited
    }

    /// Once the daemon has exited: waits (at most `timeout`) until the
    /// reader has taken every line it wrote, which it has when it reaches
    /// the end of the daemon's stderr and drops its sender, so
    /// [`Daemon::log_text`] then holds the last lines too.
    fn read_to_end_of_log(&self, timeout: Duration) {
        let mut st = self.state.lock().unwrap();
        let deadline = Instant::now() + timeout;
        // Timeout: another process holds the stderr; Disconnected: done.
        while let Ok(line) = st
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            st.seen.push(line);
        }
    }

    /// Waits until the daemon exits; panics if it is still running after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.try_wait_exit(timeout)
            .unwrap_or_else(|| panic!("echo-lab still running {timeout:?} later"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The daemon is gone, so its stderr reaches end of file.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- echo-lab (pid {}) stderr ----\n{}\n---- end of echo-lab stderr ----",
                self.child.id(),
                self.log_text()
            );
        }
    }
}

/// The addresses of `... INFO  listening on A, B (pool ...)`.
fn parse_listening(line: &str) -> Vec<SocketAddr> {
    let rest = &line[line.find("listening on ").expect("listening line") + 13..];
    let list = rest.split(" (").next().unwrap_or(rest);
    let addrs: Vec<SocketAddr> = list
        .split(", ")
        .map(|a| {
            a.trim()
                .parse()
                .unwrap_or_else(|e| panic!("bad address {a:?} in {line:?}: {e}"))
        })
        .collect();
    assert!(!addrs.is_empty(), "no address in {line:?}");
    addrs
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` every few milliseconds until it holds; panics after
/// `timeout` naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects with read and write timeouts of [`IO_TIMEOUT`] and no Nagle
/// delay (tests write small messages and wait for them).
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!(
                "EOF after {got} of {n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "read failed after {got} of {n} bytes ({e}): {:?}",
                String::from_utf8_lossy(&buf[..got])
            ),
        }
    }
    buf
}

/// Reads until the server closes; panics on a timeout or reset, showing
/// what arrived.
pub fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "no EOF ({e}); received so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Sends `data` and asserts it comes back exactly.
pub fn round_trip(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write");
    let back = read_n(s, data.len());
    assert_eq!(
        String::from_utf8_lossy(&back),
        String::from_utf8_lossy(data),
        "echo differs"
    );
    assert_eq!(back, data, "echo differs");
}

/// Asserts that `got` equals `want`, showing both as text.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8]) {
    assert_eq!(
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(want),
        "bytes differ"
    );
    assert_eq!(got, want, "bytes differ");
}

/// Runs `cmd` with `stdin` as its input, bounded by `timeout` (killed and
/// a panic after it).
pub fn run_with_input(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A child that exits early closes its end; the write error is fine.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let status = match wait_child(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?}; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Reads a pipe to its end on a thread.
pub fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Deterministic pseudo-random bytes (xorshift) for bulk echo.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// True if `data` holds the command word in any case (bulk test data must
/// not, or the server would rightly end the session).
pub fn contains_disconnect_word(data: &[u8]) -> bool {
    data.windows(10)
        .any(|w| w.eq_ignore_ascii_case(b"disconnect"))
}

/// Runs `echo-labctl --socket <the daemon's control socket> ARGS...`,
/// bounded by [`IO_TIMEOUT`] and more.
pub fn ctl(d: &Daemon, args: &[&str]) -> Output {
    assert!(
        Path::new(ECHO_LABCTL).exists(),
        "{ECHO_LABCTL} is missing: run the tests from the workspace root (cargo test builds it)"
    );
    let mut cmd = Command::new(ECHO_LABCTL);
    cmd.arg("--socket").arg(d.control_path()).args(args);
    run_with_input(&mut cmd, b"", IO_TIMEOUT * 4)
}

/// `echo-labctl status --json`, parsed.
pub fn ctl_status(d: &Daemon) -> serde_json::Value {
    let out = ctl(d, &["status", "--json"]);
    assert!(out.status.success(), "echo-labctl status failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

// ------------------------------------------------------------------------
// Helpers for the reliability suite (see docs/RELIABILITY.md).

impl Daemon {
    /// CPU time the daemon has used so far (user + system, all threads),
    /// from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid())
    }

    /// Sets the daemon's RLIMIT_NOFILE (soft and hard) while it runs, as
    /// `prlimit --pid PID --nofile=N:N` does. Descriptors already open stay
    /// open; new ones fail with EMFILE once `n` are in use. (The daemon
    /// raises its soft limit to the hard one at start, so a limit set
    /// before exec would have to lower both anyway.)
    pub fn set_nofile(&self, n: u64) {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: prlimit(2) on our own child; only reads `lim`.
        let rc = unsafe {
            libc::prlimit(
                self.pid() as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &lim,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(
            rc,
            0,
            "prlimit({}, NOFILE, {n}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// Log lines so far that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// `stats.<field>` from `echo-labctl status --json`.
    pub fn stat(&self, field: &str) -> u64 {
        let s = ctl_status(self);
        s["stats"][field]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats.{field} in {s}"))
    }
}

/// utime + stime of process `pid`, from /proc/PID/stat.
pub fn cpu_time_of(pid: u32) -> Duration {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // The command name (field 2) may hold spaces: fields are counted from
    // after its closing parenthesis, where field 3 (state) starts.
    let rest = &text[text.rfind(')').expect("comm in stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// Makes `close` of this socket send a RST instead of a FIN (SO_LINGER
/// with a zero timeout).
pub fn set_linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// Latency samples and their percentiles, for the figures the
/// reliability tests print (the doc records them; tests assert only
/// generous bounds).
#[derive(Debug, Default, Clone)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`th percentile (0..=100), nearest rank; zero when empty.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.0.clone();
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    /// "n=500 p50=0.21ms p99=1.35ms max=2.01ms"
    pub fn summary(&self) -> String {
        format!(
            "n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            self.len(),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0))
        )
    }
}

/// A duration in milliseconds, for figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends `data`, reads its echo, checks it; the error says what went wrong
/// instead of panicking (for tests that count failures).
pub fn try_round_trip(s: &mut TcpStream, data: &[u8]) -> Result<Duration, String> {
    let t = Instant::now();
    s.write_all(data).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0; data.len()];
    let mut got = 0;
    while got < back.len() {
        match s.read(&mut back[got..]) {
            Ok(0) => return Err(format!("EOF after {got} of {} bytes", data.len())),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {got} of {} bytes: {e}", data.len())),
        }
    }
    if back != data {
        return Err(format!(
            "echo differs: sent {:?}, got {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(t.elapsed())
}

impl Daemon {
    /// True if the daemon's thread named `name` is blocked in system call
    /// `nr` now (from /proc/PID/task/TID/syscall; e.g. `libc::SYS_accept4`).
    pub fn thread_in_syscall(&self, name: &str, nr: libc::c_long) -> bool {
        let dir = format!("/proc/{}/task", self.pid());
        let Ok(tasks) = std::fs::read_dir(&dir) else {
            return false;
        };
        tasks.flatten().any(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let call = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            comm.trim() == name
                && call
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<libc::c_long>().ok())
                    == Some(nr)
        })
    }
}

/// The 64 KiB block [`write_until_stalled`] repeats: pseudo-random, free
/// of the `disconnect` word even across its wrap-around.
pub fn flood_block() -> Vec<u8> {
    let block = pseudo_random(64 * 1024, 0xb10c);
    assert!(!contains_disconnect_word(
        &[&block[..], &block[..]].concat()
    ));
    block
}

/// Writes up to `total` bytes (the [`flood_block`], repeated) to `s`
/// without ever reading, until the writes make no progress for `stall`
/// (the server stopped reading: backpressure); returns the bytes written
/// and whether the writes stalled (rather than all of it going out).
pub fn write_until_stalled(s: &mut TcpStream, total: usize, stall: Duration) -> (usize, bool) {
    let block = flood_block();
    // Short write timeouts: once the server stops reading, a blocking
    // write would block for good.
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut sent, mut progress) = (0, Instant::now());
    while sent < total {
        let off = sent % block.len();
        match s.write(&block[off..]) {
            Ok(0) => panic!("write returned 0 after {sent} bytes"),
            Ok(n) => {
                sent += n;
                progress = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if progress.elapsed() >= stall {
                    return (sent, true);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("write failed after {sent} bytes: {e}"),
        }
    }
    (sent, false)
}

/// The daemon's descriptors and threads at one moment, to show later that
/// a test left nothing behind.
#[derive(Debug, Clone, Copy)]
pub struct Resources {
    pub fds: usize,
    pub threads: u64,
}

impl Daemon {
    /// Descriptors and threads once no control request is being served
    /// (each `echo-labctl` call, `stat` included, briefly holds a thread
    /// and a descriptor that are not part of what a test measures).
    pub fn resources(&self) -> Resources {
        wait_until(IO_TIMEOUT, "no control request in progress", || {
            !self.thread_names().iter().any(|n| n == "control-conn")
        });
        Resources {
            fds: self.fd_count(),
            threads: self.thread_count(),
        }
    }

    /// How often the daemon's `worker` threads have blocked (voluntary
    /// context switches, from /proc): a worker sleeping in `epoll_wait`
    /// blocks once per message it waits for, one busy polling does not.
    /// Unlike a CPU share, the count does not depend on what else the
    /// machine runs.
    pub fn worker_blocks(&self) -> u64 {
        let dir = format!("/proc/{}/task", self.pid());
        let Ok(tasks) = std::fs::read_dir(&dir) else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "worker")
            })
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .filter_map(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// The names of the daemon's threads, from /proc.
    pub fn thread_names(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.pid());
        std::fs::read_dir(&dir)
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the descriptor count is back to `base` and asserts the
    /// thread count is too; returns "fds A -> B; threads X -> Y" for the
    /// test's report.
    pub fn assert_back_to(&self, base: Resources) -> String {
        wait_until(IO_TIMEOUT, "descriptors back to the baseline", || {
            self.resources().fds == base.fds
        });
        let now = self.resources();
        assert_eq!(now.threads, base.threads, "threads before and after");
        format!(
            "fds {} -> {}; threads {} -> {}",
            base.fds, now.fds, base.threads, now.threads
        )
    }
}

impl Daemon {
    /// Rewrites the config (`config` after an ephemeral loopback host and
    /// port), sends SIGHUP and waits for the log line containing `expect`,
    /// which it returns.
    pub fn reload_with(&self, config: &str, expect: &str) -> String {
        std::fs::write(
            self.config_path(),
            format!("host = \"127.0.0.1\"\nport = 0\n{config}"),
        )
        .expect("rewrite config");
        self.signal(libc::SIGHUP);
        self.wait_for_log(expect, IO_TIMEOUT)
    }
}

/// Connections per worker, in pool order, from `echo-labctl status --json`.
pub fn per_worker(d: &Daemon) -> Vec<u64> {
    ctl_status(d)["stats"]["workers"]
        .as_array()
        .expect("stats.workers")
        .iter()
        .map(|w| w["connections"].as_u64().expect("connections"))
        .collect()
}

// ------------------------------------------------------------------------
// Helpers for the access rules and per-source limits (tests/access.rs,
// tests/source_limits.rs): clients from chosen loopback addresses.

/// The per-source busy notice (`max_connections_per_source`).
pub fn source_busy_notice(max: usize) -> Vec<u8> {
    format!(
        "[echo-lab] busy: {max} connections from your address already open, try again later\r\n"
    )
    .into_bytes()
}

/// The per-source rate notice (`connection_rate_per_source`, per second).
pub fn source_rate_notice(count: u32) -> Vec<u8> {
    format!(
        "[echo-lab] busy: more than {count} new connections per second from your address, try again later\r\n"
    )
    .into_bytes()
}

/// Connects to `addr` from `from` (a loopback address such as 127.0.0.2:
/// all of 127.0.0.0/8 is this host's), with the timeouts of [`connect`].
pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    try_connect_from(from, addr).unwrap_or_else(|e| panic!("connect {from} -> {addr}: {e}"))
}

/// [`connect_from`], the error returned.
pub fn try_connect_from(from: std::net::IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends `disconnect` and returns everything the server says before it
/// closes: the goodbye if it served the connection, else a busy notice, or
/// nothing (closed without a word, or the reset a refused connection's
/// unread `disconnect` may cause).
pub fn disconnect_answer(s: &mut TcpStream) -> Vec<u8> {
    let _ = s.write_all(b"disconnect\n");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "no answer ({e}); so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    out
}

/// True if the server served this connection (see [`disconnect_answer`]).
pub fn admitted(s: &mut TcpStream) -> bool {
    disconnect_answer(s) == GOODBYE
}

/// A loopback address 127.a.b.c for source number `n` (never 127.0.0.1,
/// which the tests' own clients use).
pub fn loopback_source(n: u32) -> std::net::IpAddr {
    let v = 0x7f00_0002u32 + n;
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(v))
}

/// In a test file with tests that need the `fault-injection` feature:
/// without it, adds an ignored test whose reason says they were not built,
/// so a plain `cargo test` lists it (`... ignored, fault-injection tests
/// not built ...`) instead of leaving them out silently.
#[macro_export]
macro_rules! fault_injection_tests_not_built {
    () => {
        #[cfg(not(feature = "fault-injection"))]
        #[test]
        #[ignore = "fault-injection tests not built: run cargo test --features fault-injection"]
        fn fault_injection_tests_not_built() {
            eprintln!("SKIPPED: built without the fault-injection feature");
        }
    };
}

// ------------------------------------------------------------------------
// A daemon whose stderr the harness does not read (tests/log_stall.rs).

impl Daemon {
    /// Starts the daemon like [`Daemon::start_env`], with its stderr going
    /// to `stderr` instead of the harness (so [`Daemon::wait_for_log`] and
    /// the dump on failure have nothing). It is ready when its control
    /// socket answers `status`, whose `listen` gives its addresses.
    pub fn start_with_stderr(config_toml: &str, env: &[(&str, &str)], stderr: Stdio) -> Daemon {
        let control_dir = tempfile::tempdir().expect("control socket dir");
        let control = control_dir.path().join("control.sock");
        let config = config_file(&format!(
            "control_socket = {:?}\nhost = \"127.0.0.1\"\nport = 0\n{config_toml}",
            control.to_str().unwrap()
        ));
        let child = spawn_echo_lab(config.path(), env, stderr);
        let (_, rx) = mpsc::channel();
        let mut daemon = Daemon {
            child,
            addrs: Vec::new(),
            log: Arc::new(Mutex::new(Vec::new())),
            state: Mutex::new(LogState {
                rx,
                seen: Vec::new(),
            }),
            reader: None,
            exited: None,
            _config: config,
            control_dir,
        };
        let mut listen = Vec::new();
        wait_until(START_TIMEOUT, "the control socket to answer status", || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("echo-lab exited at start: {status}");
            }
            let out = ctl(&daemon, &["status", "--json"]);
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            listen = json["listen"]
                .as_array()
                .expect("status.listen")
                .iter()
                .map(|a| {
                    a.as_str()
                        .expect("address")
                        .parse()
                        .expect("socket address")
                })
                .collect();
            out.status.success()
        });
        assert!(!listen.is_empty(), "status lists no address");
        daemon.addrs = listen;
        daemon
    }
}

/// Runs the daemon on `config` with `env` added, stdin and stdout closed,
/// stderr to `stderr`, outside any journal (so lines are plain text).
fn spawn_echo_lab(config: &Path, env: &[(&str, &str)], stderr: Stdio) -> Child {
    Command::new(ECHO_LAB)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn echo-lab")
}

/// Reads until the daemon closes `s` (end of stream or reset), each read
/// bounded by [`IO_TIMEOUT`]; what came back. Panics on any other error.
pub fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Debian's HAProxy in mode tcp, on a free loopback port, forwarding to
/// one server; killed on drop. Ready once its front accepts.
pub struct Haproxy {
    child: Child,
    /// Where clients connect.
    pub front: SocketAddr,
    /// Its config file, kept while it runs.
    _cfg: tempfile::NamedTempFile,
}

impl Haproxy {
    /// `server` is the backend's server line after `server lab` (address
    /// and options: `127.0.0.1:7 send-proxy-v2`); `server_timeout` is its
    /// `timeout server` (`"30s"`).
    pub fn start(server: &str, server_timeout: &str) -> Haproxy {
        let port = free_port();
        let cfg = config_file(&format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server {server_timeout}\n\
             frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
             backend b\n  server lab {server}\n"
        ));
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(cfg.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; tests/run.sh installs it)");
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_until(IO_TIMEOUT, "haproxy accepting", || {
            TcpStream::connect_timeout(&front, Duration::from_millis(200)).is_ok()
        });
        Haproxy {
            child,
            front,
            _cfg: cfg,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
