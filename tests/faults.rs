//! Faults on demand, each with the real binary over real sockets: the
//! banner before any input, the delay's lower bound, the bandwidth's time
//! for a known transfer, a reset after exactly N bytes, a stall that the
//! idle timeout ends, a session closed at `close_after`, and a reload that
//! turns a fault on for new sessions but not for open ones.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const SESSION_LIMIT: &[u8] = b"[echo-lab] session time limit reached, closing\r\n";

/// A daemon whose `[[listen]]` table has `faults`, beside the plain
/// host/port listener; returns it and the table's address.
fn with_listener(faults: &str) -> (Daemon, std::net::SocketAddr) {
    let d = Daemon::start(&format!(
        "pool_size = 2\n[[listen]]\naddress = \"127.0.0.1:0\"\n{faults}"
    ));
    let a = d.addrs()[1];
    (d, a)
}

#[test]
fn the_banner_comes_before_any_input_on_its_listener_only() {
    let (d, a) = with_listener("banner = \"220 hello\\r\\n\"\n");
    let mut s = connect(a);
    // Nothing written yet: the banner arrives on its own.
    assert_bytes(&read_n(&mut s, 11), b"220 hello\r\n");
    round_trip(&mut s, b"then echo\n");
    // The host/port listener has no banner: its first bytes are the echo.
    let mut plain = connect(d.addr());
    round_trip(&mut plain, b"x\n");
}

#[test]
fn each_echo_leaves_no_earlier_than_the_delay() {
    let (_d, a) = with_listener("delay = \"150ms\"\n");
    let mut s = connect(a);
    for i in 0..5 {
        let t0 = Instant::now();
        round_trip(&mut s, format!("ping {i}\n").as_bytes());
        let rtt = t0.elapsed();
        assert!(
            rtt >= Duration::from_millis(150),
            "round trip {i} took {rtt:?}, less than the 150 ms delay"
        );
    }
}

#[test]
fn delayed_echo_keeps_its_order_with_jitter() {
    let (_d, a) = with_listener("delay = \"20ms\"\njitter = \"20ms\"\nfault_seed = 3\n");
    let mut s = connect(a);
    let mut want = Vec::new();
    for i in 0..200 {
        let line = format!("line {i}\n");
        s.write_all(line.as_bytes()).unwrap();
        want.extend_from_slice(line.as_bytes());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_bytes(&read_n(&mut s, want.len()), &want);
}

#[test]
fn the_bandwidth_sets_the_time_of_a_known_transfer() {
    // 300 000 bytes at 100 KB/s: 2.99 s after the bucket's first 10 ms.
    let (_d, a) = with_listener("bandwidth = \"100KB/s\"\n");
    let mut s = connect(a);
    let data = pseudo_random(300_000, 7);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let back = read_n(&mut s, data.len());
    let took = t0.elapsed();
    writer.join().unwrap().unwrap();
    assert!(back == data, "echo differs");
    assert!(
        took >= Duration::from_millis(2900),
        "300 000 bytes at 100 KB/s arrived in {took:?}"
    );
    // A loaded machine may be late, never early; far later is a fault.
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

/// Reads until an error or the end; what arrived and how it ended.
fn read_until_error(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (out, Err(e)),
        }
    }
}

#[test]
fn a_reset_comes_after_exactly_n_bytes() {
    let (_d, a) = with_listener("reset_after_bytes = 1000\n");
    let mut s = connect(a);
    let data = pseudo_random(5000, 1);
    s.write_all(&data).unwrap();
    let (got, end) = read_until_error(&mut s);
    assert_eq!(got.len(), 1000, "bytes before the reset");
    assert!(got == data[..1000], "echo differs");
    let e = end.expect_err("the connection ended with a FIN, not a reset");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
}

