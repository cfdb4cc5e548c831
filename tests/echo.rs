//! Echo is byte-exact and ordered: lines, any byte values, large writes.

mod support;

use std::io::Write;
use std::net::Shutdown;

use support::*;

#[test]
fn line_by_line_round_trips() {
    let d = Daemon::start("pool_size = 2\n");
    let mut s = connect(d.addr());
    for i in 0..50 {
        round_trip(&mut s, format!("line {i}: hello, echo\n").as_bytes());
    }
}

#[test]
fn many_lines_in_one_write_keep_their_order() {
    let d = Daemon::start("pool_size = 2\n");
    let mut s = connect(d.addr());
    let text: String = (0..1000).map(|i| format!("line number {i}\n")).collect();
    s.write_all(text.as_bytes()).unwrap();
    let back = read_n(&mut s, text.len());
    assert_bytes(&back, text.as_bytes());
    // And the session goes on.
    round_trip(&mut s, b"still here\r\n");
}

#[test]
fn every_byte_value() {
    let d = Daemon::start("pool_size = 2\n");
    let mut s = connect(d.addr());
    let all: Vec<u8> = (0..=255u8).collect();
    round_trip(&mut s, &all);
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    round_trip(&mut s, &reversed);
}

#[test]
fn nul_bytes_and_invalid_utf8() {
    let d = Daemon::start("pool_size = 2\n");
    let mut s = connect(d.addr());
    round_trip(&mut s, b"\0");
    round_trip(&mut s, b"\0\0\0\n");
    round_trip(&mut s, b"a\0b\0c");
    // Invalid UTF-8: lone continuation byte, overlong encoding, surrogate,
    // truncated sequence, bytes that never appear in UTF-8.
    round_trip(&mut s, b"\x80\xc0\xaf\xed\xa0\x80\xe2\x82\xfe\xff\n");
    round_trip(&mut s, &[0xff; 3000]);
}

#[test]
fn one_mebibyte_write_comes_back_whole() {
    let d = Daemon::start("pool_size = 2\n");
    let data = pseudo_random(1 << 20, 0x5eed);
    assert!(!contains_disconnect_word(&data));
    let mut s = connect(d.addr());
    // Write on another thread: the server stops reading while its echo is
    // not read (backpressure), so one thread writing all first could
    // deadlock.
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let back = read_n(&mut s, data.len());
    writer.join().unwrap().expect("write 1 MiB");
    assert!(back == data, "1 MiB echo differs");
    round_trip(&mut s, b"after the bulk\n");
}

#[test]
fn half_close_still_gets_the_echo_then_eof() {
    let d = Daemon::start("pool_size = 2\n");
    let mut s = connect(d.addr());
    s.write_all(b"last words, no newline").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let back = read_to_eof(&mut s);
    assert_bytes(&back, b"last words, no newline");
}

#[test]
fn clients_do_not_see_each_others_bytes() {
    let d = Daemon::start("pool_size = 2\n");
    let mut a = connect(d.addr());
    let mut b = connect(d.addr());
    for i in 0..20 {
        a.write_all(format!("a{i}\n").as_bytes()).unwrap();
        b.write_all(format!("b{i}\n").as_bytes()).unwrap();
        assert_bytes(
            &read_n(&mut a, format!("a{i}\n").len()),
            format!("a{i}\n").as_bytes(),
        );
        assert_bytes(
            &read_n(&mut b, format!("b{i}\n").len()),
            format!("b{i}\n").as_bytes(),
        );
    }
}
