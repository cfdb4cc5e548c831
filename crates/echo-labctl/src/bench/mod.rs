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
//! * [`paced`]: the fixed-rate engine, sends on a schedule;
//! * [`wire`]: what one read or write result means, for every engine;
//! * [`link`]: a connection's stream, plain TCP or TLS (`--tls`), for the
//!   readiness engines;
//! * [`tally`]: per-thread latency histograms and failure counts;
//! * [`report`]: the text and JSON results;
//! * [`cpu`]: the generator's own CPU time and the server's;
//! * [`udp`]: `--udp`, ping-pong over UDP with loss and jitter.
//!
//! Three ways to load. **Ping-pong** (the default) keeps every connection
//! busy with one message in flight: write it, wait for its whole echo,
//! verify, repeat. That measures round trips per second and latency at a
//! given concurrency. **Fixed rate** (`--rate R`) sends R messages per
//! second in all on a schedule, whether or not earlier echoes came back, and
//! measures each latency from the message's scheduled send time, so a server
//! that stalls is charged for every message that waited behind the stall
//! (wrk2's correction for coordinated omission): it compares servers at the
//! same offered load. **Hold** opens all connections as fast as possible,
//! leaves them idle for `--hold`, and then has each do one round trip: it
//! measures how fast a server accepts a crowd, whether it keeps idle
//! connections, and how fast it wakes them all. **Churn** (`--mode churn`)
//! measures sessions rather than round trips: each connection slot
//! connects, handshakes (with `--tls`), does one round trip and closes,
//! again and again; the report gives sessions per second and the latency
//! of a whole session.
//!
//! With `--tls` every mode speaks TLS (rustls, driven by the same mio
//! loops; the single-connection blocking loop is not used).
//!
//! The coordinator (this module) runs a run in three visible steps: spawn
//! the load threads ([`Crew::spawn`]), wait until each has connected its
//! share ([`Crew::await_connected`]), then fix the measured window, give the
//! "go" and collect the tallies ([`Crew::release`], [`Crew::collect`]).
//! With `--server-pid` it also reads the server's CPU time at the start and
//! at the end of the measured window.
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

mod clock;
mod cpu;
mod link;
mod paced;
mod payload;
mod plan;
mod reactor;
pub mod report;
mod single;
pub mod tally;
pub mod udp;
mod wire;

use std::io::{IsTerminal, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
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
    /// Each connection sends a message, waits for its echo, repeats (with
    /// --rate: sends on a schedule instead).
    PingPong,
    /// Open all connections, hold them idle, then one round trip each.
    Hold,
    /// Each connection slot: connect, handshake (--tls), one round trip,
    /// close, again; reports sessions per second.
    Churn,
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

    /// Fixed rate: send this many messages per second in all, spread evenly
    /// over the connections, whether or not earlier echoes came back;
    /// latency is measured from each message's scheduled send time.
    #[arg(short = 'r', long, value_name = "PER_SEC", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Also report the CPU time (user + system, /proc/PID/stat) that this
    /// process (the server) used over the measured window, in all and per
    /// round trip.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

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

    /// Ping-pong over UDP (see `udp`): --connections flows, one datagram in
    /// flight each; reports loss, RTT percentiles and jitter.
    #[arg(long, conflicts_with_all = ["mode", "rate", "server_pid", "tls"])]
    pub udp: bool,

    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Parses a number of seconds such as `5` or `0.5`.
fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is out of range"))
}

/// Parses a rate in messages per second: positive, at most 10 million.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1e7 => Ok(r),
        Ok(_) => Err(format!(
            "`{text}` is out of range (more than 0, at most 10000000 per second)"
        )),
        Err(_) => Err(format!("`{text}` is not a number of messages per second")),
    }
}

