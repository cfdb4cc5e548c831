//! The UDP echo service through its library API, on real loopback sockets:
//! echo unchanged up to 65 507 bytes, the source guard, the per-source
//! rate, socket swaps and stop. (The daemon's UDP side, through the real
//! binary, is tested in `udp.rs`.)

mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use echo_lab::net;
use echo_lab::udp::{RateLimit, UdpService, UdpSnapshot};
use support::{wait_until, IO_TIMEOUT};

const UNLIMITED: RateLimit = RateLimit {
    packets: 0,
    bytes: 0,
    max_sources: 16,
};

fn service(limit: RateLimit) -> (UdpService, SocketAddr) {
    let socket = net::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (UdpService::start(vec![socket], limit).unwrap(), addr)
}

fn client(bind: &str) -> UdpSocket {
    let c = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c
}

fn echo_of(c: &UdpSocket, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    c.send_to(data, to).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = c.recv_from(&mut buf).expect("an echo");
    assert_eq!(from, to, "the echo comes from the service's address");
    buf.truncate(n);
    buf
}

fn snapshot_until(s: &UdpService, what: &str, cond: impl Fn(&UdpSnapshot) -> bool) -> UdpSnapshot {
    wait_until(IO_TIMEOUT, what, || cond(&s.snapshot()));
    s.snapshot()
}

/// Nothing is waiting on `c` (it was not sent an echo).
fn nothing_queued(c: &UdpSocket) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let r = c.recv_from(&mut buf);
    c.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

#[test]
fn datagrams_up_to_65507_bytes_come_back_unchanged() {
    let (s, addr) = service(UNLIMITED);
    let c = client("127.0.0.1:0");
    for len in [0usize, 1, 64, 1472, 9000, 65_507] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        assert_eq!(echo_of(&c, addr, &data), data, "{len} bytes");
    }
    let snap = s.snapshot();
    assert_eq!(snap.echoed, 6);
    assert_eq!(snap.bytes_echoed, (1 + 64 + 1472 + 9000 + 65_507) as u64);
}

#[test]
fn a_datagram_over_65507_bytes_is_dropped_and_counted() {
    // Only IPv6 carries a UDP payload above 65 507 bytes.
    let Ok(socket) = net::bind_udp("[::1]:0".parse().unwrap()) else {
        panic!("this test needs IPv6 loopback (::1)");
    };
    let addr = socket.local_addr().unwrap();
    let s = UdpService::start(vec![socket], UNLIMITED).unwrap();
    let c = client("[::1]:0");
    c.send_to(&vec![1u8; 65_508], addr).unwrap();
    assert_eq!(echo_of(&c, addr, b"after"), b"after");
    let snap = snapshot_until(&s, "the drop to be counted", |x| x.dropped_too_large == 1);
    assert_eq!(snap.echoed, 1);
    assert!(nothing_queued(&c));
}

#[test]
fn sources_on_well_known_ports_get_no_echo_and_are_counted() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("ECHO_LAB_SKIP_ROOT_TESTS").is_some(),
            "binding source ports below 1024 needs root: run as root, or set \
             ECHO_LAB_SKIP_ROOT_TESTS=1 to skip this test on purpose"
        );
        eprintln!("SKIPPED: not root and ECHO_LAB_SKIP_ROOT_TESTS is set");
        return;
    }
    let (s, addr) = service(RateLimit::DEFAULT);
    let good = client("127.0.0.1:0");
    let ports = [7u16, 19, 53, 123, 1023, 2049];
    let mut bad = Vec::new();
    for port in ports {
        // Another loopback address than the usual ones, so that a local
        // resolver or time server on 127.0.0.1 is not in the way.
        let c = client(&format!("127.0.0.9:{port}"));
        c.send_to(b"loop?", addr).unwrap();
        bad.push(c);
    }
    // The service reads in order: once the good echo is back and the drops
    // are counted, every datagram from a bad source has been decided.
    assert_eq!(echo_of(&good, addr, b"fine"), b"fine");
    let snap = snapshot_until(&s, "six refused sources", |x| {
        x.dropped_bad_source == ports.len() as u64
    });
    assert_eq!(snap.echoed, 1);
    for c in &bad {
        assert!(nothing_queued(c), "{:?} got an echo", c.local_addr());
    }
    // Port 1024 is the first one served.
    let ok = client("127.0.0.9:1024");
    assert_eq!(echo_of(&ok, addr, b"x"), b"x");
}

#[test]
fn a_source_over_its_rate_is_cut_to_its_rate() {
    let limit = RateLimit {
        packets: 20,
        bytes: 0,
        max_sources: 16,
    };
    let (s, addr) = service(limit);
    let c = client("127.0.0.1:0");
    let other = client("127.0.0.2:0");
    let start = Instant::now();
    for i in 0..200u32 {
        c.send_to(&i.to_be_bytes(), addr).unwrap();
    }
    let sent_in = start.elapsed();
    // A second source is not affected by the first one's bucket.
    assert_eq!(echo_of(&other, addr, b"me too"), b"me too");
    let snap = snapshot_until(&s, "all 201 datagrams decided", |x| x.received == 201);
    let mut echoes = 0u64;
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 8];
    while c.recv_from(&mut buf).is_ok() {
        echoes += 1;
    }
    // The burst (20), plus what the rate refilled while sending.
    let allowed = 20 + (20.0 * sent_in.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        (20..=allowed).contains(&echoes),
        "{echoes} echoes, expected 20..={allowed}"
    );
    assert_eq!(snap.echoed, echoes + 1);
    assert_eq!(snap.dropped_rate, 200 - echoes);
    assert_eq!(snap.sources, 2);
}

#[test]
fn sockets_are_swapped_and_stop_closes_them() {
    let (mut s, old) = service(UNLIMITED);
    let c = client("127.0.0.1:0");
    assert_eq!(echo_of(&c, old, b"old"), b"old");
    let fresh = net::bind_all_udp("127.0.0.1", 0).unwrap();
    let new = fresh[0].local_addr().unwrap();
    s.set_sockets(fresh).unwrap();
    assert_eq!(echo_of(&c, new, b"new"), b"new");
    assert_eq!(s.local_addrs(), vec![new]);
    // The old port is closed: it can be bound again.
    wait_until(IO_TIMEOUT, "the old socket to close", || {
        UdpSocket::bind(old).is_ok()
    });
    s.stop();
    assert!(!s.running());
    assert!(s.local_addrs().is_empty());
    wait_until(IO_TIMEOUT, "the socket to close on stop", || {
        UdpSocket::bind(new).is_ok()
    });
}
