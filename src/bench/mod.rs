//! `echo-labctl bench`: a load generator for any echo server.
//!
//! (Being written; the command-line surface is fixed here so the binary can
//! wire it in.)

use clap::Args;

/// Options of `echo-labctl bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Address of the echo server to load.
    pub addr: Option<String>,
}

/// Run a benchmark and print its report; returns the process exit code.
pub fn run(_args: &BenchArgs, _default_addr: &str) -> anyhow::Result<i32> {
    anyhow::bail!("bench is not available yet")
}