/// Run a benchmark and print its report; returns the process exit code.
pub fn run(args: &BenchArgs, default_addr: &str) -> anyhow::Result<i32> {
    let addr_text = args.addr.as_deref().unwrap_or(default_addr);
    let addr = resolve(addr_text)?;
    if args.udp {
        return udp::run(args, addr);
    }
    let connections = args.connections as usize;
    if args.mode != Mode::PingPong && args.rate.is_some() {
        bail!("--rate applies to ping-pong, not to --mode hold or churn");
    }
    let tls = args.tls.target(addr_text)?;
    ensure_nofile(connections)?;
    let threads = match args.threads {
        Some(t) => (t as usize).min(connections),
        None => thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(connections),
    };
    let mut server_cpu = args.server_pid.map(cpu::Window::new).transpose()?;
    let engine = Engine::of(args, connections);
    let cpu_before = cpu::own().context("reading CPU time")?;
    let start = Instant::now();
    let setup = Setup {
        mode: engine.name(),
        addr: addr.to_string(),
        connections,
        threads,
        size: args.size as usize,
        warmup: args.warmup,
        duration: match (args.mode, args.requests) {
            (Mode::PingPong | Mode::Churn, None) => Some(args.duration),
            _ => None,
        },
        requests: args.requests.filter(|_| args.mode != Mode::Hold),
        hold: (args.mode == Mode::Hold).then_some(args.hold),
        rate: args.rate,
        tls: tls.is_some(),
    };
    let progress = Progress::default();
    let live = std::io::stderr().is_terminal() && !args.json;
    let plan = Plan::new(addr, setup.size, args.timeout, tls);
    let outcome = thread::scope(|s| {
        let mut crew = Crew::spawn(s, &plan, &progress, engine, split(connections, threads));
        let connected = crew.await_connected();
        if args.mode == Mode::Hold {
            hold(
                &connected,
                connections,
                args.hold,
                crew.first_error.is_none(),
            );
        }
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
        crew.release();
        let ticker = Ticker::new(live && args.mode != Mode::Hold, measure_from);
        crew.collect(ticker, &progress, server_cpu.as_mut(), measure_from)?;
        let server = server_cpu.as_mut().map(cpu::Window::end).transpose()?;
        crew.outcome(go, server)
    })?;
    let tally = outcome.tally;
    let (elapsed, all_echoed) = match args.mode {
        Mode::PingPong | Mode::Churn => {
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
    let cpu = cpu::own()
        .context("reading CPU time")?
        .saturating_sub(cpu_before);
    let report = Report::new(
        setup,
        &tally,
        elapsed,
        connect,
        all_echoed,
        cpu,
        outcome.server,
    );
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

/// Descriptors the generator needs besides its connections (pollers,
/// standard streams, the report).
const RESERVED_FDS: u64 = 64;

/// Raises the soft open-file limit to the hard one and refuses to start,
/// instead of failing half the connections, when even the hard limit
/// cannot hold `connections` sockets.
fn ensure_nofile(connections: usize) -> anyhow::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        setrlimit(Resource::Nofile, raised).context("cannot raise the open-file limit")?;
    }
    let needed = connections as u64 + RESERVED_FDS;
    match lim.maximum {
        Some(limit) if limit < needed => bail!(
            "{connections} connections need about {needed} open files, but the hard limit \
             (ulimit -Hn) is {limit}"
        ),
        _ => Ok(()),
    }
}

/// The hold of hold mode: the connections stay idle this long (not at all
/// if none connected or a thread failed).
fn hold(connected: &Tally, connections: usize, hold: Duration, healthy: bool) {
    eprintln!(
        "bench: holding {} of {connections} connections for {:.1} s",
        connected.connected,
        hold.as_secs_f64()
    );
    if connected.connected > 0 && healthy {
        thread::sleep(hold);
    }
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

/// Which loop a load thread runs: chosen once per run.
#[derive(Debug, Clone, Copy)]
enum Engine {
    /// One connection, ping-pong: the blocking loop.
    Single,
    /// Ping-pong or hold over a readiness loop.
    Reactor(Job),
    /// Fixed rate: `per_sec` messages a second over `connections` in all.
    Paced { per_sec: f64, connections: u64 },
}

impl Engine {
    fn of(args: &BenchArgs, connections: usize) -> Engine {
        match (args.mode, args.rate) {
            (Mode::Hold, _) => Engine::Reactor(Job::Hold),
            (Mode::Churn, _) => Engine::Reactor(Job::Churn),
            (Mode::PingPong, Some(per_sec)) => Engine::Paced {
                per_sec,
                connections: connections as u64,
            },
            (Mode::PingPong, None) if connections == 1 && !args.tls.tls => Engine::Single,
            (Mode::PingPong, None) => Engine::Reactor(Job::PingPong),
        }
    }

    /// The report's name for the mode.
    fn name(self) -> &'static str {
        match self {
            Engine::Single | Engine::Reactor(Job::PingPong) => "ping-pong",
            Engine::Reactor(Job::Hold) => "hold",
            Engine::Reactor(Job::Churn) => "churn",
            Engine::Paced { .. } => "fixed-rate",
        }
    }

    /// Runs connections `ids` through both phases (see [`reactor::run`]).
    fn run(
        self,
        plan: &Plan,
        progress: &Progress,
        ids: Range<u64>,
        connected: impl FnOnce(&Tally),
        go: impl FnOnce() -> bool,
    ) -> std::io::Result<Tally> {
        match self {
            Engine::Single => Ok(single::ping_pong(plan, ids.start, progress, connected, go)),
            Engine::Reactor(job) => reactor::run(plan, progress, ids, job, connected, go),
            Engine::Paced {
                per_sec,
                connections,
            } => {
                let schedule = paced::Schedule::new(per_sec, connections);
                paced::run(plan, progress, ids, schedule, connected, go)
            }
        }
    }
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
    /// The server's CPU over the measured window (with --server-pid).
    server: Option<cpu::Used>,
}

/// The load threads as the coordinator sees them: the channel they report
/// on, one "go" sender each, and what they reported so far.
struct Crew {
    notes: mpsc::Receiver<Note>,
    /// Dropped at release: a thread whose sender is gone without a "go"
    /// gives up.
    gos: Vec<mpsc::Sender<()>>,
    /// Final tallies of the threads that are done.
    total: Tally,
    /// Threads that have reported since the last phase began.
    heard: usize,
    first_error: Option<std::io::Error>,
}

impl Crew {
    /// Starts one load thread per range of connection ids.
    fn spawn<'scope, 'env>(
        s: &'scope thread::Scope<'scope, 'env>,
        plan: &'env Plan,
        progress: &'env Progress,
        engine: Engine,
        ranges: Vec<Range<u64>>,
    ) -> Crew {
        let (tx, notes) = mpsc::channel();
        let mut gos = Vec::new();
        for ids in ranges {
            let tx = tx.clone();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            gos.push(go_tx);
            s.spawn(move || {
                // The receiver outlives every sender in this scope, so
                // sends cannot fail while anyone listens.
                let connected = |t: &Tally| {
                    let _ = tx.send(Note::Connected(Box::new(t.clone())));
                };
                let go = || go_rx.recv().is_ok();
                let result = engine.run(plan, progress, ids, connected, go);
                let _ = tx.send(Note::Done(result));
            });
        }
        Crew {
            notes,
            gos,
            total: Tally::new(),
            heard: 0,
            first_error: None,
        }
    }

    /// Takes in one note: a final tally is merged and an error kept; the
    /// tally of a thread that has connected is returned.
    fn absorb(&mut self, note: Note) -> Option<Tally> {
        self.heard += 1;
        match note {
            Note::Connected(t) => return Some(*t),
            Note::Done(Ok(t)) => self.total.merge(&t),
            Note::Done(Err(e)) => {
                self.first_error.get_or_insert(e);
            }
        }
        None
    }

    /// Phase 1: waits until every thread has connected its share (or
    /// failed early) and returns what they connected. Bounded: a connect
    /// fails by itself after --timeout.
    fn await_connected(&mut self) -> Tally {
        let mut connected = Tally::new();
        while self.heard < self.gos.len() {
            let Ok(note) = self.notes.recv() else { break };
            if let Some(t) = self.absorb(note) {
                connected.merge(&t);
            }
        }
        connected
    }

    /// Gives every thread its "go", unless one has failed already (then
    /// they all give up).
    fn release(&mut self) {
        if self.first_error.is_none() {
            for g in &self.gos {
                let _ = g.send(());
            }
        }
        self.gos.clear();
    }

    /// Phase 2: collects the final tallies until every thread is done,
    /// ticking the progress line and starting the server's CPU window at
    /// `measure_from`.
    fn collect(
        &mut self,
        mut ticker: Ticker,
        progress: &Progress,
        mut server: Option<&mut cpu::Window>,
        measure_from: Instant,
    ) -> anyhow::Result<()> {
        loop {
            if let Some(w) = server.as_deref_mut().filter(|w| !w.started()) {
                if Instant::now() >= measure_from {
                    w.start()?;
                }
            }
            let wake = match server.as_deref() {
                Some(w) if !w.started() => ticker
                    .wait()
                    .min(measure_from.saturating_duration_since(Instant::now())),
                _ => ticker.wait(),
            };
            match self.notes.recv_timeout(wake) {
                Ok(note) => {
                    self.absorb(note);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => ticker.tick(progress),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        ticker.done();
        Ok(())
    }

    /// The merged result, or the first thread's setup error.
    fn outcome(self, go: Instant, server: Option<cpu::Used>) -> anyhow::Result<Outcome> {
        match self.first_error {
            Some(e) => Err(anyhow::Error::new(e).context("a load thread failed")),
            None => Ok(Outcome {
                tally: self.total,
                go,
                server,
            }),
        }
    }
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
