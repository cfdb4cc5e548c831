//! The control socket and `echo-labctl status|reload|stop`: what they
//! report, who may use them (SO_PEERCRED and the file mode), and that bad
//! requests get an error answer, never a crash or a hang.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn status_reports_the_daemon() {
    let d = Daemon::start("pool_size = 3\n");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"hello\n");
    let s = ctl_status(&d);
    assert_eq!(s["pid"], d.pid());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["listen"][0], d.addr().to_string());
    assert_eq!(s["config"], d.config_path().to_str().unwrap());
    assert_eq!(s["stats"]["pool_size"], 3);
    assert_eq!(s["stats"]["active"], 1);
    assert_eq!(s["stats"]["total"], 1);
    assert_eq!(s["stats"]["bytes_echoed"], 6);
    assert!(s["last_reload"].is_null());
    let text = ctl(&d, &["status"]);
    assert!(text.status.success());
    let out = String::from_utf8_lossy(&text.stdout);
    for want in [
        "pid",
        "uptime",
        "listening on",
        "pool size:     3",
        "1 active",
        "bytes echoed:  6",
        "last reload:   never",
    ] {
        assert!(out.contains(want), "status lacks {want:?}:\n{out}");
    }
}

#[test]
fn reload_and_stop_through_the_control_socket() {
    let mut d = Daemon::start("idle_timeout = 60\n");
    std::fs::write(
        d.config_path(),
        "host = \"127.0.0.1\"\nport = 0\nidle_timeout = 30\n",
    )
    .unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("idle_timeout: 1m -> 30s"));
    let s = ctl_status(&d);
    assert!(s["last_reload"]["applied"]
        .as_str()
        .unwrap()
        .contains("idle_timeout"));
    let out = ctl(&d, &["stop", "--wait", "--timeout", "20"]);
    assert!(out.status.success(), "{out:?}");
    assert!(d.wait_exit(Duration::from_secs(5)).success());
    assert!(!d.control_path().exists(), "control socket left behind");
}

#[test]
fn no_daemon_means_exit_69_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(ECHO_LABCTL)
        .args([
            "--socket",
            dir.path().join("none.sock").to_str().unwrap(),
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the daemon") && err.contains("systemctl status echo-lab"),
        "{err}"
    );
}

/// Runs echo-labctl as the unprivileged user `nobody`.
fn ctl_as_nobody(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            ECHO_LABCTL,
            "--socket",
        ])
        .arg(d.control_path())
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn other_users_are_refused() {
    let d = Daemon::start("");
    let meta = std::fs::metadata(d.control_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // The file mode keeps them out...
    let out = ctl_as_nobody(&d, &["status"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    // ...and if the mode is opened up, SO_PEERCRED still does.
    let sock = d.control_path();
    let dir = sock.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(d.control_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = ctl_as_nobody(&d, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    d.wait_for_log("control socket: refused uid 65534", IO_TIMEOUT);
    // Root still gets in.
    assert_eq!(ctl_status(&d)["pid"], d.pid());
}

fn raw_request(d: &Daemon, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(d.control_path()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(bytes);
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    line
}

#[test]
fn malformed_oversized_and_stalled_requests_get_errors() {
    let d = Daemon::start("");
    let bad = raw_request(&d, b"{\"cmd\":\"explode\"}\n");
    assert!(
        bad.contains("\"reply\":\"refused\"") && bad.contains("malformed request"),
        "{bad}"
    );
    let junk = raw_request(&d, b"\x00\xff not json\n");
    assert!(junk.contains("malformed request"), "{junk}");
    let big = raw_request(&d, &vec![b'x'; 100_000]);
    assert!(big.contains("request too large"), "{big}");
    // A client that connects and says nothing is timed out; the daemon
    // still answers the next one and still echoes meanwhile.
    let stalled = UnixStream::connect(d.control_path()).unwrap();
    let mut c = connect(d.addr());
    round_trip(&mut c, b"echo meanwhile\n");
    assert_eq!(ctl_status(&d)["pid"], d.pid());
    drop(stalled);
    let mut c2 = connect(d.addr());
    round_trip(&mut c2, b"still fine\n");
}
