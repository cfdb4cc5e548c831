//! Health and readiness as a load balancer or a kubelet sees them: raw
//! HTTP probes of `/healthz` and `/readyz` on the metrics listener while
//! real clients echo, `echo-labctl ready off|on`, SIGTERM with
//! `shutdown_delay`, a wedged worker, and the instance's name in status,
//! metrics and JSON logs.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

/// The address the daemon says its metrics are on.
fn metrics_addr(d: &Daemon) -> SocketAddr {
    let line = d.wait_for_log("metrics on http://", START_TIMEOUT);
    let rest = line.split("http://").nth(1).expect("address in line");
    rest.split("/metrics")
        .next()
        .unwrap_or("")
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// `GET path`; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read answer");
    let text = String::from_utf8(out).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

fn probes_config(extra: &str) -> String {
    format!("metrics_listen = \"127.0.0.1:0\"\ndrain_timeout = 30\n{extra}")
}

fn ctl_ok(d: &Daemon, args: &[&str]) -> String {
    let out = ctl(d, args);
    assert!(out.status.success(), "echo-labctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn healthz_and_readyz_answer_200_while_serving_and_are_not_sessions() {
    let d = Daemon::start(&probes_config(""));
    let m = metrics_addr(&d);
    assert_eq!(get(m, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(m, "/readyz"), (200, "ok\n".into()));
    assert_eq!(get(m, "/readyz?verbose").0, 200);
    // Neither counted nor logged as a session.
    for _ in 0..5 {
        get(m, "/readyz");
        get(m, "/healthz");
    }
    assert_eq!(d.stat("total"), 0);
    assert_eq!(d.log_count(" client="), 0, "{}", d.log_text());
    let status = ctl_status(&d);
    assert_eq!(status["ready"], true);
    assert!(status["ready_reason"].is_null(), "{status}");
}

#[test]
fn probes_follow_the_top_level_access_rules() {
    // 127.0.0.2 is refused; the test connects from it.
    let d = Daemon::start(&probes_config(
        "access = [\"deny 127.0.0.2\", \"allow all\"]\n",
    ));
    let m = metrics_addr(&d);
    assert_eq!(get(m, "/readyz").0, 200);
    let mut s = connect_from("127.0.0.2".parse().unwrap(), m);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "a refused prober got {out:?}");
}

#[test]
fn ready_off_turns_readyz_503_while_every_session_is_still_served() {
    let d = Daemon::start(&probes_config(""));
    let m = metrics_addr(&d);
    let mut old = connect(d.addr());
    round_trip(&mut old, b"before\n");

    let said = ctl_ok(&d, &["ready", "off"]);
    assert!(said.starts_with("ready: no: out of rotation"), "{said}");
    let (code, body) = get(m, "/readyz");
    assert_eq!(code, 503);
    assert_eq!(body, "out of rotation (echo-labctl ready off)\n");
    assert_eq!(get(m, "/healthz").0, 200, "out of rotation is healthy");
    // The open session and a new one are both served.
    round_trip(&mut old, b"during\n");
    let mut new = connect(d.addr());
    round_trip(&mut new, b"new while out\n");
    let status = ctl_status(&d);
    assert_eq!(status["ready"], false);
    assert_eq!(
        status["ready_reason"],
        "out of rotation (echo-labctl ready off)"
    );
    let text = ctl_ok(&d, &["status"]);
    assert!(
        text.contains("ready:         no: out of rotation"),
        "{text}"
    );
    let metrics = get(m, "/metrics").1;
    assert!(metrics.contains("\necho_lab_ready 0\n"), "{metrics}");

    assert_eq!(ctl_ok(&d, &["ready", "on"]), "ready: yes\n");
    assert_eq!(get(m, "/readyz"), (200, "ok\n".into()));
    round_trip(&mut old, b"after\n");
    let metrics = get(m, "/metrics").1;
    assert!(metrics.contains("\necho_lab_ready 1\n"), "{metrics}");
}

#[test]
fn sigterm_with_shutdown_delay_turns_readyz_503_at_once_and_serves_until_the_delay_ends() {
    let delay = Duration::from_secs(3);
    let mut d = Daemon::start(&probes_config("shutdown_delay = \"3s\"\n"));
    let m = metrics_addr(&d);
    let mut old = connect(d.addr());
    round_trip(&mut old, b"before\n");
    let asked = Instant::now();
    d.signal(libc::SIGTERM);
    // Not ready at once (the supervisor's next turn, milliseconds).
    wait_until(IO_TIMEOUT, "readyz 503", || get(m, "/readyz").0 == 503);
    let (_, why) = get(m, "/readyz");
    assert!(why.starts_with("shutting down"), "{why}");
    // Within the delay: new clients are accepted and served, old ones too,
    // and no one has heard `shutting down` yet.
    let mut new = connect(d.addr());
    round_trip(&mut new, b"accepted during the delay\n");
    round_trip(&mut old, b"still served\n");
    assert!(
        asked.elapsed() < delay,
        "the checks took longer than the delay ({:?}); the machine is too slow for this test",
        asked.elapsed()
    );
    assert_eq!(get(m, "/healthz").0, 200);
    // Then the drain, no earlier than the delay.
    let notice = read_n(&mut old, SHUTTING_DOWN.len());
    assert_bytes(&notice, SHUTTING_DOWN);
    assert!(
        asked.elapsed() >= delay,
        "drained after {:?}",
        asked.elapsed()
    );
    let (code, why) = get(m, "/readyz");
    assert_eq!((code, why.as_str()), (503, "draining: stop requested\n"));
    assert_bytes(&read_n(&mut new, SHUTTING_DOWN.len()), SHUTTING_DOWN);
    drop(old);
    drop(new);
    assert!(d.wait_exit(IO_TIMEOUT * 3).success());
}

#[test]
fn a_second_stop_skips_the_delay_and_a_third_closes_everything() {
    let mut d = Daemon::start(&probes_config("shutdown_delay = \"10m\"\n"));
    let mut c = connect(d.addr());
    round_trip(&mut c, b"x\n");
    d.signal(libc::SIGTERM);
    d.wait_for_log("stop requested: not ready", IO_TIMEOUT);
    // The second skips the ten minutes: the drain starts now.
    let out = ctl(&d, &["stop"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_for_log("skipping the rest of shutdown_delay", IO_TIMEOUT);
    assert_bytes(&read_n(&mut c, SHUTTING_DOWN.len()), SHUTTING_DOWN);
    // The client stays; drain_timeout is 30 s. The third closes it now.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(IO_TIMEOUT).success());
    assert!(read_to_eof(&mut c).is_empty());
}

#[test]
fn a_reload_during_the_delay_is_refused() {
    let d = Daemon::start(&probes_config("shutdown_delay = \"10m\"\n"));
    d.signal(libc::SIGTERM);
    d.wait_for_log("stop requested: not ready", IO_TIMEOUT);
    let out = ctl(&d, &["reload"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("draining"),
        "{out:?}"
    );
}

#[test]
fn shutdown_delay_is_reloadable() {
    let mut d = Daemon::start(&probes_config(""));
    d.reload_with(
        &probes_config("shutdown_delay = \"1m\"\n"),
        "shutdown_delay",
    );
    d.signal(libc::SIGTERM);
    d.wait_for_log(
        "serving 0 connection(s) for 1m (shutdown_delay)",
        IO_TIMEOUT,
    );
    // Still accepting.
    let mut c = connect(d.addr());
    round_trip(&mut c, b"x\n");
    drop(c);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(IO_TIMEOUT).success());
}

#[test]
fn healthz_turns_503_naming_a_wedged_worker() {
    let d = Daemon::start(&probes_config("pool_size = 1\n"));
    let m = metrics_addr(&d);
    assert_eq!(get(m, "/healthz").0, 200);
    let mut c = connect(d.addr());
    c.write_all(b"ECHO-LAB-FAULT:HANG").unwrap();
    wait_until(IO_TIMEOUT, "healthz 503", || get(m, "/healthz").0 == 503);
    let (_, why) = get(m, "/healthz");
    assert!(
        why.starts_with("the worker 0 thread has not turned for"),
        "{why}"
    );
    // Readiness is another question: still 200.
    assert_eq!(get(m, "/readyz").0, 200);
}

#[test]
fn the_instance_names_status_metrics_and_every_json_log_line() {
    let d = Daemon::start(&probes_config(
        "instance = \"edge-7\"\n[log]\nformat = \"json\"\n",
    ));
    let m = metrics_addr(&d);
    let status = ctl_status(&d);
    assert_eq!(status["instance"], "edge-7");
    let text = ctl_ok(&d, &["status"]);
    assert!(text.contains("instance:      edge-7\n"), "{text}");
    let metrics = get(m, "/metrics").1;
    let want = format!(
        "echo_lab_info{{instance=\"edge-7\",version=\"{}\"}} 1",
        status["version"].as_str().unwrap()
    );
    assert!(metrics.contains(&want), "{want} not in\n{metrics}");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"x\n");
    drop(c);
    let me = "\"event\":\"session\"";
    d.wait_for_log(me, IO_TIMEOUT);
    let lines: Vec<String> = d.log_text().lines().map(str::to_string).collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["instance"], "edge-7", "{line}");
    }
}

#[test]
fn the_default_instance_is_the_host_name_and_a_reload_renames_it() {
    let d = Daemon::start(&probes_config(""));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(ctl_status(&d)["instance"], host.trim());
    d.reload_with(&probes_config("instance = \"renamed\"\n"), "instance");
    assert_eq!(ctl_status(&d)["instance"], "renamed");
}
