//! `echo-labctl bench` against real servers on loopback: a correct echo
//! server must give a clean run with the documented JSON fields, servers
//! that corrupt or swallow echoes must make the run fail, and the fixed-rate
//! mode must keep its schedule (and count latency from it) even when the
//! server is slow.
//!
//! The correct server is the real daemon; the broken or slow ones
//! (corrupting, swallowing, delaying) are small thread-per-connection
//! servers living in the test process, bound before the client starts.
//! Every client run is bounded by a deadline after which it is killed.

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
    /// Echo every read, but only after this long.
    Delay(Duration),
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
            Behaviour::Delay(d) => thread::sleep(d),
        }
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Runs `echo-labctl bench ARGS`, killing it after `limit`; returns the exit
/// code and stdout.
fn bench(args: &[&str], limit: Duration) -> (i32, String) {
    let (code, out, _) = bench_with_stderr(args, limit);
    (code, out)
}

/// Like [`bench`], also returning stderr.
fn bench_with_stderr(args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut child = Command::new(support::ECHO_LABCTL)
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
    (status.code().unwrap_or(-1), out, err)
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
    assert_latencies_ordered(&v);
    assert_eq!(u64_field(&v, "/errors/total"), 0, "{v}");
    // Four loopback connects take well under the 5 s connect timeout.
    let connect_ms = f64_field(&v, "/connect_ms");
    assert!(connect_ms > 0.0 && connect_ms < 5_000.0, "{v}");
    // A second of ping-pong costs the generator CPU time.
    assert!(f64_field(&v, "/client_cpu_secs") > 0.0, "{v}");
    assert!(
        v["server_cpu"].is_null(),
        "no --server-pid, no server CPU: {v}"
    );
    assert_eq!(v["ok"], true);
}

/// Every latency figure is positive and they come in order.
fn assert_latencies_ordered(v: &Value) {
    let names = ["min", "p50", "p90", "p99", "p999", "max"];
    let l: Vec<f64> = names
        .iter()
        .map(|p| f64_field(v, &format!("/latency_us/{p}")))
        .collect();
    assert!(l[0] > 0.0, "min latency must be positive: {v}");
    for w in l.windows(2) {
        assert!(w[0] <= w[1], "latencies out of order {names:?} = {l:?}");
    }
}

#[test]
fn server_pid_reports_the_servers_cpu_over_the_window() {
    let daemon = support::Daemon::start("pool_size = 2\n");
    let addr = daemon.addr().to_string();
    let pid = daemon.pid().to_string();
    let (code, out) = bench(
        &[
            &addr,
            "--duration",
            "1",
            "--connections",
            "8",
            "--server-pid",
            &pid,
            "--json",
        ],
        Duration::from_secs(30),
    );
    let v = json(&out);
    assert_eq!(code, 0, "{v}");
    assert_eq!(u64_field(&v, "/server_cpu/pid"), u64::from(daemon.pid()));
    // A saturating ping-pong keeps the daemon busy: more than a few per cent
    // of a CPU, and no more than its two workers (plus the listener) can use.
    let percent = f64_field(&v, "/server_cpu/percent");
    assert!(percent > 5.0 && percent < 300.0, "{v}");
    let window = f64_field(&v, "/server_cpu/window_secs");
    assert!((0.9..5.0).contains(&window), "{v}");
    let cpu = f64_field(&v, "/server_cpu/cpu_secs");
    let per_rt = f64_field(&v, "/server_cpu/us_per_round_trip");
    let round_trips = u64_field(&v, "/round_trips") as f64;
    assert!(
        (per_rt - cpu * 1e6 / round_trips).abs() < 1e-6 * per_rt.max(1.0),
        "{v}"
    );
    assert!(per_rt > 0.0 && per_rt < 2_000.0, "{v}");
}

