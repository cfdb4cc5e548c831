//! The supervisor: the daemon's main thread, where signals, control
//! requests and the deaths of threads become reloads, drains, restarts
//! and status answers.
//!
//! Everything that changes the server happens here, on one thread, one
//! event at a time — reload and drain never race each other. Signal
//! handlers do nothing but forward the signal (signal-hook's iterator runs
//! on its own thread and sends an [`Event`]); control-socket requests
//! arrive the same way, with a channel for the answer.
//!
//! * SIGHUP: re-read the config file, validate all of it, then apply it;
//!   a bad file changes nothing and the error, with file, line, column
//!   and key, goes to the log.
//! * SIGTERM / SIGINT (or `echo-labctl stop`): with `shutdown_delay` set,
//!   readiness turns 503 at once while everything goes on serving for
//!   that long (a load balancer's time to stop sending clients); then
//!   drain for at most `drain_timeout` and exit 0. A stop request during
//!   the delay skips the rest of it; one during the drain closes
//!   everything at once.
//! * `echo-labctl ready off|on`: readiness only (out of rotation, and
//!   back); every session, old and new, is still served.
//! * SIGUSR1: reopen the log file (after logrotate renamed it).
//!
//! A reload is prepared whole before anything is applied. The supervisor
//! owns what is outside the echo server proper — the metrics endpoint
//! ([`crate::observe::metrics`]) and the log sink — and the UDP side, so it
//! prepares four parts in turn: the log file opened, the new metrics
//! address bound and served, the new UDP sockets bound (and the UDP thread
//! started if UDP was not served), the TCP side ([`Server::prepare`]:
//! workers built, addresses bound). Any failure drops what was made and
//! is reported as a [`ReloadError`] naming the part; nothing in service
//! has changed and the reload counts as failed. Only then is each part
//! committed, and committing cannot fail.
//!
//! Every long-lived thread is watched ([`crate::watch`]): its death
//! arrives as [`Event::ThreadDied`], and the supervisor decides. The four
//! threads that serve are restarted, each from state the supervisor
//! still holds, so no watchdog is needed to notice an outage (and under
//! `--daemon` none runs):
//!
//! * the accept loop: its sockets, the pool's dealer, the counters and
//!   the gate all live in the [`Server`], so a new loop gets duplicates
//!   of the same sockets and connections queued meanwhile are accepted;
//! * the UDP thread: its sockets, limits and counters live in the
//!   `UdpService` (a source's rate bucket starts afresh);
//! * the signal thread: a new registration of the same handlers;
//! * the control thread and the metrics thread: each server keeps a
//!   duplicate of its listening socket, so the socket file and the port
//!   stay open and a new thread accepts on them.
//!
//! A thread that dies more than 3 times (`MAX_RESTARTS`) within a
//! minute (`RESTART_WINDOW`) has a fault that a restart does not cure; so has a
//! thread that cannot be restarted (the OS refuses a thread, or a thread
//! this supervisor does not know). Then the supervisor logs why and
//! exits with status 70 (EX_SOFTWARE), closing every connection, so that
//! the service manager restarts the daemon rather than leaving it half
//! alive. The signal thread is restarted too (`signals`); the log writer
//! is not (its queue died with it): its death is seen on the next turn
//! and ends the daemon the same way.
//!
//! The supervisor's helpers, each a module here:
//!
//! | module | owns |
//! |---|---|
//! | `event` | the supervisor's inbox: what signals, the control socket and dying threads send it |
//! | `reload` | a reload's outcome: what changed, or which part refused |
//! | `signals` | the signal thread: SIGHUP, SIGTERM, SIGINT, SIGUSR1 to events |
//! | `control` | the control socket, who may use it, and its one request/reply path to the supervisor |
//! | `limits` | RLIMIT_NOFILE |
//!
//! Readiness and health are the supervisor's to decide and
//! [`crate::observe::probe`]'s to show: each turn it marks that it turned
//! and feeds the serving threads' heartbeats to the stall check; a stop
//! request or `ready off` sets the readiness flags at once.

