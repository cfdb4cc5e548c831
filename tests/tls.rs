//! TLS listeners with real peers: `openssl s_client` and Python's `ssl`
//! module echo through them (TLS 1.2 and 1.3, with and without a client
//! certificate); certificates swapped by SIGHUP while a client keeps
//! handshaking; a bad certificate on reload keeps the old one; mutual TLS
//! refusals; the handshake timeout and a slow-handshake flood;
//! `--check-config` on bad files. Certificates are made here (rcgen): a
//! CA, server certificates with known serials, client certificates, one
//! from another CA, an expired one.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    SerialNumber,
};
use support::*;

/// A CA that signs certificates into a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let ca = p.self_signed(&ca_key).expect("CA");
        let pki = Pki { dir, ca, ca_key };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).expect("write CA");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Signs a certificate for `cn`; writes NAME.pem and NAME.key.
    fn issue(&self, name: &str, cn: &str, serial: u64, client: bool, expired: bool) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        if client {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }
}

/// Top-level `top` keys, then a `[[listen]]` TLS table on an ephemeral
/// port with `extra` keys.
fn tls_table(pki: &Pki, cert: &str, extra: &str) -> String {
    tls_config(pki, cert, "", extra)
}

fn tls_config(pki: &Pki, cert: &str, top: &str, extra: &str) -> String {
    format!(
        "{top}[[listen]]\naddress = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n{extra}",
        pki.path(&format!("{cert}.pem")),
        pki.path(&format!("{cert}.key")),
    )
}

/// The daemon's TLS address (its second listener).
fn tls_addr(d: &Daemon) -> SocketAddr {
    d.addrs()[1]
}

const CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tls_client.py");

/// Runs the Python client; its JSON answer.
fn py(addr: SocketAddr, ca: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(CLIENT_PY)
        .arg(addr.port().to_string())
        .arg(ca)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("tls_client.py said {text:?} ({e}); stderr {:?}", out.stderr))
}

/// `openssl s_client` with `input` on stdin, bounded.
fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "openssl", "s_client", "-connect"])
        .arg(addr.to_string())
        .args(["-quiet", "-verify_return_error", "-servername", "localhost"])
        .args(args);
    run_with_input(&mut cmd, input, Duration::from_secs(30))
}

fn handshakes(d: &Daemon, outcome: &str) -> u64 {
    let st = ctl_status(d);
    st["tls"][0]["handshakes"]
        .as_array()
        .expect("handshakes")
        .iter()
        .find(|p| p[0] == outcome)
        .and_then(|p| p[1].as_u64())
        .unwrap_or(0)
}

#[test]
fn openssl_s_client_echoes_over_tls_1_2_and_1_3_and_hears_the_goodbye() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0x1001, false, false);
    let d = Daemon::start(&tls_table(&pki, "server", ""));
    let ca = pki.path("ca.pem");
    for version in ["-tls1_2", "-tls1_3"] {
        let out = s_client(
            tls_addr(&d),
            &[version, "-CAfile", ca.to_str().unwrap()],
            b"hello over tls\ndisconnect\n",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("hello over tls\n"),
            "{version}: {stdout:?} {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("[echo-lab] goodbye"),
            "{version}: {stdout:?}"
        );
    }
    let line = d.wait_for_log("protocol=tls", IO_TIMEOUT);
    assert!(line.contains("tls_version=TLSv1_2"), "{line}");
    let line = d.wait_for_log("tls_version=TLSv1_3", IO_TIMEOUT);
    assert!(line.contains("tls_cipher=TLS13_"), "{line}");
    assert!(line.contains("tls_sni=localhost"), "{line}");
    assert!(line.contains("reason=disconnect"), "{line}");
    assert_eq!(handshakes(&d, "ok"), 2);
}

