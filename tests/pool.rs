//! The worker pool (src/tcp/pool.rs) as a user sees it through the real binary:
//!
//! * a reload that grows the pool *and* changes the live settings gives the
//!   new workers the new settings too (`idle_timeout`, `max_pending_bytes`;
//!   `busy_poll` in tests/pool_busy_poll.rs, alone in its binary since it
//!   measures CPU), shown on connections proven to sit one on each worker;
//! * a worker whose loop dies is replaced at its own position, pinned to
//!   its own CPU (with the `fault-injection` feature, which kills it);
//! * after a drain every client was told `shutting down`, and the count of
//!   open connections is back to 0.
//!
//! Where connections landed is read from `echo-labctl status --json`
//! (`stats.workers`), never assumed from the dealing order.

// Without the feature, the helpers of the worker-killing test go unused.
#![cfg_attr(not(feature = "fault-injection"), allow(dead_code, unused_imports))]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use echo_lab::tcp::affinity::{allowed_cpus, pin_current_thread};
use support::*;

fault_injection_tests_not_built!();

/// The CPU of each worker, in pool order.
fn worker_cpus(d: &Daemon) -> Vec<Option<u64>> {
    ctl_status(d)["stats"]["workers"]
        .as_array()
        .expect("stats.workers")
        .iter()
        .map(|w| w["cpu"].as_u64())
        .collect()
}

/// Opens connections one at a time until every worker holds exactly one
/// more than `base`; panics if dealing never covers them all.
fn one_on_each(d: &Daemon, base: &[u64]) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..base.len() {
        let mut s = connect(d.addr());
        round_trip(&mut s, b"hello\n");
        conns.push(s);
    }
    let want: Vec<u64> = base.iter().map(|b| b + 1).collect();
    wait_until(IO_TIMEOUT, "one new connection on each worker", || {
        per_worker(d) == want
    });
    conns
}

#[test]
fn a_reload_that_grows_the_pool_gives_the_new_workers_the_new_idle_timeout_and_pending_cap() {
    let d = Daemon::start("pool_size = 1\nidle_timeout = 0\ncpu_affinity = false\n");
    let line = d.reload_with(
        "pool_size = 2\nidle_timeout = 3\nmax_pending_bytes = 67108864\ncpu_affinity = false\n",
        "pool_size: 1 -> 2",
    );
    assert!(line.contains("idle_timeout: 0s -> 3s"), "{line}");
    wait_until(IO_TIMEOUT, "two workers", || per_worker(&d).len() == 2);

    // The pending cap, on each worker: a client that never reads pushes
    // 32 MiB without stalling only if the server may buffer 64 MiB for it
    // (the kernel's buffers hold a few MiB; the old 64 KiB cap stalls it).
    let hogs = one_on_each(&d, &[0, 0]);
    for (i, mut h) in hogs.into_iter().enumerate() {
        let (sent, stalled) = write_until_stalled(&mut h, 32 << 20, Duration::from_secs(3));
        assert!(
            !stalled,
            "connection {i}: stalled after {sent} bytes: the 64 MiB cap is not in force"
        );
        drop(h);
    }
    wait_until(IO_TIMEOUT, "the hogs gone", || per_worker(&d) == vec![0, 0]);

    // The idle timeout, on each worker: both connections get the 3 s notice,
    // counted from their last round trip, which is after t0 (once they are
    // seen on both workers, part of the 3 s has passed already).
    let t0 = Instant::now();
    let idle = one_on_each(&d, &[0, 0]);
    for (i, mut s) in idle.into_iter().enumerate() {
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let got = read_to_eof(&mut s);
        assert_bytes(&got, &idle_notice(3));
        eprintln!(
            "pool: connection {i} closed for idleness after {:?}",
            t0.elapsed()
        );
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        t0.elapsed()
    );
}

