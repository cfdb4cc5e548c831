//! The metrics endpoint against real clients: raw HTTP, `promtool check
//! metrics` on the exposition, and a real Prometheus (Debian's package)
//! scraping the daemon, its HTTP API asked for the values this test's own
//! traffic produced. promtool and prometheus are installed by
//! tests/run.sh; without them these tests fail, they never skip.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The address the daemon says its metrics are on.
fn metrics_addr(d: &Daemon) -> SocketAddr {
    let line = d.wait_for_log("metrics on http://", START_TIMEOUT);
    let rest = line.split("http://").nth(1).expect("address in line");
    rest.trim_end()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// One HTTP/1.1 request; returns the status code, the headers and the body.
fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).expect("send request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read answer");
    let text = String::from_utf8(out).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, head.to_string(), body.to_string())
}

fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n"),
    )
}

/// The value of the sample `name` (with its labels exactly as written,
/// e.g. `x_total{reason="idle"}`) in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("sample {name}: {e}"))
}

/// `sessions` clients each send `payload` bytes, read their echo, say
/// `disconnect` and read the goodbye to the end; returns once all closed.
fn traffic(addr: SocketAddr, sessions: usize, payload: usize) {
    for i in 0..sessions {
        let mut c = connect(addr);
        let data = pseudo_random(payload, i as u64 + 1);
        let mut data: Vec<u8> = data.into_iter().map(|b| b'a' + b % 26).collect();
        // Ends a line, so the goodbye needs no line break before it.
        data[payload - 1] = b'\n';
        round_trip(&mut c, &data);
        c.write_all(b"disconnect\n").unwrap();
        assert_bytes(&read_to_eof(&mut c), GOODBYE);
    }
}