#[test]
fn python_ssl_echoes_bytes_as_sent_and_negotiates_alpn() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0x1002, false, false);
    let d = Daemon::start(&tls_table(&pki, "server", "tls_alpn = [\"echo\"]\n"));
    let ca = pki.path("ca.pem");
    let text = "line one\npartial ünïcode\tand tabs";
    let got = py(
        tls_addr(&d),
        &ca,
        &["echo", text, "--alpn", "echo", "--tls13"],
    );
    assert_eq!(got["echoed"], text, "{got}");
    assert_eq!(got["version"], "TLSv1.3");
    assert_eq!(got["alpn"], "echo");
    assert_eq!(got["serial"], "1002");
    assert!(got["rest"].as_str().unwrap().contains("goodbye"), "{got}");
    assert_eq!(
        got["close_notify"], true,
        "no close_notify after the goodbye: {got}"
    );
    let line = d.wait_for_log("tls_alpn=echo", IO_TIMEOUT);
    assert!(line.contains("tls_client=-"), "{line}");
    // Status shows the certificate.
    let st = ctl_status(&d);
    let t = &st["tls"][0];
    assert_eq!(t["subject"], "CN=echo.test", "{t}");
    assert_eq!(t["serial"], "1002");
    assert_eq!(t["expired"], false);
    let sans: Vec<&str> = t["sans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(sans, ["DNS:localhost", "IP:127.0.0.1"]);
    // The plain port still echoes in the clear.
    let mut plain = connect(d.addr());
    round_trip(&mut plain, b"clear\n");
}

#[test]
fn mutual_tls_refuses_no_certificate_and_a_foreign_one_and_logs_the_client() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0x2001, false, false);
    pki.issue("client", "alice", 0x2002, true, false);
    let other = Pki::new("other CA");
    other.issue("client", "mallory", 0x66, true, false);
    let ca = pki.path("ca.pem");
    let d = Daemon::start(&tls_table(
        &pki,
        "server",
        &format!("tls_client_ca = {ca:?}\n"),
    ));
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let good = py(
        tls_addr(&d),
        &ca,
        &[
            "echo",
            "mtls\n",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(good["echoed"], "mtls\n", "{good}");
    let line = d.wait_for_log("tls_client=CN=alice", IO_TIMEOUT);
    assert!(line.contains("protocol=tls"), "{line}");

    let none = py(tls_addr(&d), &ca, &["echo", "x\n"]);
    assert!(
        none.get("echoed").is_none(),
        "echoed without a client certificate: {none}"
    );
    let (fc, fk) = (other.path("client.pem"), other.path("client.key"));
    let foreign = py(
        tls_addr(&d),
        &ca,
        &[
            "echo",
            "x\n",
            "--cert",
            fc.to_str().unwrap(),
            "--key",
            fk.to_str().unwrap(),
        ],
    );
    assert!(
        foreign.get("echoed").is_none(),
        "echoed to a foreign certificate: {foreign}"
    );
    // openssl s_client with and without the certificate too.
    let with = s_client(
        tls_addr(&d),
        &[
            "-CAfile",
            ca.to_str().unwrap(),
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ],
        b"via openssl\ndisconnect\n",
    );
    assert!(
        String::from_utf8_lossy(&with.stdout).contains("via openssl\n"),
        "{with:?}"
    );
    let without = s_client(tls_addr(&d), &["-CAfile", ca.to_str().unwrap()], b"nope\n");
    assert!(
        !String::from_utf8_lossy(&without.stdout).contains("nope"),
        "{without:?}"
    );
    wait_until(IO_TIMEOUT, "refusals counted", || {
        handshakes(&d, "no_client_cert") == 2 && handshakes(&d, "bad_client_cert") == 1
    });
    assert_eq!(handshakes(&d, "ok"), 2);
}

/// Rewrites the files of the certificate in service with `name`'s.
fn install(pki: &Pki, name: &str, to: &str) {
    for ext in ["pem", "key"] {
        let tmp = pki.path(&format!("{to}.{ext}.tmp"));
        std::fs::copy(pki.path(&format!("{name}.{ext}")), &tmp).expect("copy");
        std::fs::rename(&tmp, pki.path(&format!("{to}.{ext}"))).expect("rename");
    }
}

#[test]
fn sighup_swaps_the_certificate_under_load_without_a_failed_session() {
    let pki = Pki::new("test CA");
    pki.issue("old", "echo.test", 0x3001, false, false);
    pki.issue("new", "echo.test", 0x3002, false, false);
    install(&pki, "old", "live");
    let d = Daemon::start(&tls_table(&pki, "live", ""));
    let ca = pki.path("ca.pem");
    let stop = pki.path("stop");
    let (addr, ca2, stop2) = (tls_addr(&d), ca.clone(), stop.clone());
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (ca, stop) = (ca2.clone(), stop2.clone());
            std::thread::spawn(move || py(addr, &ca, &["loop", stop.to_str().unwrap()]))
        })
        .collect();
    wait_until(IO_TIMEOUT, "handshakes under way", || {
        handshakes(&d, "ok") >= 20
    });
    // Renewed in place: same paths, new files.
    install(&pki, "new", "live");
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("reloaded", IO_TIMEOUT);
    assert!(
        line.contains("serial 3001") && line.contains("serial 3002"),
        "{line}"
    );
    let swapped = handshakes(&d, "ok");
    wait_until(IO_TIMEOUT, "handshakes after the swap", || {
        handshakes(&d, "ok") >= swapped + 20
    });
    std::fs::write(&stop, b"").unwrap();
    for c in clients {
        let got = c.join().expect("client thread");
        assert_eq!(got["failures"], 0, "{got}");
        let serials: Vec<&str> = got["serials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(serials.last(), Some(&"3002"), "{got}");
        assert_eq!(serials.first(), Some(&"3001"), "{got}");
    }
    assert_eq!(ctl_status(&d)["tls"][0]["serial"], "3002");
}

