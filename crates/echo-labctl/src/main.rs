//! `echo-labctl`: the control client of echo-lab — an echo session
//! (`connect`), the daemon's control socket (`status`, `sources`, `reload`,
//! `stop`, `ready`),
//! load generation (`bench`) and shell completions.
//!
//! Exit codes: 0 ok, 1 the daemon said no (or the session ended badly),
//! 64 bad usage or address, 69 the daemon cannot be reached.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand};
use echo_lab_config::{Config, DEFAULT_PATH};
use echo_lab_proto::control::{self, ClientError, Request, Response};
use echo_lab_proto::exit::{EX_UNAVAILABLE, EX_USAGE};
use echo_lab_proto::status::{SourceView, Status};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "echo-labctl", version, about = "Talk to an echo-lab daemon", long_about = None)]
struct Cli {
    /// The daemon's control socket (default: control_socket from
    /// /etc/echo-lab.toml, else /run/echo-lab/control.sock, else the
    /// per-user path).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
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
        /// Over UDP: each line is one datagram, each echo is printed.
        #[arg(long, conflicts_with = "tls")]
        udp: bool,
        #[command(flatten)]
        tls: echo_labctl::tls::TlsArgs,
    },
    /// Show the daemon's state: version, pid, uptime, addresses, counters,
    /// last reload.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the sources with the most connections or refusals now: open
    /// connections, connection rate and refusals by reason, per source.
    Sources {
        /// How many sources.
        #[arg(long, default_value_t = 20, value_name = "N")]
        top: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reload the daemon's config and print what changed, or why not.
    Reload,
    /// Start the daemon's drain (like SIGTERM).
    Stop {
        /// Wait until the daemon has exited.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        timeout: u64,
    },
    /// Take the daemon out of a load balancer's rotation (`off`: GET
    /// /readyz answers 503, every session is still served) or put it back
    /// (`on`).
    Ready {
        /// `on` or `off`.
        state: OnOff,
    },
    /// Ask a `mode = "who"` listener (or a load balancer in front of
    /// several) which instance answered; with --count, a table of how
    /// often each did.
    Who {
        /// HOST:PORT of the who listener (or of the balancer).
        addr: String,
        /// Open this many sessions, one after another, and print a table
        /// of which instance answered how often.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Print the reply as the daemon sent it (one JSON line).
        #[arg(long, conflicts_with = "count")]
        json: bool,
        /// Over UDP: each session is one 1024-byte datagram, answered by
        /// one (the per-source rate limit of the daemon applies).
        #[arg(long)]
        udp: bool,
        /// Connect and reply timeout, in seconds.
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        timeout: f64,
    },
    /// Load an echo server and report round trips per second and latency.
    Bench(echo_labctl::bench::BenchArgs),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `ready on|off`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Control socket path: --socket, else the config's, else the defaults.
fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| {
            Config::load(Path::new(DEFAULT_PATH))
                .ok()
                .and_then(|c| c.control_socket)
        })
        .unwrap_or_else(control::client_default_path)
}

