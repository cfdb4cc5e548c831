//! `access`: who may connect. Ordered allow/deny rules, first match wins,
//! checked against real clients bound to different loopback addresses
//! (127.0.0.0/8 is all this host's) and ::1; a refused TCP client is
//! closed without a word, a refused UDP source gets nothing; rules count
//! what they match; a reload changes the rules for the next client while
//! established connections stay; a `[[listen]]` table's own rules replace
//! the top-level ones for its address.

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;

use support::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// True if a client from `from` is served (its echo comes back); false if
/// the server closes it instead (EOF or reset, with no byte said).
fn served(from: &str, addr: SocketAddr) -> bool {
    let mut s = connect_from(ip(from), addr);
    match try_round_trip(&mut s, format!("hello from {from}\n").as_bytes()) {
        Ok(_) => true,
        Err(e)
            if e.starts_with("EOF after 0 ")
                || e.contains("reset")
                || e.contains("Broken pipe") =>
        {
            false
        }
        Err(e) => panic!("{from}: {e}"),
    }
}

/// True if a client from `from` that sends nothing is closed with nothing
/// said (a refusal by rule).
fn closed_silently(from: &str, addr: SocketAddr) -> bool {
    let mut s = connect_from(ip(from), addr);
    read_to_eof(&mut s).is_empty()
}