/// Polls the exposition until `cond` holds on it (bounded).
fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + IO_TIMEOUT * 3;
    loop {
        let (code, _, body) = get(addr, "/metrics", None);
        assert_eq!(code, 200, "{body}");
        if cond(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} never held in:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counters_move_by_exactly_the_traffic_and_promtool_finds_the_exposition_clean() {
    let d = Daemon::start("metrics_listen = \"127.0.0.1:0\"\npool_size = 2\n");
    let m = metrics_addr(&d);
    let (sessions, payload) = (5, 3000);
    traffic(d.addr(), sessions, payload);
    let body = scrape_until(m, "every session closed", |b| {
        sample(
            b,
            "echo_lab_connections_closed_total{reason=\"disconnect\"}",
        ) == sessions as f64
    });
    let n = sessions as f64;
    assert_eq!(sample(&body, "echo_lab_connections_accepted_total"), n);
    assert_eq!(sample(&body, "echo_lab_connections"), 0.0);
    assert_eq!(
        sample(&body, "echo_lab_received_bytes_total"),
        n * (payload + b"disconnect\n".len()) as f64
    );
    assert_eq!(
        sample(&body, "echo_lab_sent_bytes_total"),
        n * (payload + GOODBYE.len()) as f64
    );
    for reason in ["client", "idle", "error", "drain"] {
        let name = format!("echo_lab_connections_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&body, &name), 0.0, "{name}");
    }
    assert_eq!(sample(&body, "echo_lab_workers"), 2.0);
    assert_eq!(sample(&body, "echo_lab_config_generation"), 1.0);
    assert!(sample(&body, "process_open_fds") > 3.0);
    assert!(sample(&body, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&body, "process_max_fds") >= sample(&body, "process_open_fds"));
    let started = sample(&body, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started <= now + 1.0 && started > now - 600.0, "{started}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {out:?}\n{body}"
    );
}

#[test]
fn openmetrics_when_asked_404_for_anything_else_400_for_garbage() {
    let d = Daemon::start("metrics_listen = \"127.0.0.1:0\"\n");
    let m = metrics_addr(&d);
    let (code, head, body) = get(m, "/metrics", None);
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(!body.contains("# EOF"));
    let (code, head, body) = get(
        m,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(code, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# UNIT echo_lab_received_bytes bytes"),
        "{body}"
    );
    assert_eq!(get(m, "/", None).0, 404);
    assert_eq!(get(m, "/metrics/x", None).0, 404);
    assert_eq!(
        http(m, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
        404
    );
    assert_eq!(http(m, "\x01\x02 nonsense\r\n\r\n").0, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let mut s = TcpStream::connect(m).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(huge.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn clients_that_send_nothing_do_not_hold_the_endpoint() {
    let d = Daemon::start("metrics_listen = \"127.0.0.1:0\"\n");
    let m = metrics_addr(&d);
    // More silent clients than there are handler threads, fewer than the cap.
    let silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(m).unwrap()).collect();
    let t = Instant::now();
    let (code, _, _) = get(m, "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a scrape waited {:?} behind silent clients",
        t.elapsed()
    );
    // The silent ones are closed after the request timeout (5 s).
    for mut s in silent {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "closed without an answer");
    }
}

#[test]
fn reload_moves_the_endpoint_and_a_bind_failure_changes_nothing() {
    let d = Daemon::start("metrics_listen = \"127.0.0.1:0\"\n");
    let old = metrics_addr(&d);
    let config = |extra: &str| {
        let text = std::fs::read_to_string(d.config_path()).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("metrics_listen"))
            .collect();
        std::fs::write(d.config_path(), format!("{}\n{extra}", kept.join("\n"))).unwrap();
    };
    // An address in use: the reload fails, the old endpoint still serves.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    config(&format!(
        "metrics_listen = \"{}\"\n",
        taken.local_addr().unwrap()
    ));
    let out = ctl(&d, &["reload"]);
    assert!(!out.status.success(), "{out:?}");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot listen for metrics"), "{said}");
    let (code, _, body) = get(old, "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(
        sample(&body, "echo_lab_reloads_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(sample(&body, "echo_lab_last_reload_successful"), 0.0);
    assert_eq!(sample(&body, "echo_lab_config_generation"), 1.0);
    // A free address: the new one serves, the old one is closed.
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let new = free.local_addr().unwrap();
    drop(free);
    config(&format!("metrics_listen = \"{new}\"\n"));
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    let (code, _, body) = get(new, "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(sample(&body, "echo_lab_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(sample(&body, "echo_lab_config_generation"), 2.0);
    assert_eq!(sample(&body, "echo_lab_last_reload_successful"), 1.0);
    assert!(
        TcpStream::connect(old).is_err(),
        "the old endpoint still listens"
    );
    // Unset: no endpoint.
    config("");
    assert!(ctl(&d, &["reload"]).status.success());
    assert!(
        TcpStream::connect(new).is_err(),
        "the endpoint still listens"
    );
}

// ------------------------------------------------------------------ Prometheus

/// A free loopback port (bound, read and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server, killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second; waits until ready.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: echo-lab\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus (Debian package prometheus; tests/run.sh installs it)");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_until(START_TIMEOUT * 3, "prometheus ready", || {
            TcpStream::connect(addr).is_ok() && get(addr, "/-/ready", None).0 == 200
        });
        p
    }

    /// The value of an instant query that returns one series, if any.
    fn query(&self, q: &str) -> Option<f64> {
        let (code, _, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(q)),
            None,
        );
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON from the API");
        let result = v["data"]["result"].as_array()?;
        let value = result.first()?["value"][1].as_str()?;
        value.parse().ok()
    }

    /// Runs a query; panics unless Prometheus accepts it. Returns how many
    /// series it gave.
    fn series(&self, q: &str) -> usize {
        let (code, _, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", encode(q)),
            None,
        );
        assert_eq!(code, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON from the API");
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"].as_array().map_or(0, |r| r.len())
    }

    /// Waits until the query returns `want` (bounded).
    fn wait_for(&self, q: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.query(q);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: {q} = {got:?}, expected {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_exactly_what_the_traffic_did() {
    let d = Daemon::start("metrics_listen = \"127.0.0.1:0\"\n");
    let m = metrics_addr(&d);
    let prom = Prometheus::start(m);
    prom.wait_for("up{job=\"echo-lab\"}", 1.0);
    let (sessions, payload) = (7, 1234);
    traffic(d.addr(), sessions, payload);
    // An idle client held open: one connection counted open.
    let _held = connect(d.addr());
    let n = sessions as f64;
    prom.wait_for(
        "echo_lab_connections_closed_total{reason=\"disconnect\"}",
        n,
    );
    prom.wait_for("echo_lab_connections", 1.0);
    prom.wait_for("echo_lab_connections_accepted_total", n + 1.0);
    prom.wait_for(
        "echo_lab_received_bytes_total",
        n * (payload + b"disconnect\n".len()) as f64,
    );
    prom.wait_for(
        "echo_lab_sent_bytes_total",
        n * (payload + GOODBYE.len()) as f64,
    );
    prom.wait_for("sum(echo_lab_worker_connections)", 1.0);
    prom.wait_for("echo_lab_config_generation", 1.0);
    assert!(prom.query("process_open_fds").unwrap_or(0.0) > 3.0);
    // Prometheus asked for OpenMetrics and got it: the UNIT metadata shows.
    let (_, _, meta) = get(
        prom.addr,
        "/api/v1/metadata?metric=echo_lab_received_bytes",
        None,
    );
    assert!(meta.contains("\"unit\":\"bytes\""), "{meta}");
    // Every query of the shipped Grafana dashboard is valid PromQL and finds
    // series of this daemon.
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../packaging/grafana-dashboard.json")).unwrap();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let q = t["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "echo-lab")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m");
            let n = prom.series(&q);
            if !q.contains("histogram_quantile") && !q.contains("reason") {
                assert!(n > 0, "dashboard query {q} found nothing");
            }
        }
    }
}

#[test]
fn udp_datagrams_are_counted_by_outcome() {
    let d = Daemon::start("metrics_listen = \"127.0.0.1:0\"\nudp = true\n");
    let m = metrics_addr(&d);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let k = 9;
    for i in 0..k {
        let msg = format!("datagram {i}");
        sock.send_to(msg.as_bytes(), d.addr()).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = sock.recv_from(&mut buf).expect("an echo");
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    let body = scrape_until(m, "every datagram counted", |b| {
        b.contains("echo_lab_udp_datagrams_total{outcome=\"echoed\"} 9")
    });
    assert_eq!(
        sample(&body, "echo_lab_udp_received_datagrams_total"),
        k as f64
    );
    assert_eq!(
        sample(
            &body,
            "echo_lab_udp_datagrams_total{outcome=\"rate_limited\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(&body, "echo_lab_udp_echoed_bytes_total"),
        (0..k).map(|i| format!("datagram {i}").len()).sum::<usize>() as f64
    );
}

#[test]
fn connections_are_counted_per_listener() {
    let d = Daemon::start(
        "metrics_listen = \"127.0.0.1:0\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n",
    );
    let m = metrics_addr(&d);
    let addrs = d.addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let mut held = Vec::new();
    for (addr, n) in [(addrs[0], 3), (addrs[1], 2)] {
        for _ in 0..n {
            let mut c = connect(addr);
            round_trip(&mut c, b"x\n");
            held.push(c);
        }
    }
    let gauge = |a: SocketAddr| format!("echo_lab_listener_connections{{listener=\"{a}\"}}");
    let body = scrape_until(m, "5 connections open", |b| {
        sample(b, "echo_lab_connections") == 5.0
    });
    assert_eq!(sample(&body, &gauge(addrs[0])), 3.0, "{body}");
    assert_eq!(sample(&body, &gauge(addrs[1])), 2.0, "{body}");
    held.truncate(3);
    scrape_until(m, "the second listener's closed", |b| {
        sample(b, &gauge(addrs[1])) == 0.0 && sample(b, &gauge(addrs[0])) == 3.0
    });
}

#[test]
fn the_access_rules_apply_to_the_metrics_endpoint() {
    let d = Daemon::start(
        "metrics_listen = \"127.0.0.1:0\"\naccess = [\"allow 127.0.0.1\", \"deny all\"]\n",
    );
    let m = metrics_addr(&d);
    // Allowed: a scrape from 127.0.0.1 is answered.
    assert_eq!(get(m, "/metrics", None).0, 200);
    // Denied: from 127.0.0.8 the connection is closed unanswered.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = "127.0.0.8:0".parse().unwrap();
    s.bind(&from.into()).expect("bind 127.0.0.8");
    s.connect(&m.into()).expect("connect");
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.is_empty(),
        "a denied scraper was answered: {}",
        String::from_utf8_lossy(&out)
    );
    // Counted as a refusal by rule, like any refused client.
    let (_, _, body) = get(m, "/metrics", None);
    assert_eq!(
        sample(&body, "echo_lab_connections_refused_total{reason=\"rule\"}"),
        1.0
    );
}