/// Sends a request; prints errors with a hint; returns the answer or the
/// exit code.
fn ask(path: &Path, req: Request) -> Result<Response, i32> {
    match control::request(path, &req, Duration::from_secs(35)) {
        Ok(r) => Ok(r),
        Err(ClientError::Unreachable { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            eprintln!(
                "echo-labctl: permission denied on {path}: only root, the daemon's user and members of control_group may control it"
            );
            Err(EX_UNAVAILABLE)
        }
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("echo-labctl: {e} (is echo-lab running? try: systemctl status echo-lab; or pass --socket)");
            Err(EX_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("echo-labctl: {e}");
            Err(1)
        }
    }
}

/// Reports an answer that is not the one asked for (a refusal, or a
/// daemon speaking another version of the protocol).
fn refused(r: &Response) -> i32 {
    match r {
        Response::Refused { message } => eprintln!("echo-labctl: {message}"),
        other => eprintln!("echo-labctl: unexpected answer from the daemon: {other:?}"),
    }
    1
}

/// Prints `value` as pretty JSON, or `text` it.
fn print_either<T: Serialize>(value: &T, json: bool, text: impl FnOnce(&T)) -> i32 {
    if !json {
        text(value);
        return 0;
    }
    match serde_json::to_string_pretty(value) {
        Ok(j) => {
            println!("{j}");
            0
        }
        Err(e) => {
            eprintln!("echo-labctl: {e}");
            1
        }
    }
}

fn print_status(s: &Status) {
    let st = &s.stats;
    println!("echo-lab {} (pid {})", s.version, s.pid);
    println!("  instance:      {}", s.instance);
    println!(
        "  uptime:        {}",
        humantime::format_duration(Duration::from_secs(st.uptime_secs))
    );
    println!("  config:        {}", s.config);
    let how = if s.socket_activated {
        " (socket-activated)"
    } else {
        ""
    };
    println!(
        "  listening on:  {}{how}",
        if s.listen.is_empty() {
            "-".to_string()
        } else {
            s.listen.join(", ")
        }
    );
    println!(
        "  state:         {}",
        if s.draining { "draining" } else { "serving" }
    );
    match &s.ready_reason {
        _ if s.ready => println!("  ready:         yes"),
        Some(why) => println!("  ready:         no: {why}"),
        None => println!("  ready:         no"),
    }
    println!("  pool size:     {}", st.pool_size);
    for (i, w) in st.workers.iter().enumerate() {
        let cpu = match w.cpu {
            Some(c) => format!("CPU {c}"),
            None => "unpinned".to_string(),
        };
        let label = format!("worker {i}:");
        println!(
            "  {label:<15}{cpu}, {} connection{}, {} handed off",
            w.connections,
            if w.connections == 1 { "" } else { "s" },
            w.moved_out
        );
    }
    println!(
        "  connections:   {} active, {} total, {} refused",
        st.active, st.total, st.refused
    );
    let a = &st.admission;
    println!(
        "  refused by:    {} max_connections, {} access rule, {} per-source cap, {} per-source rate",
        st.refused, a.refused_rule, a.refused_source_cap, a.refused_source_rate
    );
    if a.dry_run_source_cap + a.dry_run_source_rate > 0 {
        println!(
            "  dry run:       would have refused {} at the per-source cap, {} over the rate",
            a.dry_run_source_cap, a.dry_run_source_rate
        );
    }
    println!(
        "  sources:       {} tracked of {}, {} evicted, {} untracked",
        a.sources, a.source_table_size, a.sources_evicted, a.untracked
    );
    for r in &a.rules {
        println!(
            "  access rule:   [{}] {}: {} matched",
            r.scope, r.rule, r.matches
        );
    }
    println!("  bytes echoed:  {}", st.bytes_echoed);
    println!(
        "  closes:        {} idle, {} disconnect",
        st.idle_closes, st.disconnects
    );
    if let Some(u) = &s.udp {
        println!("  udp on:        {}", s.udp_listen.join(", "));
        println!(
            "  udp datagrams: {} received, {} echoed ({} bytes), {} send errors",
            u.received, u.echoed, u.bytes_echoed, u.send_errors
        );
        println!(
            "  udp dropped:   {} bad source, {} over rate, {} too large, {} access rule; {} sources tracked",
            u.dropped_bad_source, u.dropped_rate, u.dropped_too_large, u.dropped_access, u.sources
        );
        if u.dropped_loss + u.dropped_delay_queue > 0 {
            println!(
                "  udp faults:    {} lost (loss), {} dropped (delay queue full)",
                u.dropped_loss, u.dropped_delay_queue
            );
        }
    }
    println!(
        "  log:           {} lines dropped (sink not keeping up)",
        s.log_lines_dropped
    );
    for t in &s.tls {
        let until = std::time::UNIX_EPOCH + Duration::from_secs(t.not_after_unix.max(0) as u64);
        let flag = if t.expired {
            " EXPIRED OR NOT YET VALID"
        } else {
            ""
        };
        println!(
            "  tls {}: {} [{}] serial {}, expires {}{flag}",
            t.listener,
            t.subject,
            t.sans.join(", "),
            t.serial,
            humantime::format_rfc3339_seconds(until)
        );
        let counts: Vec<String> = t
            .handshakes
            .iter()
            .map(|(o, n)| format!("{n} {o}"))
            .collect();
        println!("      handshakes: {}", counts.join(", "));
    }
    for f in &s.faults {
        let active: Vec<String> = f
            .active
            .iter()
            .map(|a| format!("{}={}", a.kind, a.value))
            .collect();
        println!("  FAULTS:        {} {}", f.listener, active.join(" "));
    }
    match &s.last_reload {
        None => println!("  last reload:   never"),
        Some(r) => {
            let when = std::time::UNIX_EPOCH + Duration::from_secs(r.at_unix);
            let what = match (&r.applied, &r.error) {
                (Some(a), _) => format!("applied: {a}"),
                (None, Some(e)) => format!("FAILED: {}", e.lines().collect::<Vec<_>>().join(" | ")),
                _ => String::new(),
            };
            println!(
                "  last reload:   {} {what}",
                humantime::format_rfc3339_seconds(when)
            );
        }
    }
}

/// The sources as a table, like HAProxy's `show table`.
fn print_sources(list: &[SourceView]) {
    println!(
        "{:<40} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "SOURCE", "OPEN", "RATE/10s", "ADMITTED", "RULE", "CAP", "RATE"
    );
    for v in list {
        let mut line = format!(
            "{:<40} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}",
            v.source, v.open, v.rate_10s, v.admitted, v.refused_rule, v.refused_cap, v.refused_rate
        );
        if v.would_refuse_cap + v.would_refuse_rate > 0 {
            line.push_str(&format!(
                "  (dry run: would refuse {} cap, {} rate)",
                v.would_refuse_cap, v.would_refuse_rate
            ));
        }
        println!("{line}");
    }
    if list.is_empty() {
        println!("(no sources seen)");
    }
}

/// True while `pid` runs (a zombie waiting for its parent counts as gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn control(socket: Option<PathBuf>, command: Command) -> i32 {
    let path = socket_path(socket);
    match command {
        Command::Status { json } => match ask(&path, Request::Status) {
            Ok(Response::Status { status }) => print_either(&*status, json, print_status),
            Ok(r) => refused(&r),
            Err(code) => code,
        },
        Command::Sources { top, json } => match ask(&path, Request::Sources { top }) {
            Ok(Response::Sources { sources }) => {
                print_either(&sources, json, |list| print_sources(list))
            }
            Ok(r) => refused(&r),
            Err(code) => code,
        },
        Command::Reload => match ask(&path, Request::Reload) {
            Ok(Response::Reloaded { summary }) => {
                println!("reloaded: {summary}");
                0
            }
            Ok(r) => refused(&r),
            Err(code) => code,
        },
        Command::Stop { wait, timeout } => stop(&path, wait, timeout),
        Command::Ready { state } => {
            let on = matches!(state, OnOff::On);
            match ask(&path, Request::Ready { on }) {
                Ok(Response::Readiness { ready, reason }) => {
                    match (ready, reason) {
                        (true, _) => println!("ready: yes"),
                        (false, Some(why)) => println!("ready: no: {why}"),
                        (false, None) => println!("ready: no"),
                    }
                    0
                }
                Ok(r) => refused(&r),
                Err(code) => code,
            }
        }
        _ => EX_USAGE,
    }
}

