//! A reload that grows the pool and turns on `busy_poll` gives the new
//! worker busy polling too (src/tcp/pool.rs: new workers are built from the
//! new settings), shown by how often the workers block while each is
//! talked to in turn. Alone in its test binary so no sibling test's
//! connections wake the workers meanwhile.

mod support;

use std::time::{Duration, Instant};

use support::*;

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
    d.reload_with(
        "pool_size = 2\nbusy_poll = \"10ms\"\ncpu_affinity = false\n",
        "busy_poll: 0s -> 10ms",
    );
    wait_until(IO_TIMEOUT, "two workers", || per_worker(&d).len() == 2);
    let conns = one_on_each(&d, 2);
    // Each worker, talked to alone with a message every millisecond, spins
    // between messages instead of sleeping: its thread hardly blocks (a
    // sleeping worker blocks once per message; see tests/busy_poll.rs).
    for (i, mut s) in conns.into_iter().enumerate() {
        let blocks0 = d.worker_blocks();
        let t0 = Instant::now();
        let mut messages = 0u64;
        while t0.elapsed() < Duration::from_secs(1) {
            round_trip(&mut s, b"ping\n");
            std::thread::sleep(Duration::from_millis(1));
            messages += 1;
        }
        let blocks = d.worker_blocks() - blocks0;
        eprintln!("pool: connection {i}: {messages} messages, workers blocked {blocks} times");
        assert!(
            blocks * 4 < messages,
            "connection {i}: workers blocked {blocks} times for {messages} messages: its worker is not busy polling"
        );
    }
}
