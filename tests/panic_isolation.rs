//! A panic in connection handling (the test-only fault hook: a client that
//! sends `ECHO-LAB-FAULT:PANIC` makes the worker serving it panic inside
//! the per-connection guard). That connection is closed and the panic
//! logged; every other client — on the same worker too — keeps being
//! served; the pool keeps its size (status and thread count); and 50
//! panics in a row leave the daemon healthy, its counters consistent.
//! Needs the `fault-injection` feature; without it the file says so.

#![cfg_attr(not(feature = "fault-injection"), allow(dead_code, unused_imports))]

mod support;

use std::io::Write;
use std::net::TcpStream;

use support::*;

fault_injection_tests_not_built!();

const PANIC: &[u8] = b"ECHO-LAB-FAULT:PANIC";
const POOL: u64 = 2;
const OTHERS: usize = 6;
const MANY: usize = 50;

/// Sends the panic marker; returns what came back before the server
/// closed (EOF or reset).
fn provoke(s: &mut TcpStream) -> Vec<u8> {
    s.write_all(PANIC).unwrap();
    read_until_closed(s)
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panic_closes_one_connection_and_nothing_else() {
    let d = Daemon::start(&format!("pool_size = {POOL}\ncpu_affinity = false\n"));
    let mut others: Vec<TcpStream> = (0..OTHERS)
        .map(|i| {
            let mut s = connect(d.addr());
            round_trip(&mut s, format!("other {i}\n").as_bytes());
            s
        })
        .collect();
    // Clients on every worker, as status shows (not as dealing is assumed).
    let loads = per_worker(&d);
    assert!(
        loads.len() as u64 == POOL && loads.iter().all(|&n| n > 0),
        "clients on every worker: {loads:?}"
    );
    let before = d.resources();

    // One panic.
    let mut victim = connect(d.addr());
    round_trip(&mut victim, b"before the fault\n");
    let echoed = provoke(&mut victim);
    assert!(
        echoed.is_empty(),
        "the chunk that panicked was echoed: {:?}",
        String::from_utf8_lossy(&echoed)
    );
    d.wait_for_log("panic while serving a connection", IO_TIMEOUT);
    for (i, s) in others.iter_mut().enumerate() {
        round_trip(s, format!("other {i} after the panic\n").as_bytes());
    }
    let s = ctl_status(&d);
    assert_eq!(s["stats"]["panics"], 1);
    assert_eq!(s["stats"]["pool_size"], POOL);
    assert_eq!(s["stats"]["active"], OTHERS as u64);
    assert_eq!(d.thread_count(), before.threads);

    // Fifty in a row, with the others echoing between them.
    for k in 0..MANY {
        let mut v = connect(d.addr());
        round_trip(&mut v, format!("victim {k}\n").as_bytes());
        provoke(&mut v);
        let i = k % OTHERS;
        round_trip(
            &mut others[i],
            format!("other {i} after panic {k}\n").as_bytes(),
        );
    }
    wait_until(IO_TIMEOUT, "stats.panics to count every panic", || {
        d.stat("panics") == 1 + MANY as u64
    });
    let s = ctl_status(&d);
    assert_eq!(s["stats"]["pool_size"], POOL);
    assert_eq!(s["stats"]["active"], OTHERS as u64, "{s}");
    assert_eq!(s["stats"]["total"], (OTHERS + 1 + MANY) as u64, "{s}");
    let leaks = d.assert_back_to(before);
    assert_eq!(d.log_count("panic while serving a connection"), 1 + MANY);
    assert_eq!(d.log_count("stopped unexpectedly"), 0, "a worker died");
    eprintln!(
        "panic isolation: {} panics; pool_size {POOL}, active {}, {leaks}",
        1 + MANY,
        s["stats"]["active"],
    );

    // Everyone is still served, and newcomers too.
    for (i, s) in others.iter_mut().enumerate() {
        round_trip(s, format!("other {i} at the end\n").as_bytes());
    }
    let mut fresh: Vec<TcpStream> = (0..POOL).map(|_| connect(d.addr())).collect();
    for s in fresh.iter_mut() {
        round_trip(s, b"newcomer\n");
    }
}
