//! The idle timeout: a connection without traffic for `idle_timeout` gets
//! the idle notice and is closed; traffic keeps it open; 0 means never.

mod support;

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use support::*;

#[test]
fn idle_client_gets_the_notice_then_eof() {
    let d = Daemon::start("pool_size = 2\nidle_timeout = 1\n");
    // Timed from before the connect: the server starts counting later.
    let t0 = Instant::now();
    let mut s = connect(d.addr());
    // A client that never sent anything.
    let got = read_to_eof(&mut s);
    let waited = t0.elapsed();
    assert_bytes(&got, &idle_notice(1));
    assert!(
        waited >= Duration::from_millis(950),
        "closed after {waited:?}, before the 1 s idle timeout"
    );
}

#[test]
fn idle_notice_after_a_partial_line_starts_a_new_line() {
    let d = Daemon::start("pool_size = 2\nidle_timeout = \"1s\"\n");
    let mut s = connect(d.addr());
    // Timed from before the write: the server's last activity is later.
    let t0 = Instant::now();
    round_trip(&mut s, b"abc");
    let got = read_to_eof(&mut s);
    let waited = t0.elapsed();
    assert_bytes(&got, &[&b"\r\n"[..], &idle_notice(1)].concat());
    assert!(
        waited >= Duration::from_millis(950),
        "closed {waited:?} after the last traffic, before the 1 s idle timeout"
    );
}

#[test]
fn active_client_outlives_the_timeout() {
    let d = Daemon::start("pool_size = 2\nidle_timeout = 2\n");
    let mut s = connect(d.addr());
    let t0 = Instant::now();
    let mut i = 0;
    // Traffic every ~300 ms for well over twice the timeout.
    while t0.elapsed() < Duration::from_millis(4500) {
        round_trip(&mut s, format!("ping {i}\n").as_bytes());
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    // Then silence: the notice comes.
    assert_bytes(&read_to_eof(&mut s), &idle_notice(2));
}

#[test]
fn zero_means_never() {
    let d = Daemon::start("pool_size = 2\nidle_timeout = 0\n");
    let line = d.wait_for_log("listening on", IO_TIMEOUT);
    assert!(line.contains("idle timeout never"), "{line}");
    let mut s = connect(d.addr());
    round_trip(&mut s, b"hello\n");
    // Three quiet seconds: nothing arrives and the connection stays open.
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("closed by the server with idle_timeout = 0"),
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("read: {e}"),
    }
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    round_trip(&mut s, b"still here\n");
}
