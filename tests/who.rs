//! `mode = "who"` listeners against real clients: the reply's fields as a
//! raw TCP client reads them, behind a PROXY header, after a reload, and
//! through `echo-labctl who` (once, and tallied with --count).

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;

use support::*;

const WHO: &str = "instance = \"edge-3\"\n\
    [[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"who\"\n\
    [[listen]]\naddress = \"127.0.0.1:0\"\nmode = \"who\"\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n";

/// The daemon's addresses: echo, who, who behind PROXY.
fn start() -> (Daemon, SocketAddr, SocketAddr) {
    let d = Daemon::start(WHO);
    let a = d.addrs();
    assert_eq!(a.len(), 3, "{a:?}");
    let (who, proxied) = (a[1], a[2]);
    (d, who, proxied)
}

fn reply(bytes: &[u8]) -> serde_json::Value {
    assert_eq!(
        bytes.last(),
        Some(&b'\n'),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
    let text = std::str::from_utf8(bytes).expect("utf-8");
    assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
    serde_json::from_str(text).expect("one JSON object")
}

#[test]
fn a_who_client_gets_one_json_line_with_the_pinned_fields_then_the_close() {
    let (d, who, _) = start();
    let mut c = connect(who);
    let me = c.local_addr().unwrap();
    let v = reply(&read_to_eof(&mut c));
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "client",
            "config_generation",
            "hostname",
            "instance",
            "listener",
            "peer",
            "time",
            "version",
            "worker"
        ]
    );
    assert_eq!(v["instance"], "edge-3");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(v["hostname"], host.trim());
    assert_eq!(v["version"], ctl_status(&d)["version"]);
    assert_eq!(v["listener"], who.to_string());
    assert_eq!(v["client"], me.to_string());
    assert_eq!(v["peer"], me.to_string());
    assert!(v["worker"].is_u64(), "{v}");
    assert_eq!(v["config_generation"], 1);
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(v.get("tls").is_none(), "plain: no tls object");
    // Logged as a session that ended with its reply.
    let line = d.wait_for_log(&format!("client={me} "), IO_TIMEOUT);
    assert!(line.contains("reason=who"), "{line}");
    // The echo address still echoes.
    let mut e = connect(d.addr());
    round_trip(&mut e, b"still echo\n");
}

#[test]
fn behind_a_proxy_the_client_is_the_header_source_and_the_peer_the_proxy() {
    let (_d, _, proxied) = start();
    let mut c = connect(proxied);
    let me = c.local_addr().unwrap();
    // A PROXY v1 header, and bytes after it that must not be echoed.
    c.write_all(
        format!(
            "PROXY TCP4 192.0.2.7 {} 50112 {}\r\nhello\n",
            proxied.ip(),
            proxied.port()
        )
        .as_bytes(),
    )
    .unwrap();
    let v = reply(&read_to_eof(&mut c));
    assert_eq!(v["client"], "192.0.2.7:50112");
    assert_eq!(v["peer"], me.to_string());
    assert_eq!(v["listener"], proxied.to_string());
}

#[test]
fn the_config_generation_counts_reloads() {
    let (d, _, _) = start();
    let who = d.addrs()[1];
    // Same addresses (ports fixed now), a new instance name.
    let again = WHO
        .replace("edge-3", "edge-4")
        .replacen("127.0.0.1:0", &who.to_string(), 1)
        .replacen("127.0.0.1:0", &d.addrs()[2].to_string(), 1);
    d.reload_with(&again, "reloaded");
    let v = reply(&read_to_eof(&mut connect(who)));
    assert_eq!(v["config_generation"], 2);
    assert_eq!(v["instance"], "edge-4");
}

fn labctl(args: &[&str]) -> std::process::Output {
    run_with_input(Command::new(ECHO_LABCTL).args(args), b"", IO_TIMEOUT * 3)
}