pub(crate) mod control;
pub(crate) mod event;
pub(crate) mod faults;
pub(crate) mod limits;
pub(crate) mod reload;
pub(crate) mod signals;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::admission::Listener;
use crate::config::{
    format_duration, Config, ConfigError, LogTarget, Protocol, Rule, DEFAULT_PATH,
};
use crate::net;
use crate::observe::logging;
use crate::observe::metrics::{self, MetricsError, MetricsServer};
use crate::observe::probe::{self, Phase, Probes, Stalls};
use crate::supervisor::control::ControlServer;
use crate::supervisor::reload::{reason_of, ReloadError, Reloaded};
use crate::supervisor::signals::Signals;
use crate::systemd::notify::{borrow_all, Notifier};
use crate::tcp::server::{PreparedReload, Server};
use crate::tcp::tls::PreparedTls;
use crate::udp::listeners::{self, describe_limit, UdpListeners, UdpSpec};
use crate::udp::RateLimit;
use crate::watch::Death;
use crate::EX_SOFTWARE;

/// How often the supervisor wakes when nothing happens (drain progress).
const TICK: Duration = Duration::from_millis(50);

/// How often the STATUS line is refreshed (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Extra time after the drain deadline for workers to finish closing.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// A watched thread is restarted at most this many times per
/// [`RESTART_WINDOW`]; one more death and the daemon exits.
const MAX_RESTARTS: usize = 3;

/// See [`MAX_RESTARTS`].
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Recent restarts of each watched thread, by name.
#[derive(Default)]
struct Restarts(Vec<(String, Vec<Instant>)>);

impl Restarts {
    /// Records a restart of `name` at `now`; returns how many fall in the
    /// last [`RESTART_WINDOW`], this one included.
    fn count(&mut self, name: &str, now: Instant) -> usize {
        let pos = match self.0.iter().position(|(n, _)| n == name) {
            Some(p) => p,
            None => {
                self.0.push((name.to_string(), Vec::new()));
                self.0.len() - 1
            }
        };
        let times = &mut self.0[pos].1;
        times.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        times.push(now);
        times.len()
    }
}

/// Where the config came from; a reload reads the same place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file (given with `--config`, or the default path that existed).
    File(PathBuf),
    /// No file: the embedded defaults.
    Embedded,
}

impl ConfigSource {
    /// The file, if there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(p) => Some(p),
            ConfigSource::Embedded => None,
        }
    }

    /// For logs and status: the path, or "embedded defaults".
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Embedded => "embedded defaults".to_string(),
        }
    }
}

/// Loads the config: `explicit` must exist; without it the default path is
/// used if it exists, else the embedded defaults.
pub fn load_config(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok((Config::default(), ConfigSource::Embedded)),
    };
    let config = Config::load(&path)?;
    Ok((config, ConfigSource::File(path)))
}

pub use crate::supervisor::event::{Event, LastReload, Reloads, Status};

/// The supervisor's state.
pub struct Daemon {
    /// The echo server being supervised.
    server: Server,
    /// The UDP echo side (no thread when no UDP address is configured).
    udp: UdpListeners,
    /// Where the config came from (a reload reads it again).
    source: ConfigSource,
    /// Outcome of the last reload, for status.
    last_reload: Option<LastReload>,
    /// Set when the drain started.
    drain_started: Option<Instant>,
    /// The service manager, if any.
    notifier: Notifier,
    /// The last STATUS sent, and when.
    last_status: (String, Instant),
    /// Log target when the config names none.
    default_log_target: LogTarget,
    /// The metrics endpoint, if `metrics_listen` is set.
    metrics: Option<MetricsServer>,
    /// Where the metrics endpoint sends its requests (our own inbox).
    events: Option<Sender<Event>>,
    /// Reloads applied and refused.
    reloads: Reloads,
    /// The control socket, if it could be opened.
    control: Option<ControlServer>,
    /// Recent restarts of watched threads.
    restarts: Restarts,
    /// The signal thread.
    signals: Option<Signals>,
    /// Readiness and health, as the probes read them.
    probes: Arc<Probes>,
    /// The serving threads' heartbeats, for health.
    stalls: Stalls,
    /// A stop request arrived with `shutdown_delay` set: the drain starts
    /// at this instant.
    drain_at: Option<Instant>,
}

