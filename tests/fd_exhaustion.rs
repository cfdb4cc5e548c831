//! File descriptors exhausted: with RLIMIT_NOFILE set on the running
//! daemon (soft = hard, as `prlimit --pid PID --nofile=N:N` would) to leave
//! room for [`ROOM`] more descriptors, and more clients than fit, accept
//! fails with EMFILE. The limit is computed from the descriptors the daemon
//! actually holds, since it may have inherited some from whatever started
//! the tests. The daemon must back
//! off instead of spinning (its CPU time over two seconds stays small),
//! log the failure once per interval rather than once per attempt, and
//! recover when clients leave: the connections that waited in the kernel's
//! queue are then accepted and served.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Free descriptor numbers left under the limit (at least; gaps below the
/// daemon's highest descriptor add to it).
const ROOM: usize = 48;
/// Clients beyond what fits under the limit.
const EXCESS: usize = 32;
/// Closed first to make room: the rest (fewer than fit, since
/// `LEAVE > EXCESS`) must then all be served.
const LEAVE: usize = 40;
/// How long the CPU time is measured while exhausted.
const WINDOW: Duration = Duration::from_secs(2);
/// Generous bound on the daemon's CPU use while exhausted, as a share of
/// one core (a spinning accept loop uses ~100%).
const CPU_BOUND: f64 = 0.25;

fn hello(i: usize) -> Vec<u8> {
    format!("hello from client {i:03}\n").into_bytes()
}

/// What [`exhausted`] set up.
struct Exhausted {
    d: Daemon,
    /// Descriptors the idle daemon held before the limit.
    base: usize,
    /// The RLIMIT_NOFILE it was given.
    nofile: u64,
    clients: Vec<TcpStream>,
}

/// Starts a daemon, caps its descriptors, and opens more clients than fit
/// (each sends one line); returns when the daemon has logged the accept
/// failure and every descriptor number under the limit is in use.
fn exhausted() -> Exhausted {
    let d = Daemon::start("pool_size = 2\n");
    round_trip(&mut connect(d.addr()), b"warm\n");
    wait_until(IO_TIMEOUT, "the warm-up connection closed", || {
        d.stat("active") == 0
    });
    // The control thread is back in accept(2), which reserved its next
    // descriptor on entry (see the status test below).
    wait_until(IO_TIMEOUT, "the control thread to wait in accept", || {
        d.thread_in_syscall("control", libc::SYS_accept4)
    });
    let fds = d.fd_numbers();
    let base = fds.len();
    let highest = fds.iter().copied().max().unwrap_or(2) as usize;
    let nofile = highest + 1 + ROOM;
    // Free numbers under the limit: ROOM above the highest, plus the gaps.
    let fit = nofile - base;
    d.set_nofile(nofile as u64);
    let clients: Vec<TcpStream> = (0..fit + EXCESS)
        .map(|i| {
            // The handshake completes in the kernel whether or not the
            // daemon can accept.
            let mut s = connect(d.addr());
            s.write_all(&hello(i)).unwrap();
            s
        })
        .collect();
    d.wait_for_log("accept failed", IO_TIMEOUT);
    // The control thread blocked in accept(2) holds one number that /proc
    // does not list: the kernel reserves the descriptor before it waits.
    wait_until(IO_TIMEOUT, "the daemon to use all its descriptors", || {
        let below = d
            .fd_numbers()
            .iter()
            .filter(|&&n| (n as usize) < nofile)
            .count();
        below + 1 >= nofile
    });
    Exhausted {
        d,
        base,
        nofile: nofile as u64,
        clients,
    }
}

#[test]
fn accept_backs_off_logs_once_and_recovers() {
    let Exhausted {
        d,
        base,
        nofile,
        clients,
    } = exhausted();
    let n_clients = clients.len();
    let first_log = Instant::now();

    let cpu0 = d.cpu_time();
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let cpu = d.cpu_time() - cpu0;
    let wall = t0.elapsed();
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    let logged = d.log_count("accept failed");
    eprintln!(
        "fd exhaustion: RLIMIT_NOFILE {nofile}, {n_clients} clients, {} descriptors in use; daemon CPU {:.0} ms in {:.2} s ({:.1}% of one core); 'accept failed' logged {logged} time(s) in {:.1} s",
        d.fd_count(),
        ms(cpu),
        wall.as_secs_f64(),
        share * 100.0,
        first_log.elapsed().as_secs_f64()
    );
    assert!(
        share < CPU_BOUND,
        "the daemon used {:.0}% of a core while out of descriptors",
        share * 100.0
    );
    // The log interval is 10 s; this window is shorter.
    assert_eq!(
        logged,
        1,
        "'accept failed' logged per attempt:\n{}",
        d.log_text()
    );
    let line = d.wait_for_log("accept failed", IO_TIMEOUT);
    assert!(line.contains("Too many open files"), "{line}");

    // Clients leave; the ones queued in the kernel are accepted and
    // served, and the session of every one of them goes on.
    let mut clients: Vec<(usize, TcpStream)> = clients.into_iter().enumerate().collect();
    let rest = clients.split_off(LEAVE);
    drop(clients);
    let recovered = Instant::now();
    let mut rest: Vec<(usize, TcpStream)> = rest;
    for (i, s) in rest.iter_mut() {
        assert_bytes(&read_n(s, hello(*i).len()), &hello(*i));
        round_trip(s, format!("client {i} after recovery\n").as_bytes());
    }
    eprintln!(
        "fd exhaustion: {} queued clients served {:.2} s after {LEAVE} left",
        rest.len(),
        recovered.elapsed().as_secs_f64()
    );
    drop(rest);
    wait_until(IO_TIMEOUT, "descriptors back to the baseline", || {
        d.fd_count() == base
    });
    let mut c = connect(d.addr());
    round_trip(&mut c, b"served after recovery\n");
}

/// `echo-labctl status` still answers while the daemon is out of
/// descriptors (the control thread waits in accept(2) with its descriptor
/// already reserved, so the request is accepted), and nothing about the
/// control socket floods the log.
#[test]
fn status_answers_while_out_of_descriptors() {
    let Exhausted {
        d, base, clients, ..
    } = exhausted();
    let t0 = Instant::now();
    let s = ctl_status(&d);
    let answered = t0.elapsed();
    // Every descriptor above the idle daemon's is a client being served —
    // plus possibly one: the control socket keeps a descriptor in reserve
    // for exactly this case, and once it let go of it a client may hold it.
    let active = s["stats"]["active"].as_u64().unwrap();
    let above = (d.fd_count() - base) as u64;
    assert!(
        active == above || active == above + 1,
        "active {active}, descriptors above the baseline {above}"
    );
    std::thread::sleep(WINDOW);
    let logged = d.log_count("control socket accept");
    eprintln!(
        "fd exhaustion: status answered in {:.0} ms while exhausted (active {}); control socket log lines after it: {logged}",
        ms(answered),
        s["stats"]["active"]
    );
    assert_eq!(logged, 0, "{}", d.log_text());
    assert_eq!(d.log_count("accept failed"), 1, "{}", d.log_text());
    drop(clients);
}
