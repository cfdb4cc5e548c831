//! `echo-lab`: the daemon. Parses the command line, loads the config, gets
//! its listening sockets, and hands over to the supervisor
//! ([`echo_lab::daemon`]). The order of the steps matters and is the
//! classic one: everything that can fail because of the operator (config,
//! address in use) fails before detaching from the terminal; forking
//! happens before any thread exists; signal handlers are installed before
//! threads start.

use std::net::UdpSocket;
use std::path::PathBuf;

use clap::Parser;
use echo_lab::activation::{self, Inherited};
use echo_lab::config::{Config, LogTarget, Protocol};
use echo_lab::control::{self, Access};
use echo_lab::daemon::{self, ConfigSource, Daemon};
use echo_lab::notify::Notifier;
use echo_lab::server::Server;
use echo_lab::sockets::TcpSockets;
use echo_lab::udp::listeners::UdpListeners;
use echo_lab::{limits, logging, metrics, net, EX_CONFIG, EX_OSERR};

/// A TCP echo daemon (RFC 862): everything a client sends comes back.
#[derive(Parser)]
#[command(name = "echo-lab", version, about, long_about = None)]
struct Args {
    /// Config file (default: /etc/echo-lab.toml if it exists, else the
    /// embedded defaults).
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the config, print OK or the errors, and exit (0 or 78).
    #[arg(short = 't', long)]
    check_config: bool,
    /// Print the effective config (defaults filled in) as TOML and exit.
    #[arg(long, conflicts_with = "check_config")]
    print_config: bool,
    /// Detach from the terminal and run in the background (for init
    /// systems other than systemd); logs go to syslog unless [log] target
    /// says otherwise.
    #[arg(long)]
    daemon: bool,
    /// With --daemon: write (and lock) the daemon's pid in this file.
    #[arg(long, value_name = "PATH", requires = "daemon")]
    pidfile: Option<PathBuf>,
}

fn main() {
    let code = real_main();
    // Whatever is still queued for the log (session lines in the writer's
    // batch, the last events), on every way out.
    log::logger().flush();
    std::process::exit(code);
}

fn real_main() -> i32 {
    let args = Args::parse();
    let loaded = daemon::load_config(args.config.as_deref());
    if args.check_config {
        return check(loaded, args.daemon);
    }
    let (config, source) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("echo-lab: invalid config, not starting:\n{e}");
            return EX_CONFIG;
        }
    };
    let default_target = if args.daemon {
        LogTarget::Syslog
    } else {
        LogTarget::Stderr
    };
    if args.print_config {
        let mut effective = config;
        effective.log.target = effective.log.target.or(Some(default_target));
        print!("{}", effective.to_toml());
        return 0;
    }
    logging::init(config.log.level.filter());
    // The log file is opened and the metrics address bound here, so a
    // mistake is said on the terminal, before any fork.
    let log_sink = match logging::prepare(&config.log, default_target) {
        Ok(p) => p,
        Err(e) => {
            log::error!("{e}");
            return EX_CONFIG;
        }
    };
    let metrics_listener = match config.metrics_listen.map(metrics::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            log::error!(
                "cannot listen for metrics on {}: {e}",
                config
                    .metrics_listen
                    .map_or(String::new(), |a| a.to_string())
            );
            return EX_OSERR;
        }
    };
    // SAFETY: no other thread exists yet.
    let mut inherited = unsafe { activation::take() };
    let datagram = match udp_activated(&config, std::mem::take(&mut inherited.datagram)) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e}");
            return EX_CONFIG;
        }
    };
    let any_activated = !inherited.activated.is_empty() || !datagram.is_empty();
    let sockets = match listeners(&config, inherited, any_activated) {
        Ok(x) => x,
        Err(e) => {
            log::error!("{e}");
            // Activated: nothing is bound, the unit and the config disagree.
            return if any_activated { EX_CONFIG } else { EX_OSERR };
        }
    };
    let activated = sockets.activated();
    // UDP sockets are bound here, before a fork, so a bind error reaches
    // the terminal; the UDP thread starts with the server.
    let tcp_port = sockets
        .all()
        .next()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let (udp_wanted, udp_limit) = daemon::udp_plan(&config, tcp_port);
    let udp_prepared = if activated {
        UdpListeners::adopt(datagram, udp_limit)
    } else {
        match UdpListeners::new(udp_limit).prepare(&udp_wanted, udp_limit) {
            Ok(p) => p,
            Err(e) => {
                log::error!("{e}");
                return EX_OSERR;
            }
        }
    };
    if args.daemon {
        // Fork while single-threaded; bind errors were reported above, on
        // the terminal. daemonix, not daemonize: see Cargo.toml
        // (RUSTSEC-2025-0069).
        let mut d = daemonix::Daemonize::new()
            .working_directory("/")
            .umask(0o022);
        if let Some(p) = &args.pidfile {
            d = d.pid_file(p);
        }
        if let Err(e) = d.start() {
            log::error!("cannot daemonize: {e}");
            return EX_OSERR;
        }
    }
    logging::install(log_sink);
    if source == ConfigSource::Embedded {
        log::info!(
            "no config file at {}; using the embedded defaults",
            echo_lab::config::DEFAULT_PATH
        );
    }
    // Signals before any thread: the handlers must be in place first.
    let (tx, rx) = std::sync::mpsc::channel();
    if let Err(e) = daemon::forward_signals(tx.clone()) {
        log::error!("cannot install signal handlers: {e}");
        return EX_OSERR;
    }
    match limits::raise_nofile() {
        Ok(nofile) => {
            if let Some(w) = limits::nofile_warning(config.max_connections, nofile) {
                log::warn!("{w}");
            }
        }
        Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    let control_path = config
        .control_socket
        .clone()
        .unwrap_or_else(control::default_path);
    let access = match control_access(&config) {
        Ok(a) => a,
        Err(e) => {
            log::error!("{e}");
            return EX_CONFIG;
        }
    };
    let server = match Server::start(config, sockets) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start: {e}");
            return EX_OSERR;
        }
    };
    let rules = daemon::listener_rules(server.config(), &udp_prepared.addresses());
    server.gate().set_overrides(true, rules);
    let mut udp = UdpListeners::new(udp_limit);
    udp.use_gate(server.gate().clone());
    if let Err(e) = udp.apply(udp_prepared) {
        log::error!("cannot start the UDP echo service: {e}");
        return EX_OSERR;
    }
    // Kept alive until exit; removes the socket file when dropped.
    let _control = match control::spawn(&control_path, access, tx.clone()) {
        Ok(c) => {
            log::info!("control socket at {}", c.path().display());
            Some(c)
        }
        Err(e) => {
            log::error!(
                "control socket {} unavailable: {e}; echo-labctl status/reload/stop will not work",
                control_path.display()
            );
            None
        }
    };
    let daemon = Daemon::new(server, udp, source, Notifier::from_env())
        .with_default_log_target(default_target);
    let mut daemon = match daemon.with_metrics(tx, metrics_listener) {
        Ok(d) => d,
        Err(e) => {
            log::error!("cannot start the metrics endpoint: {e}");
            return EX_OSERR;
        }
    };
    daemon.log_listening();
    daemon.announce_ready();
    let code = daemon.run(rx);
    if let Some(p) = &args.pidfile {
        // The pidfile says "running": it must not outlive the process.
        let _ = std::fs::remove_file(p);
    }
    code
}

