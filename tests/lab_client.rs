//! The teaching lab's client: it sends a message with no newline, reads
//! once (up to 1024 bytes) and expects the message back; then it sends
//! `disconnect`, again with no newline, and the server says goodbye and
//! closes.

mod support;

use std::io::{Read, Write};
use std::process::Command;

use support::*;

#[test]
fn message_then_disconnect_without_newlines() {
    let d = Daemon::start("pool_size = 2\n");
    let mut s = connect(d.addr());

    s.write_all(b"message").unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).expect("read the echo");
    assert_bytes(&buf[..n], b"message");

    s.write_all(b"disconnect").unwrap();
    // The last echoed byte was not a newline, so the notice starts on a
    // fresh line; then the server closes.
    let rest = read_to_eof(&mut s);
    assert_bytes(&rest, &[b"\r\n", GOODBYE].concat());
}

#[test]
fn python_lab_client() {
    let d = Daemon::start("pool_size = 2\n");
    // The lab's client, as students write it: socket.send / recv(1024).
    let script = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
s.send(b"message")
reply = s.recv(1024)
assert reply == b"message", reply
s.send(b"disconnect")
rest = b""
while True:
    chunk = s.recv(1024)
    if not chunk:
        break
    rest += chunk
assert rest == b"\r\n[echo-lab] goodbye\r\n", rest
s.close()
print("ok")
"#;
    let out = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(d.addr().port().to_string()),
        b"",
        IO_TIMEOUT * 2,
    );
    assert!(
        out.status.success(),
        "python client failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}
