//! `cpu_affinity` (off by default, so every test here turns it on; the
//! first also checks that the default leaves workers unpinned): workers
//! pinned one per CPU, each connection served by the worker on the CPU
//! its packets arrive on, moved there when its client has moved for good
//! (at most once per 10 s: a client that hops between CPUs is not chased),
//! and never at the price of balance.
//!
//! Over loopback a connection's packets are processed on the CPU of the
//! thread that sends them, so a test thread pinned to a CPU
//! (sched_setaffinity on itself) is a client "arriving" on that CPU. Where
//! each connection ended up is read from `echo-labctl status --json`
//! (`stats.workers`: CPU, connections, hand-offs), and the pinning itself
//! from /proc (`Cpus_allowed_list` of each `worker` thread). Needs two
//! CPUs; on one, each test returns at once after a `SKIPPED` line.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use echo_lab::tcp::affinity::{allowed_cpus, pin_current_thread};
use serde_json::Value;
use support::*;

/// How long a connection stays on a worker before it may move (the
/// daemon's `MIN_DWELL`).
const DWELL: Duration = Duration::from_secs(10);

/// Pins the calling thread (only it) to `cpu`.
fn pin_me(cpu: usize) {
    pin_current_thread(cpu).unwrap_or_else(|e| panic!("pin the test thread to CPU {cpu}: {e}"));
}

/// Two CPUs to use: every test here needs them (the machines this suite
/// runs on have two). On fewer there is nothing to test: `None`, after a
/// `SKIPPED` line saying why, written to stderr itself rather than through
/// `eprintln!`, which the test harness would capture and hide.
fn two_cpus(test: &str) -> Option<(usize, usize)> {
    let cpus = allowed_cpus();
    match cpus[..] {
        [a, b, ..] => Some((a, b)),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: needs two CPUs, this process may use {cpus:?}"
            );
            None
        }
    }
}

/// `stats.workers` from status: (cpu, connections, moved_out) per worker.
fn workers(d: &Daemon) -> Vec<(Option<u64>, u64, u64)> {
    let s = ctl_status(d);
    s["stats"]["workers"]
        .as_array()
        .expect("stats.workers")
        .iter()
        .map(|w: &Value| {
            (
                w["cpu"].as_u64(),
                w["connections"].as_u64().unwrap(),
                w["moved_out"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Connections of the worker pinned to `cpu`.
fn on_cpu(d: &Daemon, cpu: usize) -> u64 {
    workers(d)
        .iter()
        .filter(|w| w.0 == Some(cpu as u64))
        .map(|w| w.1)
        .sum()
}

/// The CPUs each `worker` thread of the daemon may run on, from /proc.
fn worker_cpu_lists(d: &Daemon) -> Vec<String> {
    let dir = format!("/proc/{}/task", d.pid());
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "worker")
        })
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .collect()
}

/// Opens `n` connections from a thread pinned to `cpu`, each doing one
/// round trip; returns them (still open).
fn open_from(addr: std::net::SocketAddr, cpu: usize, n: usize) -> Vec<TcpStream> {
    std::thread::spawn(move || {
        pin_me(cpu);
        (0..n)
            .map(|i| {
                let mut s = connect(addr);
                round_trip(
                    &mut s,
                    format!("from CPU {cpu}, connection {i}\n").as_bytes(),
                );
                s
            })
            .collect::<Vec<_>>()
    })
    .join()
    .expect("client thread")
}

#[test]
fn workers_are_pinned_one_per_cpu_when_turned_on_and_unpinned_by_default() {
    let Some((a, b)) = two_cpus("workers_are_pinned") else {
        return;
    };
    let d = Daemon::start("pool_size = 2\ncpu_affinity = true\n");
    // A worker thread is named when it starts and pins itself just after:
    // wait for both to have done so.
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    wait_until(IO_TIMEOUT, "each worker on one CPU of its own", || {
        let mut lists = worker_cpu_lists(&d);
        lists.sort();
        lists == want
    });
    let mut cpus: Vec<Option<u64>> = workers(&d).iter().map(|w| w.0).collect();
    cpus.sort();
    assert_eq!(cpus, vec![Some(a as u64), Some(b as u64)]);

    // No cpu_affinity line: the default.
    let off = Daemon::start("pool_size = 2\n");
    wait_until(IO_TIMEOUT, "two worker threads", || {
        worker_cpu_lists(&off).len() == 2
    });
    let ours = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|s| s.trim().to_string())
        })
        .unwrap();
    for list in worker_cpu_lists(&off) {
        assert_eq!(list, ours, "unpinned workers may use every CPU");
    }
    assert!(workers(&off).iter().all(|w| w.0.is_none()));
}

#[test]
fn connections_go_to_the_worker_on_their_cpu() {
    let Some((a, b)) = two_cpus("connections_go_to_the_worker_on_their_cpu") else {
        return;
    };
    let d = Daemon::start("pool_size = 2\ncpu_affinity = true\n");
    let from_a = open_from(d.addr(), a, 6);
    wait_until(IO_TIMEOUT, "6 connections on the worker of CPU a", || {
        on_cpu(&d, a) == 6
    });
    let from_b = open_from(d.addr(), b, 6);
    wait_until(IO_TIMEOUT, "6 connections on each worker", || {
        on_cpu(&d, a) == 6 && on_cpu(&d, b) == 6
    });
    eprintln!(
        "affinity: 6 clients on CPU {a} and 6 on CPU {b}: workers {:?}",
        workers(&d)
    );
    drop((from_a, from_b));
}

