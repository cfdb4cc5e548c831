//! `echo-labctl`: the control client of echo-lab — an echo session
//! (`connect`), and load generation (`bench`).

use std::time::Duration;

use clap::{Parser, Subcommand};
use echo_lab::config::{Config, DEFAULT_PATH};

#[derive(Parser)]
#[command(name = "echo-labctl", version, about = "Talk to an echo-lab daemon", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open an echo session: type lines (or pipe them in) and see them echoed.
    Connect {
        /// Server address, HOST:PORT (default: the address in
        /// /etc/echo-lab.toml if readable, else 127.0.0.1:7007).
        addr: Option<String>,
        /// Connect and echo timeout, in seconds.
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        timeout: f64,
    },
    /// Load an echo server and report round trips per second and latency.
    Bench(echo_lab::bench::BenchArgs),
}

/// The address clients use by default: the daemon's configured one, with a
/// wildcard host replaced by loopback.
fn default_addr() -> String {
    let config = Config::load(std::path::Path::new(DEFAULT_PATH)).unwrap_or_default();
    let mut c = config;
    if c.host == "0.0.0.0" {
        c.host = "127.0.0.1".into();
    } else if c.host == "::" {
        c.host = "::1".into();
    }
    c.address()
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Connect { addr, timeout } => {
            let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::from_secs(5));
            echo_lab::client::run(&echo_lab::client::Options {
                addr: addr.unwrap_or_else(default_addr),
                timeout,
            })
        }
        Command::Bench(args) => match echo_lab::bench::run(&args, &default_addr()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("echo-labctl: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
