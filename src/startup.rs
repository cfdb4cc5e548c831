//! The daemon's start: from the command line's [`Options`] to a running
//! supervisor ([`crate::supervisor`]), and the exit code at the end.
//!
//! The order of the steps matters and is the classic one:
//!
//! 1. `bind`: everything that can fail because of the operator (config,
//!    log file, metrics address, activated sockets, TCP and UDP addresses)
//!    fails first, on the terminal, before detaching from it;
//! 2. `daemonize` (`--daemon`): the fork happens while no thread exists;
//! 3. `launch`: the log sink is installed, the signal handlers before
//!    any other thread, then the control socket (so a client that got an
//!    echo can ask for status at once), the server, the UDP thread and
//!    the metrics endpoint, each long-lived thread watched
//!    ([`crate::watch`]) and reporting its death to the supervisor.
//!
//! Every failure is one [`StartupError`], which knows its message and its
//! sysexits(3) code: 78 (EX_CONFIG) for what the operator must fix in the
//! config or the unit, 71 (EX_OSERR) for what the OS refused. The
//! supervisor's own end gives 0 (stopped) or 70 (EX_SOFTWARE, a thread
//! died too often). A config error is said on stderr as such, before the
//! logger exists; the rest goes through the log.
//!
//! This module must never run the daemon's work itself (that is the
//! supervisor's), and must never start a thread before the fork.

use std::io;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};

use crate::config::{Config, ConfigError, LogTarget, Protocol};
use crate::observe::logging::{self, OpenError};
use crate::observe::metrics::{self, MetricsError};
use crate::supervisor::control::{self, Access, ControlServer};
use crate::supervisor::limits;
use crate::supervisor::signals::Signals;
use crate::supervisor::{self, ConfigSource, Daemon, Event};
use crate::systemd::activation::{self, Inherited};
use crate::systemd::notify::Notifier;
use crate::tcp::server::Server;
use crate::tcp::sockets::{SocketError, TcpSockets};
use crate::tcp::tls::PreparedTls;
use crate::udp::listeners::{self, UdpError, UdpListeners};
use crate::udp::RateLimit;
use crate::{net, EX_CONFIG, EX_OSERR};

/// What the command line asks for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config`: the config file (else the default path or defaults).
    pub config: Option<PathBuf>,
    /// `--check-config`: validate, say OK or the errors, exit.
    pub check_config: bool,
    /// `--print-config`: print the effective config and exit.
    pub print_config: bool,
    /// `--daemon`: detach; logs go to syslog unless `[log] target` says.
    pub daemon: bool,
    /// `--pidfile` (with `--daemon`).
    pub pidfile: Option<PathBuf>,
}

