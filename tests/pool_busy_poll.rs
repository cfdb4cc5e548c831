//! A reload that grows the pool and turns on `busy_poll` gives the new
//! worker busy polling too (src/pool.rs: new workers are built from the
//! new settings). Alone in its test binary: it measures the daemon's CPU
//! share, which sibling tests running at once would distort.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Rewrites the config and reloads; returns the reload's log line.
fn reload(d: &Daemon, config: &str, expect: &str) -> String {
    std::fs::write(
        d.config_path(),
        format!("host = \"127.0.0.1\"\nport = 0\n{config}"),
    )
    .expect("rewrite config");
    d.signal(libc::SIGHUP);
    d.wait_for_log(expect, IO_TIMEOUT)
}

/// Opens connections one at a time until every worker holds exactly one.
fn one_on_each(d: &Daemon, workers: usize) -> Vec<std::net::TcpStream> {
    let conns: Vec<_> = (0..workers)
        .map(|_| {
            let mut s = connect(d.addr());
            round_trip(&mut s, b"hello\n");
            s
        })
        .collect();
    wait_until(IO_TIMEOUT, "one connection on each worker", || {
        per_worker(d) == vec![1; workers]
    });
    conns
}

#[test]
fn a_reload_that_grows_the_pool_gives_the_new_workers_busy_polling() {
    let d = Daemon::start("pool_size = 1\ncpu_affinity = false\n");
    reload(
        &d,
        "pool_size = 2\nbusy_poll = \"10ms\"\ncpu_affinity = false\n",
        "busy_poll: 0s -> 10ms",
    );
    wait_until(IO_TIMEOUT, "two workers", || per_worker(&d).len() == 2);
    let conns = one_on_each(&d, 2);
    // Each worker, talked to alone with a message every millisecond, spins
    // between messages: a large share of a core (a sleeping worker uses a
    // few per cent; see tests/busy_poll.rs).
    for (i, mut s) in conns.into_iter().enumerate() {
        let cpu0 = d.cpu_time();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(1) {
            round_trip(&mut s, b"ping\n");
            std::thread::sleep(Duration::from_millis(1));
        }
        let share = (d.cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        eprintln!(
            "pool: connection {i}: daemon at {:.0}% of a core",
            share * 100.0
        );
        assert!(
            share > 0.15,
            "connection {i}: {:.1}% of a core: its worker is not busy polling",
            share * 100.0
        );
    }
}
