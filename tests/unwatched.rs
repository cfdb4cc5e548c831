//! A connection that its worker cannot add to its poller (the fault hook
//! `ECHO_LAB_FAULT_REGISTER_FAILS` makes every registration fail with
//! ENOSPC, as a full `fs.epoll.max_user_watches` would) is not dropped
//! unheard: the client reads why before the close, the close is counted
//! with reason `error`, the session line and a warning are logged, and the
//! connection no longer counts as open. Needs the `fault-injection`
//! feature; without it the file says so.

mod support;

#[cfg(feature = "fault-injection")]
use support::*;

fault_injection_tests_not_built!();

/// The count of closes for `reason` in a status.
#[cfg(feature = "fault-injection")]
fn closed(status: &serde_json::Value, reason: &str) -> u64 {
    status["stats"]["closed"]
        .as_array()
        .expect("stats.closed")
        .iter()
        .find(|r| r[0] == reason)
        .and_then(|r| r[1].as_u64())
        .unwrap_or_else(|| panic!("no {reason} in {status}"))
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_connection_the_worker_cannot_watch_hears_why_and_is_counted() {
    let d = Daemon::start_env("", &[("ECHO_LAB_FAULT_REGISTER_FAILS", "1")]);
    let mut c = connect(d.addr());
    let me = c.local_addr().expect("local address");
    assert_bytes(
        &read_to_eof(&mut c),
        b"[echo-lab] cannot serve this connection now, try again later\r\n",
    );
    let line = d.wait_for_log(&format!("client={me} "), IO_TIMEOUT);
    assert!(line.contains("reason=error"), "{line}");
    d.wait_for_log(
        &format!("closed a connection from {me}: cannot watch its socket"),
        IO_TIMEOUT,
    );
    wait_until(IO_TIMEOUT, "the close counted and nothing open", || {
        let s = ctl_status(&d);
        closed(&s, "error") == 1 && s["stats"]["active"] == 0
    });
}