#[test]
fn echo_labctl_who_prints_the_reply_and_tallies_sessions() {
    let (_d, who, _) = start();
    let addr = who.to_string();
    let out = labctl(&["who", &addr]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("instance:          edge-3\n"), "{text}");
    assert!(
        text.contains(&format!("listener:          {addr}\n")),
        "{text}"
    );
    let out = labctl(&["who", &addr, "--json"]);
    assert_eq!(reply(&out.stdout)["instance"], "edge-3");
    let out = labctl(&["who", &addr, "--count", "20"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("\nedge-3         20 100.0%\n"), "{table}");
    assert!(table.contains("\n(failed)        0   0.0%\n"), "{table}");
    // Nobody there: counted as failed, exit 1.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = gone.local_addr().unwrap().to_string();
    drop(gone);
    let out = labctl(&["who", &dead, "--count", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("(failed)        2 100.0%"), "{table}");
}

/// A daemon with a UDP `who` address; returns it and that address.
fn start_udp() -> (Daemon, SocketAddr) {
    let d = Daemon::start(
        "instance = \"edge-u\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\nmode = \"who\"\n",
    );
    let line = d.wait_for_log("udp echo on ", IO_TIMEOUT);
    let addr = line
        .split("udp echo on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    (d, addr.parse().unwrap())
}

fn udp_client(to: SocketAddr) -> std::net::UdpSocket {
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.connect(to).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c
}

#[test]
fn over_udp_a_who_reply_replaces_the_echo_and_is_never_larger_than_the_request() {
    let (d, who) = start_udp();
    let c = udp_client(who);
    c.send(&[b'x'; 1024]).unwrap();
    let mut buf = [0u8; 2048];
    let n = c.recv(&mut buf).expect("a reply");
    assert!(n <= 1024, "a {n}-byte reply to a 1024-byte request");
    let v = reply(&buf[..n]);
    let me = c.local_addr().unwrap().to_string();
    assert_eq!(v["instance"], "edge-u");
    assert_eq!(v["listener"], who.to_string());
    assert_eq!(v["client"], me);
    assert_eq!(v["peer"], me);
    assert!(v["worker"].is_null(), "{v}");
    // A request smaller than the reply gets nothing, and is counted.
    c.send(b"who?").unwrap();
    wait_until(IO_TIMEOUT, "the short request counted", || {
        ctl_status(&d)["udp"]["dropped_who_too_small"] == 1
    });
    c.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    assert!(c.recv(&mut buf).is_err(), "no reply to a short request");
}

#[test]
fn echo_labctl_who_udp_pads_its_request_and_tallies() {
    let (_d, who) = start_udp();
    let addr = who.to_string();
    let out = labctl(&["who", "--udp", &addr]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("instance:          edge-u\n"), "{text}");
    assert!(text.contains("worker:            -\n"), "{text}");
    let out = labctl(&["who", "--udp", &addr, "--count", "5"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("\nedge-u          5 100.0%\n"), "{table}");
}

#[test]
fn a_restarted_udp_thread_and_a_reload_keep_answering_who() {
    let config = "[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\nmode = \"who\"\n";
    // The UDP thread panics at its first datagram and is restarted.
    let d = Daemon::start_env(config, &[("ECHO_LAB_FAULT_THREAD_PANIC", "udp")]);
    let line = d.wait_for_log("udp echo on ", IO_TIMEOUT);
    let who: SocketAddr = line
        .split("udp echo on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let c = udp_client(who);
    c.send(&[b'x'; 1024]).unwrap();
    d.wait_for_log("restarted the udp thread", IO_TIMEOUT);
    // That datagram died with the thread (taken, not answered): ask again.
    c.send(&[b'x'; 1024]).unwrap();
    let mut buf = [0u8; 2048];
    let n = c.recv(&mut buf);
    let v = reply(&buf[..n.expect("a reply from the restarted thread")]);
    assert_eq!(v["config_generation"], 1);
    // A reload that keeps the address keeps it a who address.
    d.reload_with(&config.replace("127.0.0.1:0", &who.to_string()), "reloaded");
    c.send(&[b'x'; 1024]).unwrap();
    let n = c.recv(&mut buf).expect("a reply after the reload");
    assert_eq!(reply(&buf[..n])["config_generation"], 2);
}
