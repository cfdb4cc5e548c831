//! The daemon's UDP echo through the real binary, with real peers:
//! netcat (`nc -u`) and Python sockets; the source guard with real
//! privileged source ports; the per-source rate; TCP service during a UDP
//! flood; reload adding, refusing and removing a UDP listener; the drain;
//! `echo-labctl status`; and `ListenDatagram=`-style socket activation
//! through systemd's own `systemd-socket-activate`.

mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The daemon's UDP address, from its `udp echo on` line.
fn udp_addr(d: &Daemon) -> SocketAddr {
    let line = d.wait_for_log("udp echo on ", START_TIMEOUT);
    let rest = &line[line.find("udp echo on ").unwrap() + 12..];
    rest.split([' ', ',']).next().unwrap().parse().unwrap()
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
    assert_eq!(from, to);
    buf.truncate(n);
    buf
}

fn udp_counter(d: &Daemon, name: &str) -> u64 {
    ctl_status(d)["udp"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no udp.{name} in status"))
}

fn nothing_queued(c: &UdpSocket) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let r = c.recv_from(&mut buf);
    c.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

fn require_root(what: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("ECHO_LAB_SKIP_ROOT_TESTS").is_some(),
        "{what} needs root: run as root, or set ECHO_LAB_SKIP_ROOT_TESTS=1 to skip it on purpose"
    );
    eprintln!("SKIPPED ({what}): not root and ECHO_LAB_SKIP_ROOT_TESTS is set");
    false
}

#[test]
fn udp_true_echoes_on_the_tcp_port_to_nc_and_python() {
    // The byte allowance must take a largest datagram after the others.
    let d = Daemon::start("udp = true\nudp_rate_bytes = 200000\n");
    let addr = udp_addr(&d);
    assert_eq!(addr, d.addr(), "UDP shares host and port with TCP");
    // netcat-openbsd: one line, one datagram; -w1 ends it a second after
    // the last datagram.
    let out = run_with_input(
        Command::new("nc")
            .args(["-u", "-w1", "127.0.0.1"])
            .arg(addr.port().to_string()),
        b"hello over udp\n",
        IO_TIMEOUT * 2,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello over udp\n",
        "{out:?}"
    );
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
port = int(sys.argv[1])
for n in (1, 64, 1472, 65507):
    data = bytes((i * 7 + n) % 256 for i in range(n))
    s.sendto(data, ("127.0.0.1", port))
    reply, src = s.recvfrom(70000)
    assert reply == data, (n, len(reply))
    assert src == ("127.0.0.1", port), src
print("ok")
"#;
    let out = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(addr.port().to_string()),
        b"",
        IO_TIMEOUT * 2,
    );
    assert!(out.status.success(), "python: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    // TCP still echoes on the same port.
    let mut s = connect(d.addr());
    round_trip(&mut s, b"tcp too\n");
    let st = ctl_status(&d);
    assert_eq!(st["udp_listen"][0], addr.to_string());
    assert_eq!(st["udp"]["echoed"], 5, "{st}");
}

#[test]
fn datagrams_from_service_ports_are_not_echoed_and_are_counted() {
    if !require_root("binding source ports 7, 19, 53 and 123") {
        return;
    }
    let d = Daemon::start("udp = true\n");
    let addr = udp_addr(&d);
    // Python as the peer, from the ports of echo, chargen, DNS and NTP
    // (on 127.0.0.9, clear of any local resolver or time server).
    let script = r#"
import socket, sys
port = int(sys.argv[1])
bad = []
for p in (7, 19, 53, 123):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.9", p))
    s.sendto(b"loop me", ("127.0.0.1", port))
    bad.append(s)
good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
good.settimeout(10)
good.sendto(b"fine", ("127.0.0.1", port))
assert good.recvfrom(100)[0] == b"fine"
print("ok")
"#;
    let out = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(addr.port().to_string()),
        b"",
        IO_TIMEOUT * 2,
    );
    assert!(out.status.success(), "python: {out:?}");
    wait_until(IO_TIMEOUT, "four refused sources in status", || {
        udp_counter(&d, "dropped_bad_source") == 4
    });
    // And a real socket on port 7 gets nothing back.
    let seven = client("127.0.0.9:7");
    let good = client("127.0.0.1:0");
    seven.send_to(b"echo to echo", addr).unwrap();
    assert_eq!(echo_of(&good, addr, b"after"), b"after");
    wait_until(IO_TIMEOUT, "the fifth refusal", || {
        udp_counter(&d, "dropped_bad_source") == 5
    });
    assert!(nothing_queued(&seven), "port 7 got an echo");
    assert_eq!(udp_counter(&d, "echoed"), 2);
    let text = ctl(&d, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("udp dropped:   5 bad source, 0 over rate"),
        "{text}"
    );
    d.wait_for_log("udp: refused", IO_TIMEOUT);
}

