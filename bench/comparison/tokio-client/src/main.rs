//! tokio-client: an echo load generator written the way tokio's examples
//! are, as an independent check on `echo-labctl bench`.
//!
//! A user who wants to load an echo server with tokio writes this: the
//! multi-threaded runtime of `#[tokio::main]`, one task per connection, and
//! in each task `write_all` of a message followed by `read_exact` of its
//! echo, in a loop. Nothing here is tuned for any server; that is the point.
//! All connections are established before the first message (a barrier),
//! then the first `WARMUP` seconds are not recorded and round trips that
//! start within the next `DURATION` seconds are: counted, compared byte for
//! byte with what was sent (the first eight bytes carry the round number, so
//! a stale echo does not compare equal), and their latency recorded in an
//! HdrHistogram.
//!
//! Usage: `tokio-client ADDR CONNECTIONS SIZE DURATION WARMUP [--server-pid PID]`
//! (seconds may be fractional). Prints one JSON line on stdout:
//! `round_trips`, `round_trips_per_sec`, `latency_us.{p50,p99,p999,max}`,
//! `errors`, and with `--server-pid` the server's user + system CPU time
//! from `/proc/PID/stat` over the measured window (`server_cpu`). Exits 3 if
//! any round trip failed or nothing was measured, 1 if it could not run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

struct Args {
    addr: String,
    connections: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    server_pid: Option<u32>,
}

/// What one connection's task saw.
struct Tally {
    latency: Histogram<u64>,
    /// Measured round trips.
    round_trips: u64,
    /// All round trips, warmup included.
    all: u64,
    errors: u64,
    last_echo: Option<Instant>,
}

fn fail(message: &str) -> ! {
    eprintln!("tokio-client: {message}");
    std::process::exit(1);
}

fn parse_args() -> Args {
    let usage = "usage: tokio-client ADDR CONNECTIONS SIZE DURATION WARMUP [--server-pid PID]";
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
    let [addr, connections, size, duration, warmup] = positional.as_slice() else {
        fail(usage);
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
fn cpu_of(pid: u32) -> Duration {
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
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1))
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let mut tasks = Vec::with_capacity(args.connections);
    for conn in 0..args.connections {
        let stream = match TcpStream::connect(&args.addr).await {
            Ok(s) => s,
            Err(e) => fail(&format!("connect to {}: {e}", args.addr)),
        };
        if let Err(e) = stream.set_nodelay(true) {
            fail(&format!("TCP_NODELAY: {e}"));
        }
        let barrier = barrier.clone();
        let size = args.size;
        let warmup = args.warmup;
        let duration = args.duration;
        tasks.push(tokio::spawn(async move {
            // Every task leaves the barrier at about the same instant: the
            // window is measured from there.
            barrier.wait().await;
            let go = Instant::now();
            ping_pong(
                stream,
                conn as u64,
                size,
                go + warmup,
                go + warmup + duration,
            )
            .await
        }));
    }
    barrier.wait().await;
    let go = Instant::now();
    let from = go + args.warmup;
    let cpu_window = match args.server_pid {
        Some(pid) => {
            tokio::time::sleep_until(from.into()).await;
            Some((pid, Instant::now(), cpu_of(pid)))
        }
        None => None,
    };
    let mut total = Tally::new();
    for task in tasks {
        match task.await {
            Ok(t) => total.merge(&t),
            Err(_) => total.errors += 1,
        }
    }
    let server_cpu = cpu_window.map(|(pid, at, before)| {
        let cpu = cpu_of(pid).saturating_sub(before).as_secs_f64();
        let wall = at.elapsed().as_secs_f64();
        serde_json::json!({
            "pid": pid,
            "window_secs": wall,
            "cpu_secs": cpu,
            "percent": if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 },
            "us_per_round_trip": (total.round_trips > 0).then(|| cpu * 1e6 / total.round_trips as f64),
        })
    });
    let elapsed = total
        .last_echo
        .map_or(args.duration, |t| t.saturating_duration_since(from))
        .as_secs_f64();
    let us = |q: f64| total.latency.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "client": "tokio-client",
        "mode": "ping-pong",
        "addr": args.addr,
        "connections": args.connections,
        "size": args.size,
        "warmup_secs": args.warmup.as_secs_f64(),
        "duration_secs": args.duration.as_secs_f64(),
        "elapsed_secs": elapsed,
        "round_trips": total.round_trips,
        "round_trips_with_warmup": total.all,
        "round_trips_per_sec": if elapsed > 0.0 { total.round_trips as f64 / elapsed } else { 0.0 },
        "latency_us": {
            "p50": us(0.50),
            "p99": us(0.99),
            "p999": us(0.999),
            "max": total.latency.max() as f64 / 1000.0,
        },
        "errors": { "total": total.errors },
        "server_cpu": server_cpu,
    });
    println!("{report}");
    if total.errors > 0 || total.round_trips == 0 {
        std::process::exit(3);
    }
}

/// One connection: `write_all`, `read_exact`, compare, until `end`.
async fn ping_pong(
    mut stream: TcpStream,
    conn: u64,
    size: usize,
    from: Instant,
    end: Instant,
) -> Tally {
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
        if stream.write_all(&sent).await.is_err()
            || stream.read_exact(&mut echoed).await.is_err()
            || echoed != sent
        {
            tally.errors += 1;
            break;
        }
        tally.all += 1;
        if start >= from {
            let done = Instant::now();
            let ns = (done - start).as_nanos().min(u64::MAX as u128) as u64;
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
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
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