#[test]
fn a_certificate_that_does_not_load_fails_the_reload_and_the_old_one_serves_on() {
    let pki = Pki::new("test CA");
    pki.issue("old", "echo.test", 0x4001, false, false);
    pki.issue("other", "echo.test", 0x4002, false, false);
    install(&pki, "old", "live");
    let d = Daemon::start(&tls_table(&pki, "live", ""));
    let ca = pki.path("ca.pem");
    // An open session before the failed reload goes on after it.
    let mut open = TlsSession::open(tls_addr(&d), &ca);
    std::fs::write(pki.path("live.pem"), b"not a certificate\n").unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("listen[0].tls_cert", IO_TIMEOUT);
    assert!(line.contains("not a PEM file"), "{line}");
    // A key that does not match: refused too.
    std::fs::copy(pki.path("old.pem"), pki.path("live.pem")).unwrap();
    std::fs::copy(pki.path("other.key"), pki.path("live.key")).unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for_log("does not match", IO_TIMEOUT);
    assert!(line.contains("listen[0].tls_key"), "{line}");
    let st = ctl_status(&d);
    assert_eq!(st["reloads"]["failed"], 2, "{st}");
    assert_eq!(st["tls"][0]["serial"], "4001");
    let got = py(tls_addr(&d), &ca, &["echo", "still\n"]);
    assert_eq!(
        (got["echoed"].as_str(), got["serial"].as_str()),
        (Some("still\n"), Some("4001"))
    );
    open.round_trip("after the failed reloads\n");
}

/// A TLS session held open by a Python child (for sessions that must
/// outlive something).
struct TlsSession {
    child: std::process::Child,
}

impl TlsSession {
    fn open(addr: SocketAddr, ca: &Path) -> TlsSession {
        let script = format!(
            "import socket,ssl,sys\nctx=ssl.create_default_context(cafile={ca:?})\n\
             s=ctx.wrap_socket(socket.create_connection(('127.0.0.1',{port}),timeout=20),server_hostname='localhost')\n\
             print('up',flush=True)\n\
             for line in sys.stdin:\n  s.sendall(line.encode())\n  got=b''\n  \
             while len(got)<len(line.encode()):\n    c=s.recv(65536)\n    if not c: break\n    got+=c\n  \
             print(got.decode(),end='',flush=True)\n",
            port = addr.port()
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut up = [0u8; 3];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut up)
            .expect("session up");
        assert_eq!(&up, b"up\n");
        TlsSession { child }
    }

    fn round_trip(&mut self, line: &str) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let mut got = vec![0u8; line.len()];
        self.child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut got)
            .expect("echo");
        assert_eq!(String::from_utf8_lossy(&got), line);
    }
}

impl Drop for TlsSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stalled_handshake_times_out_and_a_slow_flood_leaves_others_served() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0x5001, false, false);
    let d = Daemon::start(&tls_config(&pki, "server", "idle_timeout = 0\n", ""));
    let ca = pki.path("ca.pem");
    // 200 clients send one byte of a ClientHello and stall.
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(tls_addr(&d)).expect("connect");
            s.write_all(&[0x16]).expect("one byte");
            s
        })
        .collect();
    // Meanwhile others handshake and echo.
    for i in 0..5 {
        let got = py(tls_addr(&d), &ca, &["echo", &format!("served {i}\n")]);
        assert_eq!(got["echoed"], format!("served {i}\n"), "{got}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "others waited for the flood"
    );
    // Each stalled one is closed at its handshake deadline (10 s).
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "a stalled handshake was not closed");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed before the deadline: {waited:?}"
    );
    wait_until(IO_TIMEOUT, "timeouts counted", || {
        handshakes(&d, "timeout") == 200
    });
}

