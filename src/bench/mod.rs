//! `echo-labctl bench`: a load generator for any echo server.
//!
//! This module owns the command line of `bench` and the coordination of a
//! run; the submodules own one concept each:
//!
//! * [`plan`]: where to connect, what to send, when the measured window
//!   starts and ends;
//! * [`payload`]: a distinct message per round trip, so that a wrong echo
//!   cannot pass for a right one;
//! * [`single`]: the one-connection case, a tight blocking loop;
//! * [`reactor`]: many connections per thread over mio, for ping-pong and
//!   for hold mode;
//! * [`tally`]: per-thread latency histograms and failure counts;
//! * [`report`]: the text and JSON results;
//! * [`sys`]: the open-file limit and the generator's own CPU time.
//!
//! Two modes. **Ping-pong** (the default) keeps every connection busy with
//! one message in flight: write it, wait for its whole echo, verify, repeat.
//! That measures round trips per second and latency at a given concurrency.
//! **Hold** opens all connections as fast as possible, leaves them idle for
//! `--hold`, and then has each do one round trip: it measures how fast a
//! server accepts a crowd, whether it keeps idle connections, and how fast
//! it wakes them all.
//!
//! The generator must not be what limits the numbers on a two-core machine
//! where it shares the CPU with the server, so it uses as few threads as
//! useful: one blocking loop for one connection, otherwise one readiness
//! loop per core (or `--threads`), never a thread per connection. Its own
//! CPU time is part of the report, so its cost can be checked against the
//! server's.
//!
//! A run fails (exit status 3) if any connect, read or write failed, any
//! echo differed from what was sent, anything timed out, or nothing was
//! measured; exit status 1 means the run could not be set up at all.

mod payload;
mod plan;
mod reactor;
pub mod report;
mod single;
pub mod sys;
pub mod tally;

use std::io::{IsTerminal, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use plan::{Plan, Stop, Window};
use reactor::Job;
use report::{Report, Setup};
use tally::{Progress, Tally};

/// Exit status of a run that completed but saw failures.
pub const EXIT_FAILURES: i32 = 3;

/// What each connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Each connection sends a message, waits for its echo, repeats.
    PingPong,
    /// Open all connections, hold them idle, then one round trip each.
    Hold,
}

/// Options of `echo-labctl bench`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Exit status: 0 clean run, 1 could not run, 3 failures \
(connect errors, resets, wrong echoes, timeouts) or nothing measured.")]
pub struct BenchArgs {
    /// Address of the echo server to load (HOST:PORT) [default: the daemon's
    /// address].
    pub addr: Option<String>,

    /// What each connection does.
    #[arg(long, value_enum, default_value_t = Mode::PingPong)]
    pub mode: Mode,

    /// Number of concurrent connections.
    #[arg(short = 'c', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Bytes per message.
    #[arg(short = 's', long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub size: u32,

    /// Seconds to measure (ping-pong), after the warmup.
    #[arg(short = 'd', long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub duration: Duration,

    /// Stop after this many measured round trips in all instead of after
    /// --duration (ping-pong).
    #[arg(short = 'n', long, conflicts_with = "duration")]
    pub requests: Option<u64>,

    /// Seconds of unmeasured round trips before the measurement (ping-pong).
    #[arg(short = 'w', long, value_name = "SECS", default_value = "0", value_parser = parse_secs)]
    pub warmup: Duration,

    /// Seconds to keep the connections idle (hold mode).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    pub hold: Duration,

    /// Longest a connect, or one round trip, may take before it counts as
    /// a failure (seconds).
    #[arg(short = 't', long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub timeout: Duration,

    /// Load threads [default: one per CPU, at most one per connection].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses a number of seconds such as `5` or `0.5`.
fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is out of range"))
}

/// Run a benchmark and print its report; returns the process exit code.
pub fn run(args: &BenchArgs, default_addr: &str) -> anyhow::Result<i32> {
    let addr_text = args.addr.as_deref().unwrap_or(default_addr);
    let addr = resolve(addr_text)?;
    let connections = args.connections as usize;
    sys::raise_nofile(connections)?;
    let threads = match args.threads {
        Some(t) => (t as usize).min(connections),
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(connections),
    };
    let cpu_before = sys::cpu_time().context("reading CPU time")?;
    let start = Instant::now();
    let setup = Setup {
        mode: match args.mode {
            Mode::PingPong => "ping-pong",
            Mode::Hold => "hold",
        },
        addr: addr.to_string(),
        connections,
        threads,
        size: args.size as usize,
        warmup: args.warmup,
        duration: match (args.mode, args.requests) {
            (Mode::PingPong, None) => Some(args.duration),
            _ => None,
        },
        requests: args.requests.filter(|_| args.mode == Mode::PingPong),
        hold: (args.mode == Mode::Hold).then_some(args.hold),
    };
    let progress = Progress::default();
    let live = std::io::stderr().is_terminal() && !args.json;
    let plan = Plan::new(addr, setup.size, args.timeout);
    let outcome = coordinate(&plan, &progress, args, connections, threads, live)?;
    let tally = outcome.tally;
    let (elapsed, all_echoed) = match args.mode {
        Mode::PingPong => {
            let from = outcome.go + args.warmup;
            let elapsed = match tally.last_echo {
                Some(last) => last.saturating_duration_since(from),
                None => args.duration,
            };
            (elapsed, None)
        }
        Mode::Hold => {
            let echoed = tally
                .last_echo
                .map(|last| last.saturating_duration_since(outcome.go));
            (echoed.unwrap_or_default(), echoed)
        }
    };
    let connect = tally
        .last_connected
        .map(|t| t.saturating_duration_since(start));
    let cpu = sys::cpu_time()
        .context("reading CPU time")?
        .saturating_sub(cpu_before);
    let report = Report::new(setup, &tally, elapsed, connect, all_echoed, cpu);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &report).context("writing the report")?;
        writeln!(stdout).context("writing the report")?;
    } else {
        write!(stdout, "{}", report.text()).context("writing the report")?;
    }
    stdout.flush().context("writing the report")?;
    Ok(if report.ok { 0 } else { EXIT_FAILURES })
}

