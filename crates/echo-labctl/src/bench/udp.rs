//! `echo-labctl bench --udp`: ping-pong over UDP, like a UDP ping with
//! numbers — round trips per second, loss, RTT percentiles and jitter.
//!
//! UDP may lose a datagram, so the TCP bench's "wait for the echo" would
//! hang; here every datagram in flight has a deadline (`--timeout`) after
//! which it counts as lost and the flow sends the next one. `--connections`
//! is the number of flows, each with one datagram in flight; the flows are
//! spread over the load threads, each thread with one UDP socket connected
//! to the server (so the server sees one source port per thread, and a
//! per-source rate limit applies to the whole run — which is what this
//! measures against a limited echo-lab).
//!
//! Each datagram starts with its flow number and sequence number (4 bytes
//! each, little-endian) followed by the [`payload`] bytes of that pair, so
//! an echo is matched to its flow, a late echo of a datagram already
//! counted lost is recognised (counted `late`, not as a round trip), and a
//! wrong echo is a mismatch. Jitter is the mean absolute difference between
//! consecutive round-trip times of a flow (RFC 3550's D, unsmoothed).
//!
//! A run fails (exit status 3) if nothing was echoed, an echo differed
//! from the datagram, or a send failed; loss alone is a measurement, not a
//! failure.

