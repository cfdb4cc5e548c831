//! The result of a run, as people read it and as scripts parse it.
//!
//! One [`Report`] is built from the merged [`Tally`] and printed either as a
//! short block of text or, with `--json`, as a single JSON object on one
//! line, so that `compare.sh` and CI can collect runs with nothing more than
//! a line-oriented file. Latencies are reported in microseconds; the field
//! names are part of the interface that scripts rely on.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::Used;
use super::tally::{Errors, Tally};

/// Round-trip latency summary, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Latency {
            min: us(h.min()),
            mean: h.mean() / 1_000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `"ping-pong"`, `"fixed-rate"` or `"hold"`.
    pub mode: &'static str,
    pub addr: String,
    pub connections: usize,
    /// Load threads used (1 for the single-connection blocking loop).
    pub threads: usize,
    /// Bytes per message.
    pub size: usize,
    pub warmup_secs: f64,
    /// Measured window as asked for (`--duration`), if time-bounded.
    pub duration_secs: Option<f64>,
    /// Measured round trips asked for (`--requests`), if count-bounded.
    pub requests: Option<u64>,
    /// Idle time between connecting and the round trip (hold mode).
    pub hold_secs: Option<f64>,
    /// Messages per second asked for (fixed-rate mode); the rate achieved
    /// is `round_trips_per_sec`.
    pub rate_per_sec: Option<f64>,
    /// Wall time the measured round trips took: from the end of the warmup
    /// to the last echo (ping-pong), or from "go" to the last echo (hold).
    pub elapsed_secs: f64,
    /// Verified round trips in the measured window.
    pub round_trips: u64,
    /// Verified round trips per second of `elapsed_secs` (in fixed-rate
    /// mode: the rate achieved).
    pub round_trips_per_sec: f64,
    /// Round-trip latency: from the first byte written (ping-pong, hold) or
    /// from the scheduled send time (fixed-rate) to the last byte of the
    /// echo read.
    pub latency_us: Latency,
    /// Connections established.
    pub connected: u64,
    /// From the start until the last connection was established.
    pub connect_ms: Option<f64>,
    /// Hold mode: from "go" until the last connection had its echo.
    pub all_echoed_ms: Option<f64>,
    pub errors: Errors,
    /// CPU (user + system) the generator used over the whole run.
    pub client_cpu_secs: f64,
    /// Generator CPU per measured round trip, in microseconds (includes
    /// warmup and connection setup, so it is an upper bound).
    pub client_cpu_us_per_round_trip: Option<f64>,
    /// The server's CPU over the measured window (with `--server-pid`).
    pub server_cpu: Option<ServerCpu>,
    /// The run spoke TLS (`--tls`).
    #[serde(default)]
    pub tls: bool,
    /// Churn mode: sessions (connect, handshake, one round trip, close)
    /// per second; each session is one of `round_trips`, and `latency_us`
    /// is a whole session's.
    #[serde(default)]
    pub sessions_per_sec: Option<f64>,
    /// No failures and at least one verified round trip (ping-pong), or
    /// every connection echoed (hold). Decides the exit status.
    pub ok: bool,
}

/// What the server process used over the measured window, from
/// `/proc/PID/stat` (user + system time, in clock ticks of 10 ms).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerCpu {
    pub pid: u32,
    /// From the start of the measured window until every load thread was
    /// done.
    pub window_secs: f64,
    /// User + system CPU time over the window.
    pub cpu_secs: f64,
    /// `cpu_secs` / `window_secs`, in per cent of one CPU (up to 100 per
    /// CPU the server runs on).
    pub percent: f64,
    /// `cpu_secs` / measured round trips, in microseconds.
    pub us_per_round_trip: Option<f64>,
}

impl ServerCpu {
    fn of(used: Used, round_trips: u64) -> Self {
        let cpu = used.cpu.as_secs_f64();
        let wall = used.wall.as_secs_f64();
        ServerCpu {
            pid: used.pid,
            window_secs: wall,
            cpu_secs: cpu,
            percent: if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 },
            us_per_round_trip: (round_trips > 0).then(|| cpu * 1e6 / round_trips as f64),
        }
    }
}

/// Inputs to [`Report::new`] besides the tally.
pub(crate) struct Setup {
    pub mode: &'static str,
    pub addr: String,
    pub connections: usize,
    pub threads: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub hold: Option<Duration>,
    pub rate: Option<f64>,
    pub tls: bool,
}

