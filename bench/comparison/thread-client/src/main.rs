//! thread-client: a blocking echo load generator, one OS thread per
//! connection, the way a client written against `std::net` does it.
//!
//! Each connection has its own thread, which `write_all`s a message and
//! `read_exact`s its echo, in a loop: the connection's packets keep
//! arriving from the CPU its thread runs on, unlike a work-stealing
//! runtime's tasks (`tokio-client`), which move. It is the other shape of
//! client a server has to serve well. Nothing here is tuned for any server.
//!
//! All connections are established before the first message (a barrier),
//! then the first `WARMUP` seconds are not recorded and round trips that
//! start within the next `DURATION` seconds are: counted, compared byte for
//! byte with what was sent (the first eight bytes carry the round number, so
//! a stale echo does not compare equal), and their latency recorded in an
//! HdrHistogram.
//!
//! Usage: `thread-client ADDR CONNECTIONS SIZE DURATION [WARMUP] [--server-pid PID]`
//! (seconds may be fractional; WARMUP defaults to 0). Prints one JSON line on
//! stdout, the same fields as `tokio-client`'s: `round_trips`,
//! `round_trips_per_sec`, `latency_us.{p50,p99,p999,max}`, `errors`, and with
//! `--server-pid` the server's user + system CPU time from `/proc/PID/stat`
//! over the measured window (`server_cpu`). Exits 3 if any round trip failed
//! or nothing was measured, 1 if it could not run. Only std and
//! `hdrhistogram`: the JSON is written by hand.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Stack of each connection's thread: it holds two buffers' pointers and a
/// few locals, the buffers and histogram live on the heap.
const THREAD_STACK: usize = 128 * 1024;
/// Longest latency recorded (longer ones are clamped to it), in ns.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

struct Args {
    addr: String,
    connections: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    server_pid: Option<u32>,
}

/// What one connection's thread saw. Counts are `u32` per bucket: a
/// thousand threads each hold one histogram.
struct Tally {
    latency: Histogram<u32>,
    /// Measured round trips.
    round_trips: u64,
    /// All round trips, warmup included.
    all: u64,
    errors: u64,
    last_echo: Option<Instant>,
}

fn fail(message: &str) -> ! {
    eprintln!("thread-client: {message}");
    std::process::exit(1);
}

fn parse_args() -> Args {
    let usage = "usage: thread-client ADDR CONNECTIONS SIZE DURATION [WARMUP] [--server-pid PID]";
    let mut positional = Vec::new();
    let mut server_pid = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--server-pid" {
            match args.next().and_then(|p| p.parse().ok()) {
                Some(pid) => server_pid = Some(pid),
                None => fail("--server-pid needs a process id"),
            }
        } else {
            positional.push(arg);
        }
    }
    let (addr, connections, size, duration, warmup) = match positional.as_slice() {
        [a, c, s, d] => (a, c, s, d, "0"),
        [a, c, s, d, w] => (a, c, s, d, w.as_str()),
        _ => fail(usage),
    };
    let secs = |s: &str| {
        s.parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or_else(|| fail(&format!("`{s}` is not a number of seconds")))
    };
    let count = |s: &str| match s.parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => fail(&format!("`{s}` is not a positive number")),
    };
    Args {
        addr: addr.clone(),
        connections: count(connections),
        size: count(size),
        duration: secs(duration),
        warmup: secs(warmup),
        server_pid,
    }
}

