//! The client on its own, with no daemon: what it says and which exit
//! code it gives when the daemon is not there or it is asked wrongly.
//! (Sessions and control against a running daemon are tested at the
//! workspace root, in tests/.)

use std::process::Command;

const ECHO_LABCTL: &str = env!("CARGO_BIN_EXE_echo-labctl");

#[test]
fn version_names_the_program() {
    let out = Command::new(ECHO_LABCTL).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("echo-labctl "), "{text}");
}

#[test]
fn an_absent_daemon_is_exit_69_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = Command::new(ECHO_LABCTL)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the daemon"), "{err}");
    assert!(err.contains("is echo-lab running?"), "{err}");
}

#[test]
fn a_bad_address_is_exit_64() {
    let out = Command::new(ECHO_LABCTL)
        .args(["connect", "not an address", "--timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn completions_are_generated_for_bash() {
    let out = Command::new(ECHO_LABCTL)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo-labctl"));
}
