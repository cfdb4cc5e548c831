//! `echo-labctl connect --udp`: an echo session over UDP, one datagram per
//! line.
//!
//! UDP has no connection and no stream, so none of the TCP session's
//! machinery applies: each line (with its newline, as `nc -u` sends it)
//! goes out as one datagram, and the client waits up to the timeout for
//! the datagram that comes back, printing every datagram it receives. An
//! echo that does not arrive is not an error of the session — the network
//! may lose it, and echo-lab itself drops datagrams over the sender's rate
//! — so the session says so on stderr and goes on; the exit status is 1 if
//! any line went unanswered. The socket is connected to the server, so
//! only its datagrams are received, and an ICMP "port unreachable" shows up
//! as "nothing listens there" (exit 69) rather than as silence.

use std::io::{self, BufRead, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use crate::client::edit_lines;
use echo_lab_proto::exit::{EX_UNAVAILABLE, EX_USAGE};

/// The largest datagram echo-lab echoes.
const MAX_DATAGRAM: usize = echo_lab_proto::protocol::MAX_DATAGRAM;

/// What became of one line.
enum Outcome {
    Echoed,
    Lost,
    /// The session cannot go on: exit with this status.
    Fatal(i32),
}

/// Opens a UDP socket connected to `addr`.
pub fn open(addr: &str) -> Result<(UdpSocket, SocketAddr), (String, i32)> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| {
            (
                format!("bad address '{addr}': {e} (expected HOST:PORT)"),
                EX_USAGE,
            )
        })?
        .next()
        .ok_or_else(|| {
            (
                format!("bad address '{addr}': it resolves to nothing"),
                EX_USAGE,
            )
        })?;
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal address")
    } else {
        "[::]:0".parse().expect("literal address")
    };
    let fail = |e: io::Error| (format!("cannot open a UDP socket to {target}: {e}"), 1);
    let socket = UdpSocket::bind(local).map_err(fail)?;
    socket.connect(target).map_err(fail)?;
    Ok((socket, target))
}

/// Runs a UDP session on `addr`; returns the exit code.
pub fn run(addr: &str, timeout: Duration) -> i32 {
    let (socket, target) = match open(addr) {
        Ok(x) => x,
        Err((msg, code)) => {
            eprintln!("echo-labctl: {msg}");
            return code;
        }
    };
    let mut lost = 0u64;
    let mut lines = 0u64;
    let mut each = |line: &[u8]| -> Option<i32> {
        lines += 1;
        match round_trip(&socket, target, line, timeout, lines) {
            Outcome::Echoed => None,
            Outcome::Lost => {
                lost += 1;
                None
            }
            Outcome::Fatal(code) => Some(code),
        }
    };
    let code = if io::stdin().is_terminal() {
        eprintln!("Sending datagrams to {target}/udp: one per line; Ctrl-D leaves.");
        edit_lines("udp> ", &mut each)
    } else {
        piped(&mut each)
    };
    if let Some(code) = code {
        return code;
    }
    if lost > 0 {
        eprintln!("echo-labctl: {lost} of {lines} datagram(s) got no echo");
        return 1;
    }
    0
}

fn piped(each: &mut dyn FnMut(&[u8]) -> Option<i32>) -> Option<i32> {
    let mut input = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => {
                if let Some(code) = each(&line) {
                    return Some(code);
                }
            }
            Err(e) => {
                eprintln!("echo-labctl: reading stdin: {e}");
                return Some(1);
            }
        }
    }
}

/// Sends `line` as one datagram and prints what comes back until its echo
/// arrives or `timeout` passes.
fn round_trip(
    socket: &UdpSocket,
    target: SocketAddr,
    line: &[u8],
    timeout: Duration,
    number: u64,
) -> Outcome {
    if line.len() > MAX_DATAGRAM {
        eprintln!(
            "echo-labctl: line {number} is {} bytes; a datagram holds at most {MAX_DATAGRAM}: not sent",
            line.len()
        );
        return Outcome::Lost;
    }
    if let Err(e) = socket.send(line) {
        return io_failure(&e, target);
    }
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!(
                "echo-labctl: no echo for line {number} within {}s (lost, or dropped by the server's rate limit)",
                timeout.as_secs_f64()
            );
            return Outcome::Lost;
        }
        if let Err(e) = socket.set_read_timeout(Some(left)) {
            return io_failure(&e, target);
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                let mut out = io::stdout().lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
                if &buf[..n] == line {
                    return Outcome::Echoed;
                }
                // A late echo of an earlier line: printed, keep waiting.
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return io_failure(&e, target),
        }
    }
}

fn io_failure(e: &io::Error, target: SocketAddr) -> Outcome {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        eprintln!(
            "echo-labctl: nothing listens on {target}/udp (port unreachable; is udp = true set?)"
        );
        Outcome::Fatal(EX_UNAVAILABLE)
    } else {
        eprintln!("echo-labctl: {target}/udp: {e}");
        Outcome::Fatal(1)
    }
}
