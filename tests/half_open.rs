//! Half-open connections: a client that shuts down its sending side still
//! gets every byte it sent echoed — also when that is far more than the
//! pending cap and the socket buffers, so the server must keep echoing
//! after it has seen the end of input — and then the server closes.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;

use support::*;

#[test]
fn small_message_then_shutdown_is_echoed_then_closed() {
    let d = Daemon::start("pool_size = 2\n");
    for msg in [&b"hello"[..], b"line\n", b"\x00\xff\xfe", b"a\nb\nc"] {
        let mut s = connect(d.addr());
        s.write_all(msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_bytes(&read_to_eof(&mut s), msg);
    }
    // Shut down with nothing sent: the server closes at once.
    let mut s = connect(d.addr());
    s.shutdown(Shutdown::Write).unwrap();
    assert_bytes(&read_to_eof(&mut s), b"");
}

#[test]
fn bulk_then_shutdown_is_fully_echoed_then_closed() {
    // 8 MiB through a 4 KiB pending cap: the server pauses reading many
    // times, and sees the end of input only after the client has read.
    let d = Daemon::start("pool_size = 2\nmax_pending_bytes = 4096\n");
    let fds_before = d.fd_count();
    let data = pseudo_random(8 << 20, 0x4a1f);
    assert!(!contains_disconnect_word(&data));
    let mut s = connect(d.addr());
    let mut w = s.try_clone().unwrap();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            w.write_all(&data).expect("bulk write");
            w.shutdown(Shutdown::Write).expect("shutdown");
        })
    };
    let mut got = Vec::with_capacity(data.len());
    s.read_to_end(&mut got).expect("echo then EOF");
    writer.join().unwrap();
    assert_eq!(got.len(), data.len(), "echo length");
    assert!(got == data, "echo differs");
    drop(s);
    wait_until(IO_TIMEOUT, "the connection closed", || {
        d.fd_count() <= fds_before
    });
    assert_eq!(d.stat("active"), 0);
}
