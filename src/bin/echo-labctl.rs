//! `echo-labctl`: the control client of echo-lab.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "echo-labctl", version, about = "Talk to an echo-lab daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load an echo server and report round trips per second and latency.
    Bench(echo_lab::bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Bench(args) => match echo_lab::bench::run(&args, "127.0.0.1:7007") {
            Ok(code) => code,
            Err(e) => {
                eprintln!("echo-labctl: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