#[test]
fn a_source_above_its_bucket_is_cut_to_its_rate() {
    let d = Daemon::start("udp = true\nudp_rate_packets = 20\nudp_rate_bytes = 0\n");
    let addr = udp_addr(&d);
    let c = client("127.0.0.1:0");
    let start = Instant::now();
    // In bursts the socket buffer holds, each read before the next.
    for burst in 0..10u32 {
        for i in 0..30u32 {
            c.send_to(&(burst * 30 + i).to_be_bytes(), addr).unwrap();
        }
        wait_until(IO_TIMEOUT, "the burst to be received", || {
            udp_counter(&d, "received") == u64::from(burst + 1) * 30
        });
    }
    let sent_in = start.elapsed();
    let mut echoes = 0u64;
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 8];
    while c.recv_from(&mut buf).is_ok() {
        echoes += 1;
    }
    let most = 20 + (20.0 * sent_in.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        (20..=most).contains(&echoes),
        "{echoes} echoes; the cap allows 20..={most}"
    );
    let st = ctl_status(&d);
    assert_eq!(st["udp"]["echoed"], echoes, "{st}");
    assert_eq!(st["udp"]["dropped_rate"], 300 - echoes, "{st}");
    // Bytes: a 64 KiB allowance refuses a datagram above it.
    let d = Daemon::start("udp = true\nudp_rate_packets = 0\nudp_rate_bytes = 1000\n");
    let addr = udp_addr(&d);
    let c = client("127.0.0.1:0");
    assert_eq!(echo_of(&c, addr, &[1; 600]), vec![1; 600]);
    c.send_to(&[2; 600], addr).unwrap();
    assert_eq!(echo_of(&c, addr, &[3; 400]), vec![3; 400]);
    wait_until(IO_TIMEOUT, "the byte refusal", || {
        udp_counter(&d, "dropped_rate") == 1
    });
}

#[test]
fn tcp_is_served_while_udp_is_flooded() {
    let d = Daemon::start("udp = true\nudp_rate_packets = 0\nudp_rate_bytes = 0\npool_size = 2\n");
    let addr = udp_addr(&d);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Bounded: at most 400 000 datagrams or until told to stop.
            let socks: Vec<UdpSocket> = (0..4).map(|_| client("127.0.0.1:0")).collect();
            let mut sent = 0u64;
            while sent < 400_000 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &socks {
                    if s.send_to(&[0x55; 64], addr).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent
        })
    };
    wait_until(IO_TIMEOUT, "the flood to reach the daemon", || {
        udp_counter(&d, "received") > 1000
    });
    let before = udp_counter(&d, "received");
    let mut s = connect(d.addr());
    let mut worst = Duration::ZERO;
    let tcp_start = Instant::now();
    let mut trips = 0u32;
    // At least 300 round trips and a second of flood.
    while trips < 300 || tcp_start.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        round_trip(&mut s, format!("tcp {trips} during the flood\n").as_bytes());
        worst = worst.max(t.elapsed());
        trips += 1;
    }
    let during = udp_counter(&d, "received") - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert!(
        during > 1000,
        "the flood went on during the TCP round trips ({during} datagrams)"
    );
    // Every TCP round trip succeeded (round_trip panics otherwise), none
    // waited behind the flood for long.
    assert!(
        worst < Duration::from_secs(2),
        "slowest TCP round trip {worst:?}"
    );
    eprintln!("flood: {sent} datagrams sent, {during} received during {trips} TCP round trips, slowest {worst:?}");
}

