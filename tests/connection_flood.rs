//! A flood past `max_connections`: with the limit at 50 and 50 clients
//! established, 300 more connect at once. Each of them gets the busy
//! notice and is closed; the 50 keep their service throughout; afterwards
//! no descriptor or slot is left behind.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use support::*;

const MAX: usize = 50;
const FLOOD: usize = 300;
const THREADS: usize = 6;

#[test]
fn three_hundred_past_the_limit_are_refused_and_the_fifty_are_served() {
    let d = Daemon::start(&format!("pool_size = 2\nmax_connections = {MAX}\n"));
    let before = d.resources();
    let established: Vec<_> = (0..MAX)
        .map(|i| {
            let mut s = connect(d.addr());
            round_trip(&mut s, format!("client {i}\n").as_bytes());
            s
        })
        .collect();
    assert_eq!(d.stat("active"), MAX as u64);

    // The 50 keep echoing while the flood comes in.
    let stop = Arc::new(AtomicBool::new(false));
    let served = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut established = established;
            let mut lat = Latencies::default();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) || round < 3 {
                for (i, s) in established.iter_mut().enumerate() {
                    let t = Instant::now();
                    round_trip(s, format!("client {i} round {round}\n").as_bytes());
                    lat.push(t.elapsed());
                }
                round += 1;
            }
            (established, lat, round)
        })
    };

    let started = Instant::now();
    let flooders: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = d.addr();
            std::thread::spawn(move || {
                // Connect this thread's share first, all at once, then read.
                let mut socks: Vec<_> =
                    (t..FLOOD).step_by(THREADS).map(|_| connect(addr)).collect();
                for s in socks.iter_mut() {
                    assert_bytes(&read_to_eof(s), &busy_notice(MAX));
                }
                socks.len()
            })
        })
        .collect();
    let refused: usize = flooders
        .into_iter()
        .map(|f| {
            f.join()
                .expect("a flood client got something else than the busy notice")
        })
        .sum();
    let flood_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (established, lat, rounds) = served.join().expect("an established client lost service");
    assert_eq!(refused, FLOOD);
    let s = ctl_status(&d);
    assert_eq!(s["stats"]["refused"], FLOOD as u64);
    assert_eq!(s["stats"]["active"], MAX as u64);
    eprintln!(
        "connection flood: {FLOOD} refused with the busy notice in {:.2}s; the {MAX} established did {rounds} rounds meanwhile, {}",
        flood_time.as_secs_f64(),
        lat.summary()
    );

    drop(established);
    wait_until(IO_TIMEOUT, "stats.active back to 0", || {
        d.stat("active") == 0
    });
    d.assert_back_to(before);
    // The slots are free again.
    let again: Vec<_> = (0..MAX)
        .map(|i| {
            let mut s = connect(d.addr());
            round_trip(&mut s, format!("again {i}\n").as_bytes());
            s
        })
        .collect();
    assert_eq!(d.stat("active"), MAX as u64);
    drop(again);
}