/// User + system CPU time of `pid` so far, from /proc/PID/stat.
fn cpu_of(pid: u32, hz: u64) -> Duration {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let rest = &text[text.rfind(')').map_or(0, |i| i + 1)..];
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1))
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if it cannot be read.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn main() {
    let args = parse_args();
    let hz = clock_ticks();
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let mut threads = Vec::with_capacity(args.connections);
    for conn in 0..args.connections {
        let stream = TcpStream::connect(&args.addr)
            .unwrap_or_else(|e| fail(&format!("connect to {}: {e}", args.addr)));
        if let Err(e) = stream.set_nodelay(true) {
            fail(&format!("TCP_NODELAY: {e}"));
        }
        let barrier = barrier.clone();
        let (size, warmup, duration) = (args.size, args.warmup, args.duration);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{conn}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                // Every thread leaves the barrier at about the same
                // instant: the window is measured from there.
                barrier.wait();
                let go = Instant::now();
                ping_pong(
                    stream,
                    conn as u64,
                    size,
                    go + warmup,
                    go + warmup + duration,
                )
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => fail(&format!("spawning the thread of connection {conn}: {e}")),
        }
    }
    barrier.wait();
    let from = Instant::now() + args.warmup;
    let cpu_window = args.server_pid.map(|pid| {
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        (pid, Instant::now(), cpu_of(pid, hz))
    });
    let mut total = Tally::new();
    for thread in threads {
        match thread.join() {
            Ok(t) => total.merge(&t),
            Err(_) => total.errors += 1,
        }
    }
    let server_cpu = match cpu_window {
        Some((pid, at, before)) => {
            let cpu = cpu_of(pid, hz).saturating_sub(before).as_secs_f64();
            let wall = at.elapsed().as_secs_f64();
            let percent = if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 };
            let per = if total.round_trips > 0 {
                format!("{}", cpu * 1e6 / total.round_trips as f64)
            } else {
                "null".into()
            };
            format!(
                "{{\"pid\":{pid},\"window_secs\":{wall},\"cpu_secs\":{cpu},\"percent\":{percent},\"us_per_round_trip\":{per}}}"
            )
        }
        None => "null".into(),
    };
    let elapsed = total
        .last_echo
        .map_or(args.duration, |t| t.saturating_duration_since(from))
        .as_secs_f64();
    let rate = if elapsed > 0.0 {
        total.round_trips as f64 / elapsed
    } else {
        0.0
    };
    let us = |q: f64| total.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"client\":\"thread-client\",\"mode\":\"ping-pong\",\"addr\":{addr},\"connections\":{conns},\"size\":{size},\
\"warmup_secs\":{warmup},\"duration_secs\":{duration},\"elapsed_secs\":{elapsed},\"round_trips\":{rt},\
\"round_trips_with_warmup\":{all},\"round_trips_per_sec\":{rate},\
\"latency_us\":{{\"p50\":{p50},\"p99\":{p99},\"p999\":{p999},\"max\":{max}}},\
\"errors\":{{\"total\":{errors}}},\"server_cpu\":{server_cpu}}}",
        addr = json_string(&args.addr),
        conns = args.connections,
        size = args.size,
        warmup = args.warmup.as_secs_f64(),
        duration = args.duration.as_secs_f64(),
        rt = total.round_trips,
        all = total.all,
        p50 = us(0.50),
        p99 = us(0.99),
        p999 = us(0.999),
        max = total.latency.max() as f64 / 1000.0,
        errors = total.errors,
    );
    if total.errors > 0 || total.round_trips == 0 {
        std::process::exit(3);
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One connection: `write_all`, `read_exact`, compare, until `end`.
fn ping_pong(mut stream: TcpStream, conn: u64, size: usize, from: Instant, end: Instant) -> Tally {
    let mut tally = Tally::new();
    let mut sent = vec![(conn % 251) as u8; size];
    let mut echoed = vec![0u8; size];
    for round in 0u64.. {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let tag = round.to_le_bytes();
        let n = tag.len().min(size);
        sent[..n].copy_from_slice(&tag[..n]);
        if stream.write_all(&sent).is_err()
            || stream.read_exact(&mut echoed).is_err()
            || echoed != sent
        {
            tally.errors += 1;
            break;
        }
        tally.all += 1;
        if start >= from {
            let done = Instant::now();
            let ns = (done - start).as_nanos().min(u128::from(MAX_LATENCY_NS)) as u64;
            tally.latency.saturating_record(ns.max(1));
            tally.round_trips += 1;
            tally.last_echo = Some(done);
        }
    }
    tally
}

impl Tally {
    fn new() -> Self {
        Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("constant histogram bounds are valid"),
            round_trips: 0,
            all: 0,
            errors: 0,
            last_echo: None,
        }
    }

    fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        self.round_trips += other.round_trips;
        self.all += other.all;
        self.errors += other.errors;
        self.last_echo = match (self.last_echo, other.last_echo) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_escapes_quotes_backslashes_and_controls() {
        assert_eq!(json_string("127.0.0.1:7"), "\"127.0.0.1:7\"");
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn ping_pong_counts_round_trips_against_a_real_echo_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let stream = TcpStream::connect(addr).expect("connect");
        let now = Instant::now();
        let tally = ping_pong(stream, 3, 64, now, now + Duration::from_millis(200));
        assert_eq!(tally.errors, 0);
        assert!(tally.round_trips > 0);
        assert_eq!(tally.latency.len(), tally.round_trips);
        peer.join().expect("peer thread");
    }
}