/// Every part of a reload, prepared: committing it cannot fail.
struct Plan {
    /// The `[log]` sink, its file open.
    log: logging::Prepared,
    /// The metrics endpoint: `None` unchanged, `Some(None)` closed,
    /// `Some(Some(_))` the new one, bound and started.
    metrics: Option<Option<MetricsServer>>,
    /// The UDP side, bound (and started if it was not served).
    udp: listeners::Ready,
    /// The access rules of the new UDP sockets.
    udp_rules: Vec<(Listener, Vec<Rule>)>,
    /// The local addresses of the new `who` UDP sockets.
    udp_who: Vec<std::net::SocketAddr>,
    /// The faults of the new UDP sockets.
    udp_faults: Vec<(std::net::SocketAddr, crate::udp::faults::UdpFaults)>,
    /// The TCP side.
    tcp: PreparedReload,
}

impl Daemon {
    /// Wraps a started server.
    pub fn new(
        server: Server,
        udp: UdpListeners,
        source: ConfigSource,
        notifier: Notifier,
    ) -> Self {
        let daemon = Daemon {
            server,
            udp,
            source,
            last_reload: None,
            drain_started: None,
            notifier,
            last_status: (String::new(), Instant::now()),
            default_log_target: LogTarget::Stderr,
            metrics: None,
            events: None,
            reloads: Reloads {
                generation: 1,
                ..Reloads::default()
            },
            control: None,
            restarts: Restarts::default(),
            signals: None,
            probes: Arc::new(Probes::default()),
            stalls: Stalls::default(),
            drain_at: None,
        };
        daemon.publish_identity();
        daemon
    }

    /// Tells the `who` replies who this instance is (at start, after a
    /// reload).
    fn publish_identity(&self) {
        crate::who::set_identity(crate::who::Identity {
            instance: self.instance(),
            hostname: probe::host_name(),
            config_generation: self.reloads.generation,
        });
    }

    /// The name this instance answers with: `instance`, else the host name.
    fn instance(&self) -> String {
        self.server
            .config()
            .instance
            .clone()
            .unwrap_or_else(probe::host_name)
    }

    /// Keeps the signal thread (restarted if it dies).
    pub fn with_signals(mut self, signals: Signals) -> Self {
        self.signals = Some(signals);
        self
    }

    /// Keeps the control socket (its thread is restarted if it dies; its
    /// file is removed when the daemon ends).
    pub fn with_control(mut self, control: Option<ControlServer>) -> Self {
        self.control = control;
        self
    }

    /// Gives the supervisor its own inbox (for the metrics endpoint's
    /// requests) and the metrics listener bound at start, if any.
    pub fn with_metrics(
        mut self,
        events: Sender<Event>,
        listener: Option<std::net::TcpListener>,
    ) -> Result<Self, MetricsError> {
        if let Some(l) = listener {
            let server = MetricsServer::start(
                l,
                event::status_source(&events),
                event::watcher(&events),
                self.server.gate().clone(),
                self.probes.clone(),
            )?;
            log::info!("metrics on http://{}/metrics", server.local_addr());
            self.metrics = Some(server);
        }
        self.events = Some(events);
        Ok(self)
    }

    /// Sets the log target used when the config names none.
    pub fn with_default_log_target(mut self, target: LogTarget) -> Self {
        self.default_log_target = target;
        self
    }