/// The worker threads' allowed CPU lists, from /proc.
fn worker_thread_cpus(d: &Daemon) -> Vec<String> {
    let dir = format!("/proc/{}/task", d.pid());
    let mut lists: Vec<String> = std::fs::read_dir(&dir)
        .expect("task dir")
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "worker")
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|s| s.trim().to_string())
        })
        .collect();
    lists.sort();
    lists
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_worker_that_dies_is_replaced_on_its_own_cpu() {
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "this test needs two CPUs; this process may use {cpus:?} (run it on a 2-CPU machine)"
    );
    let d = Daemon::start("pool_size = 2\ncpu_affinity = true\n");
    let before = worker_cpus(&d);
    let second = before[1].expect("worker 1 is pinned") as usize;
    assert_ne!(before[0], before[1], "workers on distinct CPUs: {before:?}");
    // A client on the second worker's CPU is dealt to it; it kills it.
    let addr = d.addr();
    let victim = std::thread::spawn(move || {
        pin_current_thread(second).expect("pin the client");
        let mut s = connect(addr);
        round_trip(&mut s, b"hello\n");
        s
    })
    .join()
    .expect("client");
    wait_until(IO_TIMEOUT, "the client on worker 1", || {
        per_worker(&d) == vec![0, 1]
    });
    let mut victim = victim;
    victim
        .write_all(b"ECHO-LAB-FAULT:KILL-WORKER")
        .expect("send the fault");
    d.wait_for_log("worker 1 stopped unexpectedly", IO_TIMEOUT);
    wait_until(IO_TIMEOUT, "worker 1's connection gone", || {
        per_worker(&d) == vec![0, 0]
    });
    assert_eq!(
        worker_cpus(&d),
        before,
        "replacement on the dead worker's CPU"
    );
    let want = {
        let mut w: Vec<String> = before
            .iter()
            .map(|c| c.expect("pinned").to_string())
            .collect();
        w.sort();
        w
    };
    wait_until(IO_TIMEOUT, "the replacement thread pinned", || {
        worker_thread_cpus(&d) == want
    });
    // It serves: a new client from that CPU is echoed by it.
    let addr = d.addr();
    std::thread::spawn(move || {
        pin_current_thread(second).expect("pin the client");
        let mut s = connect(addr);
        round_trip(&mut s, b"served by the replacement\n");
    })
    .join()
    .expect("client after replacement");
    assert_eq!(d.stat("active"), 0);
}

#[test]
fn a_drain_tells_every_client_and_counts_every_connection_out() {
    let d = Daemon::start("pool_size = 2\ndrain_timeout = 5\n");
    let mut clients: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = connect(d.addr());
            round_trip(&mut s, format!("client {i}\n").as_bytes());
            s
        })
        .collect();
    wait_until(IO_TIMEOUT, "200 open", || d.stat("active") == 200);
    let loads = per_worker(&d);
    assert!(
        loads.iter().all(|&n| n > 0),
        "both workers serve: {loads:?}"
    );
    // Half the clients keep talking while the drain starts.
    d.signal(libc::SIGTERM);
    for (i, s) in clients.iter_mut().enumerate() {
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let got = read_n(s, SHUTTING_DOWN.len());
        assert_bytes(&got, SHUTTING_DOWN);
        if i % 2 == 0 {
            round_trip(s, b"still served while draining\n");
        }
    }
    assert_eq!(d.stat("active"), 200);
    // All but one leave: each is counted out (the last keeps the drain on).
    let last = clients.pop().expect("a client");
    drop(clients);
    wait_until(IO_TIMEOUT, "one connection left", || d.stat("active") == 1);
    assert_eq!(per_worker(&d).iter().sum::<u64>(), 1);
    drop(last);
    let mut d = d;
    let exit = d.wait_exit(IO_TIMEOUT);
    assert!(exit.success(), "{exit:?}");
    let log = d.log_text();
    assert!(log.contains("drained in"), "{log}");
}
