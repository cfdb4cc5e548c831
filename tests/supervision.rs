//! Every long-lived thread is watched: when the accept loop, the UDP
//! thread, the control thread or the metrics thread dies (the test-only
//! hook `ECHO_LAB_FAULT_THREAD_PANIC` makes it panic at its next event),
//! the supervisor says so in the log and starts a new one, which serves
//! again; a thread that keeps dying makes the daemon exit with status 70
//! (EX_SOFTWARE) and a line saying why, so the service manager restarts
//! it instead of leaving it half alive.

#![cfg(feature = "fault-injection")]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use support::*;

const FAULT: &str = "ECHO_LAB_FAULT_THREAD_PANIC";

/// Sends `data` from an ephemeral port until an answer comes (at most
/// `tries` times, 500 ms each); the answer, if any.
fn udp_answer(to: SocketAddr, data: &[u8], tries: usize) -> Option<Vec<u8>> {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..tries {
        c.send_to(data, to).unwrap();
        if let Ok((n, from)) = c.recv_from(&mut buf) {
            if from == to {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// The address of the daemon's `metrics on http://ADDR/metrics` line.
fn metrics_addr(d: &Daemon) -> SocketAddr {
    let line = d.wait_for_log("metrics on http://", START_TIMEOUT);
    line.split("http://")
        .nth(1)
        .and_then(|r| r.trim_end().trim_end_matches("/metrics").parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// One `GET /metrics`: everything the endpoint sent before closing.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    String::from_utf8_lossy(&read_until_closed(&mut s)).into_owned()
}

/// The supervisor's lines about `thread`'s death and restart.
fn wait_for_restart(d: &Daemon, thread: &str) {
    let died = d.wait_for_log(&format!("the {thread} thread died: panicked"), IO_TIMEOUT);
    assert!(died.contains("fault injected"), "{died}");
    d.wait_for_log(&format!("restarted the {thread} thread (1 of"), IO_TIMEOUT);
}

#[test]
fn a_dead_accept_loop_is_restarted_and_accepts_again() {
    let d = Daemon::start_env("", &[(FAULT, "accept")]);
    let mut first = connect(d.addr());
    // The accept loop panicked holding this connection: it is closed.
    let _ = first.write_all(b"lost\n");
    assert!(read_until_closed(&mut first).is_empty());
    wait_for_restart(&d, "accept");
    for i in 0..3 {
        let mut s = connect(d.addr());
        round_trip(&mut s, format!("after the restart {i}\n").as_bytes());
    }
    assert_eq!(ctl_status(&d)["stats"]["active"], 0);
    assert_eq!(d.log_count("the accept thread died"), 1);
}

#[test]
fn a_dead_udp_thread_is_restarted_and_echoes_again() {
    let d = Daemon::start_env("udp = true\n", &[(FAULT, "udp")]);
    d.wait_for_log("udp echo on", IO_TIMEOUT);
    // The first datagram kills the thread: no answer to it.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send_to(b"lost", d.addr()).unwrap();
    wait_for_restart(&d, "udp");
    let echo = udp_answer(d.addr(), b"after the restart", 10);
    assert_eq!(echo.as_deref(), Some(&b"after the restart"[..]));
    let st = ctl_status(&d);
    assert_eq!(st["udp_listen"][0], d.addr().to_string(), "{st}");
    assert!(st["udp"]["echoed"].as_u64().unwrap_or(0) >= 1, "{st}");
}

#[test]
fn a_dead_control_thread_is_restarted_and_answers_again() {
    let d = Daemon::start_env("", &[(FAULT, "control")]);
    // The thread panicked holding this request: no answer.
    let out = ctl(&d, &["status"]);
    assert!(!out.status.success(), "{out:?}");
    wait_for_restart(&d, "control");
    let st = ctl_status(&d);
    assert_eq!(st["pid"], d.pid(), "{st}");
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
}

/// Without its signal thread the daemon would ignore `systemctl reload`
/// and `stop` while serving on: the thread is restarted, and the next
/// signals are acted on.
#[test]
fn a_dead_signal_thread_is_restarted_and_signals_work_again() {
    let mut d = Daemon::start_env("", &[(FAULT, "signals")]);
    // The thread panics on the first signal it takes (SIGUSR1 only
    // reopens a log file, so losing it changes nothing).
    d.signal(libc::SIGUSR1);
    wait_for_restart(&d, "signals");
    d.signal(libc::SIGHUP);
    d.wait_for_log("reloaded", IO_TIMEOUT);
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(IO_TIMEOUT * 2);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_dead_metrics_thread_is_restarted_and_answers_again() {
    let d = Daemon::start_env(
        "metrics_listen = \"127.0.0.1:0\"\n",
        &[(FAULT, "metrics-accept")],
    );
    let addr = metrics_addr(&d);
    // The thread panicked holding this scrape: closed unanswered.
    assert_eq!(scrape(addr), "");
    wait_for_restart(&d, "metrics-accept");
    let answer = scrape(addr);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.contains("echo_lab_connections_refused_total"),
        "{answer}"
    );
}

#[test]
fn an_accept_loop_that_keeps_dying_makes_the_daemon_exit_70() {
    let mut d = Daemon::start_env("", &[(FAULT, "accept:always")]);
    let addr = d.addr();
    // Each connection kills the loop once; the fourth death in a minute
    // is one too many.
    let mut status = None;
    for _ in 0..20 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.read(&mut [0u8; 64]);
        }
        status = d.try_wait_exit(Duration::from_millis(200));
        if status.is_some() {
            break;
        }
    }
    let status = status.expect("the daemon still runs after 20 deaths of its accept loop");
    assert_eq!(status.code(), Some(70), "{status:?}");
    d.wait_for_log("restarted the accept thread (3 of at most 3", IO_TIMEOUT);
    let line = d.wait_for_log("the accept thread died 4 times in 1m", IO_TIMEOUT);
    assert!(
        line.contains("exiting with status 70 so the service manager can restart echo-lab"),
        "{line}"
    );
}

/// The log writer is not restarted (its queue, and the lines in it, died
/// with it): the daemon says so on stderr and exits 70 at once, rather
/// than serve on with every line dropped. It dies at the first line it
/// takes, before the daemon could say it listens, so this test runs the
/// binary itself instead of waiting for that line.
#[test]
fn a_dead_log_writer_makes_the_daemon_exit_70_with_a_line_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&format!(
        "port = 0\ncontrol_socket = {:?}\n",
        dir.path().join("control.sock")
    ));
    let mut cmd = std::process::Command::new(ECHO_LAB);
    cmd.arg("--config")
        .arg(config.path())
        .env(FAULT, "log-writer");
    let out = run_with_input(&mut cmd, b"", IO_TIMEOUT * 2);
    assert_eq!(out.status.code(), Some(70), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the log-writer thread died; exiting with status 70 so the service manager can restart echo-lab"
        ),
        "{stderr}"
    );
}
