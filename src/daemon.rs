//! The supervisor: the daemon's main thread, where signals and control
//! requests become reloads, drains and status answers.
//!
//! Everything that changes the server happens here, on one thread, one
//! event at a time — reload and drain never race each other. Signal
//! handlers do nothing but forward the signal (signal-hook's iterator runs
//! on its own thread and sends an [`Event`]); control-socket requests
//! arrive the same way, with a channel for the answer.
//!
//! * SIGHUP: re-read the config file, validate all of it, then apply it
//!   ([`Server::reload`]); a bad file changes nothing and the error, with
//!   file, line, column and key, goes to the log.
//! * SIGTERM / SIGINT: drain for at most `drain_timeout`, then exit 0; a
//!   second one closes everything at once.
//! * SIGUSR1: reopen the log file (after logrotate renamed it).
//!
//! The supervisor also owns what is outside the echo server proper: the
//! metrics endpoint ([`crate::metrics`]) and the log sink. A reload
//! prepares both with the server — the new metrics address bound, the new
//! log file opened — before anything is applied, so any failure leaves
//! all of it as it was.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use crate::admission::Listener;
use crate::config::{
    format_duration, Config, ConfigError, LogTarget, Protocol, Rule, DEFAULT_PATH,
};
use crate::metrics::{self, MetricsServer};
use crate::net;
use crate::notify::{borrow_all, Notifier};
use crate::server::Server;
use crate::udp::listeners::{describe_limit, UdpListeners, UdpSpec};
use crate::udp::RateLimit;

/// How often the supervisor wakes when nothing happens (drain progress).
const TICK: Duration = Duration::from_millis(50);

/// How often the STATUS line is refreshed (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Extra time after the drain deadline for workers to finish closing.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// How the message of a failed reload starts (control clients and the log
/// get the whole message; `STATUS=` only the reason).
const NOT_RELOADED: &str = "config not reloaded, the running config is unchanged:";