use std::io::{self, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::payload;
use super::plan::{Plan, Round, Stop, Window};
use super::report::Latency;
use super::{cpu, split, BenchArgs, EXIT_FAILURES};

/// Flow and sequence numbers at the start of each datagram.
const HEADER: usize = 8;

/// The largest datagram echo-lab echoes.
const MAX_SIZE: usize = echo_lab_proto::protocol::MAX_DATAGRAM;

/// One flow: one datagram in flight at a time.
struct Flow {
    id: u32,
    seq: u32,
    sent: Vec<u8>,
    sent_at: Instant,
    /// This datagram counts (it left inside the measured window).
    measured: bool,
    /// Waiting for an echo (false once the window is over).
    active: bool,
    last_rtt: Option<Duration>,
}

/// What one thread saw.
#[derive(Debug, Clone)]
struct UdpTally {
    latency: Histogram<u64>,
    sent: u64,
    echoed: u64,
    lost: u64,
    late: u64,
    mismatch: u64,
    send_errors: u64,
    jitter_sum_ns: u128,
    jitter_n: u64,
    last_echo: Option<Instant>,
}

impl UdpTally {
    fn new() -> UdpTally {
        UdpTally {
            latency: Histogram::new_with_bounds(1, 3_600 * 1_000_000_000, 3)
                .expect("constant histogram bounds are valid"),
            sent: 0,
            echoed: 0,
            lost: 0,
            late: 0,
            mismatch: 0,
            send_errors: 0,
            jitter_sum_ns: 0,
            jitter_n: 0,
            last_echo: None,
        }
    }

    fn merge(&mut self, o: &UdpTally) {
        let _ = self.latency.add(&o.latency);
        self.sent += o.sent;
        self.echoed += o.echoed;
        self.lost += o.lost;
        self.late += o.late;
        self.mismatch += o.mismatch;
        self.send_errors += o.send_errors;
        self.jitter_sum_ns += o.jitter_sum_ns;
        self.jitter_n += o.jitter_n;
        self.last_echo = match (self.last_echo, o.last_echo) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The result of a UDP run.
#[derive(Debug, Clone, Serialize)]
pub struct UdpReport {
    /// Always `"udp-ping-pong"`.
    pub mode: &'static str,
    pub addr: String,
    /// Datagrams in flight at once.
    pub flows: usize,
    pub threads: usize,
    /// Bytes per datagram.
    pub size: usize,
    pub warmup_secs: f64,
    /// From the end of the warmup to the last echo.
    pub elapsed_secs: f64,
    /// Measured datagrams sent.
    pub sent: u64,
    /// Of those, echoed (verified) in time.
    pub echoed: u64,
    /// Of those, no echo within the timeout.
    pub lost: u64,
    /// `lost / sent`, in percent.
    pub loss_pct: f64,
    /// Echoes that came after their datagram was counted lost.
    pub late: u64,
    /// Echoes that differed from the datagram.
    pub mismatch: u64,
    /// Datagrams the kernel would not send.
    pub send_errors: u64,
    pub round_trips_per_sec: f64,
    pub latency_us: Latency,
    /// Mean |RTT(n) - RTT(n-1)| over consecutive echoes of a flow, in
    /// microseconds.
    pub jitter_us: f64,
    /// CPU (user + system) the generator used.
    pub client_cpu_secs: f64,
    /// Something echoed, no mismatch, no send error.
    pub ok: bool,
}

impl UdpReport {
    /// The report as text.
    pub fn text(&self) -> String {
        let l = &self.latency_us;
        let errors = if self.mismatch + self.send_errors == 0 {
            "none".to_string()
        } else {
            format!("mismatch {}, send {}", self.mismatch, self.send_errors)
        };
        format!(
            "udp ping-pong against {}: {} flows, {}-byte datagrams, {} threads\n\
             \x20 datagrams     {} sent, {} echoed, {} lost ({:.2}%), {} late\n\
             \x20 round trips   {} in {:.2} s = {:.0}/s\n\
             \x20 latency (us)  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n\
             \x20 jitter (us)   {:.1}\n\
             \x20 errors        {errors}\n",
            self.addr,
            self.flows,
            self.size,
            self.threads,
            self.sent,
            self.echoed,
            self.lost,
            self.loss_pct,
            self.late,
            self.echoed,
            self.elapsed_secs,
            self.round_trips_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.jitter_us,
        )
    }
}

/// Runs `bench --udp` and prints the report; returns the exit status.
pub(crate) fn run(args: &BenchArgs, addr: SocketAddr) -> anyhow::Result<i32> {
    let size = args.size as usize;
    if !(HEADER..=MAX_SIZE).contains(&size) {
        bail!("--udp needs --size between {HEADER} and {MAX_SIZE} bytes");
    }
    let flows = args.connections as usize;
    let threads = match args.threads {
        Some(t) => (t as usize).min(flows),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(flows),
    };
    let cpu_before = cpu::own().context("reading CPU time")?;
    let plan = Plan::new(addr, size, args.timeout, None);
    let go = Instant::now();
    let measure_from = go + args.warmup;
    plan.open_window(Window {
        start: go,
        measure_from,
        stop: match args.requests {
            Some(n) => Stop::After(n),
            None => Stop::At(measure_from + args.duration),
        },
    });
    let mut total = UdpTally::new();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = split(flows, threads)
            .into_iter()
            .map(|ids| {
                let plan = &plan;
                s.spawn(move || flows_loop(plan, ids.start as u32..ids.end as u32))
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(Ok(t)) => total.merge(&t),
                Ok(Err(e)) => return Err(e).context("a load thread failed"),
                Err(_) => bail!("a load thread panicked"),
            }
        }
        Ok(())
    })?;
    let cpu = cpu::own()
        .context("reading CPU time")?
        .saturating_sub(cpu_before);
    let elapsed = total
        .last_echo
        .map_or(args.duration, |t| t.saturating_duration_since(measure_from))
        .as_secs_f64();
    let report = UdpReport {
        mode: "udp-ping-pong",
        addr: addr.to_string(),
        flows,
        threads,
        size,
        warmup_secs: args.warmup.as_secs_f64(),
        elapsed_secs: elapsed,
        sent: total.sent,
        echoed: total.echoed,
        lost: total.lost,
        loss_pct: if total.sent > 0 {
            100.0 * total.lost as f64 / total.sent as f64
        } else {
            0.0
        },
        late: total.late,
        mismatch: total.mismatch,
        send_errors: total.send_errors,
        round_trips_per_sec: if elapsed > 0.0 {
            total.echoed as f64 / elapsed
        } else {
            0.0
        },
        latency_us: Latency::of(&total.latency),
        jitter_us: if total.jitter_n > 0 {
            total.jitter_sum_ns as f64 / total.jitter_n as f64 / 1_000.0
        } else {
            0.0
        },
        client_cpu_secs: cpu.as_secs_f64(),
        ok: total.echoed > 0 && total.mismatch == 0 && total.send_errors == 0,
    };
    let mut stdout = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &report).context("writing the report")?;
        writeln!(stdout).context("writing the report")?;
    } else {
        write!(stdout, "{}", report.text()).context("writing the report")?;
    }
    stdout.flush().context("writing the report")?;
    Ok(if report.ok { 0 } else { EXIT_FAILURES })
}

