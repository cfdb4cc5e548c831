//! SIGHUP reload, shown by behaviour: each live setting changes what the
//! running daemon does, established connections survive, a bad file
//! changes nothing, and the listening socket is kept when its address did
//! not change.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

fn rewrite(d: &Daemon, text: &str) {
    std::fs::write(d.config_path(), text).expect("rewrite config");
}

/// Sends SIGHUP; callers then wait for the log line their change causes.
fn hup(d: &Daemon) {
    d.signal(libc::SIGHUP);
}

#[test]
fn shorter_idle_timeout_closes_an_existing_idle_connection() {
    let d = Daemon::start("idle_timeout = 60\n");
    let mut idle = connect(d.addr());
    round_trip(&mut idle, b"still here\n");
    let started = Instant::now();
    rewrite(&d, "host = \"127.0.0.1\"\nport = 0\nidle_timeout = 1\n");
    // port = 0 again means "keep the socket": the address did not change.
    hup(&d);
    d.wait_for_log("idle_timeout: 1m -> 1s", IO_TIMEOUT);
    let got = read_to_eof(&mut idle);
    assert_bytes(&got, &idle_notice(1));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        started.elapsed()
    );
}

#[test]
fn pool_grows_and_shrinks_without_dropping_connections() {
    let d = Daemon::start("pool_size = 1\n");
    let threads_before = d.thread_count();
    let mut clients: Vec<TcpStream> = (0..100).map(|_| connect(d.addr())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        round_trip(c, format!("before {i}\n").as_bytes());
    }
    rewrite(&d, "host = \"127.0.0.1\"\nport = 0\npool_size = 4\n");
    hup(&d);
    d.wait_for_log("pool_size: 1 -> 4", IO_TIMEOUT);
    wait_until(IO_TIMEOUT, "three more threads", || {
        d.thread_count() == threads_before + 3
    });
    assert_eq!(ctl_status(&d)["stats"]["pool_size"], 4);
    // New connections are dealt to all four workers; old ones still work.
    let mut more: Vec<TcpStream> = (0..100).map(|_| connect(d.addr())).collect();
    for (i, c) in clients.iter_mut().chain(more.iter_mut()).enumerate() {
        round_trip(c, format!("grown {i}\n").as_bytes());
    }
    // Shrink under load: the retiring workers' connections move.
    rewrite(&d, "host = \"127.0.0.1\"\nport = 0\npool_size = 2\n");
    hup(&d);
    d.wait_for_log("pool shrunk to 2 workers", IO_TIMEOUT);
    for (i, c) in clients.iter_mut().chain(more.iter_mut()).enumerate() {
        round_trip(c, format!("shrunk {i}\n").as_bytes());
    }
    wait_until(IO_TIMEOUT, "two fewer threads", || {
        d.thread_count() == threads_before + 1
    });
    assert_eq!(ctl_status(&d)["stats"]["active"], 200);
}

#[test]
fn bad_config_on_reload_keeps_serving_the_old_one() {
    let d = Daemon::start("idle_timeout = 60\n");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"one\n");
    rewrite(&d, "host = \"127.0.0.1\"\nport = 0\nidle_timeot = 1\n");
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("key 'idle_timeot'", IO_TIMEOUT);
    assert!(line.contains(":3:1:"), "error not located: {line}");
    assert!(line.contains("did you mean 'idle_timeout'"), "{line}");
    d.wait_for_log(
        "config not reloaded, the running config is unchanged",
        IO_TIMEOUT,
    );
    round_trip(&mut c, b"two\n");
    let mut fresh = connect(d.addr());
    round_trip(&mut fresh, b"three\n");
    // echo-labctl reload reports the same error and fails.
    let out = ctl(&d, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("idle_timeot") && err.contains(":3:1:"),
        "{err}"
    );
    let status = ctl_status(&d);
    assert!(status["last_reload"]["error"]
        .as_str()
        .unwrap()
        .contains("idle_timeot"));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn port_change_keeps_old_clients_and_serves_the_new_port() {
    let d = Daemon::start("");
    let old = d.addr();
    let mut c = connect(old);
    round_trip(&mut c, b"before\n");
    let port = free_port();
    rewrite(&d, &format!("host = \"127.0.0.1\"\nport = {port}\n"));
    hup(&d);
    d.wait_for_log(&format!("now listening on 127.0.0.1:{port}"), IO_TIMEOUT);
    round_trip(&mut c, b"after\n");
    let new: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut n = connect(new);
    round_trip(&mut n, b"new port\n");
    let refused = TcpStream::connect_timeout(&old, IO_TIMEOUT);
    assert!(refused.is_err(), "old port still accepts");
}

#[test]
fn port_change_to_a_busy_port_keeps_the_old_listener() {
    let d = Daemon::start("");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    rewrite(&d, &format!("host = \"127.0.0.1\"\nport = {port}\n"));
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("cannot listen on", IO_TIMEOUT);
    assert!(line.contains(&port.to_string()), "{line}");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"old listener still there\n");
}

