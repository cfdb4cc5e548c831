//! Extra TCP listeners and the PROXY protocol, through the real binary:
//!
//! * Debian's HAProxy in front (`send-proxy` and `send-proxy-v2`): the
//!   client's own address, not HAProxy's, is the one echo-lab names;
//! * a client that forges a header from a source not in `proxy_trusted` is
//!   closed at once, unechoed;
//! * a trusted source's header may arrive split at any byte, and the bytes
//!   after it — even in the same write — are echoed; a bad header closes
//!   the connection and is counted;
//! * a reload adds and removes a TCP listener while connections on the
//!   others go on.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

/// A listener on 127.0.0.1 that takes PROXY headers from 127.0.0.1 only.
const PROXY_LISTENER: &str = "[[listen]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]\n";

/// A connected client bound to `source` (127.0.0.x: a distinct source on
/// loopback).
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{source}:0").parse().expect("source");
    s.bind(&from.into()).expect("bind the client's source");
    s.connect_timeout(&to.into(), IO_TIMEOUT).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

#[test]
fn behind_haproxy_the_client_address_is_the_one_in_the_header() {
    let d = Daemon::start(&format!("[log]\nlevel = \"debug\"\n{PROXY_LISTENER}"));
    let back = d.addrs()[1];
    for (send, source) in [("send-proxy", "127.0.0.5"), ("send-proxy-v2", "127.0.0.6")] {
        let h = Haproxy::start(&format!("{back} {send}"), "30s");
        let to = h.front;
        let mut c = connect_from(source, to);
        round_trip(&mut c, format!("through haproxy {send}\n").as_bytes());
        let mine = c.local_addr().expect("local");
        let line = d.wait_for_log(&format!("client {mine}"), IO_TIMEOUT);
        eprintln!("proxy: {send}: {line}");
        assert!(line.contains(&format!("on {back}")), "{line}");
    }
    assert_eq!(d.stat("proxy_untrusted"), 0);
    assert_eq!(d.stat("proxy_refused"), 0);
}

#[test]
fn a_header_from_an_untrusted_source_is_refused_unechoed() {
    let d = Daemon::start(PROXY_LISTENER);
    let proxied = d.addrs()[1];
    let mut forger = connect_from("127.0.0.9", proxied);
    forger
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 7007\r\nhello\n")
        .expect("write");
    // Closed unread: a FIN, or a reset since its bytes were never read.
    let mut got = Vec::new();
    let closed = forger.read_to_end(&mut got);
    assert!(got.is_empty(), "echoed to a forger: {got:?} ({closed:?})");
    if let Err(e) = closed {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    d.wait_for_log("not in proxy_trusted", IO_TIMEOUT);
    assert_eq!(d.stat("proxy_untrusted"), 1);
    // The plain listener is unaffected, whoever the client is.
    let mut plain = connect_from("127.0.0.9", d.addr());
    round_trip(&mut plain, b"plain listener\n");
}

#[test]
fn a_split_header_then_data_in_the_same_write_are_handled_byte_exact() {
    let d = Daemon::start(PROXY_LISTENER);
    let proxied = d.addrs()[1];
    let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 4444 7007\r\n";
    // Split at every byte: first part, pause, the rest with data after it.
    for cut in 0..=header.len() {
        let mut c = connect_from("127.0.0.1", proxied);
        c.write_all(&header[..cut]).expect("first part");
        c.flush().expect("flush");
        let mut rest = header[cut..].to_vec();
        let data = format!("data after a header cut at {cut}\n");
        rest.extend_from_slice(data.as_bytes());
        c.write_all(&rest).expect("rest");
        assert_bytes(&read_n(&mut c, data.len()), data.as_bytes());
    }
    // A v2 header and data in one write.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 1, 127, 0, 0, 1, 0x1f, 0x90, 0x1b, 0x5f]);
    v2.extend_from_slice(b"binary \x00 data\n");
    let mut c = connect_from("127.0.0.1", proxied);
    c.write_all(&v2).expect("v2");
    assert_bytes(&read_n(&mut c, 14), b"binary \x00 data\n");
    assert_eq!(d.stat("proxy_refused"), 0);
}

#[test]
fn a_bad_or_missing_header_closes_the_connection_and_is_counted() {
    let d = Daemon::start(PROXY_LISTENER);
    let proxied = d.addrs()[1];
    let mut c = connect_from("127.0.0.1", proxied);
    c.write_all(b"hello, no header\n").expect("write");
    assert!(read_to_eof(&mut c).is_empty(), "echoed without a header");
    d.wait_for_log("does not start with a PROXY header", IO_TIMEOUT);
    // Silent: closed when the header timeout (5 s) passes.
    let t0 = Instant::now();
    let mut silent = connect_from("127.0.0.1", proxied);
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "silent connection got data");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(4500) && waited < IO_TIMEOUT,
        "closed after {waited:?}"
    );
    wait_until(IO_TIMEOUT, "both counted", || d.stat("proxy_refused") == 2);
}

