//! Graceful stop: on SIGTERM the daemon stops accepting, tells every
//! client `shutting down`, serves them until they leave or `drain_timeout`
//! passes, then exits 0; a second SIGTERM ends it at once.

mod support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Bound on the daemon's exit once it has nothing left to wait for.
const EXIT_BOUND: Duration = Duration::from_secs(10);

#[track_caller]
fn assert_refused(addr: std::net::SocketAddr) {
    match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect during drain: expected refused, got {e}"),
        Ok(_) => panic!("connect during drain was accepted"),
    }
}

#[test]
fn client_finishes_then_daemon_exits_zero() {
    let mut d = Daemon::start("pool_size = 2\ndrain_timeout = 60\n");
    let addr = d.addr();
    let mut c = connect(addr);
    round_trip(&mut c, b"before\n");

    d.signal(libc::SIGTERM);
    assert_bytes(&read_n(&mut c, SHUTTING_DOWN.len()), SHUTTING_DOWN);
    d.wait_for_log("stop requested", IO_TIMEOUT);
    // The listener is closed before clients are told: connects are refused.
    assert_refused(addr);

    // The client may go on.
    round_trip(&mut c, b"after the notice\n");
    round_trip(&mut c, b"and more, no newline");
    c.write_all(b"disconnect").unwrap();
    assert_bytes(&read_to_eof(&mut c), &[b"\r\n", GOODBYE].concat());
    drop(c);

    // Long before drain_timeout = 60: the last client left.
    let status = d.wait_exit(EXIT_BOUND);
    assert_eq!(status.code(), Some(0), "{status}");
    d.wait_for_log("drained in", IO_TIMEOUT);
}

#[test]
fn no_clients_exits_zero_promptly() {
    let mut d = Daemon::start("pool_size = 2\ndrain_timeout = 60\n");
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(EXIT_BOUND);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn drain_timeout_closes_a_client_that_stays() {
    let mut d = Daemon::start("pool_size = 2\ndrain_timeout = 1\n");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"I am staying\n");

    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    assert_bytes(&read_n(&mut c, SHUTTING_DOWN.len()), SHUTTING_DOWN);
    // The client does nothing; at the deadline the server closes it.
    assert_bytes(&read_to_eof(&mut c), b"");
    let closed = t0.elapsed();
    let status = d.wait_exit(EXIT_BOUND);
    let exited = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        closed >= Duration::from_millis(800),
        "client closed {closed:?} after SIGTERM, before drain_timeout = 1"
    );
    assert!(
        exited < EXIT_BOUND,
        "exited {exited:?} after SIGTERM with drain_timeout = 1"
    );
}

#[test]
fn second_sigterm_exits_promptly() {
    let mut d = Daemon::start("pool_size = 2\ndrain_timeout = 60\n");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"hello\n");

    d.signal(libc::SIGTERM);
    assert_bytes(&read_n(&mut c, SHUTTING_DOWN.len()), SHUTTING_DOWN);
    d.wait_for_log("stop requested", IO_TIMEOUT);

    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(EXIT_BOUND);
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        took < EXIT_BOUND,
        "second SIGTERM took {took:?} (drain_timeout = 60)"
    );
    d.wait_for_log("second stop signal", IO_TIMEOUT);
    // The client is closed, not left hanging.
    assert_bytes(&read_to_eof(&mut c), b"");
}

#[test]
fn sigint_drains_like_sigterm() {
    let mut d = Daemon::start("pool_size = 2\ndrain_timeout = 60\n");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"hello\n");
    d.signal(libc::SIGINT);
    assert_bytes(&read_n(&mut c, SHUTTING_DOWN.len()), SHUTTING_DOWN);
    round_trip(&mut c, b"still echoed\n");
    c.write_all(b"disconnect\n").unwrap();
    assert_bytes(&read_to_eof(&mut c), GOODBYE);
    drop(c);
    let status = d.wait_exit(EXIT_BOUND);
    assert_eq!(status.code(), Some(0), "{status}");
}

/// With thousands of clients that never leave, the time from SIGTERM to
/// exit is still drain_timeout plus a small margin, and every client is
/// told and then closed.
#[test]
fn thousands_of_clients_drain_within_the_bound() {
    const CLIENTS: usize = 2000;
    let mut d = Daemon::start("pool_size = 2\nmax_connections = 5000\ndrain_timeout = 1\n");
    let base_fds = d.fd_count();
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(d.addr())).collect();
    wait_until(IO_TIMEOUT, "every client accepted", || {
        d.fd_count() >= base_fds + CLIENTS
    });
    let started = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    // drain_timeout = 1 s; the margin covers a loaded machine.
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    for c in clients.iter_mut() {
        assert_bytes(&read_to_eof(c), SHUTTING_DOWN);
    }
    eprintln!("{CLIENTS} clients: SIGTERM to exit in {took:?} (drain_timeout 1s)");
}