/// The listening socket's inode and backlog as the kernel reports them
/// (`ss -ltne`: for a listening socket Send-Q is the backlog).
fn listener_info(addr: SocketAddr) -> (String, u32) {
    let out = std::process::Command::new("ss")
        .args(["-Hltne", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {addr}: {text}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let backlog = fields[2].parse().unwrap();
    let inode = fields
        .iter()
        .find_map(|f| f.strip_prefix("ino:"))
        .unwrap_or_else(|| panic!("no inode in {line}"))
        .to_string();
    (inode, backlog)
}

#[test]
fn backlog_change_relistens_on_the_same_socket() {
    let d = Daemon::start("backlog = 64\n");
    let (inode, backlog) = listener_info(d.addr());
    assert_eq!(backlog, 64);
    rewrite(&d, "host = \"127.0.0.1\"\nport = 0\nbacklog = 200\n");
    hup(&d);
    d.wait_for_log("backlog: 64 -> 200", IO_TIMEOUT);
    let (inode2, backlog2) = listener_info(d.addr());
    assert_eq!(backlog2, 200);
    assert_eq!(inode, inode2, "the listening socket was replaced");
}

#[test]
fn max_connections_and_log_level_apply_live() {
    let d = Daemon::start("max_connections = 1\n");
    let mut a = connect(d.addr());
    round_trip(&mut a, b"a\n");
    let mut b = connect(d.addr());
    assert_bytes(&read_to_eof(&mut b), &busy_notice(1));
    rewrite(
        &d,
        "host = \"127.0.0.1\"\nport = 0\nmax_connections = 2\n[log]\nlevel = \"debug\"\n",
    );
    hup(&d);
    d.wait_for_log("max_connections: 1 -> 2", IO_TIMEOUT);
    let mut b = connect(d.addr());
    round_trip(&mut b, b"b\n");
    let mut c = connect(d.addr());
    assert_bytes(&read_to_eof(&mut c), &busy_notice(2));
}

#[test]
fn drain_timeout_and_pending_cap_are_reloadable() {
    let d = Daemon::start("drain_timeout = 30\n");
    rewrite(
        &d,
        "host = \"127.0.0.1\"\nport = 0\ndrain_timeout = 1\nmax_pending_bytes = 2048\n",
    );
    hup(&d);
    d.wait_for_log("drain_timeout: 30s -> 1s", IO_TIMEOUT);
    let line = d.wait_for_log("max_pending_bytes: 65536 -> 2048", IO_TIMEOUT);
    assert!(line.contains("reloaded"));
    let mut d = d;
    let mut stay = connect(d.addr());
    round_trip(&mut stay, b"x\n");
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    let mut rest = Vec::new();
    let _ = stay.read_to_end(&mut rest);
    assert!(
        rest.starts_with(SHUTTING_DOWN),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    let _ = stay.write_all(b"late");
}

#[test]
fn restart_only_keys_are_reported_as_deferred_and_left_alone() {
    let d = Daemon::start("cpu_affinity = false\nidle_timeout = 60\n");
    let control = d.control_path();
    rewrite(
        &d,
        &format!(
            "host = \"127.0.0.1\"\nport = 0\ncontrol_socket = {:?}\ncpu_affinity = true\n\
             idle_timeout = 30\n[log]\ntarget = \"stderr\"\n",
            control.to_str().unwrap()
        ),
    );
    hup(&d);
    let line = d.wait_for_log("idle_timeout: 1m -> 30s", IO_TIMEOUT);
    assert!(line.contains("log.target: unset -> stderr"), "{line}");
    assert!(line.ends_with("(at next restart: cpu_affinity)"), "{line}");
    // Deferred means not applied: the workers stay unpinned.
    let status = ctl_status(&d);
    let workers = status["stats"]["workers"].as_array().expect("workers");
    assert!(!workers.is_empty());
    assert!(workers.iter().all(|w| w["cpu"].is_null()), "{status}");
}

// ------------------------------------------------------------------------
// A reload is prepared whole: the log file, the metrics endpoint, the UDP
// side and the TCP side. One part that fails (each in turn below) fails
// the reload, and none of the others is applied.

/// One UDP round trip from an ephemeral port (resent if a datagram is
/// lost); the echo's bytes.
fn udp_echo(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        c.send_to(data, to).unwrap();
        match c.recv_from(&mut buf) {
            Ok((n, from)) if from == to => return buf[..n].to_vec(),
            _ => continue,
        }
    }
    panic!("no UDP echo from {to}");
}

/// One `GET /metrics`; the status line.
fn metrics_status(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the metrics answer");
    let text = String::from_utf8_lossy(&out);
    text.lines().next().unwrap_or("").to_string()
}

/// The new config: every part changes (a second TCP address, a second
/// UDP address, the metrics address, a log file, and `max_connections`
/// from 50 to 7), each as given.
fn whole_change(tcp: &str, udp: &str, metrics: &str, log: &Path) -> String {
    format!(
        "host = \"127.0.0.1\"\nport = 0\nudp = true\nmetrics_listen = \"{metrics}\"\n\
         max_connections = 7\n\
         [[listen]]\naddress = \"{tcp}\"\n\
         [[listen]]\naddress = \"{udp}\"\nprotocol = \"udp\"\n\
         [log]\ntarget = \"file\"\npath = {log:?}\n"
    )
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn free_udp_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Starts a daemon serving TCP, UDP (on the TCP port) and metrics, asks
/// it through `echo-labctl reload` for `whole_change` with the parts
/// `make` returns (one of which cannot be applied), and checks the reload
/// is reported failed with `expect` in its message while everything of
/// the old config still serves and nothing of the new one does.
fn a_failed_part_changes_nothing(
    make: impl FnOnce(&Path) -> (String, String, String, std::path::PathBuf),
    expect: &str,
) {
    let d = Daemon::start("udp = true\nmetrics_listen = \"127.0.0.1:0\"\nmax_connections = 50\n");
    let line = d.wait_for_log("metrics on http://", IO_TIMEOUT);
    let metrics: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.trim_end().trim_end_matches("/metrics").parse().ok())
        .expect("metrics address");
    let before = ctl_status(&d);
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp, new_metrics, log) = make(dir.path());
    rewrite(&d, &whole_change(&tcp, &udp, &new_metrics, &log));
    let out = ctl(&d, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("config not reloaded, the running config is unchanged:"),
        "{err}"
    );
    assert!(err.contains(expect), "{err}");
    assert_eq!(err.matches(expect).count(), 1, "said twice: {err}");
    // Counted as failed; the old config still in force.
    let after = ctl_status(&d);
    assert_eq!(after["reloads"]["failed"], 1, "{after}");
    assert_eq!(after["reloads"]["ok"], 0, "{after}");
    assert_eq!(after["reloads"]["generation"], 1, "{after}");
    let error = after["last_reload"]["error"].as_str().unwrap_or("");
    assert!(error.contains(expect), "{after}");
    for key in ["listen", "udp_listen", "metrics"] {
        assert_eq!(after[key], before[key], "{key} changed");
    }
    // The old config serves: TCP, UDP, metrics; the log still on stderr.
    let mut c = connect(d.addr());
    round_trip(&mut c, b"old port\n");
    assert_eq!(udp_echo(d.addr(), b"old udp"), b"old udp");
    assert_eq!(metrics_status(metrics), "HTTP/1.1 200 OK");
    d.wait_for_log(expect, IO_TIMEOUT);
    // Nothing of the new one does.
    for (what, addr) in [("tcp", &tcp), ("metrics", &new_metrics)] {
        let addr: SocketAddr = addr.parse().unwrap();
        // The address the test holds answers, but not for the daemon.
        if expect.contains(&addr.to_string()) {
            continue;
        }
        assert!(
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_err(),
            "the new {what} address {addr} serves"
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.is_empty(), "the new log file was written: {logged}");
    // More than max_connections = 7 clients: the old limit (50) holds.
    let many: Vec<TcpStream> = (0..8).map(|_| connect(d.addr())).collect();
    for mut s in many {
        round_trip(&mut s, b"under the old limit\n");
    }
}

#[test]
fn a_tcp_bind_conflict_fails_the_whole_reload() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    a_failed_part_changes_nothing(
        |dir| {
            let (u, m) = (free_udp_addr(), free_addr());
            (
                addr.to_string(),
                u.to_string(),
                m.to_string(),
                dir.join("new.log"),
            )
        },
        &format!("cannot listen on {addr}: "),
    );
}

#[test]
fn a_udp_bind_conflict_fails_the_whole_reload() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    a_failed_part_changes_nothing(
        |dir| {
            let (t, m) = (free_addr(), free_addr());
            (
                t.to_string(),
                addr.to_string(),
                m.to_string(),
                dir.join("new.log"),
            )
        },
        &format!("cannot listen on {addr}/udp: "),
    );
}

#[test]
fn a_metrics_bind_conflict_fails_the_whole_reload() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    a_failed_part_changes_nothing(
        |dir| {
            let (t, u) = (free_addr(), free_udp_addr());
            (
                t.to_string(),
                u.to_string(),
                addr.to_string(),
                dir.join("new.log"),
            )
        },
        &format!("cannot listen for metrics on {addr}: "),
    );
}

#[test]
fn an_unopenable_log_file_fails_the_whole_reload() {
    a_failed_part_changes_nothing(
        |dir| {
            let (t, u, m) = (free_addr(), free_udp_addr(), free_addr());
            let log = dir.join("no-such-dir").join("new.log");
            (t.to_string(), u.to_string(), m.to_string(), log)
        },
        "cannot open the log file ",
    );
}
