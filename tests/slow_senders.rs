//! Slow senders: 200 connections each trickling one byte every ~50 ms for
//! three seconds are all echoed byte for byte, and a client beside them
//! keeps its round trips fast. A trickling connection costs a slot, never
//! a thread or a stall of its worker.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const CONNS: usize = 200;
const THREADS: usize = 4;
const TICK: Duration = Duration::from_millis(50);
const TICKS: usize = 60;

/// Byte `i` of connection `c`: digits, newlines and high bytes only, so the
/// stream can never spell the command word.
fn byte(c: usize, i: usize) -> u8 {
    const ALPHABET: &[u8] = b"0123456789\n\xff\x00 \t";
    ALPHABET[(c * 7 + i * 13) % ALPHABET.len()]
}

#[test]
fn two_hundred_trickling_clients_are_echoed_exactly() {
    let d = Daemon::start("pool_size = 2\nmax_connections = 1000\n");
    let mut probe = connect(d.addr());
    round_trip(&mut probe, b"warm\n");
    let fds_before = d.fd_count();
    let threads_before = d.thread_count();

    let conns: Vec<(usize, TcpStream)> = (0..CONNS).map(|c| (c, connect(d.addr()))).collect();
    let mut groups: Vec<Vec<(usize, TcpStream)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (k, c) in conns.into_iter().enumerate() {
        groups[k % THREADS].push(c);
    }
    let started = Instant::now();
    let senders: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            std::thread::spawn(move || {
                let start = Instant::now();
                for i in 0..TICKS {
                    let due = start + TICK * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    for (c, s) in group.iter_mut() {
                        s.write_all(&[byte(*c, i)]).expect("trickle write");
                    }
                }
                // Every byte came back, in order, and nothing else.
                for (c, s) in group.iter_mut() {
                    let want: Vec<u8> = (0..TICKS).map(|i| byte(*c, i)).collect();
                    assert_bytes(&read_n(s, TICKS), &want);
                }
                group
            })
        })
        .collect();

    // Meanwhile another client's round trips stay fast.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut l = Latencies::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                round_trip(&mut probe, format!("probe {n}\n").as_bytes());
                l.push(t.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (probe, l)
        })
    };
    let mut all = Vec::new();
    for s in senders {
        all.extend(s.join().expect("a trickling client lost or got wrong echo"));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut probe, probe_lat) = prober.join().expect("the probe client failed");
    let elapsed = started.elapsed();
    eprintln!(
        "slow senders: {CONNS} connections x {TICKS} one-byte writes every {TICK:?} in {:.1}s; daemon threads {}; probe {}",
        elapsed.as_secs_f64(),
        d.thread_count(),
        probe_lat.summary()
    );
    assert_eq!(all.len(), CONNS);
    assert!(
        probe_lat.percentile(99.0) < Duration::from_millis(200),
        "probe beside the trickling clients: {}",
        probe_lat.summary()
    );
    assert_eq!(
        d.thread_count(),
        threads_before,
        "threads grew with clients"
    );

    drop(all);
    wait_until(IO_TIMEOUT * 2, "every trickling connection closed", || {
        d.fd_count() <= fds_before
    });
    round_trip(&mut probe, b"after\n");
}
