//! `max_connections`: one more client gets the busy notice and is closed;
//! once a client leaves, a new one is served.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn fourth_client_is_refused_until_one_leaves() {
    let d = Daemon::start("pool_size = 2\nmax_connections = 3\n");
    let mut served: Vec<_> = (0..3)
        .map(|i| {
            let mut s = connect(d.addr());
            round_trip(&mut s, format!("client {i}\n").as_bytes());
            s
        })
        .collect();

    for _ in 0..2 {
        let mut extra = connect(d.addr());
        assert_bytes(&read_to_eof(&mut extra), &busy_notice(3));
    }
    // The refusals did not disturb the clients being served.
    for (i, s) in served.iter_mut().enumerate() {
        round_trip(s, format!("client {i} again\n").as_bytes());
    }

    // One leaves.
    let mut leaving = served.remove(1);
    leaving.write_all(b"disconnect\n").unwrap();
    assert_bytes(&read_to_eof(&mut leaving), GOODBYE);
    drop(leaving);

    // Its slot frees once the server has closed it: retry until served.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut newcomer = loop {
        let mut s = connect(d.addr());
        s.write_all(b"newcomer\n").unwrap();
        let first = read_n(&mut s, 1);
        if first == b"n" {
            let rest = read_n(&mut s, 8);
            assert_bytes(&rest, b"ewcomer\n");
            break s;
        }
        let rest = read_to_eof(&mut s);
        assert_bytes(&[first, rest].concat(), &busy_notice(3));
        assert!(
            Instant::now() < deadline,
            "still busy {:?} after a client left",
            IO_TIMEOUT
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    round_trip(&mut newcomer, b"served\n");
    for s in served.iter_mut() {
        round_trip(s, b"still served\n");
    }
    // And the limit holds again.
    let mut extra = connect(d.addr());
    assert_bytes(&read_to_eof(&mut extra), &busy_notice(3));
}