/// One load thread: a socket and the flows `ids`, until the window closes
/// and every datagram in flight is answered or lost.
fn flows_loop(plan: &Plan, ids: std::ops::Range<u32>) -> anyhow::Result<UdpTally> {
    let local: SocketAddr = if plan.addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(local).context("binding a UDP socket")?;
    socket
        .connect(plan.addr)
        .with_context(|| format!("connecting a UDP socket to {}", plan.addr))?;
    let mut tally = UdpTally::new();
    let now = Instant::now();
    let mut flows: Vec<Flow> = ids
        .map(|id| Flow {
            id,
            seq: 0,
            sent: vec![0u8; plan.size],
            sent_at: now,
            measured: false,
            active: false,
            last_rtt: None,
        })
        .collect();
    let first = flows.first().map_or(0, |f| f.id);
    for f in &mut flows {
        send_next(&socket, plan, f, &mut tally);
    }
    let mut buf = vec![0u8; 65_536];
    while flows.iter().any(|f| f.active) {
        let now = Instant::now();
        expire(&socket, plan, &mut flows, now, &mut tally);
        let Some(next_deadline) = flows
            .iter()
            .filter(|f| f.active)
            .map(|f| f.sent_at + plan.timeout)
            .min()
        else {
            break;
        };
        let wait = next_deadline
            .saturating_duration_since(now)
            .max(Duration::from_micros(100));
        socket.set_read_timeout(Some(wait))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ICMP port unreachable from an earlier datagram: the server
            // is not there (yet); the datagrams in flight will time out.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e).context("receiving echoes"),
        };
        let done = Instant::now();
        let data = &buf[..n];
        let Some((id, seq)) = header(data) else {
            tally.mismatch += 1;
            continue;
        };
        let Some(f) = id
            .checked_sub(first)
            .and_then(|i| flows.get_mut(i as usize))
        else {
            tally.mismatch += 1;
            continue;
        };
        if !f.active || seq != f.seq {
            tally.late += 1;
            continue;
        }
        if data != f.sent.as_slice() {
            tally.mismatch += 1;
            f.active = false;
            continue;
        }
        let rtt = done - f.sent_at;
        if f.measured {
            tally.echoed += 1;
            let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
            tally.latency.saturating_record(ns);
            if let Some(prev) = f.last_rtt {
                tally.jitter_sum_ns += rtt.abs_diff(prev).as_nanos();
                tally.jitter_n += 1;
            }
            tally.last_echo = Some(done);
        }
        f.last_rtt = Some(rtt);
        send_next(&socket, plan, f, &mut tally);
    }
    Ok(tally)
}

/// Counts as lost every datagram whose deadline passed, and sends the next.
fn expire(socket: &UdpSocket, plan: &Plan, flows: &mut [Flow], now: Instant, t: &mut UdpTally) {
    for f in flows.iter_mut().filter(|f| f.active) {
        if now >= f.sent_at + plan.timeout {
            if f.measured {
                t.lost += 1;
            }
            f.last_rtt = None;
            send_next(socket, plan, f, t);
        }
    }
}

/// Sends the flow's next datagram, or retires the flow when the window is
/// over.
fn send_next(socket: &UdpSocket, plan: &Plan, f: &mut Flow, t: &mut UdpTally) {
    let now = Instant::now();
    f.measured = match plan.next_round(now) {
        Round::Stop => {
            f.active = false;
            return;
        }
        Round::Warmup => false,
        Round::Measured => true,
    };
    f.seq = f.seq.wrapping_add(1);
    f.sent[..4].copy_from_slice(&f.id.to_le_bytes());
    f.sent[4..HEADER].copy_from_slice(&f.seq.to_le_bytes());
    payload::fill(&mut f.sent[HEADER..], u64::from(f.id), u64::from(f.seq));
    f.sent_at = now;
    f.active = true;
    match socket.send(&f.sent) {
        Ok(_) => {
            if f.measured {
                t.sent += 1;
            }
        }
        // Nothing listens (yet): the datagram is lost like any other.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            if f.measured {
                t.sent += 1;
            }
        }
        Err(_) => {
            t.send_errors += 1;
            f.active = false;
        }
    }
}

fn header(data: &[u8]) -> Option<(u32, u32)> {
    let id = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    let seq = u32::from_le_bytes(data.get(4..HEADER)?.try_into().ok()?);
    Some((id, seq))
}