#[test]
fn a_server_pid_that_does_not_exist_is_refused_before_the_run() {
    let daemon = support::Daemon::start("pool_size = 2\n");
    let addr = daemon.addr().to_string();
    let (code, out, err) = bench_with_stderr(
        &[&addr, "--duration", "0.5", "--server-pid", "4294967295"],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("/proc/4294967295/stat"), "{err}");
}

#[test]
fn fixed_rate_sends_the_asked_rate_with_ordered_latencies_and_server_cpu() {
    let daemon = support::Daemon::start("pool_size = 2\n");
    let addr = daemon.addr().to_string();
    let pid = daemon.pid().to_string();
    let (code, out) = bench(
        &[
            &addr,
            "--rate",
            "2000",
            "--duration",
            "1",
            "--connections",
            "4",
            "--server-pid",
            &pid,
            "--json",
        ],
        Duration::from_secs(30),
    );
    let v = json(&out);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["mode"], "fixed-rate");
    assert_eq!(f64_field(&v, "/rate_per_sec"), 2000.0);
    // The schedule puts exactly 2000 sends in the 1 s window; every one is
    // echoed.
    let round_trips = u64_field(&v, "/round_trips");
    assert!((1980..=2020).contains(&round_trips), "{v}");
    let achieved = f64_field(&v, "/round_trips_per_sec");
    assert!(
        (1700.0..=2200.0).contains(&achieved),
        "achieved {achieved}/s for 2000/s asked: {v}"
    );
    assert_latencies_ordered(&v);
    assert_eq!(u64_field(&v, "/errors/total"), 0, "{v}");
    assert_eq!(u64_field(&v, "/server_cpu/pid"), u64::from(daemon.pid()));
    // 2000 echoes a second are a small load: well under half a CPU.
    let percent = f64_field(&v, "/server_cpu/percent");
    assert!(percent < 50.0, "{v}");
    assert!(f64_field(&v, "/server_cpu/window_secs") >= 0.9, "{v}");
}

#[test]
fn fixed_rate_keeps_its_schedule_and_counts_latency_from_it_when_echoes_are_late() {
    // Every echo comes 50 ms late: a closed loop on one connection would
    // manage fewer than 20 round trips a second. The fixed-rate client must
    // go on sending 200 a second, and charge each message for the time it
    // waited since its scheduled send.
    let addr = server(Behaviour::Delay(Duration::from_millis(50))).to_string();
    let (code, out) = bench(
        &[&addr, "--rate", "200", "--duration", "1", "--json"],
        Duration::from_secs(30),
    );
    let v = json(&out);
    assert_eq!(code, 0, "{v}");
    let round_trips = u64_field(&v, "/round_trips");
    assert!((190..=210).contains(&round_trips), "{v}");
    assert!(f64_field(&v, "/latency_us/p50") >= 50_000.0, "{v}");
    assert_latencies_ordered(&v);
}

#[test]
fn rate_does_not_apply_to_hold_mode() {
    let (code, out, err) = bench_with_stderr(
        &["127.0.0.1:9", "--mode", "hold", "--rate", "100"],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("--rate"), "{err}");
}

#[test]
fn one_connection_runs_on_one_thread_and_stops_after_exactly_n_requests() {
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
    for (connections, rate) in [
        ("1", None),
        ("4", None),
        ("1", Some("500")),
        ("4", Some("500")),
    ] {
        let mut args = vec![
            addr.as_str(),
            "--duration",
            "0.5",
            "--connections",
            connections,
            "--json",
        ];
        args.extend(rate.map(|r| ["--rate", r]).into_iter().flatten());
        let (code, out) = bench(&args, Duration::from_secs(30));
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
    for (connections, rate) in [
        ("1", None),
        ("3", None),
        ("1", Some("500")),
        ("3", Some("500")),
    ] {
        let mut args = vec![
            addr.as_str(),
            "--duration",
            "0.5",
            "--timeout",
            "0.5",
            "--connections",
            connections,
            "--json",
        ];
        args.extend(rate.map(|r| ["--rate", r]).into_iter().flatten());
        let (code, out) = bench(&args, Duration::from_secs(30));
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