    /// The one-line state for systemd's STATUS.
    fn status_line(&self) -> String {
        let s = self.server.snapshot();
        let udp = match self.udp.snapshot() {
            Some(u) => format!(
                "; udp on {}: {} echoed, {} dropped",
                net::describe(&self.udp.local_addrs()),
                u.echoed,
                u.dropped_bad_source + u.dropped_rate + u.dropped_too_large + u.dropped_access
            ),
            None => String::new(),
        };
        format!(
            "serving {} connection(s) on {} (pool {}; {} total, {} refused){udp}",
            s.active,
            net::describe(&self.server.local_addrs()),
            s.pool_size,
            s.total,
            s.refused
        )
    }

    /// Tells the service manager we are ready, and hands it our listening
    /// sockets so a restart refuses no connection.
    pub fn announce_ready(&mut self) {
        if !self.server.activated() {
            self.notifier
                .store_listeners(&borrow_all(&self.server.listeners()));
        }
        let line = self.status_line();
        self.notifier.ready(&line);
        self.last_status = (line, Instant::now());
    }

    fn refresh_status(&mut self) {
        if self.drain_started.is_some() || self.last_status.1.elapsed() < STATUS_EVERY {
            return;
        }
        let line = self.status_line();
        if line != self.last_status.0 {
            self.notifier.status(&line);
        }
        self.last_status = (line, Instant::now());
    }

    /// Logs the start line tests and operators look for (the UDP line
    /// first, so the `listening on` line means everything is up).
    pub fn log_listening(&self) {
        let udp = self.udp.local_addrs();
        if !udp.is_empty() {
            log::info!(
                "udp echo on {} (rate limit: {})",
                net::describe(&udp),
                describe_limit(&self.udp.limit())
            );
        }
        let c = self.server.config();
        let how = if self.server.activated() {
            " [sockets from the service manager; host and port ignored]"
        } else {
            ""
        };
        let tcp = match self.server.local_addrs() {
            a if a.is_empty() => "no TCP address".to_string(),
            a => net::describe(&a),
        };
        log::info!(
            "listening on {tcp} (pool {}, backlog {}, idle timeout {}){how}",
            c.pool_size,
            c.backlog,
            if c.idle_timeout.is_zero() {
                "never".to_string()
            } else {
                format_duration(c.idle_timeout)
            },
        );
        faults::log(c, false);
    }

