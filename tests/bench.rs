//! `echo-labctl bench` against real servers on loopback: a correct echo
//! server must give a clean run with the documented JSON fields, and servers
//! that corrupt or swallow echoes must make the run fail.
//!
//! The correct server is the real daemon; the broken ones (corrupting,
//! swallowing) are small thread-per-connection servers living in the test
//! process, bound before the client starts. Every client run is bounded by
//! a deadline after which it is killed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// What a test server does with the bytes it reads.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Echo with the first byte of every read inverted.
    Corrupt,
    /// Read and never answer.
    Swallow,
}

/// Starts a server on 127.0.0.1:0 and returns its address.
fn server(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || serve(stream, behaviour));
        }
    });
    addr
}

fn serve(mut stream: TcpStream, behaviour: Behaviour) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match behaviour {
            Behaviour::Corrupt => buf[0] = !buf[0],
            Behaviour::Swallow => continue,
        }
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Runs `echo-labctl bench ARGS`, killing it after `limit`; returns the exit
/// code and stdout.
fn bench(args: &[&str], limit: Duration) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo-labctl"))
        .arg("bench")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start echo-labctl");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for echo-labctl") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("echo-labctl bench {args:?} ran longer than {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).expect("read stdout");
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err).expect("read stderr");
    }
    eprintln!("stderr of bench {args:?}:\n{err}");
    (status.code().unwrap_or(-1), out)
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}"))
}

fn u64_field(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer at {path} in {v}"))
}

fn f64_field(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

#[test]
fn ping_pong_reports_round_trips_latency_and_no_errors() {
    let daemon = support::Daemon::start("pool_size = 2\n");
    let addr = daemon.addr().to_string();
    let (code, out) = bench(
        &[&addr, "--duration", "1", "--connections", "4", "--json"],
        Duration::from_secs(30),
    );
    let v = json(&out);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["mode"], "ping-pong");
    assert_eq!(u64_field(&v, "/connections"), 4);
    assert_eq!(u64_field(&v, "/connected"), 4);
    assert!(u64_field(&v, "/round_trips") > 0, "{v}");
    assert!(f64_field(&v, "/round_trips_per_sec") > 0.0, "{v}");
    for p in ["min", "p50", "p90", "p99", "p999", "max"] {
        assert!(f64_field(&v, &format!("/latency_us/{p}")) > 0.0, "{p}: {v}");
    }
    assert!(f64_field(&v, "/latency_us/p50") <= f64_field(&v, "/latency_us/p999"));
    assert_eq!(u64_field(&v, "/errors/total"), 0, "{v}");
    assert!(f64_field(&v, "/connect_ms") >= 0.0);
    assert!(f64_field(&v, "/client_cpu_secs") >= 0.0);
    assert_eq!(v["ok"], true);
}

#[test]
fn one_connection_uses_the_blocking_loop_and_can_stop_after_n_requests() {
    let daemon = support::Daemon::start("pool_size = 2\n");
    let addr = daemon.addr().to_string();
    let (code, out) = bench(
        &[&addr, "--requests", "500", "--json"],
        Duration::from_secs(30),
    );
    let v = json(&out);
    assert_eq!(code, 0, "{v}");
    assert_eq!(u64_field(&v, "/threads"), 1);
    assert_eq!(u64_field(&v, "/round_trips"), 500);
    assert_eq!(u64_field(&v, "/errors/total"), 0);
}

#[test]
fn hold_connects_all_and_every_connection_echoes_once() {
    let daemon = support::Daemon::start("pool_size = 2\n");
    let addr = daemon.addr().to_string();
    let (code, out) = bench(
        &[
            &addr,
            "--mode",
            "hold",
            "--connections",
            "200",
            "--hold",
            "0.5",
            "--json",
        ],
        Duration::from_secs(60),
    );
    let v = json(&out);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["mode"], "hold");
    assert_eq!(u64_field(&v, "/connected"), 200);
    assert_eq!(u64_field(&v, "/round_trips"), 200);
    assert_eq!(u64_field(&v, "/errors/total"), 0, "{v}");
    assert!(f64_field(&v, "/connect_ms") > 0.0);
    assert!(f64_field(&v, "/all_echoed_ms") > 0.0);
    assert!(f64_field(&v, "/latency_us/max") > 0.0);
}

#[test]
fn corrupted_echoes_are_mismatches_and_fail_the_run() {
    let addr = server(Behaviour::Corrupt).to_string();
    for connections in ["1", "4"] {
        let (code, out) = bench(
            &[
                &addr,
                "--duration",
                "0.5",
                "--connections",
                connections,
                "--json",
            ],
            Duration::from_secs(30),
        );
        let v = json(&out);
        assert_ne!(code, 0, "{v}");
        assert_eq!(
            u64_field(&v, "/errors/mismatch"),
            connections.parse::<u64>().expect("a number")
        );
        assert_eq!(u64_field(&v, "/round_trips"), 0);
        assert_eq!(v["ok"], false);
    }
}

#[test]
fn a_silent_server_times_out_instead_of_hanging() {
    let addr = server(Behaviour::Swallow).to_string();
    for connections in ["1", "3"] {
        let (code, out) = bench(
            &[
                &addr,
                "--duration",
                "0.5",
                "--timeout",
                "0.5",
                "--connections",
                connections,
                "--json",
            ],
            Duration::from_secs(30),
        );
        let v = json(&out);
        assert_ne!(code, 0, "{v}");
        assert_eq!(
            u64_field(&v, "/errors/timeout"),
            connections.parse::<u64>().expect("a number")
        );
    }
}

#[test]
fn a_refused_connection_is_a_connect_error() {
    // Bind and drop: the port is very likely closed for the moment.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .to_string();
    let (code, out) = bench(
        &[&addr, "--duration", "0.5", "--connections", "2", "--json"],
        Duration::from_secs(30),
    );
    let v = json(&out);
    assert_ne!(code, 0);
    assert_eq!(u64_field(&v, "/errors/connect"), 2);
}
