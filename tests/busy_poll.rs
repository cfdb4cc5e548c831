//! `busy_poll`: after traffic a worker polls instead of sleeping, for at
//! most the configured time. Shown by the daemon's CPU time (from /proc)
//! while a client sends a message every millisecond:
//!
//! * off (the default), the worker sleeps between messages and uses a few
//!   per cent of a core;
//! * after a reload to `busy_poll = "10ms"` (longer than the gap between
//!   messages) it never sleeps while the client talks: a large share of a
//!   core;
//! * once the client stops, the spinning stops within `busy_poll`: the
//!   daemon is back to nearly no CPU.
//!
//! Thresholds leave wide margins for a loaded machine: a spinning worker
//! that yields the CPU still gets far more than the 15 % asserted, and a
//! sleeping one far less than 10 %.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// How long each CPU share is measured.
const WINDOW: Duration = Duration::from_secs(1);
/// Gap between the client's messages.
const GAP: Duration = Duration::from_millis(1);

/// Round trips every [`GAP`] for [`WINDOW`]; returns the daemon's CPU time
/// over that window as a share of one core.
fn share_while_talking(d: &Daemon, s: &mut TcpStream) -> f64 {
    let cpu0 = d.cpu_time();
    let t0 = Instant::now();
    while t0.elapsed() < WINDOW {
        round_trip(s, b"ping\n");
        std::thread::sleep(GAP);
    }
    (d.cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

/// The daemon's CPU share over [`WINDOW`] with no traffic.
fn share_while_quiet(d: &Daemon) -> f64 {
    let cpu0 = d.cpu_time();
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    (d.cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

#[test]
fn busy_poll_spins_while_traffic_flows_and_stops_after() {
    let d = Daemon::start("pool_size = 1\n");
    let mut s = connect(d.addr());
    round_trip(&mut s, b"warm\n");

    let off = share_while_talking(&d, &mut s);

    std::fs::write(
        d.config_path(),
        "host = \"127.0.0.1\"\nport = 0\npool_size = 1\nbusy_poll = \"10ms\"\n",
    )
    .expect("rewrite config");
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("busy_poll: 0s -> 10ms", IO_TIMEOUT);
    assert!(line.contains("reloaded"), "{line}");

    let on = share_while_talking(&d, &mut s);
    let after = share_while_quiet(&d);
    eprintln!(
        "busy_poll: daemon CPU with a message every {GAP:?}: off {:.1}% of a core, busy_poll = 10ms {:.1}%; quiet afterwards {:.1}%",
        off * 100.0,
        on * 100.0,
        after * 100.0
    );
    assert!(off < 0.10, "not polling, yet {:.1}% of a core", off * 100.0);
    assert!(
        on > 0.15,
        "busy polling, yet only {:.1}% of a core",
        on * 100.0
    );
    assert!(
        after < 0.10,
        "still spinning with no traffic: {:.1}% of a core",
        after * 100.0
    );
    // Every echo was byte-exact throughout (round_trip checks), and still is.
    round_trip(&mut s, b"still served\n");
}