#[test]
fn reload_adds_refuses_and_removes_a_udp_listener() {
    let d = Daemon::start("");
    assert!(ctl_status(&d)["udp"].is_null());
    // Add one on an ephemeral port.
    std::fs::write(
        d.config_path(),
        "host = \"127.0.0.1\"\nport = 0\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\n",
    )
    .unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    let st = ctl_status(&d);
    let addr: SocketAddr = st["udp_listen"][0].as_str().unwrap().parse().unwrap();
    let c = client("127.0.0.1:0");
    assert_eq!(echo_of(&c, addr, b"added"), b"added");
    // TCP untouched.
    let mut s = connect(d.addr());
    round_trip(&mut s, b"tcp\n");
    // A second UDP address that is taken: the reload fails, nothing changes.
    let squatter = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    std::fs::write(
        d.config_path(),
        format!(
            "host = \"127.0.0.1\"\nport = 0\nmax_connections = 7\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
             [[listen]]\naddress = \"{taken}\"\nprotocol = \"udp\"\n"
        ),
    )
    .unwrap();
    let out = ctl(&d, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {taken}/udp")),
        "{err}"
    );
    let st = ctl_status(&d);
    assert_eq!(st["udp_listen"], serde_json::json!([addr.to_string()]));
    assert_ne!(st["last_reload"]["error"], serde_json::Value::Null);
    assert_eq!(echo_of(&c, addr, b"kept"), b"kept");
    round_trip(&mut s, b"tcp still\n");
    // Remove it: the port is closed.
    std::fs::write(d.config_path(), "host = \"127.0.0.1\"\nport = 0\n").unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(ctl_status(&d)["udp"].is_null());
    wait_until(IO_TIMEOUT, "the UDP port to be free", || {
        UdpSocket::bind(addr).is_ok()
    });
    round_trip(&mut s, b"tcp after\n");
}

#[test]
fn drain_stops_udp_at_once_while_tcp_clients_finish() {
    let d = Daemon::start("udp = true\ndrain_timeout = 30\n");
    let addr = udp_addr(&d);
    let c = client("127.0.0.1:0");
    assert_eq!(echo_of(&c, addr, b"before"), b"before");
    let mut s = connect(d.addr());
    round_trip(&mut s, b"staying\n");
    d.signal(libc::SIGTERM);
    d.wait_for_log("stop requested", IO_TIMEOUT);
    // The UDP socket is closed at once; the TCP client is still served.
    wait_until(IO_TIMEOUT, "the UDP port to be closed", || {
        UdpSocket::bind(addr).is_ok()
    });
    let st = ctl_status(&d);
    assert_eq!(st["draining"], true);
    assert_eq!(st["udp_listen"], serde_json::json!([]));
    let notice = read_n(&mut s, SHUTTING_DOWN.len());
    assert_eq!(notice, SHUTTING_DOWN);
    round_trip(&mut s, b"served while draining\n");
}

#[test]
fn listen_datagram_sockets_from_socket_activation_are_served() {
    // systemd's own tool passes a bound UDP socket as LISTEN_FDS=1 and
    // starts the daemon on the first datagram, as a ListenDatagram= unit.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let config = config_file(&format!(
        "control_socket = {:?}\nhost = \"127.0.0.1\"\nport = 0\n",
        control.to_str().unwrap()
    ));
    let mut child = Command::new("systemd-socket-activate")
        .arg("--datagram")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(ECHO_LAB)
        .arg("--config")
        .arg(config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let kill = KillOnDrop(child.id());
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = client("127.0.0.1:0");
    // The tool listens first; until it does, the datagram is refused.
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + START_TIMEOUT;
    let echo = loop {
        assert!(Instant::now() < deadline, "no echo through activation");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = c.send_to(b"activated", to);
        if let Ok((n, _)) = c.recv_from(&mut buf) {
            break buf[..n].to_vec();
        }
    };
    assert_eq!(echo, b"activated");
    let out = run_with_input(
        Command::new(ECHO_LABCTL)
            .arg("--socket")
            .arg(&control)
            .args(["status", "--json"]),
        b"",
        IO_TIMEOUT,
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["socket_activated"], true, "{st}");
    assert_eq!(
        st["udp_listen"],
        serde_json::json!([to.to_string()]),
        "{st}"
    );
    assert_eq!(st["listen"], serde_json::json!([]), "{st}");
    drop(kill);
    let _ = child.wait();
}

/// Sends SIGKILL to a process when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid we spawned.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}
