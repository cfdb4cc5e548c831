//! The `disconnect` command: as a complete line or as a whole chunk, ASCII
//! case-insensitive, surrounding whitespace ignored; not echoed itself,
//! bytes before it are; then the goodbye notice and EOF. Anything else
//! containing the word is plain data.

mod support;

use std::io::Write;
use std::net::TcpStream;

use support::*;

fn daemon() -> Daemon {
    Daemon::start("pool_size = 2\n")
}

/// Sends `data` as one write and expects `echo`, then the goodbye notice,
/// then EOF.
fn expect_goodbye_after(s: &mut TcpStream, data: &[u8], echo: &[u8]) {
    s.write_all(data).unwrap();
    let got = read_to_eof(s);
    assert_bytes(&got, &[echo, GOODBYE].concat());
}

#[test]
fn lowercase_line() {
    let d = daemon();
    let mut s = connect(d.addr());
    round_trip(&mut s, b"hello\n");
    expect_goodbye_after(&mut s, b"disconnect\n", b"");
}

#[test]
fn any_ascii_case() {
    let d = daemon();
    for word in [
        &b"DISCONNECT\n"[..],
        b"Disconnect\n",
        b"dIsCoNnEcT\n",
        b"DISCONNECT",
    ] {
        let mut s = connect(d.addr());
        round_trip(&mut s, b"x\n");
        expect_goodbye_after(&mut s, word, b"");
    }
}

#[test]
fn surrounding_spaces_tabs_and_crlf() {
    let d = daemon();
    for word in [
        &b"  disconnect\n"[..],
        b"\tdisconnect\t\n",
        b"disconnect\r\n",
        b" \t disconnect \t\r\n",
        b"  disconnect  ",
        b"\r\ndisconnect\r\n",
    ] {
        let mut s = connect(d.addr());
        expect_goodbye_after(&mut s, word, b"");
    }
}

#[test]
fn whole_chunk_without_newline_after_a_line() {
    let d = daemon();
    let mut s = connect(d.addr());
    round_trip(&mut s, b"hello\n");
    // The last echoed byte was a newline: no extra CRLF before the notice.
    expect_goodbye_after(&mut s, b"disconnect", b"");
}

#[test]
fn in_the_middle_of_a_chunk_earlier_lines_are_echoed() {
    let d = daemon();
    let mut s = connect(d.addr());
    expect_goodbye_after(
        &mut s,
        b"one\ntwo\ndisconnect\nafter\nmore after\n",
        b"one\ntwo\n",
    );
}

#[test]
fn in_the_middle_of_a_chunk_with_crlf_lines() {
    let d = daemon();
    let mut s = connect(d.addr());
    expect_goodbye_after(&mut s, b"one\r\n  DISCONNECT \r\nafter\r\n", b"one\r\n");
}

#[test]
fn split_across_two_writes() {
    let d = daemon();
    let mut s = connect(d.addr());
    // Echo is never held back waiting for a line: "discon" comes back at
    // once.
    s.write_all(b"one\ndiscon").unwrap();
    assert_bytes(&read_n(&mut s, 10), b"one\ndiscon");
    // Completing the line ends the session; "nect\n" is not echoed, and
    // since the last echoed byte was not a newline the notice starts on a
    // fresh line.
    s.write_all(b"nect\n").unwrap();
    let got = read_to_eof(&mut s);
    assert_bytes(&got, &[b"\r\n", GOODBYE].concat());
}

#[test]
fn split_in_three_writes_with_crlf() {
    let d = daemon();
    let mut s = connect(d.addr());
    for part in [&b"Dis"[..], b"CONN"] {
        round_trip(&mut s, part);
    }
    s.write_all(b"ect\r\n").unwrap();
    let got = read_to_eof(&mut s);
    assert_bytes(&got, &[b"\r\n", GOODBYE].concat());
}

#[test]
fn lookalikes_are_plain_data() {
    let d = daemon();
    let mut s = connect(d.addr());
    for data in [
        &b"disconnected\n"[..],
        b"x disconnect\n",
        b"disconnect x\n",
        b"dis connect\n",
        b"disconnectdisconnect\n",
        b"disconnected",
        b"xdisconnect",
        b"disconnect\0\n",
        b"disconnec\n",
        b"isconnect\n",
    ] {
        round_trip(&mut s, data);
    }
    // A line started as data does not become a command when the word
    // arrives in later writes (none of them the bare word on its own).
    round_trip(&mut s, b"abc ");
    round_trip(&mut s, b"discon");
    round_trip(&mut s, b"nect");
    round_trip(&mut s, b"\n");
    // The session is still open and ends on request.
    expect_goodbye_after(&mut s, b"disconnect\n", b"");
}

#[test]
fn input_after_goodbye_does_not_reset_the_connection() {
    let d = daemon();
    let mut s = connect(d.addr());
    // The client keeps sending after the command; the server discards it
    // and the goodbye still arrives intact, followed by a clean EOF.
    s.write_all(b"disconnect\nand more\nand more\n").unwrap();
    let _ = s.write_all(&[b'z'; 10_000]);
    let got = read_to_eof(&mut s);
    assert_bytes(&got, GOODBYE);
}