#[test]
fn a_stall_is_silent_until_the_idle_timeout_ends_it() {
    // The idle timeout is the top level's; a short one for the test.
    let d = Daemon::start(
        "pool_size = 2\nidle_timeout = 1\n[[listen]]\naddress = \"127.0.0.1:0\"\nstall_after_bytes = 5\n",
    );
    let mut s = connect(d.addrs()[1]);
    s.write_all(b"hello world\n").unwrap();
    let t0 = Instant::now();
    assert_bytes(&read_n(&mut s, 5), b"hello");
    // More input is not read, nothing more is written...
    s.write_all(b"are you there?\n").unwrap();
    let rest = read_to_eof(&mut s);
    let waited = t0.elapsed();
    // ... until the idle timeout closes it with its notice.
    assert_bytes(&rest, &[&b"\r\n"[..], &idle_notice(1)].concat());
    assert!(
        waited >= Duration::from_millis(900),
        "the stall ended after {waited:?}, before the 1 s idle timeout"
    );
}

#[test]
fn a_session_is_closed_at_close_after() {
    let (_d, a) = with_listener("close_after = \"700ms\"\n");
    let t0 = Instant::now();
    let mut s = connect(a);
    round_trip(&mut s, b"still here\n");
    let rest = read_to_eof(&mut s);
    let lived = t0.elapsed();
    assert_bytes(&rest, SESSION_LIMIT);
    assert!(
        lived >= Duration::from_millis(690),
        "closed after {lived:?}, before close_after"
    );
}

#[test]
fn a_reload_applies_faults_to_new_sessions_not_open_ones() {
    let d = Daemon::start("pool_size = 2\n");
    let mut before = connect(d.addr());
    round_trip(&mut before, b"before\n");

    let text = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(
        d.config_path(),
        format!("{text}delay = \"300ms\"\nbanner = \"hi\\r\\n\"\n"),
    )
    .unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");

    // A new session has them at once...
    let mut after = connect(d.addr());
    assert_bytes(&read_n(&mut after, 4), b"hi\r\n");
    let t0 = Instant::now();
    round_trip(&mut after, b"new\n");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // ... the open one keeps what it started with: no delay, no banner.
    let t0 = Instant::now();
    round_trip(&mut before, b"old\n");
    let rtt = t0.elapsed();
    assert!(
        rtt < Duration::from_millis(300),
        "the open session was delayed ({rtt:?})"
    );
}

/// One plain HTTP GET; the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read answer");
    out.split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_string())
}

#[test]
fn faults_in_force_are_logged_shown_and_exported_and_a_reload_updates_them() {
    let d = Daemon::start(
        "pool_size = 2\nmetrics_listen = \"127.0.0.1:0\"\ndelay = \"20ms\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\nloss = 0.25\n",
    );
    let line = d.wait_for_log("faults in force on tcp://", IO_TIMEOUT);
    assert!(line.contains("WARN") || line.contains("warn"), "{line}");
    assert!(line.contains("delay=20ms"), "{line}");
    let line = d.wait_for_log("faults in force on udp://", IO_TIMEOUT);
    assert!(line.contains("loss=0.25"), "{line}");

    let status = ctl_status(&d);
    let faults = status["faults"].as_array().expect("a faults list");
    assert_eq!(faults.len(), 2, "{status}");
    assert_eq!(faults[0]["listener"], "tcp://127.0.0.1:0");
    assert_eq!(faults[0]["active"][0]["kind"], "delay");
    assert_eq!(faults[0]["active"][0]["value"], "20ms");
    assert_eq!(faults[1]["active"][0]["kind"], "loss");
    let human = ctl(&d, &["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("FAULTS:        tcp://127.0.0.1:0 delay=20ms"),
        "{human}"
    );

    let line = d.wait_for_log("metrics on http://", IO_TIMEOUT);
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.trim_end().trim_end_matches("/metrics").parse().ok())
        .expect("metrics address");
    let text = http_get(addr, "/metrics");
    assert!(
        text.contains("echo_lab_faults_active{listener=\"tcp://127.0.0.1:0\",kind=\"delay\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("echo_lab_faults_active{listener=\"udp://127.0.0.1:0\",kind=\"loss\"} 1"),
        "{text}"
    );

    // A reload that turns them off says so, and the status follows.
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let text = text
        .replace("delay = \"20ms\"\n", "")
        .replace("loss = 0.25\n", "");
    std::fs::write(d.config_path(), text).unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_for_log("faults: none in force any more", IO_TIMEOUT);
    let status = ctl_status(&d);
    assert_eq!(status["faults"], serde_json::json!([]), "{status}");
}

/// A daemon with one UDP `[[listen]]` table with `faults` (no rate
/// limit); returns it and the table's address.
fn udp_listener(faults: &str) -> (Daemon, std::net::SocketAddr) {
    let d = Daemon::start(&format!(
        "pool_size = 1\nudp_rate_packets = 0\nudp_rate_bytes = 0\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\n{faults}"
    ));
    let line = d.wait_for_log("udp echo on ", IO_TIMEOUT);
    let addr = line
        .split("udp echo on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no UDP address in {line:?}"));
    (d, addr)
}

