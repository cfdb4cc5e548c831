//! packaging/kubernetes/ checked offline: the manifests against a pinned
//! Kubernetes version's schemas (`kubernetes-validate` from PyPI, in the
//! venv tests/run.sh makes at `target/kubernetes-venv`, or where
//! `ECHO_LAB_KUBERNETES_VENV` says), and the ConfigMap's config against the
//! real daemon (`--check-config`), by tests/kubernetes/check.py. Without
//! the venv this test fails, saying how to make it; it never skips.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

#[test]
fn the_kubernetes_manifests_validate_and_carry_a_config_the_daemon_takes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("ECHO_LAB_KUBERNETES_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/kubernetes-venv"));
    let python = venv.join("bin/python");
    assert!(
        venv.join("bin/kubernetes-validate").exists(),
        "no kubernetes-validate in {}: run tests/run.sh (or: python3 -m venv {0} && {0}/bin/pip install kubernetes-validate==1.37.0)",
        venv.display()
    );
    let out = run_with_input(
        Command::new(python)
            .arg(root.join("tests/kubernetes/check.py"))
            .arg(ECHO_LAB)
            .arg(root.join("packaging/kubernetes")),
        b"",
        IO_TIMEOUT * 6,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok: 5 manifests, Kubernetes 1.31.0"),
        "{text}"
    );
}
