//! `echo-labctl connect` with piped input: exactly the echoes on stdout,
//! notices on stderr, and an exit status that says how the session ended.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

fn ctl_connect(addr: &str, stdin: &[u8]) -> Output {
    run_with_input(
        Command::new(ECHO_LABCTL).args(["connect", addr, "--timeout", "10"]),
        stdin,
        IO_TIMEOUT * 2,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn piped_lines_are_echoed_exactly() {
    let d = Daemon::start("pool_size = 2\n");
    let input = "hello\nworld\n\n  spaced  \ttabs\t\r\nünïcödé\nlast line without newline";
    let out = ctl_connect(&d.addr().to_string(), input.as_bytes());
    assert_eq!(text(&out.stdout), input);
    assert_eq!(text(&out.stderr), "", "no notice expected");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn many_piped_lines() {
    let d = Daemon::start("pool_size = 2\n");
    let input: String = (0..500).map(|i| format!("line {i}\n")).collect();
    let out = ctl_connect(&d.addr().to_string(), input.as_bytes());
    assert_eq!(text(&out.stdout), input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn empty_input_exits_zero() {
    let d = Daemon::start("pool_size = 2\n");
    let out = ctl_connect(&d.addr().to_string(), b"");
    assert_eq!(text(&out.stdout), "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn disconnect_line_says_goodbye_and_exits_zero() {
    let d = Daemon::start("pool_size = 2\n");
    let out = ctl_connect(
        &d.addr().to_string(),
        b"one\ntwo\n  Disconnect \nafter\nmore after\n",
    );
    assert_eq!(text(&out.stdout), "one\ntwo\n");
    assert!(
        text(&out.stderr).contains("[echo-lab] goodbye"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

/// A stand-in for echo-lab that records everything the client sends: it
/// echoes, and on a `disconnect` line says goodbye, shuts its write side
/// and reads on until the client closes.
fn recording_server() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut received = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            received.extend_from_slice(&line);
            if line == b"disconnect\n" {
                w.write_all(GOODBYE).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                let _ = r.read_to_end(&mut rest);
                received.extend_from_slice(&rest);
                break;
            }
            w.write_all(&line).unwrap();
        }
        let _ = tx.send(received);
    });
    (addr, rx)
}

#[test]
fn lines_after_disconnect_are_not_sent() {
    let (addr, received) = recording_server();
    let out = ctl_connect(&addr.to_string(), b"one\ndisconnect\nafter\nmore\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\n");
    let got = received.recv_timeout(IO_TIMEOUT).expect("server finished");
    assert_eq!(text(&got), "one\ndisconnect\n");
}

#[test]
fn connection_refused_exits_69_with_a_hint() {
    // A port that was just free: bind one, then let it go.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = ctl_connect(&addr.to_string(), b"hello\n");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("systemctl status echo-lab"), "{stderr}");
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn bad_address_exits_64() {
    for bad in ["127.0.0.1", "127.0.0.1:99999", "127.0.0.1:port", ":::"] {
        let out = ctl_connect(bad, b"hello\n");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "for {bad:?}: {stderr}");
        assert!(stderr.contains(bad), "names the address: {stderr}");
        assert_eq!(text(&out.stdout), "");
    }
}

#[test]
fn busy_server_exits_69() {
    let d = Daemon::start("pool_size = 2\nmax_connections = 1\n");
    let mut holder = connect(d.addr());
    round_trip(&mut holder, b"holding the only slot\n");
    let out = ctl_connect(&d.addr().to_string(), b"hello\n");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "stderr: {stderr}");
    assert!(
        stderr.contains("[echo-lab] busy: 1 connections"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
}

/// Starts `echo-labctl connect` on `addr` with stdin kept open; sends
/// `hello\n`, waits for its echo on stdout, then waits for a stderr line
/// containing `idle for`. Returns the child (stdin still open) and the
/// stderr lines seen.
fn idle_session(addr: SocketAddr) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(ECHO_LABCTL)
        .args(["connect", &addr.to_string(), "--timeout", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    child.stdin.as_mut().unwrap().write_all(b"hello\n").unwrap();
    let mut echo = [0u8; 6];
    stdout.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello\n");
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("[echo-lab] idle for 1s, closing") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("no idle notice on stderr: {e}");
            }
        }
    }
    (child, rx)
}

#[test]
fn idle_notice_ends_the_session_non_zero() {
    let d = Daemon::start("pool_size = 2\nidle_timeout = 1\n");
    // stdin stays open, as when a user pauses: the server's closing notice
    // must end the session by itself.
    let (mut child, _stderr) = idle_session(d.addr());
    let status = wait_child(&mut child, Duration::from_secs(5));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status.expect("echo-labctl still running 5 s after the idle notice closed it");
    assert!(!status.success(), "echo-labctl ended with {status}");
}

#[test]
fn idle_notice_then_end_of_input_is_still_non_zero() {
    let d = Daemon::start("pool_size = 2\nidle_timeout = 1\n");
    let (mut child, _stderr) = idle_session(d.addr());
    // Input ends after the server closed the session for idleness.
    drop(child.stdin.take());
    let status = wait_child(&mut child, IO_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status.expect("echo-labctl did not exit");
    assert!(
        !status.success(),
        "the server closed the session for idleness, yet echo-labctl ended with {status}"
    );
}