/// Sends datagrams `0..count` (each its number), in groups small enough
/// for the socket buffers, and returns the numbers that came back.
fn udp_echoed(addr: std::net::SocketAddr, count: u32) -> Vec<u32> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    let mut back = Vec::new();
    let mut buf = [0u8; 16];
    for group in (0..count).collect::<Vec<_>>().chunks(100) {
        for i in group {
            s.send(&i.to_be_bytes()).unwrap();
        }
        // Echoes of this group until a quiet spell.
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while let Ok(n) = s.recv(&mut buf) {
            assert_eq!(n, 4);
            back.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
        }
    }
    back
}

#[test]
fn udp_loss_with_a_seed_drops_the_same_datagrams_every_run() {
    let run = || {
        let (d, a) = udp_listener("loss = 0.3\nfault_seed = 11\n");
        let back = udp_echoed(a, 1000);
        let status = ctl_status(&d);
        let dropped = status["udp"]["dropped_loss"].as_u64().unwrap();
        assert_eq!(back.len() as u64 + dropped, 1000, "{status}");
        back
    };
    let first = run();
    // Near the share (99.99 % interval for n = 1000, p = 0.3: 300 ± 57)...
    let lost = 1000 - first.len();
    assert!((243..=357).contains(&lost), "{lost} of 1000 lost");
    // ... and exactly the same datagrams on a second run.
    assert_eq!(first, run());
}

#[test]
fn a_udp_echo_leaves_no_earlier_than_the_delay() {
    let (_d, a) = udp_listener("delay = \"100ms\"\n");
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(a).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..5u8 {
        let t0 = Instant::now();
        s.send(&[i; 10]).unwrap();
        let n = s.recv(&mut buf).expect("an echo");
        let rtt = t0.elapsed();
        assert_eq!(&buf[..n], &[i; 10]);
        assert!(
            rtt >= Duration::from_millis(100),
            "datagram {i} came back after {rtt:?}"
        );
    }
}

#[test]
fn haproxy_gives_up_on_a_stalled_server_after_its_timeout() {
    // The stall outlasts HAProxy's patience: only HAProxy can end it.
    let d = Daemon::start(
        "pool_size = 2\nidle_timeout = 60\n[[listen]]\naddress = \"127.0.0.1:0\"\nstall_after_bytes = 5\n",
    );
    let haproxy = Haproxy::start(&d.addrs()[1].to_string(), "1s");
    let mut c = connect(haproxy.front);
    c.write_all(b"hello world\n").unwrap();
    let t0 = Instant::now();
    assert_bytes(&read_n(&mut c, 5), b"hello");
    // HAProxy ends the session (a FIN or a reset) once the server has
    // been silent for `timeout server`.
    let (rest, _end) = read_until_error(&mut c);
    let waited = t0.elapsed();
    assert_bytes(&rest, b"");
    assert!(
        waited >= Duration::from_millis(900),
        "HAProxy gave up after {waited:?}, before its 1 s timeout"
    );
    assert!(
        waited < Duration::from_secs(10),
        "HAProxy gave up only after {waited:?}"
    );
}
