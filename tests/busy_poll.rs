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
//! "Spins" is shown by how often the worker thread blocks (voluntary
//! context switches: once per message when it sleeps, hardly ever when it
//! polls), which a loaded machine does not change; the CPU shares asserted
//! are upper bounds, which load cannot break either.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// How long each CPU share is measured.
const WINDOW: Duration = Duration::from_secs(1);
/// Gap between the client's messages.
const GAP: Duration = Duration::from_millis(1);

/// What the daemon did while a client talked.
struct Talk {
    /// Its CPU time over the window, as a share of one core.
    share: f64,
    messages: u64,
    /// Times its worker blocked (see `Daemon::worker_blocks`).
    blocks: u64,
}

/// Round trips every [`GAP`] for [`WINDOW`].
fn talk(d: &Daemon, s: &mut TcpStream) -> Talk {
    let (cpu0, blocks0) = (d.cpu_time(), d.worker_blocks());
    let t0 = Instant::now();
    let mut messages = 0;
    while t0.elapsed() < WINDOW {
        round_trip(s, b"ping\n");
        std::thread::sleep(GAP);
        messages += 1;
    }
    Talk {
        share: (d.cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64(),
        messages,
        blocks: d.worker_blocks() - blocks0,
    }
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

    let off = talk(&d, &mut s);

    std::fs::write(
        d.config_path(),
        "host = \"127.0.0.1\"\nport = 0\npool_size = 1\nbusy_poll = \"10ms\"\n",
    )
    .expect("rewrite config");
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("busy_poll: 0s -> 10ms", IO_TIMEOUT);
    assert!(line.contains("reloaded"), "{line}");

    let on = talk(&d, &mut s);
    let after = share_while_quiet(&d);
    eprintln!(
        "busy_poll: a message every {GAP:?}: off {:.1}% of a core, worker blocked {} times for {} messages; \
         busy_poll = 10ms {:.1}%, blocked {} times for {}; quiet afterwards {:.1}%",
        off.share * 100.0,
        off.blocks,
        off.messages,
        on.share * 100.0,
        on.blocks,
        on.messages,
        after * 100.0
    );
    // Off: it sleeps between messages (blocks about once per message) and
    // costs little. These bounds hold however loaded the machine is.
    assert!(
        off.share < 0.10,
        "not polling, yet {:.1}% of a core",
        off.share * 100.0
    );
    assert!(
        off.blocks * 2 > off.messages,
        "not polling, yet it hardly blocked: {} for {}",
        off.blocks,
        off.messages
    );
    // On: it stays awake between messages.
    assert!(
        on.blocks * 4 < on.messages,
        "busy polling, yet it blocked {} times for {} messages",
        on.blocks,
        on.messages
    );
    assert!(
        after < 0.10,
        "still spinning with no traffic: {:.1}% of a core",
        after * 100.0
    );
    // Every echo was byte-exact throughout (round_trip checks), and still is.
    round_trip(&mut s, b"still served\n");
}
