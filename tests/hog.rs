//! A client that tries to send 1 GiB and never reads: the daemon holds at
//! most `max_pending_bytes` of echo for it (its RSS stays within the cap
//! plus slack), stops reading it, and a client on the same worker keeps
//! getting its echo. The victim's latency with and without the hog is
//! printed for docs/RELIABILITY.md; only a generous p99 bound is asserted.

mod support;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const CAP: u64 = 65536;
/// What the hog tries to send.
const HOG: usize = 1 << 30;
/// The hog counts as stopped by the server after this long without
/// progress.
const STALL: Duration = Duration::from_secs(2);
/// RSS slack over the cap: allocator arenas, page granularity, buffer
/// growth (see tests/backpressure.rs for the measured growth).
const SLACK_KIB: u64 = 16 * 1024;
/// Victim round trips per measurement.
const TRIPS: usize = 500;
/// The bound the issue names: generous, only a stalled victim fails it.
const P99_BOUND: Duration = Duration::from_millis(200);

/// Writes up to [`HOG`] bytes without reading; returns the socket (its
/// unread echo stays until the test closes it), the bytes written and
/// whether the writes stalled.
fn hog(mut s: TcpStream, done: Arc<AtomicBool>) -> (TcpStream, usize, bool) {
    let (sent, stalled) = write_until_stalled(&mut s, HOG, STALL);
    done.store(true, Ordering::SeqCst);
    (s, sent, stalled)
}

fn measure(s: &mut TcpStream, tag: &str, mut sample: impl FnMut()) -> Latencies {
    let mut l = Latencies::default();
    for i in 0..TRIPS {
        let msg = format!("{tag} round trip {i:06} ............................\n");
        let t = Instant::now();
        round_trip(s, msg.as_bytes());
        l.push(t.elapsed());
        sample();
    }
    l
}

#[test]
fn a_one_gib_sender_that_never_reads_is_held_to_the_cap() {
    // One worker: the hog lands on the victim's worker, the hard case, by
    // construction rather than by the order connections are dealt in.
    let d = Daemon::start(&format!("pool_size = 1\nmax_pending_bytes = {CAP}\n"));
    let mut victim = connect(d.addr());
    round_trip(&mut victim, b"warm up\n");
    let mut spare = connect(d.addr());
    round_trip(&mut spare, b"warm up\n");
    let fds_before = d.fd_count();
    let base = d.rss_kib();

    let without = measure(&mut victim, "alone", || {});

    let hog_sock = connect(d.addr());
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || hog(hog_sock, done))
    };
    let mut peak = base;
    // While the hog pushes (and after the server stopped reading it).
    let during = measure(&mut victim, "hogged", || peak = peak.max(d.rss_kib()));
    wait_until(STALL * 10, "the hog to stop", || {
        peak = peak.max(d.rss_kib());
        done.load(Ordering::SeqCst)
    });
    let (hog_sock, sent, stalled) = writer.join().expect("hog thread");
    let hog_secs = started.elapsed().as_secs_f64();
    // The hog is parked with a full pending buffer: measure once more.
    let parked = measure(&mut victim, "parked", || peak = peak.max(d.rss_kib()));
    let growth = peak.saturating_sub(base);

    eprintln!("hog: tried {HOG} bytes, the server took {sent} before it stalled ({hog_secs:.1}s incl. {STALL:?} stall detection)");
    eprintln!("hog: daemon RSS {base} KiB -> peak {peak} KiB (+{growth} KiB; cap {CAP} bytes, bound +{} KiB)", CAP / 1024 + SLACK_KIB);
    eprintln!("hog: victim latency without hog: {}", without.summary());
    eprintln!(
        "hog: victim latency while the hog pushes: {}",
        during.summary()
    );
    eprintln!(
        "hog: victim latency with the hog parked: {}",
        parked.summary()
    );

    assert!(
        stalled && sent < HOG,
        "the server kept reading a client that never reads: {sent} bytes taken"
    );
    assert!(
        growth < CAP / 1024 + SLACK_KIB,
        "daemon RSS grew by {growth} KiB holding a non-reading client (cap {CAP} bytes)"
    );
    for (what, l) in [
        ("while the hog pushes", &during),
        ("with the hog parked", &parked),
    ] {
        assert!(
            l.percentile(99.0) < P99_BOUND,
            "victim p99 {what}: {}",
            l.summary()
        );
    }

    // The hog leaves without reading (a reset, with echo unread): its slot
    // and descriptor are released, the victim is still served.
    set_linger_zero(&hog_sock);
    drop(hog_sock);
    wait_until(IO_TIMEOUT, "the hog's descriptor to close", || {
        d.fd_count() <= fds_before
    });
    round_trip(&mut victim, b"still served\n");
    round_trip(&mut spare, b"still served\n");
}