/// Why the daemon did not start (or `--check-config` refused the config).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The config file is unreadable or invalid.
    #[error("echo-lab: invalid config, not starting:\n{0}")]
    Config(#[source] ConfigError),
    /// `--check-config`: the config file is unreadable or invalid.
    #[error("{0}")]
    CheckConfig(#[source] ConfigError),
    /// `--check-config`: `host` does not resolve.
    #[error("{source_name}: key 'host': cannot resolve '{host}': {error}")]
    CheckHost {
        source_name: String,
        host: String,
        error: io::Error,
    },
    /// `--check-config`: the log file cannot be opened.
    #[error("{source_name}: key 'log.path': {error}")]
    CheckLog {
        source_name: String,
        error: OpenError,
    },
    /// The log file cannot be opened.
    #[error(transparent)]
    Log(OpenError),
    /// The metrics address cannot be bound, or the endpoint not started.
    #[error(transparent)]
    Metrics(MetricsError),
    /// The service manager passed sockets the config does not name, or
    /// not the ones it needs.
    #[error("{0}")]
    Activation(String),
    /// A TCP address cannot be bound.
    #[error(transparent)]
    Listen(SocketError),
    /// A UDP address cannot be bound, or the UDP thread not started.
    #[error(transparent)]
    Udp(UdpError),
    /// `--daemon`: the fork or the pidfile failed.
    #[error("cannot daemonize: {0}")]
    Daemonize(String),
    /// The signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// `control_group` names no group.
    #[error("{0}")]
    ControlGroup(String),
    /// The server (workers, accept loop) cannot be started.
    #[error("cannot start: {0}")]
    Start(#[source] io::Error),
}

impl StartupError {
    /// The process's exit status for this error (sysexits(3)).
    pub fn exit_code(&self) -> i32 {
        use StartupError::*;
        match self {
            Config(_) | CheckConfig(_) | CheckHost { .. } | CheckLog { .. } => EX_CONFIG,
            Log(_) | Activation(_) | ControlGroup(_) => EX_CONFIG,
            Metrics(_) | Listen(_) | Udp(_) | Daemonize(_) | Signals(_) | Start(_) => EX_OSERR,
        }
    }

    /// Says the error where the operator looks: stderr for the config's
    /// own errors (the logger may not exist yet), the log for the rest.
    pub fn report(&self) {
        use StartupError::*;
        match self {
            Config(_) | CheckConfig(_) | CheckHost { .. } | CheckLog { .. } => eprintln!("{self}"),
            _ => log::error!("{self}"),
        }
    }
}

/// Runs the daemon as `options` ask; returns the process's exit status.
pub fn main(options: &Options) -> i32 {
    let code = match run(options) {
        Ok(code) => code,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    };
    // Whatever is still queued for the log (session lines in the writer's
    // batch, the last events), on every way out.
    log::logger().flush();
    code
}

/// The log target when the config names none: syslog once detached.
fn default_target(daemon: bool) -> LogTarget {
    if daemon {
        LogTarget::Syslog
    } else {
        LogTarget::Stderr
    }
}

fn run(options: &Options) -> Result<i32, StartupError> {
    let loaded = supervisor::load_config(options.config.as_deref());
    let target = default_target(options.daemon);
    if options.check_config {
        let source = check(loaded, target)?;
        println!("OK ({})", source.describe());
        return Ok(0);
    }
    let (config, source) = loaded.map_err(StartupError::Config)?;
    if options.print_config {
        let mut effective = config;
        effective.log.target = effective.log.target.or(Some(target));
        print!("{}", effective.to_toml());
        return Ok(0);
    }
    let tls = PreparedTls::load_located(&config, source.path()).map_err(StartupError::Config)?;
    logging::init(config.log.level.filter());
    let bound = bind(&config, target)?;
    if options.daemon {
        daemonize(options.pidfile.as_deref())?;
    }
    let started = launch(config, source, (bound, tls), target);
    let code = match started {
        Ok((daemon, events)) => Ok(daemon.run(events)),
        Err(e) => Err(e),
    };
    if let Some(p) = &options.pidfile {
        // The pidfile says "running": it must not outlive the process.
        let _ = std::fs::remove_file(p);
    }
    code
}

/// `--check-config`: validates, resolves the host and opens the log file
/// (as `nginx -t` does); returns where the config came from.
fn check(
    loaded: Result<(Config, ConfigSource), ConfigError>,
    target: LogTarget,
) -> Result<ConfigSource, StartupError> {
    let (config, source) = loaded.map_err(StartupError::CheckConfig)?;
    let tls =
        PreparedTls::load_located(&config, source.path()).map_err(StartupError::CheckConfig)?;
    for warning in tls.warnings() {
        eprintln!("warning: {warning}");
    }
    if let Err(error) = net::resolve(&config.host, config.port) {
        return Err(StartupError::CheckHost {
            source_name: source.describe(),
            host: config.host.clone(),
            error,
        });
    }
    if let Err(error) = logging::prepare(&config.log, target) {
        return Err(StartupError::CheckLog {
            source_name: source.describe(),
            error,
        });
    }
    Ok(source)
}

/// What is bound before the fork, to be put in service after it.
struct Bound {
    log: logging::Prepared,
    metrics: Option<std::net::TcpListener>,
    tcp: TcpSockets,
    udp: listeners::Prepared,
    udp_limit: RateLimit,
}

/// Opens the log file and binds every address (or takes the sockets the
/// service manager passed), so a mistake is said on the terminal, before
/// any fork. Starts no thread.
fn bind(config: &Config, target: LogTarget) -> Result<Bound, StartupError> {
    let log = logging::prepare(&config.log, target).map_err(StartupError::Log)?;
    let metrics = config
        .metrics_listen
        .map(metrics::bind)
        .transpose()
        .map_err(StartupError::Metrics)?;
    // SAFETY: `take`'s contract: no other thread exists yet (nothing above
    // spawns one), and this is its only call.
    let mut inherited = unsafe { activation::take() };
    let datagram = udp_activated(config, std::mem::take(&mut inherited.datagram))?;
    let any_activated = !inherited.activated.is_empty() || !datagram.is_empty();
    let tcp = tcp_sockets(config, inherited, any_activated)?;
    let tcp_port = tcp
        .all()
        .next()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let (udp_wanted, udp_limit) = supervisor::udp_plan(config, tcp_port);
    let udp = if tcp.activated() {
        UdpListeners::adopt(datagram, udp_limit)
    } else {
        UdpListeners::new(udp_limit)
            .prepare(&udp_wanted, udp_limit)
            .map_err(StartupError::Udp)?
    };
    Ok(Bound {
        log,
        metrics,
        tcp,
        udp,
        udp_limit,
    })
}

/// The TCP listening sockets: from socket activation, else our own from
/// the fd store where they still match the config, else freshly bound.
/// Any socket from a `.socket` unit (`activated`) means the unit decides
/// every address, TCP and UDP.
fn tcp_sockets(
    config: &Config,
    inherited: Inherited,
    activated: bool,
) -> Result<TcpSockets, StartupError> {
    if activated {
        // Nothing is bound: the unit and the config disagree.
        return TcpSockets::from_unit(config, inherited.activated)
            .map_err(StartupError::Activation);
    }
    TcpSockets::open(config, inherited.stored).map_err(StartupError::Listen)
}

/// The `ListenDatagram=` sockets a unit passed, once each is known to
/// serve `udp` or a UDP `[[listen]]` table (all are served alike); a
/// socket with a name no table claims is an error.
fn udp_activated(
    config: &Config,
    passed: Vec<(String, UdpSocket)>,
) -> Result<Vec<UdpSocket>, StartupError> {
    let tables = crate::tcp::sockets::candidates(config, Protocol::Udp);
    passed
        .into_iter()
        .map(|(name, s)| activation::assign(&name, s.local_addr().ok(), &tables).map(|_| s))
        .collect::<Result<_, _>>()
        .map_err(StartupError::Activation)
}

/// Forks into the background while single-threaded. daemonix, not
/// daemonize: see Cargo.toml (RUSTSEC-2025-0069).
fn daemonize(pidfile: Option<&Path>) -> Result<(), StartupError> {
    let mut d = daemonix::Daemonize::new()
        .working_directory("/")
        .umask(0o022);
    if let Some(p) = pidfile {
        d = d.pid_file(p);
    }
    d.start()
        .map_err(|e| StartupError::Daemonize(e.to_string()))
}

/// Installs the log sink and the signal handlers, then starts every
/// service; returns the supervisor, ready to run, and its inbox.
fn launch(
    config: Config,
    source: ConfigSource,
    (bound, tls): (Bound, PreparedTls),
    target: LogTarget,
) -> Result<(Daemon, Receiver<Event>), StartupError> {
    // Every JSON line names the instance, from the first one on.
    logging::set_instance(
        &config
            .instance
            .clone()
            .unwrap_or_else(crate::observe::probe::host_name),
    );
    logging::install(bound.log);
    for line in tls.describe() {
        log::info!("{line}");
    }
    for warning in tls.warnings() {
        log::warn!("{warning}");
    }
    if source == ConfigSource::Embedded {
        log::info!(
            "no config file at {}; using the embedded defaults",
            crate::config::DEFAULT_PATH
        );
    }
    // Signals before any thread: the handlers must be in place first.
    let (tx, rx) = std::sync::mpsc::channel();
    let signals = Signals::start(tx.clone()).map_err(StartupError::Signals)?;
    raise_nofile(config.max_connections);
    let control_path = config
        .control_socket
        .clone()
        .unwrap_or_else(control::default_path);
    let access = control_access(&config)?;
    // The control socket first: a client that got an echo can ask for
    // status at once (the supervisor answers once it runs).
    let control = open_control(&control_path, access, tx.clone());
    let watcher = supervisor::event::watcher(&tx);
    let server =
        Server::start(config, bound.tcp, tls, watcher.clone()).map_err(StartupError::Start)?;
    let rules = supervisor::listener_rules(server.config(), &bound.udp.addresses());
    let udp_who = supervisor::udp_who(server.config(), &bound.udp.addresses());
    let udp_faults = supervisor::faults::udp_faults(server.config(), &bound.udp.addresses());
    server.gate().set_overrides(true, rules);
    let mut udp = UdpListeners::new(bound.udp_limit);
    udp.use_gate(server.gate().clone());
    udp.watch(watcher);
    udp.apply(bound.udp).map_err(StartupError::Udp)?;
    udp.set_who(udp_who);
    udp.post_faults(udp_faults);
    let mut daemon = Daemon::new(server, udp, source, Notifier::from_env())
        .with_default_log_target(target)
        .with_control(control)
        .with_signals(signals)
        .with_metrics(tx, bound.metrics)
        .map_err(StartupError::Metrics)?;
    daemon.log_listening();
    daemon.announce_ready();
    Ok((daemon, rx))
}

/// Raises RLIMIT_NOFILE, warning if it stays too low for
/// `max_connections`; a failure is only a warning.
fn raise_nofile(max_connections: usize) {
    match limits::raise_nofile() {
        Ok(nofile) => {
            if let Some(w) = limits::nofile_warning(max_connections, nofile) {
                log::warn!("{w}");
            }
        }
        Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
}

/// The control socket, or `None` (logged) if it cannot be opened: the
/// daemon serves without it.
fn open_control(path: &Path, access: Access, events: Sender<Event>) -> Option<ControlServer> {
    match control::spawn(path, access, events) {
        Ok(c) => {
            log::info!("control socket at {}", c.path().display());
            Some(c)
        }
        Err(e) => {
            log::error!(
                "control socket {} unavailable: {e}; echo-labctl status/reload/stop will not work",
                path.display()
            );
            None
        }
    }
}

/// Who may use the control socket: root, our own uid, `control_group`.
fn control_access(config: &Config) -> Result<Access, StartupError> {
    let group = match &config.control_group {
        Some(g) => Some(
            control::resolve_group(g)
                .map_err(|e| StartupError::ControlGroup(format!("control_group '{g}': {e}")))?,
        ),
        None => None,
    };
    let own_uid = rustix::process::geteuid().as_raw();
    Ok(Access { own_uid, group })
}
