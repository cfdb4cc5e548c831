//! `echo-lab`: the daemon. Parses the command line and hands over to
//! [`echo_lab::startup`], which starts everything in order, runs the
//! supervisor and says which exit status to end with.

use std::path::PathBuf;

use clap::Parser;
use echo_lab::startup::{self, Options};

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
    let args = Args::parse();
    std::process::exit(startup::main(&Options {
        config: args.config,
        check_config: args.check_config,
        print_config: args.print_config,
        daemon: args.daemon,
        pidfile: args.pidfile,
    }));
}