#[test]
fn a_reload_adds_and_removes_a_tcp_listener_while_the_others_serve() {
    let extra = free_port();
    let d = Daemon::start("pool_size = 2\n");
    let mut kept = connect(d.addr());
    round_trip(&mut kept, b"before\n");
    let with_extra = format!(
        "host = \"127.0.0.1\"\nport = {}\npool_size = 2\n[[listen]]\naddress = \"127.0.0.1:{extra}\"\n",
        d.addr().port()
    );
    std::fs::write(d.config_path(), &with_extra).expect("config");
    d.signal(libc::SIGHUP);
    d.wait_for_log("reloaded", IO_TIMEOUT);
    let extra_addr: SocketAddr = format!("127.0.0.1:{extra}").parse().expect("addr");
    let mut on_extra = connect(extra_addr);
    round_trip(&mut on_extra, b"on the new listener\n");
    round_trip(&mut kept, b"the old one goes on\n");
    // Removed again: new connects refused, established ones stay.
    let without = format!(
        "host = \"127.0.0.1\"\nport = {}\npool_size = 2\n",
        d.addr().port()
    );
    std::fs::write(d.config_path(), without).expect("config");
    d.signal(libc::SIGHUP);
    wait_until(IO_TIMEOUT, "the extra listener closed", || {
        TcpStream::connect_timeout(&extra_addr, Duration::from_millis(200)).is_err()
    });
    round_trip(&mut on_extra, b"established stays\n");
    round_trip(&mut kept, b"and so does this one\n");
}

#[test]
fn behind_haproxy_the_access_rules_and_the_per_source_cap_judge_the_header_address() {
    let d = Daemon::start(&format!(
        "access = [\"deny 127.0.0.5\", \"allow all\"]\nmax_connections_per_source = 1\n{PROXY_LISTENER}"
    ));
    let back = d.addrs()[1];
    let h = Haproxy::start(&format!("{back} send-proxy-v2"), "30s");
    let to = h.front;
    // Denied by the rule for its own address, though HAProxy (127.0.0.1)
    // is what connected: closed with nothing echoed.
    let mut denied = connect_from("127.0.0.5", to);
    denied.write_all(b"let me in\n").unwrap();
    let mut got = Vec::new();
    let _ = denied.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    // The cap counts each client's own address, not HAProxy's: one each.
    let mut six = connect_from("127.0.0.6", to);
    round_trip(&mut six, b"first from .6\n");
    let mut seven = connect_from("127.0.0.7", to);
    round_trip(&mut seven, b"first from .7\n");
    let mut six_again = connect_from("127.0.0.6", to);
    six_again.write_all(b"second from .6\n").unwrap();
    let mut got = Vec::new();
    let _ = six_again.read_to_end(&mut got);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "[echo-lab] busy: 1 connections from your address already open, try again later\r\n"
    );
    round_trip(&mut six, b"still served\n");
    let st = ctl_status(&d);
    assert_eq!(st["stats"]["admission"]["refused_rule"], 1);
    assert_eq!(st["stats"]["admission"]["refused_source_cap"], 1);
    let out = ctl(&d, &["sources", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let of = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["source"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {list}"))
    };
    // (127.0.0.1 is there too: HAProxy's readiness probe came from it.)
    let six = of("127.0.0.6");
    assert_eq!(
        (six["open"].as_u64(), six["refused_cap"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(of("127.0.0.5")["refused_rule"], 1);
    assert_eq!(of("127.0.0.7")["open"], 1);
}