/// `--check-config`: validate (and resolve the host and open the log
/// file, as `nginx -t` does).
fn check(
    loaded: Result<(Config, ConfigSource), echo_lab::config::ConfigError>,
    daemon: bool,
) -> i32 {
    match loaded {
        Ok((config, source)) => match net::resolve(&config.host, config.port) {
            Ok(_) => {
                let default_target = if daemon {
                    LogTarget::Syslog
                } else {
                    LogTarget::Stderr
                };
                if let Err(e) = logging::prepare(&config.log, default_target) {
                    eprintln!("{}: key 'log.path': {e}", source.describe());
                    return EX_CONFIG;
                }
                println!("OK ({})", source.describe());
                0
            }
            Err(e) => {
                eprintln!(
                    "{}: key 'host': cannot resolve '{}': {e}",
                    source.describe(),
                    config.host
                );
                EX_CONFIG
            }
        },
        Err(e) => {
            eprintln!("{e}");
            EX_CONFIG
        }
    }
}

/// The TCP listening sockets: from socket activation, else our own from
/// the fd store where they still match the config, else freshly bound.
/// Any socket from a `.socket` unit (`activated`) means the unit decides
/// every address, TCP and UDP.
fn listeners(config: &Config, inherited: Inherited, activated: bool) -> Result<TcpSockets, String> {
    if activated {
        return TcpSockets::from_unit(config, inherited.activated);
    }
    TcpSockets::open(config, inherited.stored).map_err(|e| e.to_string())
}

/// The `ListenDatagram=` sockets a unit passed, once each is known to
/// serve `udp` or a UDP `[[listen]]` table (all are served alike); a
/// socket with a name no table claims is an error.
fn udp_activated(
    config: &Config,
    passed: Vec<(String, UdpSocket)>,
) -> Result<Vec<UdpSocket>, String> {
    let tables = echo_lab::sockets::candidates(config, Protocol::Udp);
    passed
        .into_iter()
        .map(|(name, s)| activation::assign(&name, s.local_addr().ok(), &tables).map(|_| s))
        .collect()
}

fn control_access(config: &Config) -> Result<Access, String> {
    let group = match &config.control_group {
        Some(g) => {
            Some(control::resolve_group(g).map_err(|e| format!("control_group '{g}': {e}"))?)
        }
        None => None,
    };
    // SAFETY: geteuid cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    Ok(Access { own_uid, group })
}