fn rule_counts(d: &Daemon) -> Vec<(String, String, u64)> {
    ctl_status(d)["stats"]["admission"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["scope"].as_str().unwrap().to_string(),
                r["rule"].as_str().unwrap().to_string(),
                r["matches"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn admission(d: &Daemon, field: &str) -> u64 {
    ctl_status(d)["stats"]["admission"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no admission.{field}"))
}

#[test]
fn every_rule_form_decides_and_counts_on_loopback_sources() {
    let d = Daemon::start(
        "pool_size = 1\naccess = [\"deny 127.0.0.2\", \"allow 127.0.0.3/32\", \
         \"deny 127.0.1.0/24\", \"allow 127.0.0.0/8\", \"deny all\"]\n",
    );
    let a = d.addr();
    assert!(closed_silently("127.0.0.2", a), "an address rule denies");
    assert!(served("127.0.0.3", a), "a /32 allows");
    assert!(closed_silently("127.0.1.5", a), "a /24 denies");
    assert!(
        served("127.0.0.9", a),
        "a /8 allows what no earlier rule matched"
    );
    assert!(served("127.0.2.1", a));
    assert_eq!(
        rule_counts(&d),
        [
            ("default".into(), "deny 127.0.0.2".into(), 1),
            ("default".into(), "allow 127.0.0.3".into(), 1),
            ("default".into(), "deny 127.0.1.0/24".into(), 1),
            ("default".into(), "allow 127.0.0.0/8".into(), 2),
            ("default".into(), "deny all".into(), 0),
            ("default".into(), "(no rule matched: allowed)".into(), 0),
        ]
    );
    assert_eq!(admission(&d, "refused_rule"), 2);
    // A refused client never reached a worker: nothing open, and the
    // connection count is of accepted ones.
    let st = ctl_status(&d);
    assert_eq!(st["stats"]["active"], 0);
    assert_eq!(st["stats"]["total"], 5);
    // And it is logged, naming the rule.
    d.wait_for_log(
        "refused 127.0.0.2: access rule 'deny 127.0.0.2'",
        IO_TIMEOUT,
    );
}

#[test]
fn the_first_matching_rule_wins() {
    let d = Daemon::start("access = [\"allow 127.0.0.0/24\", \"deny 127.0.0.7\"]\n");
    assert!(served("127.0.0.7", d.addr()), "the /24 comes first");
    let d = Daemon::start("access = [\"deny 127.0.0.7\", \"allow 127.0.0.0/24\"]\n");
    assert!(closed_silently("127.0.0.7", d.addr()));
    assert!(served("127.0.0.8", d.addr()));
    // No rule matching allows (nginx): an allow-list ends with deny all.
    let d = Daemon::start("access = [\"deny 127.0.0.7\"]\n");
    assert!(served("127.0.5.5", d.addr()));
}

#[test]
fn ipv6_rules_on_the_ipv6_loopback() {
    let d = Daemon::start_raw("host = \"::1\"\nport = 0\naccess = [\"deny ::1\"]\n");
    assert!(d.addr().is_ipv6());
    assert!(closed_silently("::1", d.addr()));
    let d = Daemon::start_raw(
        "host = \"::1\"\nport = 0\naccess = [\"deny 127.0.0.0/8\", \"allow ::1/128\", \"deny all\"]\n",
    );
    assert!(served("::1", d.addr()), "an IPv4 rule does not match ::1");
    let d = Daemon::start_raw("host = \"::1\"\nport = 0\naccess = [\"deny ::/0\"]\n");
    assert!(closed_silently("::1", d.addr()));
}

#[test]
fn a_dual_stack_socket_matches_ipv4_clients_as_ipv4() {
    let d = Daemon::start_raw("host = \"::\"\nport = 0\naccess = [\"deny 127.0.0.2\"]\n");
    let port = d.addr().port();
    let a = SocketAddr::new(ip("127.0.0.1"), port);
    // 127.0.0.2 arrives as ::ffff:127.0.0.2 on the dual-stack socket.
    assert!(closed_silently("127.0.0.2", a));
    assert!(served("127.0.0.3", a));
}

#[test]
fn a_reload_changes_the_rules_for_the_next_client_only() {
    let d = Daemon::start("pool_size = 2\naccess = [\"deny 127.0.0.7\", \"allow all\"]\n");
    let a = d.addr();
    assert!(closed_silently("127.0.0.7", a));
    let mut open8 = connect_from(ip("127.0.0.8"), a);
    round_trip(&mut open8, b"before the reload\n");

    let text = std::fs::read_to_string(d.config_path()).unwrap().replace(
        "access = [\"deny 127.0.0.7\", \"allow all\"]",
        "access = [\"deny 127.0.0.8\", \"allow all\"]",
    );
    std::fs::write(d.config_path(), text).unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("access: [\"deny 127.0.0.7\", \"allow all\"] -> [\"deny 127.0.0.8\""),
        "{said}"
    );

    // The connection from 127.0.0.8 made before stays and is served...
    round_trip(&mut open8, b"after the reload\n");
    // ...the next one from 127.0.0.8 is refused, and 127.0.0.7 may come.
    assert!(closed_silently("127.0.0.8", a));
    assert!(served("127.0.0.7", a));
    round_trip(&mut open8, b"still here\n");
}

#[test]
fn a_bad_rule_is_refused_with_file_line_column_and_key() {
    let f = config_file("port = 0\naccess = [\n  \"allow 127.0.0.0/8\",\n  \"deny all\",\n  \"deny 10.1.2.3/16\",\n]\n");
    let out = Command::new(ECHO_LAB)
        .arg("--check-config")
        .arg("--config")
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:5:3: key 'access[2]'", f.path().display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("did you mean 10.1.0.0/16"), "{err}");
}

/// The UDP addresses from status: the main one (the TCP port) and the
/// `[[listen]]` one.
fn udp_addrs(d: &Daemon) -> (SocketAddr, SocketAddr) {
    let st = ctl_status(d);
    let all: Vec<SocketAddr> = st["udp_listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    let main = *all.iter().find(|a| a.port() == d.addr().port()).unwrap();
    let extra = *all.iter().find(|a| a.port() != d.addr().port()).unwrap();
    (main, extra)
}

fn udp_from(from: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip(from), 0)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn udp_echoed(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> bool {
    s.send_to(msg, to).unwrap();
    let mut buf = [0u8; 256];
    match s.recv_from(&mut buf) {
        Ok((n, src)) => {
            assert_eq!((&buf[..n], src), (msg, to));
            true
        }
        Err(e) => panic!("no echo from {to}: {e}"),
    }
}

#[test]
fn a_refused_udp_source_gets_nothing_and_a_listen_table_has_its_own_rules() {
    let d = Daemon::start(
        "udp = true\naccess = [\"deny 127.0.0.2\", \"allow all\"]\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\naccess = [\"deny 127.0.0.3\"]\n",
    );
    let (main, extra) = udp_addrs(&d);
    let two = udp_from("127.0.0.2");
    let three = udp_from("127.0.0.3");
    // 127.0.0.2: nothing on the main address, an echo on the listener
    // whose own rules do not name it.
    two.send_to(b"refused", main).unwrap();
    wait_until(IO_TIMEOUT, "the datagram counted as refused", || {
        ctl_status(&d)["udp"]["dropped_access"] == 1
    });
    assert!(udp_echoed(&two, extra, b"listener's own rules"));
    // 127.0.0.3: the reverse.
    assert!(udp_echoed(&three, main, b"top-level rules"));
    three.send_to(b"refused too", extra).unwrap();
    wait_until(IO_TIMEOUT, "the second datagram counted as refused", || {
        ctl_status(&d)["udp"]["dropped_access"] == 2
    });
    // Nothing arrived for either refused datagram (they were decided
    // before the counter moved).
    for s in [&two, &three] {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let got = s.recv_from(&mut buf);
        assert!(got.is_err(), "a refused source got {got:?}");
    }
    // The listener's rules are counted under its address.
    let counts = rule_counts(&d);
    assert!(
        counts.contains(&(format!("udp {extra}"), "deny 127.0.0.3".into(), 1)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&("default".into(), "deny 127.0.0.2".into(), 1)),
        "{counts:?}"
    );
    // TCP on the main address follows the top-level rules.
    assert!(closed_silently("127.0.0.2", d.addr()));
    assert!(served("127.0.0.3", d.addr()));
    d.wait_for_log("udp: refused 1 datagram(s) by access rules", IO_TIMEOUT);
}

#[test]
fn a_tcp_listen_table_has_its_own_rules_and_a_reload_changes_them() {
    let d = Daemon::start(
        "access = [\"deny 127.0.0.2\", \"allow all\"]\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\naccess = [\"deny 127.0.0.3\", \"allow all\"]\n",
    );
    let (main, extra) = (d.addrs()[0], d.addrs()[1]);
    assert!(closed_silently("127.0.0.2", main));
    assert!(served("127.0.0.3", main));
    assert!(
        served("127.0.0.2", extra),
        "the listener's own rules replace the top-level ones"
    );
    assert!(closed_silently("127.0.0.3", extra));
    let counts = rule_counts(&d);
    assert!(
        counts.contains(&(format!("tcp {extra}"), "deny 127.0.0.3".into(), 1)),
        "{counts:?}"
    );
    // A reload that changes only the listener's rules: its socket stays,
    // the next client obeys them.
    let mut open2 = connect_from(ip("127.0.0.2"), extra);
    round_trip(&mut open2, b"before\n");
    let text = std::fs::read_to_string(d.config_path()).unwrap().replace(
        "access = [\"deny 127.0.0.3\", \"allow all\"]",
        "access = [\"deny all\"]",
    );
    std::fs::write(d.config_path(), text).unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    round_trip(&mut open2, b"after\n");
    assert!(closed_silently("127.0.0.4", extra));
    assert!(served("127.0.0.4", main));
}

#[test]
fn refusals_by_reason_reach_the_metrics() {
    use std::io::{Read, Write};
    let d = Daemon::start(
        "metrics_listen = \"127.0.0.1:0\"\nmax_connections_per_source = 1\n\
         access = [\"deny 127.0.0.2\", \"allow all\"]\n",
    );
    let line = d.wait_for_log("metrics on http://", START_TIMEOUT);
    let metrics: SocketAddr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    assert!(closed_silently("127.0.0.2", d.addr()));
    let mut held = connect_from(ip("127.0.0.3"), d.addr());
    round_trip(&mut held, b"one\n");
    let mut over = connect_from(ip("127.0.0.3"), d.addr());
    assert_bytes(&read_to_eof(&mut over), &source_busy_notice(1));
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    for want in [
        "echo_lab_connections_refused_total{reason=\"rule\"} 1",
        "echo_lab_connections_refused_total{reason=\"source_cap\"} 1",
        "echo_lab_connections_refused_total{reason=\"source_rate\"} 0",
        "echo_lab_connections_refused_total{reason=\"busy\"} 0",
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }
}