#[test]
fn drain_and_idle_notices_arrive_inside_tls_before_close_notify() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0x6001, false, false);
    let d = Daemon::start(&tls_config(
        &pki,
        "server",
        "idle_timeout = 1\ndrain_timeout = 2\n",
        "",
    ));
    let ca = pki.path("ca.pem");
    let got = py(tls_addr(&d), &ca, &["wait"]);
    let rest = got["rest"].as_str().unwrap_or_default();
    assert!(rest.contains("[echo-lab] idle"), "{got}");
    assert_eq!(
        got["close_notify"], true,
        "no close_notify after the idle notice: {got}"
    );
    let mut d = d;
    let addr = tls_addr(&d);
    let waiter = std::thread::spawn(move || py(addr, &ca, &["wait", "--tls12"]));
    wait_until(IO_TIMEOUT, "the session is up", || {
        handshakes(&d, "ok") >= 2
    });
    d.signal(libc::SIGTERM);
    let got = waiter.join().unwrap();
    assert!(
        got["rest"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{got}"
    );
    assert!(d.wait_exit(Duration::from_secs(20)).success());
}

/// Writes a config with one TLS listener whose files are `cert`, `key`
/// (and `ca`), and runs `--check-config` on it.
fn check(cert: &Path, key: &Path, ca: Option<&Path>) -> (bool, String) {
    let mut text = format!(
        "port = 0\n[[listen]]\naddress = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
    );
    if let Some(ca) = ca {
        text.push_str(&format!("tls_client_ca = {ca:?}\n"));
    }
    let file = config_file(&text);
    let out = Command::new(ECHO_LAB)
        .arg("--config")
        .arg(file.path())
        .arg("--check-config")
        .output()
        .expect("echo-lab --check-config");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn check_config_says_what_is_wrong_with_each_file_at_its_key() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0x7001, false, false);
    pki.issue("other", "echo.test", 0x7002, false, false);
    pki.issue("expired", "old.test", 0x7003, false, true);
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, b"hello\n").unwrap();
    let key_only = pki.path("server.key");
    let (ok, said) = check(&cert, &key, Some(&pki.path("ca.pem")));
    assert!(ok, "{said}");
    for (c, k, ca, key_name, needle) in [
        (
            pki.path("missing.pem"),
            key.clone(),
            None,
            "listen[0].tls_cert",
            "cannot read",
        ),
        (
            junk.clone(),
            key.clone(),
            None,
            "listen[0].tls_cert",
            "not a PEM file",
        ),
        (
            key_only.clone(),
            key.clone(),
            None,
            "listen[0].tls_cert",
            "no certificate",
        ),
        (
            cert.clone(),
            cert.clone(),
            None,
            "listen[0].tls_key",
            "no private key",
        ),
        (
            cert.clone(),
            pki.path("other.key"),
            None,
            "listen[0].tls_key",
            "does not match",
        ),
        (
            cert.clone(),
            key.clone(),
            Some(key_only.clone()),
            "listen[0].tls_client_ca",
            "no certificate",
        ),
    ] {
        let (ok, said) = check(&c, &k, ca.as_deref());
        assert!(!ok, "{key_name} {needle}: accepted: {said}");
        // port, [[listen]], address, then tls_cert, tls_key, tls_client_ca.
        let line = match key_name {
            "listen[0].tls_cert" => 4,
            "listen[0].tls_key" => 5,
            _ => 6,
        };
        assert!(
            said.contains(&format!(".toml:{line}:")),
            "not located at line {line}: {said}"
        );
        assert!(said.contains(&format!("key '{key_name}'")), "{said}");
        assert!(said.contains(needle), "{needle}: {said}");
    }
    // An expired certificate: accepted, with a warning.
    let (ok, said) = check(&pki.path("expired.pem"), &pki.path("expired.key"), None);
    assert!(ok, "{said}");
    assert!(said.contains("is expired"), "{said}");
}