/// Resolves HOST:PORT to the first address it names.
fn resolve(text: &str) -> anyhow::Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("cannot resolve `{text}` (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("`{text}` resolves to no address"))
}

/// Splits connection numbers `0..connections` into `threads` nearly equal
/// ranges.
fn split(connections: usize, threads: usize) -> Vec<Range<u64>> {
    let threads = threads.max(1);
    let (per, extra) = (connections / threads, connections % threads);
    let mut from = 0u64;
    (0..threads)
        .map(|t| {
            let n = (per + usize::from(t < extra)) as u64;
            let r = from..from + n;
            from += n;
            r
        })
        .collect()
}

/// What the load threads tell the coordinator.
enum Note {
    /// Connecting is over: what happened.
    Connected(Box<Tally>),
    /// The thread finished (possibly before connecting, on a setup error).
    Done(std::io::Result<Tally>),
}

/// The merged result of all load threads.
struct Outcome {
    tally: Tally,
    /// When the threads were told to start sending.
    go: Instant,
}

/// Runs the load threads through both phases: connect all, then (after the
/// hold, in hold mode) "go" with the measured window fixed, and merges what
/// they saw.
fn coordinate(
    plan: &Plan,
    progress: &Progress,
    args: &BenchArgs,
    connections: usize,
    threads: usize,
    live: bool,
) -> anyhow::Result<Outcome> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let mut gos = Vec::new();
        for ids in split(connections, threads) {
            let tx = tx.clone();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            gos.push(go_tx);
            let mode = args.mode;
            s.spawn(move || {
                // The receiver outlives every sender in this scope, so
                // sends cannot fail while anyone listens.
                let connected = |t: &Tally| {
                    let _ = tx.send(Note::Connected(Box::new(t.clone())));
                };
                let go = || go_rx.recv().is_ok();
                let result = match mode {
                    Mode::PingPong if connections == 1 => {
                        Ok(single::ping_pong(plan, ids.start, progress, connected, go))
                    }
                    Mode::PingPong => {
                        reactor::run(plan, progress, ids, Job::PingPong, connected, go)
                    }
                    Mode::Hold => reactor::run(plan, progress, ids, Job::Hold, connected, go),
                };
                let _ = tx.send(Note::Done(result));
            });
        }
        drop(tx);

        // Phase 1: every thread has connected (or failed early). Bounded:
        // a connect fails by itself after --timeout.
        let mut connected = Tally::new();
        let mut total = Tally::new();
        let mut first_error = None;
        let mut heard = 0;
        while heard < gos.len() {
            match rx.recv() {
                Ok(Note::Connected(t)) => connected.merge(&t),
                Ok(Note::Done(Ok(t))) => total.merge(&t),
                Ok(Note::Done(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => break,
            }
            heard += 1;
        }
        if args.mode == Mode::Hold {
            eprintln!(
                "bench: holding {} of {connections} connections for {:.1} s",
                connected.connected,
                args.hold.as_secs_f64()
            );
            if connected.connected > 0 && first_error.is_none() {
                std::thread::sleep(args.hold);
            }
        }

        // Phase 2: fix the window, go, and collect the final tallies.
        let go = Instant::now();
        let measure_from = go + args.warmup;
        plan.open_window(Window {
            measure_from,
            stop: match args.requests {
                Some(n) => Stop::After(n),
                None => Stop::At(measure_from + args.duration),
            },
        });
        if first_error.is_none() {
            for g in &gos {
                let _ = g.send(());
            }
        }
        drop(gos);
        let mut ticker = Ticker::new(live && args.mode == Mode::PingPong, measure_from);
        loop {
            match rx.recv_timeout(ticker.wait()) {
                Ok(Note::Connected(_)) => {}
                Ok(Note::Done(Ok(t))) => total.merge(&t),
                Ok(Note::Done(Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => ticker.tick(progress),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        ticker.done();
        match first_error {
            Some(e) => Err(anyhow::Error::new(e).context("a load thread failed")),
            None => Ok(Outcome { tally: total, go }),
        }
    })
}

/// The once-a-second progress line on a terminal's stderr.
struct Ticker {
    live: bool,
    start: Instant,
    next: Instant,
    last_count: u64,
    shown: bool,
}

impl Ticker {
    fn new(live: bool, start: Instant) -> Self {
        let now = Instant::now();
        Ticker {
            live,
            start,
            next: now + Duration::from_secs(1),
            last_count: 0,
            shown: false,
        }
    }

    /// How long to wait for the next thread result before ticking.
    fn wait(&self) -> Duration {
        if self.live {
            self.next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(3600)
        }
    }

    fn tick(&mut self, progress: &Progress) {
        let now = Instant::now();
        if !self.live || now < self.next {
            return;
        }
        self.next += Duration::from_secs(1);
        let count = progress.round_trips.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        let phase = if now < self.start {
            "warmup"
        } else {
            "measuring"
        };
        let t = now.saturating_duration_since(self.start).as_secs_f64();
        eprint!(
            "\r{phase} {t:>5.0} s  {:>9} round trips/s  {count:>10} total  {errors} errors   ",
            count - self.last_count
        );
        self.last_count = count;
        self.shown = true;
    }

    fn done(&self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}
