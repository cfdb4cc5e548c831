//! The long reload storm: SIGHUP 100 times a second for 10 seconds while
//! 20 clients do continuous round trips. Not one round trip may fail, and
//! the daemon's descriptor and thread counts (from /proc) are the same
//! before and after.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const CLIENTS: usize = 20;
const RATE_HZ: u64 = 100;
const SECS: u64 = 10;

#[test]
fn ten_seconds_of_sighup_at_100_per_second_fail_no_round_trip() {
    let d = Daemon::start("pool_size = 2\n");
    let mut probe = connect(d.addr());
    round_trip(&mut probe, b"warm\n");
    let before = d.resources();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, addr) = (stop.clone(), d.addr());
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let (mut lat, mut failures) = (Latencies::default(), Vec::new());
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("client {i} message {n}\n");
                    match try_round_trip(&mut c, msg.as_bytes()) {
                        Ok(t) => lat.push(t),
                        Err(e) => {
                            failures.push(format!("client {i} round trip {n}: {e}"));
                            // Go on with a fresh connection so one failure
                            // does not hide the rest.
                            c = connect(addr);
                        }
                    }
                    n += 1;
                }
                (lat, failures)
            })
        })
        .collect();

    let sent = SECS * RATE_HZ;
    let start = Instant::now();
    for i in 0..sent {
        let due = start + Duration::from_millis(1000 / RATE_HZ * i);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        d.signal(libc::SIGHUP);
    }
    let storm = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut failures) = (Latencies::default(), Vec::new());
    for c in clients {
        let (l, f) = c.join().expect("client thread");
        lat.extend(l);
        failures.extend(f);
    }
    round_trip(&mut probe, b"after\n");
    // Signals may merge, but the last one is always handled; let the
    // supervisor finish the queue, then compare.
    let last = ctl_status(&d);
    let leaks = d.assert_back_to(before);
    let reloads = d.log_count("reloaded ");
    eprintln!(
        "hup storm: {sent} SIGHUPs in {:.1}s, {reloads} reloads done (signals merge); {CLIENTS} clients: {} round trips, {} failed; {}; {leaks}",
        storm.as_secs_f64(),
        lat.len(),
        failures.len(),
        lat.summary(),
    );
    assert!(
        failures.is_empty(),
        "{} failed round trips during the storm, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    assert!(lat.len() > CLIENTS, "the clients hardly ran");
    assert!(reloads > 0, "no reload happened");
    assert!(last["last_reload"]["applied"].is_string(), "{last}");
}
