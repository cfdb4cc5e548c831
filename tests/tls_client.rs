//! `echo-labctl connect --tls` and `bench --tls` against a real TLS echo
//! server: stunnel4 terminating TLS in front of echo-lab's plain port (what
//! an operator does today), with certificates this test makes with openssl
//! (an ECDSA P-256 CA, a server certificate for localhost and 127.0.0.1, a
//! client certificate, and an unrelated CA). Also the plain `--mode churn`.
//!
//! Needs the Debian packages openssl and stunnel4 (tests/run.sh installs
//! them).

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::*;

/// Runs openssl with `args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory of PEM files: `ca`, `server` (signed by ca, for localhost
/// and 127.0.0.1), `client` (signed by ca), `other-ca`; each `NAME.pem`
/// with its key `NAME.key`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &format!("{ca}.key"),
                ],
            );
            let subj = format!("/CN=echo-lab test {ca}");
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    &format!("{ca}.key"),
                    "-sha256",
                    "-days",
                    "2",
                    "-subj",
                    &subj,
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write ext");
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write ext");
        for (leaf, cn) in [("server", "localhost"), ("client", "echo-lab test client")] {
            openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &format!("{leaf}.key"),
                ],
            );
            openssl(
                d,
                &[
                    "req",
                    "-new",
                    "-key",
                    &format!("{leaf}.key"),
                    "-subj",
                    &format!("/CN={cn}"),
                    "-out",
                    &format!("{leaf}.csr"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{leaf}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-sha256",
                    "-extfile",
                    &format!("{leaf}.ext"),
                    "-out",
                    &format!("{leaf}.pem"),
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        p.to_str().expect("utf-8 temp path").to_string()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// stunnel4 accepting TLS on a loopback port and forwarding the plaintext
/// to `back`; with `client_ca`, a client certificate signed by it is
/// required (`verify = 2`). Killed on drop.
struct Stunnel {
    child: Child,
    addr: SocketAddr,
    _cfg: tempfile::NamedTempFile,
}

impl Stunnel {
    fn start(pki: &Pki, back: SocketAddr, client_ca: Option<&str>) -> Stunnel {
        // The port is picked free and then bound by stunnel: another
        // process may take it in between, so a failed start is retried.
        for _ in 0..5 {
            let port = free_port();
            let verify = client_ca
                .map(|ca| format!("verify = 2\nCAfile = {ca}\n"))
                .unwrap_or_default();
            let cfg = config_file(&format!(
                "foreground = yes\npid =\ndebug = 3\n[echo]\naccept = 127.0.0.1:{port}\nconnect = {back}\n\
                 cert = {}\nkey = {}\n{verify}",
                pki.path("server.pem"),
                pki.path("server.key"),
            ));
            let mut child = Command::new("stunnel4")
                .arg(cfg.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("stunnel4 (Debian package stunnel4; tests/run.sh installs it)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let mut exited = false;
            wait_until(IO_TIMEOUT, "stunnel4 accepting or exiting", || {
                exited = matches!(child.try_wait(), Ok(Some(_)));
                exited || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if !exited {
                return Stunnel {
                    child,
                    addr,
                    _cfg: cfg,
                };
            }
        }
        panic!("stunnel4 did not start in 5 tries");
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect_tls(addr: SocketAddr, tls: &[&str], stdin: &[u8]) -> Output {
    let addr = addr.to_string();
    let mut args = vec!["connect", addr.as_str(), "--timeout", "10", "--tls"];
    args.extend_from_slice(tls);
    run_with_input(Command::new(ECHO_LABCTL).args(&args), stdin, IO_TIMEOUT * 2)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn connect_tls_with_ca_echoes_exactly_and_prints_the_certificate() {
    let pki = Pki::new();
    let d = Daemon::start("pool_size = 2\n");
    let tunnel = Stunnel::start(&pki, d.addr(), None);
    let input = "hello over TLS\n\n  spaced\t\r\nünïcödé\nlast line without newline";
    let ca = pki.path("ca.pem");
    let out = connect_tls(
        tunnel.addr,
        &["--ca", &ca, "--server-name", "localhost"],
        input.as_bytes(),
    );
    assert!(out.status.success(), "connect --tls failed: {out:?}");
    assert_eq!(
        text(&out.stdout),
        input,
        "stdout must be exactly the echoes"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("TLS: TLSv1_3, TLS13_"),
        "no version and cipher on stderr: {err}"
    );
    assert!(
        err.contains("subject CN=localhost"),
        "no subject on stderr: {err}"
    );
    assert!(
        err.contains("issuer CN=echo-lab test ca"),
        "no issuer on stderr: {err}"
    );
    assert!(err.contains("; expires 20"), "no expiry on stderr: {err}");
}

#[test]
fn connect_tls_insecure_accepts_a_certificate_it_cannot_verify() {
    let pki = Pki::new();
    let d = Daemon::start("pool_size = 2\n");
    let tunnel = Stunnel::start(&pki, d.addr(), None);
    let out = connect_tls(tunnel.addr, &["--insecure"], b"no verification\n");
    assert!(
        out.status.success(),
        "connect --tls --insecure failed: {out:?}"
    );
    assert_eq!(text(&out.stdout), "no verification\n");
    assert!(
        text(&out.stderr).contains("subject CN=localhost"),
        "{out:?}"
    );
}

#[test]
fn connect_tls_with_the_wrong_ca_fails_clearly_with_status_69() {
    let pki = Pki::new();
    let d = Daemon::start("pool_size = 2\n");
    let tunnel = Stunnel::start(&pki, d.addr(), None);
    let other = pki.path("other-ca.pem");
    let out = connect_tls(tunnel.addr, &["--ca", &other], b"never echoed\n");
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer")
            && err.contains("--ca"),
        "unclear error: {err}"
    );
    // Without --ca or --insecure there is nothing to trust: a usage error.
    let out = connect_tls(tunnel.addr, &[], b"x\n");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(text(&out.stderr).contains("--ca FILE"), "{out:?}");
}

#[test]
fn connect_tls_presents_the_client_certificate_when_asked() {
    let pki = Pki::new();
    let d = Daemon::start("pool_size = 2\n");
    let ca = pki.path("ca.pem");
    let tunnel = Stunnel::start(&pki, d.addr(), Some(&ca));
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let out = connect_tls(
        tunnel.addr,
        &[
            "--ca",
            &ca,
            "--server-name",
            "localhost",
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        b"mutual\n",
    );
    assert!(out.status.success(), "with a client certificate: {out:?}");
    assert_eq!(text(&out.stdout), "mutual\n");
    // Without one, stunnel refuses the session: no echo, a failure status.
    let out = connect_tls(
        tunnel.addr,
        &["--ca", &ca, "--server-name", "localhost"],
        b"mutual\n",
    );
    assert!(
        !out.status.success(),
        "without a client certificate: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// `echo-labctl bench ARGS --json` (bounded), parsed.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(ECHO_LABCTL);
    cmd.arg("bench").args(args).arg("--json");
    let out = run_with_input(&mut cmd, b"", IO_TIMEOUT * 4);
    assert!(out.status.success(), "bench {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bench --json: {e}: {out:?}"))
}

fn assert_sessions(report: &serde_json::Value, tls: bool) {
    assert_eq!(report["mode"], "churn", "{report}");
    assert_eq!(report["tls"], tls, "{report}");
    assert!(
        report["round_trips"].as_u64().unwrap_or(0) > 0,
        "no sessions: {report}"
    );
    assert!(
        report["sessions_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert!(
        report["latency_us"]["p99"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert_eq!(report["errors"]["total"], 0, "{report}");
    // One connect per session.
    assert_eq!(report["connected"], report["round_trips"], "{report}");
}

#[test]
fn bench_tls_churn_reports_sessions_without_errors() {
    let pki = Pki::new();
    let d = Daemon::start("pool_size = 2\n");
    let tunnel = Stunnel::start(&pki, d.addr(), None);
    let addr = tunnel.addr.to_string();
    let ca = pki.path("ca.pem");
    let tls = ["--tls", "--ca", &ca, "--server-name", "localhost"];
    let mut args = vec![addr.as_str(), "--mode", "churn", "-c", "4", "-d", "1"];
    args.extend_from_slice(&tls);
    assert_sessions(&bench_json(&args), true);
    // Ping-pong and fixed rate over TLS on kept connections.
    let mut args = vec![addr.as_str(), "-c", "4", "-d", "1"];
    args.extend_from_slice(&tls);
    let pp = bench_json(&args);
    assert!(
        pp["round_trips"].as_u64().unwrap_or(0) > 0 && pp["errors"]["total"] == 0,
        "{pp}"
    );
    args.extend_from_slice(&["--rate", "200"]);
    let fixed = bench_json(&args);
    assert_eq!(fixed["mode"], "fixed-rate", "{fixed}");
    assert!(
        fixed["round_trips"].as_u64().unwrap_or(0) > 0 && fixed["errors"]["total"] == 0,
        "{fixed}"
    );
}

#[test]
fn bench_tls_counts_failed_handshakes() {
    let pki = Pki::new();
    let d = Daemon::start("pool_size = 2\n");
    let tunnel = Stunnel::start(&pki, d.addr(), None);
    let addr = tunnel.addr.to_string();
    let other = pki.path("other-ca.pem");
    let mut cmd = Command::new(ECHO_LABCTL);
    cmd.args([
        "bench", &addr, "--mode", "churn", "-c", "2", "-d", "0.5", "--tls", "--ca", &other,
        "--json",
    ]);
    let out = run_with_input(&mut cmd, b"", IO_TIMEOUT * 4);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        report["errors"]["handshake"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert_eq!(report["round_trips"], 0, "{report}");
}

#[test]
fn bench_plain_churn_reports_sessions_without_errors() {
    let d = Daemon::start("pool_size = 2\n");
    let addr = d.addr().to_string();
    assert_sessions(
        &bench_json(&[&addr, "--mode", "churn", "-c", "4", "-d", "1"]),
        false,
    );
}