#[test]
fn a_connection_follows_its_client_to_another_cpu_without_losing_a_byte() {
    let Some((a, b)) = two_cpus("a_connection_follows_its_client") else {
        return;
    };
    let d = Daemon::start("pool_size = 2\ncpu_affinity = true\n");
    let addr = d.addr();
    let handle = std::thread::spawn(move || {
        pin_me(a);
        let mut s = connect(addr);
        round_trip(&mut s, b"on CPU a\n");
        s
    });
    let s = handle.join().expect("client on CPU a");
    wait_until(IO_TIMEOUT, "the connection on the worker of CPU a", || {
        on_cpu(&d, a) == 1
    });
    // The same connection, now used from CPU b: messages of every size up
    // to 4 KiB, each different, each checked byte for byte — until the
    // daemon hands the connection from one worker to the other, which it
    // may do only once the connection has dwelt 10 s where it was.
    let t0 = std::time::Instant::now();
    let d_ref = &d;
    let (mut s, trips) = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                pin_me(b);
                let mut s = s;
                let mut i = 0u64;
                while on_cpu(d_ref, b) == 0 {
                    assert!(t0.elapsed() < Duration::from_secs(30), "never moved");
                    for _ in 0..200 {
                        let len = 1 + (i as usize * 37) % 4096;
                        round_trip(&mut s, &pseudo_random(len, i));
                        i += 1;
                    }
                }
                (s, i)
            })
            .join()
            .expect("client on CPU b")
    });
    let moved_after = t0.elapsed();
    assert_eq!((on_cpu(&d, a), on_cpu(&d, b)), (0, 1));
    let moved: u64 = workers(&d).iter().map(|w| w.2).sum();
    eprintln!(
        "affinity: moved after {moved_after:?} and {trips} round trips from CPU {b}: workers {:?}",
        workers(&d)
    );
    assert_eq!(moved, 1, "one hand-off: {:?}", workers(&d));
    assert!(
        moved_after >= Duration::from_secs(9),
        "moved before its dwell time: {moved_after:?}"
    );
    round_trip(&mut s, b"still the same session\n");
}

#[test]
fn a_client_that_hops_between_cpus_is_not_chased() {
    let Some((a, b)) = two_cpus("a_client_that_hops_between_cpus_is_not_chased") else {
        return;
    };
    const CLIENTS: u64 = 10;
    const HOP_EVERY: u64 = 100;
    let d = Daemon::start("pool_size = 2\ncpu_affinity = true\n");
    let addr = d.addr();
    // Each client switches CPU every 100 round trips, like client threads a
    // scheduler migrates, for longer than the dwell: past it a connection
    // may move, so one that followed its client would move at nearly every
    // hop; one that is not chased moves at most once per dwell.
    let t0 = std::time::Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut n = 0u64;
                while t0.elapsed() < DWELL + Duration::from_secs(2) {
                    pin_me(if (n / HOP_EVERY).is_multiple_of(2) {
                        a
                    } else {
                        b
                    });
                    round_trip(&mut s, format!("client {c} trip {n}\n").as_bytes());
                    n += 1;
                }
                (s, n)
            })
        })
        .collect();
    let done: Vec<(TcpStream, u64)> = clients
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let hops: u64 = done.iter().map(|c| c.1 / HOP_EVERY).sum();
    let moved: u64 = workers(&d).iter().map(|w| w.2).sum();
    let elapsed = t0.elapsed();
    // Every connection was placed after t0, and may move once per dwell.
    let bound = CLIENTS * (elapsed.as_secs() / DWELL.as_secs());
    eprintln!(
        "affinity: {CLIENTS} clients hopped {hops} times in {elapsed:?}: {moved} hand-offs \
         (at most {bound})"
    );
    assert!(
        hops > 2 * bound,
        "the clients hopped too little ({hops} times) to show anything"
    );
    assert!(
        moved <= bound,
        "connections chased their clients: {moved} hand-offs for {hops} hops, at most \
         {bound} allowed: {:?}",
        workers(&d)
    );
}

#[test]
fn locality_never_costs_balance() {
    let Some((a, b)) = two_cpus("locality_never_costs_balance") else {
        return;
    };
    let d = Daemon::start("pool_size = 2\ncpu_affinity = true\n");
    // Every client on one CPU: pure locality would give one worker all.
    let clients = open_from(d.addr(), a, 60);
    wait_until(IO_TIMEOUT, "all 60 connections adopted", || {
        on_cpu(&d, a) + on_cpu(&d, b) == 60
    });
    let (here, there) = (on_cpu(&d, a), on_cpu(&d, b));
    eprintln!("affinity: 60 clients all on CPU {a}: {here} on its worker, {there} on the other");
    // The local worker takes connections while it has fewer than the other
    // + 25 % + 8 (see src/tcp/affinity.rs).
    assert!(there > 0, "the other worker got none");
    assert!(
        here <= there + there / 4 + 8,
        "{here} on the local worker against {there}"
    );
    drop(clients);
}
