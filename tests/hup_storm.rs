//! Repeated SIGHUPs under load: 100 per second while clients echo
//! continuously. No round trip may fail, and the daemon's fd and thread
//! counts (from /proc) must be the same afterwards.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn hup_storm_under_load_drops_nothing_and_leaks_nothing() {
    let d = Daemon::start("pool_size = 2\n");
    let mut probe = connect(d.addr());
    round_trip(&mut probe, b"warm\n");
    let fds_before = d.fd_count();
    let threads_before = d.thread_count();

    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let (stop, trips, addr) = (stop.clone(), trips.clone(), d.addr());
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round_trip(&mut c, format!("client {i} message {n}\n").as_bytes());
                    n += 1;
                    trips.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // 100 SIGHUPs per second for 3 seconds (bounded; the reliability suite
    // runs a longer storm).
    let start = Instant::now();
    for i in 0..300u32 {
        let due = start + Duration::from_millis(10 * u64::from(i));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        d.signal(libc::SIGHUP);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .expect("a client failed a round trip during the storm");
    }
    assert!(trips.load(Ordering::Relaxed) > 0);
    round_trip(&mut probe, b"after\n");
    // Signals may merge, but the last one is always handled; let the
    // supervisor finish the queue, then compare.
    wait_until(IO_TIMEOUT, "fd count back to its level", || {
        d.fd_count() == fds_before
    });
    assert_eq!(d.thread_count(), threads_before);
}
