//! `echo-lab`: the daemon. Parses the command line, loads the config, binds,
//! and hands over to the supervisor ([`echo_lab::daemon`]).

use std::path::PathBuf;

use clap::Parser;
use echo_lab::config::Config;
use echo_lab::daemon::{self, ConfigSource, Daemon};
use echo_lab::server::Server;
use echo_lab::{limits, logging, net, EX_CONFIG, EX_OSERR};

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
}

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let args = Args::parse();
    let loaded = daemon::load_config(args.config.as_deref());
    if args.check_config {
        return match loaded {
            Ok((config, source)) => match check_addresses(&config) {
                Ok(()) => {
                    println!("OK ({})", source.describe());
                    0
                }
                Err(e) => {
                    eprintln!("{}: {e}", source.describe());
                    EX_CONFIG
                }
            },
            Err(e) => {
                eprintln!("{e}");
                EX_CONFIG
            }
        };
    }
    let (config, source) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("echo-lab: invalid config, not starting:\n{e}");
            return EX_CONFIG;
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return 0;
    }
    logging::init(config.log.level.filter());
    if source == ConfigSource::Embedded {
        log::info!(
            "no config file at {}; using the embedded defaults",
            echo_lab::config::DEFAULT_PATH
        );
    }
    // Signals first: the handlers must be in place before any thread starts.
    let (tx, rx) = std::sync::mpsc::channel();
    if let Err(e) = daemon::forward_signals(tx) {
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
    let listeners = match net::bind_all(&config.host, config.port, config.backlog) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return EX_OSERR;
        }
    };
    let server = match Server::start(config, listeners, false) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start: {e}");
            return EX_OSERR;
        }
    };
    let daemon = Daemon::new(server, source);
    daemon.log_listening();
    daemon.run(rx)
}

/// `--check-config` also resolves the host, as `nginx -t` does.
fn check_addresses(config: &Config) -> Result<(), String> {
    net::resolve(&config.host, config.port)
        .map(|_| ())
        .map_err(|e| format!("key 'host': cannot resolve '{}': {e}", config.host))
}
