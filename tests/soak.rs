//! Soak: 1000 connections churning for 60 s (`ECHO_LAB_SOAK_SECS` for
//! longer): each lives a few round trips, then leaves — a plain close, a
//! reset, or `disconnect` — and a new one takes its place. The daemon's
//! RSS, descriptor and thread counts are sampled every 5 s and must stay
//! flat; no echo may be lost or corrupted; at the end everything is back
//! to the baseline.
//!
//! Ten client threads with 100 sockets each (the box has two cores,
//! shared with the daemon): each round a thread writes one message on every
//! socket, then reads every echo, then replaces the sockets whose life is
//! over. Rounds are paced (4 per second per thread), so the churn is
//! about 230 reconnects per second — far below what exhausts ephemeral
//! ports through TIME_WAIT.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const THREADS: usize = 10;
const PER_THREAD: usize = 100;
const CONNS: usize = THREADS * PER_THREAD;
const ROUND: Duration = Duration::from_millis(250);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Bound on RSS growth from the first sample under load to the largest.
const RSS_GROWTH_KIB: u64 = 16 * 1024;

fn soak_secs() -> u64 {
    std::env::var("ECHO_LAB_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// Counters shared by the client threads.
#[derive(Default)]
struct Tally {
    trips: AtomicU64,
    connects: AtomicU64,
    goodbyes: AtomicU64,
    resets: AtomicU64,
    failures: AtomicU64,
}

struct Client {
    stream: TcpStream,
    /// Round trips left before it leaves.
    left: u32,
}

fn lifetime(rng: &mut u64) -> u32 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    3 + (*rng % 28) as u32
}

fn open(addr: SocketAddr, rng: &mut u64, tally: &Tally) -> Client {
    let stream = connect(addr);
    tally.connects.fetch_add(1, Ordering::Relaxed);
    Client {
        stream,
        left: lifetime(rng),
    }
}

/// Message `n` of a thread: an ASCII header and a binary tail of high
/// bytes only, so it can never spell the command word.
fn message(t: usize, slot: usize, n: u64) -> Vec<u8> {
    let mut m = format!("t{t} s{slot} n{n} ").into_bytes();
    let tail = pseudo_random((n % 200) as usize, n ^ (t as u64) << 32 ^ slot as u64);
    m.extend(tail.into_iter().map(|b| b | 0x80));
    m.push(b'\n');
    m
}

/// Ends a client's session in one of three ways; false if `disconnect`
/// did not get exactly the goodbye and EOF.
fn leave(c: Client, how: u64, tally: &Tally) -> bool {
    let mut s = c.stream;
    match how % 3 {
        0 => true, // plain close
        1 => {
            set_linger_zero(&s);
            tally.resets.fetch_add(1, Ordering::Relaxed);
            true
        }
        _ => {
            if s.write_all(b"disconnect\n").is_err() {
                return false;
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => return false,
                }
            }
            tally.goodbyes.fetch_add(1, Ordering::Relaxed);
            got == GOODBYE
        }
    }
}