    /// Serves events until the drain completes; returns the exit code.
    pub fn run(mut self, events: Receiver<Event>) -> i32 {
        // The supervisor's daemon events wait for room in the log queue
        // rather than be dropped (see `crate::observe::log_writer`).
        crate::observe::logging::allow_waiting();
        loop {
            match events.recv_timeout(TICK) {
                Ok(Event::Reload(reply)) => {
                    let outcome = self.reload();
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                Ok(Event::Terminate) => {
                    if self.drain_started.is_some() {
                        log::warn!("second stop signal: closing all connections now");
                        self.udp.stop();
                        self.server.stop_now();
                        self.server.wait_workers(DRAIN_MARGIN);
                        return 0;
                    }
                    self.on_stop_request();
                }
                Ok(Event::Ready(on, reply)) => {
                    let _ = reply.send(self.set_ready(on));
                }
                Ok(Event::Status(reply)) => {
                    let _ = reply.send(self.status());
                }
                Ok(Event::ReopenLogs) => reopen_logs(),
                Ok(Event::Sources(n, reply)) => {
                    let _ = reply.send(self.server.gate().top(n));
                }
                Ok(Event::ThreadDied(death)) => {
                    if let Err(why) = self.on_death(&death) {
                        return self.give_up(&why);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if self.drain_started.is_none() {
                        self.start_drain();
                    }
                }
            }
            if crate::observe::logging::writer_died() {
                // Not restarted: its queue went with it, and what it held
                // is lost; the supervisor's own line goes to stderr.
                return self.give_up(&format!(
                    "the {} thread died",
                    crate::observe::log_writer::THREAD
                ));
            }
            if self.drain_started.is_none() {
                self.server.reap();
                self.check_health();
            }
            self.probes.turned();
            if self.drain_at.is_some_and(|at| Instant::now() >= at) {
                self.start_drain();
            }
            let mut beats = self.server.heartbeats();
            beats.extend(self.udp.heartbeat());
            self.notifier.watchdog_tick(beats);
            self.refresh_status();
            if let Some(started) = self.drain_started {
                if self.server.wait_workers(Duration::ZERO) {
                    log::info!(
                        "drained in {:.1}s; exiting",
                        started.elapsed().as_secs_f64()
                    );
                    return 0;
                }
                if started.elapsed() > self.server.config().drain_timeout + DRAIN_MARGIN {
                    log::error!("workers did not finish draining in time; exiting");
                    return 0;
                }
            }
        }
    }

    /// A stop request (SIGTERM, SIGINT, `echo-labctl stop`) before the
    /// drain: with `shutdown_delay`, not ready at once and the drain
    /// later; without it, or during the delay, the drain now.
    fn on_stop_request(&mut self) {
        let delay = self.server.config().shutdown_delay;
        if self.drain_at.is_some() {
            log::info!("second stop request: skipping the rest of shutdown_delay");
            self.start_drain();
            return;
        }
        if delay.is_zero() {
            self.start_drain();
            return;
        }
        self.probes.set_phase(Phase::Delaying);
        self.drain_at = Some(Instant::now() + delay);
        log::info!(
            "stop requested: not ready; serving {} connection(s) for {} (shutdown_delay) before the drain",
            self.server.snapshot().active,
            format_duration(delay)
        );
        self.notifier.stopping(&format!(
            "not ready; draining in {}",
            format_duration(delay)
        ));
    }

    /// `echo-labctl ready on|off`: readiness only. Returns readiness now.
    fn set_ready(&mut self, on: bool) -> (bool, Option<String>) {
        self.probes.set_in_rotation(on);
        let now = self.probes.readiness();
        log::info!(
            "{}",
            if on {
                "ready on: back in rotation"
            } else {
                "ready off: out of rotation (still serving every session)"
            }
        );
        (now.is_ok(), now.err().map(str::to_string))
    }

    /// Feeds the serving threads' heartbeats to the stall check; its
    /// verdict is what `/healthz` says.
    fn check_health(&mut self) {
        let mut beats: Vec<(String, u64)> = Vec::new();
        for (k, b) in self.server.heartbeats().into_iter().enumerate() {
            let name = match k {
                0 => crate::tcp::listener::THREAD.to_string(),
                k => format!("worker {}", k - 1),
            };
            beats.push((name, b));
        }
        if let Some(b) = self.udp.heartbeat() {
            beats.push((crate::udp::THREAD.to_string(), b));
        }
        let verdict = self.stalls.check(beats, Instant::now());
        self.probes.set_unhealthy(verdict);
    }

    fn start_drain(&mut self) {
        self.drain_at = None;
        self.probes.set_phase(Phase::Draining);
        let timeout = self.server.config().drain_timeout;
        let n = self.server.snapshot().active;
        log::info!(
            "stop requested: draining {n} connection(s) for up to {}",
            format_duration(timeout)
        );
        self.notifier
            .stopping(&format!("draining {n} connection(s)"));
        self.drain_started = Some(Instant::now());
        // UDP has no sessions to finish: it stops at once.
        self.udp.stop();
        self.server.drain(timeout);
    }

    /// A watched thread died: restarts it from the state kept here, or,
    /// if it cannot be restarted or died too often, says why the daemon
    /// must exit.
    /// A thread died that cannot be (or was too often) restarted: says why,
    /// closes every connection at once and returns [`EX_SOFTWARE`], so a
    /// service manager restarts the daemon rather than it running on
    /// without a part.
    fn give_up(&mut self, why: &str) -> i32 {
        log::error!(
            "{why}; exiting with status {EX_SOFTWARE} so the service manager can restart echo-lab"
        );
        self.udp.stop();
        self.server.stop_now();
        self.server.wait_workers(DRAIN_MARGIN);
        EX_SOFTWARE
    }

    fn on_death(&mut self, death: &Death) -> Result<(), String> {
        let name = death.name.as_str();
        let revived = match name {
            crate::tcp::listener::THREAD => self.server.revive(death.id),
            crate::udp::THREAD => self.udp.revive(death.id),
            crate::observe::metrics::THREAD => match &mut self.metrics {
                Some(m) => m.revive(death.id),
                None => Ok(false),
            },
            signals::THREAD => match &mut self.signals {
                Some(s) => s.revive(death.id),
                None => Ok(false),
            },
            crate::supervisor::control::THREAD => match &mut self.control {
                Some(c) => c.revive(death.id),
                None => Ok(false),
            },
            _ => return Err(format!("the {name} thread died and cannot be restarted")),
        };
        match revived {
            Ok(true) => {}
            // Replaced or stopped on purpose meanwhile: nothing to do.
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("cannot restart the {name} thread: {e}")),
        }
        let n = self.restarts.count(name, Instant::now());
        if n > MAX_RESTARTS {
            return Err(format!(
                "the {name} thread died {n} times in {}",
                format_duration(RESTART_WINDOW)
            ));
        }
        log::warn!(
            "restarted the {name} thread ({n} of at most {MAX_RESTARTS} restarts per {})",
            format_duration(RESTART_WINDOW)
        );
        Ok(())
    }

    /// Re-reads the config and applies it; the outcome says what happened.
    fn reload(&mut self) -> Result<Reloaded, ReloadError> {
        if self.drain_started.is_some() || self.drain_at.is_some() {
            return Err(ReloadError::Draining);
        }
        self.notifier.reloading();
        let before = self.server.local_addrs();
        let udp_before = self.udp.local_addrs();
        let faults_before = !faults::in_force(self.server.config()).is_empty();
        let explicit = match &self.source {
            ConfigSource::File(p) => Some(p.clone()),
            ConfigSource::Embedded => None,
        };
        let result = match load_config(explicit.as_deref()) {
            Err(e) => Err(ReloadError::Config(e)),
            Ok((config, source)) => match PreparedTls::load_located(&config, source.path()) {
                Err(e) => Err(ReloadError::Config(e)),
                Ok(tls) => self.apply(config, tls).inspect(|_| {
                    self.source = source;
                }),
            },
        };
        self.count_reload(&result);
        if result.is_ok() {
            faults::log(self.server.config(), faults_before);
        }
        self.log_moves(&before, &udp_before);
        let status = match &result {
            Ok(done) => format!("reload applied: {done}; {}", self.status_line()),
            Err(e) => format!(
                "reload failed, running config unchanged: {}",
                reason_of(&e.to_string())
            ),
        };
        self.notifier.ready(&status);
        self.last_status = (status, Instant::now());
        result
    }

    /// Counts and logs a reload's outcome, and keeps it for `status`.
    fn count_reload(&mut self, result: &Result<Reloaded, ReloadError>) {
        match result {
            Ok(done) => {
                self.reloads.ok += 1;
                self.reloads.generation += 1;
                self.publish_identity();
                log::info!("reloaded {}: {done}", self.source.describe());
            }
            Err(e) => {
                self.reloads.failed += 1;
                for line in e.to_string().lines() {
                    log::error!("{line}");
                }
            }
        }
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_reload = Some(LastReload {
            at_unix,
            applied: result.as_ref().ok().map(|r| r.to_string()),
            error: result.as_ref().err().map(|e| e.to_string()),
        });
    }

    /// Logs new addresses after a reload, and stores new listeners.
    fn log_moves(&self, before: &[std::net::SocketAddr], udp_before: &[std::net::SocketAddr]) {
        if self.udp.local_addrs() != udp_before {
            log::info!(
                "udp echo now on {}",
                match self.udp.local_addrs() {
                    a if a.is_empty() => "no address".to_string(),
                    a => net::describe(&a),
                }
            );
        }
        if self.server.local_addrs() != before {
            log::info!(
                "now listening on {}",
                net::describe(&self.server.local_addrs())
            );
            self.notifier
                .store_listeners(&borrow_all(&self.server.listeners()));
        }
    }

    /// Applies a valid config: every part prepared (any failure changes
    /// nothing), then every part committed (nothing can fail).
    fn apply(&mut self, config: Config, tls: PreparedTls) -> Result<Reloaded, ReloadError> {
        for warning in tls.warnings() {
            log::warn!("{warning}");
        }
        let plan = self.prepare(config, tls)?;
        Ok(self.commit(plan))
    }

    /// Prepares each part of a reload: the log file opened, the new
    /// metrics address bound and served, the UDP sockets bound (and a UDP
    /// thread started if none ran), then the TCP side (workers built,
    /// addresses bound). What was made is dropped on failure.
    fn prepare(&mut self, config: Config, tls: PreparedTls) -> Result<Plan, ReloadError> {
        let tcp_port = self.server.local_addrs().first().map(|a| a.port());
        let (wanted, limit) = udp_plan(&config, tcp_port);
        let (was, _) = udp_plan(self.server.config(), tcp_port);
        let log =
            logging::prepare(&config.log, self.default_log_target).map_err(ReloadError::Log)?;
        let metrics = self
            .prepare_metrics(&config)
            .map_err(ReloadError::Metrics)?;
        let bound = self.udp.prepare(&wanted, limit).map_err(ReloadError::Udp)?;
        let udp_rules = listener_rules(&config, &bound.addresses());
        let udp_who = udp_who(&config, &bound.addresses());
        let udp_faults = faults::udp_faults(&config, &bound.addresses());
        let udp = self.udp.ready(bound).map_err(ReloadError::Udp)?;
        let mut tcp = self.server.prepare(config, tls).map_err(ReloadError::Tcp)?;
        if self.udp.is_activated() && wanted != was {
            tcp.report_mut()
                .deferred
                .push("udp addresses (sockets come from the service manager)".into());
        }
        Ok(Plan {
            log,
            metrics,
            udp,
            udp_rules,
            udp_who,
            udp_faults,
            tcp,
        })
    }

    /// Puts every prepared part in force; cannot fail.
    fn commit(&mut self, plan: Plan) -> Reloaded {
        let report = self.server.commit(plan.tcp);
        // The new sockets' own rules are in force before they serve.
        self.server.gate().set_overrides(true, plan.udp_rules);
        self.udp.commit(plan.udp);
        self.udp.set_who(plan.udp_who);
        self.udp.post_faults(plan.udp_faults);
        logging::install(plan.log);
        logging::set_instance(&self.instance());
        if let Some(new) = plan.metrics {
            // The old endpoint (if any) stops as it is replaced.
            self.metrics = new;
            match &self.metrics {
                Some(m) => log::info!("metrics now on http://{}/metrics", m.local_addr()),
                None => log::info!("metrics endpoint closed"),
            }
        }
        Reloaded { report }
    }

    /// The metrics endpoint a new config asks for: `None` if unchanged,
    /// `Some(None)` to close it, `Some(Some(_))` bound and serving (the
    /// old one still serving too until it is replaced).
    fn prepare_metrics(&self, new: &Config) -> Result<Option<Option<MetricsServer>>, MetricsError> {
        if new.metrics_listen == self.server.config().metrics_listen {
            return Ok(None);
        }
        let Some(addr) = new.metrics_listen else {
            return Ok(Some(None));
        };
        let Some(events) = &self.events else {
            return Ok(None);
        };
        let l = metrics::bind(addr)?;
        let server = MetricsServer::start(
            l,
            event::status_source(events),
            event::watcher(events),
            self.server.gate().clone(),
            self.probes.clone(),
        )?;
        Ok(Some(Some(server)))
    }

    fn status(&self) -> Status {
        Status {
            schema: echo_lab_proto::status::SCHEMA,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            config: self.source.describe(),
            listen: self
                .server
                .local_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            socket_activated: self.server.activated(),
            draining: self.drain_started.is_some(),
            stats: self.server.snapshot(),
            udp_listen: self
                .udp
                .local_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            udp: self.udp.snapshot(),
            last_reload: self.last_reload.clone(),
            reloads: self.reloads.clone(),
            metrics: self.metrics.as_ref().map(|m| m.local_addr().to_string()),
            log_lines_dropped: crate::observe::logging::lines_dropped(),
            instance: self.instance(),
            ready: self.probes.readiness().is_ok(),
            ready_reason: self.probes.readiness().err().map(str::to_string),
            tls: crate::tcp::tls::status(self.server.tls()),
            faults: faults::in_force(self.server.config()),
        }
    }
}

/// SIGUSR1: the log file is reopened by name; if that fails the old one
/// is kept and the failure logged (to it).
fn reopen_logs() {
    match crate::observe::logging::reopen() {
        Ok(Some(path)) => log::info!("reopened the log file {}", path.display()),
        Ok(None) => log::info!("SIGUSR1: the log target is not a file; nothing to reopen"),
        Err(e) => log::error!("{e}; still writing to the old file"),
    }
}

/// The UDP listeners with access rules of their own: each `[[listen]]`
/// UDP table that sets `access`, by the local addresses of its sockets
/// (`udp`: each UDP address served and its sockets' local addresses). The
/// TCP ones are the server's (`Server::reload`).
pub fn listener_rules(
    config: &Config,
    udp: &[(UdpSpec, Vec<std::net::SocketAddr>)],
) -> Vec<(Listener, Vec<Rule>)> {
    let mut out = Vec::new();
    for l in &config.listen {
        let Some(rules) = &l.access else { continue };
        if l.protocol != Protocol::Udp {
            continue;
        }
        let spec = UdpSpec {
            host: l.address.host.clone(),
            port: l.address.port,
        };
        for (_, addrs) in udp.iter().filter(|(s, _)| *s == spec) {
            out.extend(addrs.iter().map(|a| (Listener::Udp(*a), rules.clone())));
        }
    }
    out
}

/// The local addresses of the UDP sockets of `[[listen]]` tables with
/// `mode = "who"` (`udp`: each UDP address served and its sockets' local
/// addresses).
pub fn udp_who(
    config: &Config,
    udp: &[(UdpSpec, Vec<std::net::SocketAddr>)],
) -> Vec<std::net::SocketAddr> {
    let mut out = Vec::new();
    for l in &config.listen {
        if l.protocol != Protocol::Udp || l.mode != crate::config::ListenMode::Who {
            continue;
        }
        let spec = UdpSpec {
            host: l.address.host.clone(),
            port: l.address.port,
        };
        for (_, addrs) in udp.iter().filter(|(s, _)| *s == spec) {
            out.extend(addrs.iter().copied());
        }
    }
    out
}

/// The UDP addresses and limits a config asks for. `tcp_port` is the port
/// the TCP side listens on, which `udp = true` shares (it matters when the
/// configured port is 0).
pub fn udp_plan(config: &Config, tcp_port: Option<u16>) -> (Vec<UdpSpec>, RateLimit) {
    let limit = RateLimit {
        packets: config.udp_rate_packets,
        bytes: config.udp_rate_bytes,
        max_sources: config.udp_rate_sources,
    };
    let mut specs = Vec::new();
    if config.udp {
        let port = match config.port {
            0 => tcp_port.unwrap_or(0),
            p => p,
        };
        specs.push(UdpSpec {
            host: config.host.clone(),
            port,
        });
    }
    specs.extend(
        config
            .listen
            .iter()
            .filter(|l| l.protocol == Protocol::Udp)
            .map(|l| UdpSpec {
                host: l.address.host.clone(),
                port: l.address.port,
            }),
    );
    (specs, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_counted_per_thread_within_the_window() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        assert_eq!(r.count("udp", t0), 1);
        assert_eq!(r.count("udp", t0 + Duration::from_secs(1)), 2);
        assert_eq!(r.count("accept", t0 + Duration::from_secs(1)), 1);
        // The first two have left the window.
        assert_eq!(
            r.count("udp", t0 + RESTART_WINDOW + Duration::from_secs(2)),
            1
        );
    }
}
