//! A connect-and-close storm: 5000 connections that close at once, a third
//! of them with a reset. Afterwards descriptors and threads are back to
//! their baseline, `stats.active` is back to 0, and the daemon serves.

mod support;

use std::net::TcpStream;
use std::time::Instant;

use support::*;

const CONNECTS: usize = 5000;
const THREADS: usize = 4;

#[test]
fn five_thousand_connects_that_close_at_once_leak_nothing() {
    let d = Daemon::start("pool_size = 2\n");
    round_trip(&mut connect(d.addr()), b"warm\n");
    wait_until(IO_TIMEOUT, "the warm-up connection closed", || {
        d.stat("active") == 0
    });
    let before = d.resources();

    let started = Instant::now();
    let stormers: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = d.addr();
            std::thread::spawn(move || {
                for i in (t..CONNECTS).step_by(THREADS) {
                    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                        .unwrap_or_else(|e| panic!("connect {i}: {e}"));
                    if i % 3 == 0 {
                        set_linger_zero(&s);
                    }
                    drop(s);
                }
            })
        })
        .collect();
    for s in stormers {
        s.join().expect("a connect failed");
    }
    let storm = started.elapsed();

    wait_until(IO_TIMEOUT * 2, "stats.active back to 0", || {
        d.stat("active") == 0
    });
    let leaks = d.assert_back_to(before);
    let total = d.stat("total");
    eprintln!(
        "connect storm: {CONNECTS} connect+close ({} with RST) in {:.2}s; daemon accepted {total}; {leaks}",
        CONNECTS.div_ceil(3),
        storm.as_secs_f64(),
    );
    let mut c = connect(d.addr());
    round_trip(&mut c, b"served after the storm\n");
}