impl Report {
    pub(crate) fn new(
        setup: Setup,
        tally: &Tally,
        elapsed: Duration,
        connect: Option<Duration>,
        all_echoed: Option<Duration>,
        cpu: Duration,
        server: Option<Used>,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            tally.round_trips as f64 / secs
        } else {
            0.0
        };
        let ok = tally.errors.total == 0
            && tally.round_trips > 0
            && (setup.mode != "hold" || tally.round_trips == setup.connections as u64);
        Report {
            mode: setup.mode,
            addr: setup.addr,
            connections: setup.connections,
            threads: setup.threads,
            size: setup.size,
            warmup_secs: setup.warmup.as_secs_f64(),
            duration_secs: setup.duration.map(|d| d.as_secs_f64()),
            requests: setup.requests,
            hold_secs: setup.hold.map(|d| d.as_secs_f64()),
            rate_per_sec: setup.rate,
            elapsed_secs: secs,
            round_trips: tally.round_trips,
            round_trips_per_sec: rate,
            latency_us: Latency::of(&tally.latency),
            connected: tally.connected,
            connect_ms: connect.map(ms),
            all_echoed_ms: all_echoed.map(ms),
            errors: tally.errors,
            client_cpu_secs: cpu.as_secs_f64(),
            client_cpu_us_per_round_trip: (tally.round_trips > 0)
                .then(|| cpu.as_secs_f64() * 1e6 / tally.round_trips as f64),
            server_cpu: server.map(|u| ServerCpu::of(u, tally.round_trips)),
            tls: setup.tls,
            sessions_per_sec: (setup.mode == "churn").then_some(rate),
            ok,
        }
    }

    /// The report as a few lines of text for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = match self.hold_secs {
            Some(hold) => writeln!(
                out,
                "hold against {}: {} connections held {:.1} s, then one {}-byte round trip each ({} threads)",
                self.addr, self.connections, hold, self.size, self.threads
            ),
            None => writeln!(
                out,
                "{}{} against {}: {} connections, {}-byte messages, {} threads",
                self.mode,
                if self.tls { " over TLS" } else { "" },
                self.addr,
                self.connections,
                self.size,
                self.threads
            ),
        };
        let _ = if self.sessions_per_sec.is_some() {
            writeln!(out, "  connected     {} times", self.connected)
        } else {
            writeln!(
                out,
                "  connected     {} of {}{}",
                self.connected,
                self.connections,
                self.connect_ms
                    .map(|t| format!(" in {t:.1} ms"))
                    .unwrap_or_default()
            )
        };
        if let Some(t) = self.all_echoed_ms {
            let _ = writeln!(out, "  all echoed    {} in {t:.1} ms", self.round_trips);
        } else if let Some(rate) = self.sessions_per_sec {
            let _ = writeln!(
                out,
                "  sessions      {} in {:.2} s = {rate:.0}/s (connect,{} one round trip, close; latency per session)",
                self.round_trips,
                self.elapsed_secs,
                if self.tls { " handshake," } else { "" }
            );
        } else {
            let _ = writeln!(
                out,
                "  round trips   {} in {:.2} s = {:.0}/s{}",
                self.round_trips,
                self.elapsed_secs,
                self.round_trips_per_sec,
                self.rate_per_sec
                    .map(|r| format!(" (asked for {r:.0}/s; latency from the scheduled send)"))
                    .unwrap_or_default()
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "  latency (us)  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let e = &self.errors;
        let _ = if e.total == 0 {
            writeln!(out, "  errors        none")
        } else {
            writeln!(
                out,
                "  errors        {} (connect {}, handshake {}, reset {}, closed {}, mismatch {}, timeout {})",
                e.total, e.connect, e.handshake, e.reset, e.closed, e.mismatch, e.timeout
            )
        };
        let _ = writeln!(
            out,
            "  client CPU    {:.2} s{}",
            self.client_cpu_secs,
            self.client_cpu_us_per_round_trip
                .map(|u| format!(" ({u:.2} us per round trip)"))
                .unwrap_or_default()
        );
        if let Some(c) = &self.server_cpu {
            let _ = writeln!(
                out,
                "  server CPU    {:.2} s over {:.2} s = {:.1} % (pid {}){}",
                c.cpu_secs,
                c.window_secs,
                c.percent,
                c.pid,
                c.us_per_round_trip
                    .map(|u| format!(", {u:.2} us per round trip"))
                    .unwrap_or_default()
            );
        }
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}