/// `stop [--wait]`: starts the drain, then (with `--wait`) waits for the
/// daemon's process to end.
fn stop(path: &Path, wait: bool, timeout: u64) -> i32 {
    let pid = match ask(path, Request::Status) {
        Ok(Response::Status { status }) => status.pid,
        Ok(r) => return refused(&r),
        Err(code) => return code,
    };
    match ask(path, Request::Stop) {
        Ok(Response::Draining) => {}
        Ok(r) => return refused(&r),
        Err(code) => return code,
    }
    if !wait {
        println!("echo-lab (pid {pid}) is draining");
        return 0;
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while process_alive(pid) {
        if Instant::now() >= deadline {
            eprintln!("echo-labctl: echo-lab (pid {pid}) still running after {timeout}s");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("echo-lab (pid {pid}) has exited");
    0
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
        Command::Connect {
            addr,
            timeout,
            udp,
            tls,
        } => {
            let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::from_secs(5));
            if udp {
                let addr = addr.unwrap_or_else(default_addr);
                std::process::exit(echo_labctl::client_udp::run(&addr, timeout));
            }
            let addr = addr.unwrap_or_else(default_addr);
            match tls.target(&addr) {
                Ok(tls) => {
                    echo_labctl::client::run(&echo_labctl::client::Options { addr, timeout, tls })
                }
                Err(e) => {
                    eprintln!("echo-labctl: {e}");
                    EX_USAGE
                }
            }
        }
        Command::Who {
            addr,
            count,
            json,
            udp,
            timeout,
        } => {
            let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::from_secs(5));
            echo_labctl::who::run(&addr, udp, count, json, timeout)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "echo-labctl",
                &mut std::io::stdout(),
            );
            0
        }
        c @ (Command::Status { .. }
        | Command::Sources { .. }
        | Command::Reload
        | Command::Stop { .. }
        | Command::Ready { .. }) => control(cli.socket, c),
        Command::Bench(args) => match echo_labctl::bench::run(&args, &default_addr()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("echo-labctl: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
