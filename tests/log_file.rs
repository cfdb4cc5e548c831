//! `[log] target = "file"`: the daemon writes its log file, reopens it on
//! SIGUSR1 with no line lost while sessions churn, refuses a file it
//! cannot open (in `--check-config`, and on reload, keeping the old
//! target), and works with the real `logrotate` (Debian's package, which
//! tests/run.sh installs) running the shipped packaging/echo-lab.logrotate.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use support::*;

const SESSION: &str = " INFO  session ";

/// Rewrites the daemon's config with `[log]` set to `log` and reloads.
fn reload_log(d: &Daemon, log: &str) -> std::process::Output {
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let top = text.split("[log]").next().unwrap().to_string();
    std::fs::write(d.config_path(), format!("{top}[log]\n{log}")).unwrap();
    ctl(d, &["reload"])
}

fn file_config(path: &Path) -> String {
    format!("target = \"file\"\npath = {:?}\n", path.to_str().unwrap())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn sessions_in(text: &str) -> usize {
    text.lines().filter(|l| l.contains(SESSION)).count()
}

/// Client threads opening, using and closing sessions until stopped.
struct Churn {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Churn {
    fn start(addr: std::net::SocketAddr, threads: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    while !stop.load(Relaxed) {
                        let mut c = connect(addr);
                        round_trip(&mut c, b"churn\n");
                        c.write_all(b"disconnect\n").unwrap();
                        assert_bytes(&read_to_eof(&mut c), GOODBYE);
                        done.fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        Churn {
            stop,
            done,
            threads,
        }
    }

    /// Stops the clients; returns how many sessions they completed.
    fn finish(self) -> u64 {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().expect("a client thread failed");
        }
        self.done.load(Relaxed)
    }
}

/// Waits until the files together hold `want` session lines, then checks
/// that every line is whole.
fn assert_all_logged(files: &[&Path], want: u64) {
    wait_until(IO_TIMEOUT * 2, "every session logged", || {
        files.iter().map(|f| sessions_in(&read(f))).sum::<usize>() as u64 >= want
    });
    let mut total = 0;
    for f in files {
        let text = read(f);
        assert!(text.ends_with('\n'), "{} ends mid-line", f.display());
        for l in text.lines().filter(|l| l.contains(SESSION)) {
            assert!(l.contains(" reason=disconnect"), "a broken line: {l:?}");
            total += 1;
        }
    }
    assert_eq!(total, want, "session lines in {files:?}");
}

#[test]
fn sigusr1_under_load_reopens_the_file_and_loses_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("echo-lab.log");
    let rotated = dir.path().join("echo-lab.log.1");
    let d = Daemon::start("[log]\n");
    let out = reload_log(&d, &file_config(&log));
    assert!(out.status.success(), "{out:?}");
    wait_until(IO_TIMEOUT, "the log file written", || {
        read(&log).contains("reloaded")
    });
    let churn = Churn::start(d.addr(), 4);
    wait_until(IO_TIMEOUT * 2, "sessions logged", || {
        sessions_in(&read(&log)) >= 100
    });
    std::fs::rename(&log, &rotated).unwrap();
    d.signal(libc::SIGUSR1);
    wait_until(IO_TIMEOUT, "the file reopened", || {
        read(&log).contains("reopened the log file")
    });
    wait_until(IO_TIMEOUT * 2, "sessions logged after", || {
        sessions_in(&read(&log)) >= 100
    });
    let done = churn.finish();
    assert!(done >= 200, "only {done} sessions");
    assert_all_logged(&[&rotated, &log], done);
    assert!(
        !d.log_text().contains(SESSION),
        "session lines on stderr too"
    );
}

#[test]
fn a_file_that_cannot_be_opened_fails_the_check_and_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("no-such-dir").join("echo-lab.log");
    let cfg = config_file(&format!("port = 0\n[log]\n{}", file_config(&bad)));
    let out = Command::new(ECHO_LAB)
        .arg("--check-config")
        .arg("--config")
        .arg(cfg.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("log.path") && err.contains(bad.to_str().unwrap()),
        "{err}"
    );
    // Start-up refuses it too.
    let out = Command::new(ECHO_LAB)
        .arg("--config")
        .arg(cfg.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    // A reload to it fails and logging stays on stderr.
    let d = Daemon::start("[log]\n");
    let out = reload_log(&d, &file_config(&bad));
    assert!(!out.status.success(), "{out:?}");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot open the log file"), "{said}");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"still here\n");
    drop(c);
    wait_until(IO_TIMEOUT, "a session line on stderr", || {
        d.log_count(SESSION) == 1
    });
}

/// packaging/echo-lab.logrotate, pointed at `dir` instead of the system's
/// paths (log directory, pidfile, and no systemd).
fn shipped_snippet(dir: &Path) -> PathBuf {
    let snippet = include_str!("../packaging/echo-lab.logrotate");
    let d = dir.to_str().unwrap();
    let text = snippet
        .replace("/var/log/echo-lab/", &format!("{d}/"))
        .replace("/run/systemd/system", &format!("{d}/no-systemd"))
        .replace("/run/echo-lab.pid", &format!("{d}/echo-lab.pid"));
    assert_ne!(
        text, snippet,
        "the snippet's paths changed; update this test"
    );
    let conf = dir.join("logrotate.conf");
    std::fs::write(&conf, text).unwrap();
    conf
}

#[test]
fn the_real_logrotate_with_the_shipped_snippet_rotates_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("echo-lab.log");
    let d = Daemon::start("[log]\n");
    assert!(reload_log(&d, &file_config(&log)).status.success());
    std::fs::write(dir.path().join("echo-lab.pid"), format!("{}\n", d.pid())).unwrap();
    let conf = shipped_snippet(dir.path());
    let churn = Churn::start(d.addr(), 2);
    wait_until(IO_TIMEOUT * 2, "sessions logged", || {
        sessions_in(&read(&log)) >= 50
    });
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(dir.path().join("state"))
        .arg(&conf)
        .output()
        .expect("logrotate (Debian package logrotate; tests/run.sh installs it)");
    assert!(out.status.success(), "logrotate: {out:?}");
    let rotated = dir.path().join("echo-lab.log.1");
    assert!(rotated.exists(), "logrotate did not rotate: {out:?}");
    wait_until(IO_TIMEOUT, "the daemon reopened its file", || {
        read(&log).contains("reopened the log file")
    });
    wait_until(IO_TIMEOUT * 2, "sessions logged after", || {
        sessions_in(&read(&log)) >= 50
    });
    let done = churn.finish();
    assert_all_logged(&[&rotated, &log], done);
    assert!(
        std::fs::read_to_string(dir.path().join("state"))
            .unwrap()
            .contains("echo-lab.log"),
        "the state file names the log"
    );
}
