//! Clients that reset mid-echo (SO_LINGER 0, then close, while data is in
//! flight both ways): the daemon drops them, keeps serving everyone else,
//! and leaks no descriptor.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

const RESETS: usize = 200;

#[test]
fn resets_while_echo_is_in_flight_leak_nothing() {
    let d = Daemon::start("pool_size = 2\nmax_pending_bytes = 65536\n");
    let mut other = connect(d.addr());
    round_trip(&mut other, b"warm\n");
    let fds_before = d.fd_count();
    let threads_before = d.thread_count();

    let data = pseudo_random(256 * 1024, 0x5e7);
    assert!(!contains_disconnect_word(&data));
    for i in 0..RESETS {
        let mut s = connect(d.addr());
        s.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // Vary how far the echo got: some reset right after a small
        // write, some with the server's pending buffer full, some after
        // reading part of the echo.
        let len = [1, 100, 64 * 1024, 256 * 1024][i % 4];
        let _ = s.write_all(&data[..len]);
        if i % 3 == 0 {
            let _ = read_n(&mut s, 1.min(len));
        }
        set_linger_zero(&s);
        drop(s);
        if i % 20 == 0 {
            round_trip(&mut other, format!("between resets {i}\n").as_bytes());
        }
    }
    round_trip(&mut other, b"after the resets\n");
    wait_until(IO_TIMEOUT, "descriptors back to the baseline", || {
        d.fd_count() == fds_before
    });
    assert_eq!(d.thread_count(), threads_before);
    assert_eq!(d.stat("active"), 1, "only the other client is open");
    eprintln!(
        "reset mid-echo: {RESETS} resets; fds {fds_before} before and after; daemon total {}",
        d.stat("total")
    );
}
