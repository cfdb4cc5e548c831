//! Socket activation with several sockets, through systemd's own
//! `systemd-socket-activate`: each passed socket serves the `[[listen]]`
//! table its `FileDescriptorName=` names (here a PROXY listener, whose
//! configured address differs from the socket's), one with the unit's
//! default name serves as `host`/`port`, and a socket with a name no table
//! claims stops the daemon at start with an error that names it.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `systemd-socket-activate` listening on `ports` with `names`, starting
/// echo-lab on `config` at the first connection.
fn activate(ports: &[u16], names: &str, config: &str) -> (Child, tempfile::NamedTempFile) {
    let config = config_file(config);
    let mut cmd = Command::new("systemd-socket-activate");
    for p in ports {
        cmd.arg(format!("--listen=127.0.0.1:{p}"));
    }
    let child = cmd
        .arg(format!("--fdname={names}"))
        .arg(ECHO_LAB)
        .arg("--config")
        .arg(config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    (child, config)
}

/// Connects once the activation tool listens (bounded).
fn connect_when_up(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            return s;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to `addr` until `child` exits (bounded), whether or not a
/// connect succeeds; returns how it exited.
fn knock_until_exit(child: &mut Child, addr: SocketAddr) -> std::process::ExitStatus {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        if let Some(status) = wait_child(child, Duration::from_millis(20)) {
            return status;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
    }
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().expect("addr")
}

#[test]
fn each_passed_socket_serves_the_table_its_name_names() {
    let (main, proxied) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("dir");
    let control = dir.path().join("control.sock");
    let (mut child, _config) = activate(
        &[main, proxied],
        "echo-lab.socket:proxied",
        &format!(
            "control_socket = {:?}\n[[listen]]\naddress = \"127.0.0.1:9\"\nname = \"proxied\"\n\
             proxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n",
            control.to_str().expect("path")
        ),
    );
    // The default-named socket: plain echo (and the first connect starts
    // the daemon).
    let mut plain = connect_when_up(addr(main));
    round_trip(&mut plain, b"on the unit's main socket\n");
    // The named one is the PROXY listener: a header first, then echo.
    let mut p = connect_when_up(addr(proxied));
    p.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 5555 9\r\nbehind a proxy\n")
        .expect("write");
    assert_bytes(&read_n(&mut p, 15), b"behind a proxy\n");
    // ... and without one, the connection is closed unechoed.
    let mut bare = connect_when_up(addr(proxied));
    bare.write_all(b"no header\n").expect("write");
    let mut got = Vec::new();
    let _ = bare.read_to_end(&mut got);
    assert!(got.is_empty(), "echoed without a header: {got:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_passed_socket_that_no_table_claims_stops_the_daemon_at_start() {
    let port = free_port();
    let (mut child, _config) = activate(&[port], "stray", "");
    // A connection attempt makes the tool start the daemon, which refuses
    // and exits at once, so that attempt may itself fail (the socket can
    // close before connect(2) returns): knock until the process has ended.
    let status = knock_until_exit(&mut child, addr(port));
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("'stray'") && err.contains("no [[listen]] table claims"),
        "{err}"
    );
}