fn client_thread(
    t: usize,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<String> {
    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
    let mut clients: Vec<Client> = (0..PER_THREAD)
        .map(|_| open(addr, &mut rng, &tally))
        .collect();
    let mut errors = Vec::new();
    let mut n = 0u64;
    let mut fail = |what: String, tally: &Tally| {
        tally.failures.fetch_add(1, Ordering::Relaxed);
        if errors.len() < 20 {
            errors.push(what);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let msgs: Vec<Vec<u8>> = (0..PER_THREAD)
            .map(|i| message(t, i, n + i as u64))
            .collect();
        n += PER_THREAD as u64;
        let mut broken = [false; PER_THREAD];
        for (i, c) in clients.iter_mut().enumerate() {
            if let Err(e) = c.stream.write_all(&msgs[i]) {
                fail(format!("thread {t} socket {i}: write: {e}"), &tally);
                broken[i] = true;
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            if broken[i] {
                continue;
            }
            let mut back = vec![0u8; msgs[i].len()];
            let mut got = 0;
            while got < back.len() {
                match std::io::Read::read(&mut c.stream, &mut back[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if got < back.len() {
                fail(
                    format!(
                        "thread {t} socket {i}: lost echo ({got} of {} bytes)",
                        back.len()
                    ),
                    &tally,
                );
                broken[i] = true;
            } else if back != msgs[i] {
                fail(format!("thread {t} socket {i}: corrupted echo"), &tally);
                broken[i] = true;
            } else {
                tally.trips.fetch_add(1, Ordering::Relaxed);
                c.left -= 1;
            }
        }
        for i in 0..PER_THREAD {
            if broken[i] || clients[i].left == 0 {
                let fresh = open(addr, &mut rng, &tally);
                let old = std::mem::replace(&mut clients[i], fresh);
                if !broken[i] && !leave(old, rng ^ i as u64, &tally) {
                    fail(format!("thread {t} socket {i}: bad goodbye"), &tally);
                }
            }
        }
        if let Some(wait) = ROUND.checked_sub(round.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    errors
}

/// This process holds a thousand sockets: lift its soft descriptor limit
/// to the hard one (CI shells often start at 1024).
fn raise_own_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 2 * CONNS as u64,
        "RLIMIT_NOFILE hard limit {} is too low for {CONNS} client sockets",
        lim.rlim_max
    );
}

#[test]
fn a_thousand_churning_connections_keep_the_daemon_flat() {
    raise_own_nofile();
    let secs = soak_secs();
    let d = Daemon::start("pool_size = 2\nmax_connections = 2000\n");
    round_trip(&mut connect(d.addr()), b"warm\n");
    wait_until(IO_TIMEOUT, "the warm-up connection closed", || {
        d.stat("active") == 0
    });
    let base = d.resources();
    let (fds_base, threads_base) = (base.fds, base.threads);
    let rss_base = d.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let (stop, tally, addr) = (stop.clone(), tally.clone(), d.addr());
            std::thread::spawn(move || client_thread(t, addr, stop, tally))
        })
        .collect();

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut samples: Vec<(f64, u64, usize, u64, u64)> = Vec::new();
    eprintln!(
        "soak: {CONNS} connections for {secs}s; baseline RSS {rss_base} KiB, {fds_base} fds, {threads_base} threads"
    );
    let mut next = start + SAMPLE_EVERY;
    while Instant::now() < end {
        std::thread::sleep(next.min(end).saturating_duration_since(Instant::now()));
        next += SAMPLE_EVERY;
        let s = (
            start.elapsed().as_secs_f64(),
            d.rss_kib(),
            d.fd_count(),
            d.thread_count(),
            tally.trips.load(Ordering::Relaxed),
        );
        eprintln!(
            "soak: t={:>5.1}s RSS {} KiB, fds {}, threads {}, round trips so far {}",
            s.0, s.1, s.2, s.3, s.4
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for c in clients {
        errors.extend(c.join().expect("a client thread panicked"));
    }
    let elapsed = start.elapsed();

    wait_until(IO_TIMEOUT * 2, "stats.active back to 0", || {
        d.stat("active") == 0
    });
    wait_until(IO_TIMEOUT, "descriptors back to the baseline", || {
        d.resources().fds == fds_base
    });
    let end = d.resources();
    let (fds_end, threads_end) = (end.fds, end.threads);
    let rss_end = d.rss_kib();
    let t = &*tally;
    let trips = t.trips.load(Ordering::Relaxed);
    let failures = t.failures.load(Ordering::Relaxed);
    let rss_first = samples.first().map_or(rss_base, |s| s.1);
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(rss_base);
    let fds_max = samples.iter().map(|s| s.2).max().unwrap_or(fds_base);
    eprintln!(
        "soak: {:.0}s, {trips} round trips ({:.0}/s), {} connects, {} goodbyes, {} resets, {failures} lost or corrupted echoes",
        elapsed.as_secs_f64(),
        trips as f64 / elapsed.as_secs_f64(),
        t.connects.load(Ordering::Relaxed),
        t.goodbyes.load(Ordering::Relaxed),
        t.resets.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak: RSS first sample {rss_first} KiB, max {rss_max} KiB (+{} KiB), after {rss_end} KiB; fds max {fds_max}, after {fds_end} (baseline {fds_base}); threads after {threads_end} (baseline {threads_base})",
        rss_max.saturating_sub(rss_first)
    );

    assert!(
        failures == 0,
        "{failures} lost or corrupted echoes, e.g.:\n{}",
        errors.join("\n")
    );
    assert!(trips > CONNS as u64, "the clients hardly ran");
    assert!(
        rss_max.saturating_sub(rss_first) < RSS_GROWTH_KIB,
        "RSS grew by {} KiB during the soak",
        rss_max - rss_first
    );
    for s in &samples {
        assert!(
            s.2 <= fds_base + CONNS + 64,
            "descriptors at t={:.0}s: {} for {CONNS} clients (baseline {fds_base})",
            s.0,
            s.2
        );
        assert_eq!(s.3, threads_base, "threads at t={:.0}s", s.0);
    }
    assert_eq!(fds_end, fds_base);
    assert_eq!(threads_end, threads_base);
    round_trip(&mut connect(d.addr()), b"served after the soak\n");
}
