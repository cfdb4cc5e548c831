//! The container image's root filesystem (packaging/container/rootfs.sh,
//! which the Containerfile copies whole, `FROM scratch`) run without a
//! container engine: chroot into it as the image's user (65532), check
//! the shipped config, serve an echo, answer status and the probes, stop
//! on SIGTERM. Needs root for chroot; without, it says `SKIPPED`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use support::*;

fn build_rootfs(dir: &Path) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/container/rootfs.sh");
    let out = run_with_input(
        Command::new("bash")
            .arg(script)
            .arg(dir)
            .arg(ECHO_LAB)
            .arg(ECHO_LABCTL),
        b"",
        IO_TIMEOUT * 6,
    );
    assert!(out.status.success(), "rootfs.sh: {out:?}");
}

fn in_image(root: &Path) -> Command {
    let mut c = Command::new("chroot");
    c.arg("--userspec=65532:65532").arg(root);
    c
}

/// Every file of the image, relative to its root, sorted.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_image_runs_as_its_non_root_user_with_only_the_binaries_and_their_libraries() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: chroot into the image's root filesystem needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    build_rootfs(&root);

    // Only the binaries, the libraries they load, the user and the config.
    let listed = files(&root);
    for f in &listed {
        let expected = f.starts_with("usr/bin/echo-lab")
            || f.starts_with("lib")
            || ["etc/passwd", "etc/group", "etc/echo-lab.toml"].contains(&f.as_str());
        assert!(
            expected,
            "unexpected file in the image: {f} (all: {listed:?})"
        );
    }
    let size: u64 = listed
        .iter()
        .map(|f| std::fs::metadata(root.join(f)).unwrap().len())
        .sum();
    eprintln!(
        "image root filesystem: {} files, {:.1} MiB",
        listed.len(),
        size as f64 / 1048576.0
    );

    // The shipped config is valid, checked by the image's own binary.
    let out = run_with_input(
        in_image(&root).args([
            "/usr/bin/echo-lab",
            "--check-config",
            "--config",
            "/etc/echo-lab.toml",
        ]),
        b"",
        IO_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");

    // Serve, as the image's user, with a loopback config for the test.
    std::fs::write(
        root.join("tmp/test.toml"),
        "host = \"127.0.0.1\"\nport = 0\nmetrics_listen = \"127.0.0.1:0\"\n\
         control_socket = \"/run/echo-lab/control.sock\"\nshutdown_delay = \"1s\"\ndrain_timeout = 5\n",
    )
    .unwrap();
    let mut child = in_image(&root)
        .args(["/usr/bin/echo-lab", "--config", "/tmp/test.toml"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chroot");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut echo, mut metrics) = (None, None);
    while echo.is_none() || metrics.is_none() {
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .expect("the daemon's start lines");
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            metrics = rest
                .split("/metrics")
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok());
        }
        if let Some(rest) = line.split("listening on ").nth(1) {
            echo = rest
                .split(' ')
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok());
        }
    }
    let (echo, metrics) = (echo.unwrap(), metrics.unwrap());
    let uid = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t65532\t")), "{uid}");
    let mut c = connect(echo);
    round_trip(&mut c, b"from inside the image\n");
    drop(c);
    assert!(http_get(metrics, "/readyz").starts_with("HTTP/1.1 200"));
    let out = run_with_input(
        in_image(&root).args([
            "/usr/bin/echo-labctl",
            "--socket",
            "/run/echo-lab/control.sock",
            "status",
            "--json",
        ]),
        b"",
        IO_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pid"], child.id());

    // STOPSIGNAL SIGTERM: not ready at once, then the drain, exit 0.
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    wait_until(IO_TIMEOUT, "readyz 503", || {
        http_get(metrics, "/readyz").starts_with("HTTP/1.1 503")
    });
    let status = wait_child(&mut child, IO_TIMEOUT * 2).expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");
}
