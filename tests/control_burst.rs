//! A burst of 200 control-socket connections that send garbage or nothing:
//! the daemon keeps echoing and reloading, every request that ended gets
//! an error answer, and the operator's own `status` still gets through.
//! (Who may connect at all — mode 0660 and SO_PEERCRED — and single
//! malformed, oversized and stalled requests are in tests/control.rs.)

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use support::*;

const BURST: usize = 200;
/// How long the operator's status request may take while the burst is
/// connected. Generous: a control socket that answers in turn, a few
/// seconds per silent peer, is what fails it.
const STATUS_BOUND: Duration = Duration::from_secs(15);

fn garbage(i: usize) -> Vec<u8> {
    match i % 5 {
        0 => b"\x00\xff\xfe not json at all\n".to_vec(),
        1 => b"{\"cmd\":\n".to_vec(),
        2 => b"{\"cmd\":\"status\",\"cmd\":\"stop\"}garbage\n".to_vec(),
        3 => vec![b'{'; 8192],
        _ => pseudo_random(300, i as u64),
    }
}

fn open(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(d.control_path()).expect("connect to the control socket");
    s.set_read_timeout(Some(IO_TIMEOUT * 3)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// `{"cmd":"status"}` on a fresh connection, bounded by `timeout`; the
/// answer line, or the error.
fn status_within(d: &Daemon, timeout: Duration) -> Result<String, String> {
    let mut s = UnixStream::connect(d.control_path()).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s.write_all(b"{\"cmd\":\"status\"}\n")
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("no answer within {timeout:?}: {e}"))?;
    Ok(line)
}

#[test]
fn garbage_and_empty_requests_get_errors_and_echo_goes_on() {
    let d = Daemon::start("pool_size = 2\n");
    let mode = std::fs::metadata(d.control_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "control socket mode");
    let mut echo = connect(d.addr());
    round_trip(&mut echo, b"before\n");

    // All 200 connected at once: half send garbage, half send nothing and
    // end their request (EOF).
    let started = Instant::now();
    let mut burst: Vec<UnixStream> = (0..BURST).map(|_| open(&d)).collect();
    for (i, s) in burst.iter_mut().enumerate() {
        if i % 2 == 0 {
            // The daemon may answer an oversized request and close before
            // reading all of it.
            let _ = s.write_all(&garbage(i));
        }
        let _ = s.shutdown(Shutdown::Write);
    }
    round_trip(&mut echo, b"during the burst\n");
    d.signal(libc::SIGHUP);
    d.wait_for_log("reloaded ", IO_TIMEOUT);
    let mut kinds = std::collections::BTreeMap::new();
    for (i, s) in burst.into_iter().enumerate() {
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("control connection {i}: no answer: {e}"));
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("control connection {i}: {e}: {line:?}"));
        assert_eq!(v["reply"], "refused", "control connection {i}: {line}");
        let msg = v["message"].as_str().unwrap_or("").to_string();
        let kind = msg
            .split([':', '('])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let answered = started.elapsed();
    round_trip(&mut echo, b"after the burst\n");
    let s = ctl_status(&d);
    assert_eq!(s["pid"], d.pid());
    eprintln!(
        "control burst: {BURST} garbage/empty requests answered in {:.2}s: {kinds:?}",
        answered.as_secs_f64()
    );
}

#[test]
fn silent_control_clients_do_not_lock_out_the_operator() {
    let d = Daemon::start("pool_size = 2\n");
    let mut echo = connect(d.addr());
    round_trip(&mut echo, b"before\n");
    // 200 peers connect and say nothing, and stay (a script that hangs, a
    // stuck monitoring probe).
    let silent: Vec<UnixStream> = (0..BURST).map(|_| open(&d)).collect();
    // The daemon keeps echoing and reloading...
    round_trip(&mut echo, b"during\n");
    d.signal(libc::SIGHUP);
    d.wait_for_log("reloaded ", IO_TIMEOUT);
    // ... and the operator's status request gets its answer.
    let t0 = Instant::now();
    let answer = status_within(&d, STATUS_BOUND);
    let took = t0.elapsed();
    eprintln!(
        "control burst: status with {BURST} silent peers connected: {} after {:.1}s",
        if answer.is_ok() {
            "answered"
        } else {
            "NOT answered"
        },
        took.as_secs_f64()
    );
    let answer = answer.unwrap_or_else(|e| {
        panic!(
            "with {BURST} silent peers on the control socket, status got no answer: {e} \
             (the control socket serves one connection at a time and waits up to its \
             I/O timeout for each)"
        )
    });
    assert!(answer.contains("\"reply\":\"status\""), "{answer}");
    round_trip(&mut echo, b"after\n");
    drop(silent);
}
