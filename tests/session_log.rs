//! The session log: one line per finished TCP session with the client,
//! the listener, the duration, the bytes each way and why it ended —
//! checked for clients that leave by `disconnect`, by idle timeout, by
//! closing and by reset, in text and in JSON, and switched by reload.

mod support;

use std::io::Write;
use std::net::TcpStream;

use support::*;

/// The session line of the client whose local address is `client`.
fn session_line(d: &Daemon, client: &TcpStream) -> String {
    let me = client.local_addr().unwrap();
    d.wait_for_log(&format!("client={me} "), IO_TIMEOUT)
}

/// `key=value` of a text session line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// `n` bytes ending a line (so a notice after them needs no line break).
fn payload(n: usize) -> Vec<u8> {
    let mut p: Vec<u8> = pseudo_random(n, 7)
        .into_iter()
        .map(|b| b'a' + b % 26)
        .collect();
    p[n - 1] = b'\n';
    p
}

#[test]
fn disconnect_line_has_client_listener_bytes_and_reason() {
    let d = Daemon::start("");
    let mut c = connect(d.addr());
    let data = payload(1000);
    round_trip(&mut c, &data);
    c.write_all(b"disconnect\n").unwrap();
    assert_bytes(&read_to_eof(&mut c), GOODBYE);
    let line = session_line(&d, &c);
    assert!(line.contains(" INFO  session "), "{line}");
    assert_eq!(field(&line, "listener"), d.addr().to_string());
    assert_eq!(field(&line, "protocol"), "tcp");
    assert_eq!(field(&line, "received"), (1000 + 11).to_string());
    assert_eq!(field(&line, "sent"), (1000 + GOODBYE.len()).to_string());
    assert_eq!(field(&line, "reason"), "disconnect");
    let secs: f64 = field(&line, "duration_s").parse().unwrap();
    assert!((0.0..10.0).contains(&secs), "{line}");
}

#[test]
fn idle_close_and_plain_close_and_reset_each_say_so() {
    let d = Daemon::start("idle_timeout = 1\n");
    // Idle: sends 300 bytes, then nothing.
    let mut idle = connect(d.addr());
    round_trip(&mut idle, &payload(300));
    assert_bytes(&read_to_eof(&mut idle), &idle_notice(1));
    let line = session_line(&d, &idle);
    assert_eq!(field(&line, "reason"), "idle");
    assert_eq!(field(&line, "received"), "300");
    assert_eq!(
        field(&line, "sent"),
        (300 + idle_notice(1).len()).to_string()
    );
    let secs: f64 = field(&line, "duration_s").parse().unwrap();
    assert!(secs >= 1.0, "{line}");
    // Closes its side after 200 bytes and reads the echo to the end.
    let mut closer = connect(d.addr());
    round_trip(&mut closer, &payload(200));
    closer.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut closer).is_empty());
    let line = session_line(&d, &closer);
    assert_eq!(field(&line, "reason"), "client");
    assert_eq!(field(&line, "received"), "200");
    assert_eq!(field(&line, "sent"), "200");
    // Resets after 100 bytes.
    let mut reset = connect(d.addr());
    round_trip(&mut reset, &payload(100));
    set_linger_zero(&reset);
    let me = reset.local_addr().unwrap();
    drop(reset);
    let line = d.wait_for_log(&format!("client={me} "), IO_TIMEOUT);
    assert_eq!(field(&line, "reason"), "error");
    assert_eq!(field(&line, "received"), "100");
    assert_eq!(field(&line, "sent"), "100");
}

#[test]
fn json_lines_have_stable_fields_for_sessions_and_daemon_events() {
    let d = Daemon::start("[log]\nformat = \"json\"\n");
    let mut c = connect(d.addr());
    round_trip(&mut c, &payload(64));
    c.write_all(b"disconnect\n").unwrap();
    read_to_eof(&mut c);
    let me = c.local_addr().unwrap();
    let line = d.wait_for_log(&format!("\"client\":\"{me}\""), IO_TIMEOUT);
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["event"], "session");
    assert_eq!(v["level"], "info");
    assert_eq!(v["msg"], "session");
    assert_eq!(v["listener"], d.addr().to_string());
    assert_eq!(v["protocol"], "tcp");
    assert_eq!(v["received"], 64 + 11);
    assert_eq!(v["sent"], 64 + GOODBYE.len());
    assert_eq!(v["reason"], "disconnect");
    assert!(v["duration_s"].is_f64() || v["duration_s"].is_u64(), "{v}");
    assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    // Daemon events are JSON too.
    let start = d.wait_for_log("listening on", IO_TIMEOUT);
    let v: serde_json::Value = serde_json::from_str(&start).expect("a JSON line");
    assert_eq!(v["event"], "daemon");
    assert!(
        v["msg"].as_str().unwrap().starts_with("listening on"),
        "{v}"
    );
}

#[test]
fn sessions_false_logs_none_and_a_reload_turns_them_on() {
    let d = Daemon::start("[log]\nsessions = false\n");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"x\n");
    let first = c.local_addr().unwrap();
    drop(c);
    // Proof the close was seen: the status counts it.
    wait_until(IO_TIMEOUT, "the close counted", || d.stat("active") == 0);
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    std::fs::write(
        d.config_path(),
        text.replace("sessions = false", "sessions = true"),
    )
    .unwrap();
    let out = ctl(&d, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    let mut c = connect(d.addr());
    round_trip(&mut c, b"y\n");
    drop(c);
    wait_until(IO_TIMEOUT, "a session line", || {
        d.log_count(" INFO  session ") == 1
    });
    assert_eq!(
        d.log_count(&format!("client={first} ")),
        0,
        "{}",
        d.log_text()
    );
}