#[test]
fn an_expired_certificate_is_served_and_flagged_in_status_and_metrics() {
    let pki = Pki::new("test CA");
    pki.issue("expired", "old.test", 0x8001, false, true);
    let d = Daemon::start(&format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}",
        tls_table(&pki, "expired", "")
    ));
    d.wait_for_log("is expired", IO_TIMEOUT);
    let st = ctl_status(&d);
    assert_eq!(st["tls"][0]["expired"], true, "{st}");
    assert_eq!(st["tls"][0]["not_after_unix"], 1_609_459_200i64);
    let metrics = st["metrics"].as_str().expect("metrics address").to_string();
    let mut s = TcpStream::connect(&metrics).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let body = String::from_utf8_lossy(&read_to_eof(&mut s)).into_owned();
    assert!(
        body.contains("echo_lab_tls_cert_not_after_seconds{listener=\"127.0.0.1:0\",subject=\"CN=old.test\"} 1609459200"),
        "{body}"
    );
    assert!(
        body.contains("echo_lab_tls_cert_expired{listener=\"127.0.0.1:0\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("echo_lab_tls_handshakes_total{listener=\"127.0.0.1:0\",outcome=\"ok\"} 0"),
        "{body}"
    );
}

#[test]
fn haproxy_as_a_verifying_tls_client_with_and_without_send_proxy_v2() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0x9001, false, false);
    let ca = pki.path("ca.pem");
    let proxied = format!(
        "[[listen]]\naddress = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let d = Daemon::start(&format!("{}{proxied}", tls_table(&pki, "server", "")));
    let (direct, behind) = (d.addrs()[1], d.addrs()[2]);
    for (back, extra) in [(direct, ""), (behind, "send-proxy-v2")] {
        let h = Haproxy::start(
            &format!(
                "{back} ssl verify required ca-file {} sni str(localhost) {extra}",
                ca.display()
            ),
            "30s",
        );
        let mut c = TcpStream::connect(h.front).expect("connect to haproxy");
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        round_trip(&mut c, format!("through haproxy {extra}\n").as_bytes());
        c.write_all(b"disconnect\n").unwrap();
        let rest = read_to_eof(&mut c);
        assert!(
            rest.ends_with(GOODBYE),
            "{extra}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        let mine = c.local_addr().expect("local");
        // HAProxy's own connection for the readiness probe has a session
        // line too (received=0): find ours by what it received.
        let received = format!("through haproxy {extra}\n").len() + b"disconnect\n".len();
        let ours = |l: &&str| {
            l.contains(&format!("listener={back} protocol=tls"))
                && l.contains(&format!(" received={received} "))
        };
        wait_until(IO_TIMEOUT, "our session line", || {
            d.log_text().lines().any(|l| ours(&l))
        });
        let text = d.log_text();
        let line = text.lines().find(ours).expect("our session line");
        if extra.is_empty() {
            assert!(!line.contains(&format!("client={mine}")), "{line}");
        } else {
            // The PROXY header named the client, then TLS followed.
            assert!(line.contains(&format!("client={mine}")), "{line}");
        }
    }
}

#[test]
fn a_tls_client_that_does_not_read_is_held_to_the_pending_cap() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0xa001, false, false);
    let d = Daemon::start(&tls_config(
        &pki,
        "server",
        "max_pending_bytes = 4096\n",
        "",
    ));
    let before = d.rss_kib();
    let got = py(tls_addr(&d), &pki.path("ca.pem"), &["hog"]);
    let sent = got["sent"].as_u64().expect("sent");
    eprintln!(
        "tls hog: {got}, rss {before} KiB before, {} KiB after",
        d.rss_kib()
    );
    // The daemon stopped reading: what it took is kernel buffers, the cap
    // and at most one write's worth of records inside rustls, not 256 MiB.
    assert!(sent < 32 << 20, "the daemon kept reading: {got}");
    assert_eq!(got["echoed"], sent, "{got}");
    assert_eq!(got["same"], true, "{got}");
    assert!(
        d.rss_kib() < before + 16 * 1024,
        "RSS grew by more than 16 MiB"
    );
}

#[test]
fn the_per_source_cap_refuses_before_any_tls_work() {
    let pki = Pki::new("test CA");
    pki.issue("server", "echo.test", 0xb001, false, false);
    let d = Daemon::start(&tls_config(
        &pki,
        "server",
        "max_connections_per_source = 2\n",
        "",
    ));
    let held: Vec<TcpStream> = (0..2).map(|_| connect(tls_addr(&d))).collect();
    wait_until(IO_TIMEOUT, "both held", || d.stat("active") == 2);
    // The third from the same source hears the per-source notice in the
    // clear and is closed: no TLS session was ever started for it.
    let mut third = connect(tls_addr(&d));
    let got = read_to_eof(&mut third);
    assert!(
        String::from_utf8_lossy(&got).contains("connections from your address"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let st = ctl_status(&d);
    let counted: u64 = st["tls"][0]["handshakes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 0, "a refused connection reached TLS: {st}");
    drop(held);
}