/// The reason a reload failed, for `STATUS=`: the message's last line
/// without [`NOT_RELOADED`].
fn reason_of(message: &str) -> &str {
    let last = message.lines().last().unwrap_or("");
    last.strip_prefix(NOT_RELOADED).unwrap_or(last).trim()
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

pub use crate::event::{Event, LastReload, Reloads, Status};

/// Forwards SIGHUP, SIGTERM, SIGINT and SIGUSR1 to `tx` from a dedicated
/// thread. Call before starting other threads.
pub fn forward_signals(tx: Sender<Event>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let event = match sig {
                    SIGHUP => Event::Reload(None),
                    SIGUSR1 => Event::ReopenLogs,
                    _ => Event::Terminate,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

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
}

impl Daemon {
    /// Wraps a started server.
    pub fn new(
        server: Server,
        udp: UdpListeners,
        source: ConfigSource,
        notifier: Notifier,
    ) -> Self {
        Daemon {
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
        }
    }

    /// Gives the supervisor its own inbox (for the metrics endpoint's
    /// requests) and the metrics listener bound at start, if any.
    pub fn with_metrics(
        mut self,
        events: Sender<Event>,
        listener: Option<std::net::TcpListener>,
    ) -> std::io::Result<Self> {
        if let Some(l) = listener {
            let server = MetricsServer::start(l, events.clone(), self.server.gate().clone())?;
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
    }

    /// Serves events until the drain completes; returns the exit code.
    pub fn run(mut self, events: Receiver<Event>) -> i32 {
        // The supervisor's daemon events wait for room in the log queue
        // rather than be dropped (see `crate::log_writer`).
        crate::logging::allow_waiting();
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
                    self.start_drain();
                }
                Ok(Event::Status(reply)) => {
                    let _ = reply.send(self.status());
                }
                Ok(Event::ReopenLogs) => reopen_logs(),
                Ok(Event::Sources(n, reply)) => {
                    let _ = reply.send(self.server.gate().top(n));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if self.drain_started.is_none() {
                        self.start_drain();
                    }
                }
            }
            if self.drain_started.is_none() {
                self.server.reap();
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

    fn start_drain(&mut self) {
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

    /// Re-reads the config and applies it; the message says what happened.
    fn reload(&mut self) -> Result<String, String> {
        if self.drain_started.is_some() {
            return Err("draining; reload ignored".to_string());
        }
        self.notifier.reloading();
        let before = self.server.local_addrs();
        let udp_before = self.udp.local_addrs();
        let explicit = match &self.source {
            ConfigSource::File(p) => Some(p.clone()),
            ConfigSource::Embedded => None,
        };
        let result = match load_config(explicit.as_deref()) {
            Err(e) => Err(format!(
                "{NOT_RELOADED}
{e}"
            )),
            Ok((config, source)) => self.apply(config).inspect(|_| {
                self.source = source;
            }),
        };
        if result.is_ok() {
            self.reloads.ok += 1;
            self.reloads.generation += 1;
        } else {
            self.reloads.failed += 1;
        }
        match &result {
            Ok(summary) => log::info!("reloaded {}: {summary}", self.source.describe()),
            Err(e) => {
                for line in e.lines() {
                    log::error!("{line}");
                }
            }
        }
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
        let status = match &result {
            Ok(summary) => format!("reload applied: {summary}; {}", self.status_line()),
            Err(e) => format!("reload failed, running config unchanged: {}", reason_of(e)),
        };
        self.notifier.ready(&status);
        self.last_status = (status, Instant::now());
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_reload = Some(LastReload {
            at_unix,
            applied: result.as_ref().ok().cloned(),
            error: result.as_ref().err().cloned(),
        });
        result
    }

    /// Applies a valid config to the TCP and the UDP side and to what lives
    /// beside them (log sink, metrics endpoint): UDP sockets are bound,
    /// the log file opened and a new metrics address bound first, then the
    /// TCP side reloads (binding what it needs), and only when all that
    /// succeeded are the prepared parts put in service. Any failure
    /// changes nothing.
    fn apply(&mut self, config: Config) -> Result<String, String> {
        let unchanged = |e: &dyn std::fmt::Display| format!("{NOT_RELOADED} {e}");
        let tcp_port = self.server.local_addrs().first().map(|a| a.port());
        let (wanted, limit) = udp_plan(&config, tcp_port);
        let (was, _) = udp_plan(self.server.config(), tcp_port);
        let log = crate::logging::prepare(&config.log, self.default_log_target)
            .map_err(|e| unchanged(&e))?;
        let metrics = self.prepare_metrics(&config).map_err(|e| unchanged(&e))?;
        let prepared = self
            .udp
            .prepare(&wanted, limit)
            .map_err(|e| unchanged(&e))?;
        let rules = listener_rules(&config, &prepared.addresses());
        let mut report = self.server.reload(config).map_err(|e| unchanged(&e))?;
        // The new sockets' own rules are in force before they serve.
        self.server.gate().set_overrides(true, rules);
        if let Err(e) = self.udp.apply(prepared) {
            log::error!("cannot change the UDP side: {e}; it serves as before");
        }
        crate::logging::install(log);
        if let Some(new) = metrics {
            // The old endpoint (if any) stops as it is replaced.
            self.metrics = new;
            match &self.metrics {
                Some(m) => log::info!("metrics now on http://{}/metrics", m.local_addr()),
                None => log::info!("metrics endpoint closed"),
            }
        }
        if self.udp.is_activated() && wanted != was {
            report
                .deferred
                .push("udp addresses (sockets come from the service manager)".into());
        }
        Ok(report.summary())
    }

    /// The metrics endpoint a new config asks for: `None` if unchanged,
    /// `Some(None)` to close it, `Some(Some(_))` bound and serving (the
    /// old one still serving too until it is replaced).
    fn prepare_metrics(&self, new: &Config) -> Result<Option<Option<MetricsServer>>, String> {
        if new.metrics_listen == self.server.config().metrics_listen {
            return Ok(None);
        }
        let Some(addr) = new.metrics_listen else {
            return Ok(Some(None));
        };
        let Some(events) = &self.events else {
            return Ok(None);
        };
        let l =
            metrics::bind(addr).map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        let server = MetricsServer::start(l, events.clone(), self.server.gate().clone())
            .map_err(|e| format!("cannot start the metrics endpoint: {e}"))?;
        Ok(Some(Some(server)))
    }

    fn status(&self) -> Status {
        Status {
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
            log_lines_dropped: crate::logging::lines_dropped(),
        }
    }
}

/// SIGUSR1: the log file is reopened by name; if that fails the old one
/// is kept and the failure logged (to it).
fn reopen_logs() {
    match crate::logging::reopen() {
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
    fn status_reason_drops_the_preamble() {
        let bind = format!("{NOT_RELOADED} cannot listen on 127.0.0.1:7: Address already in use");
        assert_eq!(
            reason_of(&bind),
            "cannot listen on 127.0.0.1:7: Address already in use"
        );
        let located = format!("{NOT_RELOADED}\n/etc/echo-lab.toml:3:1: unknown key `x`");
        assert_eq!(
            reason_of(&located),
            "/etc/echo-lab.toml:3:1: unknown key `x`"
        );
        assert_eq!(
            reason_of("draining; reload ignored"),
            "draining; reload ignored"
        );
    }
}
