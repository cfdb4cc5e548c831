//! `echo-labctl connect --udp` and `echo-labctl bench --udp`, the real
//! binary against a real UDP echo service on loopback (the library's
//! service in this process; the daemon's UDP side is in `udp.rs`).

mod support;

use std::net::SocketAddr;
use std::process::Command;

use echo_lab::net;
use echo_lab::udp::{RateLimit, UdpService};
use support::{run_with_input, ECHO_LABCTL, IO_TIMEOUT};

fn service(limit: RateLimit) -> (UdpService, SocketAddr) {
    let socket = net::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (UdpService::start(vec![socket], limit).unwrap(), addr)
}

const UNLIMITED: RateLimit = RateLimit {
    packets: 0,
    bytes: 0,
    max_sources: 16,
};

fn labctl(args: &[&str], input: &[u8]) -> std::process::Output {
    run_with_input(Command::new(ECHO_LABCTL).args(args), input, IO_TIMEOUT * 4)
}

#[test]
fn connect_udp_sends_a_datagram_per_line_and_prints_each_echo() {
    let (s, addr) = service(UNLIMITED);
    let out = labctl(
        &["connect", "--udp", &addr.to_string()],
        b"hello\nbinary \x00\xff\nlast line without newline",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout,
        b"hello\nbinary \x00\xff\nlast line without newline".to_vec()
    );
    assert_eq!(s.snapshot().received, 3);
}

#[test]
fn connect_udp_to_a_closed_port_says_nothing_listens() {
    // Bind and close: the port is free, so the kernel answers with ICMP
    // port unreachable.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = labctl(
        &["connect", "--udp", &addr.to_string(), "--timeout", "5"],
        b"anyone?\n",
    );
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing listens"), "{err}");
}

#[test]
fn connect_udp_reports_lines_that_got_no_echo() {
    // Two datagrams per second for this source: the third line is dropped.
    let (s, addr) = service(RateLimit {
        packets: 2,
        bytes: 0,
        max_sources: 16,
    });
    let out = labctl(
        &["connect", "--udp", &addr.to_string(), "--timeout", "0.5"],
        b"a\nb\nc\n",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, b"a\nb\n".to_vec());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no echo for line 3"), "{err}");
    assert!(err.contains("1 of 3 datagram(s) got no echo"), "{err}");
    assert_eq!(s.snapshot().dropped_rate, 1);
}

#[test]
fn bench_udp_measures_round_trips_without_loss() {
    let (s, addr) = service(UNLIMITED);
    let out = labctl(
        &[
            "bench",
            &addr.to_string(),
            "--udp",
            "-c",
            "4",
            "-n",
            "2000",
            "--json",
        ],
        b"",
    );
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["mode"], "udp-ping-pong");
    assert_eq!(r["sent"], 2000, "{r}");
    assert_eq!(r["echoed"], 2000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["mismatch"], 0, "{r}");
    assert!(r["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["jitter_us"].as_f64().is_some(), "{r}");
    assert!(s.snapshot().echoed >= 2000);
}

#[test]
fn bench_udp_counts_what_a_rate_limit_drops_as_loss() {
    let (_s, addr) = service(RateLimit {
        packets: 50,
        bytes: 0,
        max_sources: 16,
    });
    let out = labctl(
        &[
            "bench",
            &addr.to_string(),
            "--udp",
            "-c",
            "8",
            "--threads",
            "1",
            "-n",
            "400",
            "--timeout",
            "0.2",
            "--json",
        ],
        b"",
    );
    // Loss is a measurement, not a failure.
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (sent, echoed, lost) = (
        r["sent"].as_u64().unwrap(),
        r["echoed"].as_u64().unwrap(),
        r["lost"].as_u64().unwrap(),
    );
    assert_eq!(sent, 400, "{r}");
    assert_eq!(echoed + lost, sent, "{r}");
    assert!(lost > 0, "the 50/s limit must drop some of 400: {r}");
    // At most the burst plus 50/s over the run.
    let secs = r["elapsed_secs"].as_f64().unwrap() + 1.0;
    assert!(echoed as f64 <= 50.0 + 50.0 * secs, "{r}");
}
