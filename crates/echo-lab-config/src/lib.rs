//! The configuration: what an operator can set, its defaults, and the
//! parsing and validation of `/etc/echo-lab.toml`.
//!
//! This module owns the one rule every other part relies on: a [`Config`]
//! value is always whole and valid. `toml` parses the file into a spanned
//! table (syntax errors); then one walk over that table reads every key by
//! its declaration. Every rejection is a [`Diagnostic`] naming file, line,
//! column and key, so an operator can go straight to the mistake, and all
//! of a file's problems are reported at once, in file order. A key the
//! daemon does not know is refused with the nearest known key suggested: a
//! typo must never silently fall back to a default.
//!
//! ## A key is declared once
//!
//! Each key is one line of a `section!` declaration below:
//!
//! ```text
//! /// What it does (the field's documentation).
//! name: Type = default, kind, reload;
//! ```
//!
//! From that line come the typed field other modules read
//! (`config.idle_timeout`), its default, the known-key list (unknown-key
//! refusal and suggestions), reading and range-checking (the `kind`, e.g.
//! `Int(1, 1024)`, whose message quotes the range), `--print-config`
//! rendering, and the reload report with its live/restart classification
//! (`changes`). To add a key:
//!
//! 1. add its line to the section it belongs to, with an existing kind from
//!    `kinds` or a new one there (a type implementing `section::Kind`);
//! 2. document it in man/echo-lab.toml.5 and config/echo-lab.toml (the
//!    tests below fail until every key is documented with its reload mark);
//! 3. make the daemon act on it (a `Live` key must be applied by
//!    `Server::reload`).
//!
//! A new table is a new `section!` struct and a key of kind `Table` in its
//! parent (as `[log]` is); an array of tables (`[[listen]]`) is a key of
//! type `Vec<S>` and kind `Tables`, its elements' keys checked and located
//! as `listen[0].port`. The machinery is in `section` (the macro, the
//! walk, rendering, the change report), the kinds of value in `kinds`, and
//! locations in `diagnostic`.
//!
//! Nothing here touches sockets or threads: the daemon decides what to do
//! with a valid config (start, or apply it on reload); a bad file therefore
//! never changes a running server.

#[macro_use]
mod section;
mod diagnostic;
pub mod faults;
mod kinds;
pub mod rate;
pub mod rule;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::DeTable;

use diagnostic::Source;
use kinds::{
    AbsPath, Address, ByteRate, Cidrs, Flag, Host, Int, ListenAddr, Micros, NonEmpty, Optional,
    Protocols, Rate, Rules, Seconds, Share, SocketPath, Span, Table, Tables, Word,
};

pub use crate::faults::{Bandwidth, Faults, Loss};
pub use crate::rate::ConnRate;
pub use crate::rule::Rule;
pub use section::{Apply, Change};
use section::{Reader, Rendered, Section};

pub use diagnostic::{ConfigError, Diagnostic};
pub use kinds::format_duration;

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/echo-lab.toml";

/// The default listening port: unprivileged, so the embedded defaults need
/// no root. Packaging uses port 7 (RFC 862) through socket activation.
pub const DEFAULT_PORT: u16 = 7007;

/// The largest `pool_size`.
const MAX_POOL: i64 = 1024;

section! {
    /// The effective configuration of the daemon, defaults filled in.
    pub struct Config {
        /// Host name or IPv4/IPv6 literal to listen on.
        host: String = "127.0.0.1".to_string(), Host, Live;
        /// TCP port; 0 asks the kernel for an ephemeral one (tests use it).
        port: u16 = DEFAULT_PORT, Int(0, 65535), Live;
        /// listen(2) backlog: the kernel's queue of connections not yet accepted.
        backlog: u32 = 1024, Int(1, 65535), Live;
        /// Number of worker threads doing connection I/O.
        pool_size: usize = default_pool_size(), Int(1, MAX_POOL), Live;
        /// Close a connection after this long without traffic; zero = never.
        idle_timeout: Duration = Duration::from_secs(300),
            Seconds { max: 7 * 24 * 3600, note: "0 = never" }, Live;
        /// Connections beyond this get a one-line busy notice and are closed.
        max_connections: usize = 10_000, Int(1, 1_000_000), Live;
        /// How long a SIGTERM drain lets clients finish before closing them.
        drain_timeout: Duration = Duration::from_secs(10),
            Seconds { max: 3600, note: "" }, Live;
        /// Cap on echo bytes waiting for a client that does not read; the
        /// server stops reading from that client until it drains
        /// (backpressure).
        max_pending_bytes: usize = 64 * 1024, Int(1024, 64 * 1024 * 1024), Live;
        /// After traffic, a worker polls without sleeping for this long (lower
        /// latency for a core's worth of CPU while traffic flows); zero = off.
        busy_poll: Duration = Duration::ZERO, Micros { max: 10_000 }, Live;
        /// After a wakeup that found several connections ready, a worker
        /// polls without sleeping for a moment (`worker::DENSE_SPIN`): dense
        /// traffic then pays fewer sleeps and wakeups; sparse traffic none.
        /// Spins that keep finding nothing turn it off (`SpinGovernor`).
        spin_when_busy: bool = true, Flag, Live;
        /// Pin worker k to the k-th allowed CPU and deal each connection to
        /// the worker on the CPU its packets arrive on (see `affinity`).
        /// Off by default: it pays only where clients keep their
        /// connections on one CPU (docs/PERFORMANCE.md, "Pinning").
        cpu_affinity: bool = false, Flag, AtRestart;
        /// Also serve UDP echo on `host:port` (same port number as TCP).
        udp: bool = false, Flag, Live;
        /// Datagrams per second echoed to one source address, and its
        /// burst; 0 = no packet limit.
        udp_rate_packets: u32 = 100, Int(0, 10_000_000), Live;
        /// Bytes per second echoed to one source address, and its burst (a
        /// larger datagram is never echoed); 0 = no byte limit.
        udp_rate_bytes: u32 = 64 * 1024, Int(0, 1 << 30), Live;
        /// Source addresses the UDP rate limit tracks at once (82 bytes
        /// each); when full, the one first seen longest ago gives way.
        udp_rate_sources: usize = 16_384, Int(1, 1 << 20), Live;
        /// Who may connect: `allow`/`deny` rules, first match wins; empty
        /// (or absent) = everyone. A `[[listen]]` table's own replaces it.
        access: Vec<Rule> = Vec::new(), Rules, Live;
        /// Open connections per source; past it the busy notice; 0 = no cap.
        max_connections_per_source: usize = 0, Int(0, 1_000_000), Live;
        /// New connections per source (`"N/s"`, `"N/m"`, `burst B`); 0 = off.
        connection_rate_per_source: ConnRate = ConnRate::OFF, Rate, Live;
        /// Bits of an IPv4 address that make one source.
        source_prefix_v4: u8 = 32, Int(0, 32), Live;
        /// Bits of an IPv6 address that make one source.
        source_prefix_v6: u8 = 64, Int(0, 128), Live;
        /// Sources tracked at once (at least `max_connections`); when full
        /// an idle one gives way.
        source_table_size: usize = 65_536, Int(1, 1 << 24), Live;
        /// Count and log what the per-source limits would refuse, refuse
        /// nothing.
        limits_dry_run: bool = false, Flag, Live;
        /// Unix control socket path; `None` = the platform default.
        control_socket: Option<PathBuf> = None, Optional(SocketPath), AtRestart;
        /// Group (besides root and the daemon's own user) allowed on the
        /// control socket.
        control_group: Option<String> = None,
            Optional(NonEmpty("must be a group name or number")), AtRestart;
        /// Extra addresses to serve (`[[listen]]` tables).
        listen: Vec<Listen> = Vec::new(), Tables, Live;
        /// Address and port of the Prometheus metrics endpoint
        /// (`GET /metrics`); `None` = no metrics listener.
        metrics_listen: Option<SocketAddr> = None, Optional(ListenAddr), Live;
        /// On SIGTERM, readiness (`/readyz`) turns 503 at once and the
        /// listeners go on accepting and serving for this long before the
        /// drain starts (a load balancer's time to notice); zero = drain at once.
        shutdown_delay: Duration = Duration::ZERO,
            Seconds { max: 3600, note: "0 = drain at once" }, Live;
        /// The name this instance answers with (status, metrics, JSON
        /// logs, `who` replies); `None` = the host name.
        instance: Option<String> = None,
            Optional(NonEmpty("must be a name for this instance")), Live;
        /// Fault: each chunk of echo leaves this long after it was read
        /// (TCP and UDP on host/port); 0 = off.
        delay: Duration = Duration::ZERO, Span { max_secs: 3600 }, Live;
        /// Fault: spread of `delay`, each chunk's drawn from delay ± jitter
        /// (at most `delay`); 0 = off.
        jitter: Duration = Duration::ZERO, Span { max_secs: 3600 }, Live;
        /// Fault (TCP): the echo to one connection paced to this rate
        /// (`"1MB/s"`; B, KB, MB, GB = 1000^n, KiB, MiB, GiB = 1024^n); 0 = off.
        bandwidth: Bandwidth = Bandwidth::default(), ByteRate, Live;
        /// Fault (TCP): reset the connection (RST) once this many bytes
        /// were echoed; unset = never.
        reset_after_bytes: Option<u64> = None, Optional(Int(0, i64::MAX)), Live;
        /// Fault (TCP): neither read nor write once this many bytes were
        /// echoed, until the idle timeout; unset = never.
        stall_after_bytes: Option<u64> = None, Optional(Int(0, i64::MAX)), Live;
        /// Fault (TCP): close each session, with its notice, after this
        /// long; 0 = off.
        close_after: Duration = Duration::ZERO, Span { max_secs: 7 * 24 * 3600 }, Live;
        /// Fault (TCP): sent on connect, before anything is read; unset = none.
        banner: Option<String> = None, Optional(NonEmpty("must not be empty (leave it out for no banner)")), Live;
        /// Fault (UDP on host/port, with `udp = true`): share of datagrams
        /// not echoed, 0.0 to 1.0; 0 = off.
        loss: Loss = Loss::default(), Share, Live;
        /// Seed of the faults' random choices (jitter, loss), so that they
        /// repeat exactly; unset = a new seed each start.
        fault_seed: Option<u64> = None, Optional(Int(0, i64::MAX)), Live;
        /// Logging settings (`[log]`).
        log: LogConfig = LogConfig::default(), Table, Live;

    }
}

section! {
    /// The `[log]` table.
    pub struct LogConfig {
        /// Most verbose level written.
        level: LogLevel = LogLevel::Info, Word, Live;
        /// Where log lines go; unset = stderr, or syslog with `--daemon`.
        target: Option<LogTarget> = None, Optional(Word), Live;
        /// The file written when `target = "file"`; reopened on SIGUSR1.
        path: PathBuf = PathBuf::from(DEFAULT_LOG_PATH), AbsPath, Live;
        /// How a line is written: plain text or one JSON object.
        format: LogFormat = LogFormat::Text, Word, Live;
        /// One line per finished TCP session (at `info`).
        sessions: bool = true, Flag, Live;
    }
}

section! {
    /// One `[[listen]]` table: an extra address to serve.
    pub struct Listen {
        /// `HOST:PORT`, IPv6 in brackets (`[::1]:7007`); required.
        address: Endpoint = Endpoint::default(), Address, Live;
        /// `tcp` or `udp`.
        protocol: Protocol = Protocol::Tcp, Word, Live;
        /// Expect a PROXY protocol header (v1 or v2) first on every
        /// connection, and take the client's address from it (TCP only).
        proxy_protocol: bool = false, Flag, Live;
        /// Who may send a PROXY header: addresses and CIDRs of the proxies.
        proxy_trusted: Vec<ipnet::IpNet> = Vec::new(), Cidrs, Live;
        /// Under socket activation: the `FileDescriptorName=` of the
        /// socket unit's socket that serves this table.
        name: Option<String> = None,
            Optional(NonEmpty("must be a FileDescriptorName= of the socket unit")), Live;
        /// This listener's access rules, replacing the top-level `access`.
        access: Option<Vec<Rule>> = None, Optional(Rules), Live;
        /// `echo`, or `who`: each TCP client gets one JSON line saying which
        /// instance answered, then the connection closes; each UDP datagram
        /// gets it instead of its echo, if it fits in the datagram.
        mode: ListenMode = ListenMode::Echo, Word, Live;
        /// TLS: the certificate chain (PEM, leaf first); with `tls_key`,
        /// the listener speaks TLS 1.2 and 1.3 (TCP only). Re-read on
        /// every reload.
        tls_cert: Option<PathBuf> = None, Optional(AbsPath), Live;
        /// TLS: the certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
        tls_key: Option<PathBuf> = None, Optional(AbsPath), Live;
        /// Mutual TLS: a client must present a certificate chaining to one
        /// of these CAs (PEM), or its handshake fails.
        tls_client_ca: Option<PathBuf> = None, Optional(AbsPath), Live;
        /// ALPN protocols offered, in preference order; empty = no ALPN.
        tls_alpn: Vec<String> = Vec::new(), Protocols, Live;

        /// Fault: each chunk of echo leaves this long after it was read
        /// ; 0 = off.
        delay: Duration = Duration::ZERO, Span { max_secs: 3600 }, Live;
        /// Fault: spread of `delay`, each chunk's drawn from delay ± jitter
        /// (at most `delay`); 0 = off.
        jitter: Duration = Duration::ZERO, Span { max_secs: 3600 }, Live;
        /// Fault (TCP): the echo to one connection paced to this rate
        /// (`"1MB/s"`; B, KB, MB, GB = 1000^n, KiB, MiB, GiB = 1024^n); 0 = off.
        bandwidth: Bandwidth = Bandwidth::default(), ByteRate, Live;
        /// Fault (TCP): reset the connection (RST) once this many bytes
        /// were echoed; unset = never.
        reset_after_bytes: Option<u64> = None, Optional(Int(0, i64::MAX)), Live;
        /// Fault (TCP): neither read nor write once this many bytes were
        /// echoed, until the idle timeout; unset = never.
        stall_after_bytes: Option<u64> = None, Optional(Int(0, i64::MAX)), Live;
        /// Fault (TCP): close each session, with its notice, after this
        /// long; 0 = off.
        close_after: Duration = Duration::ZERO, Span { max_secs: 7 * 24 * 3600 }, Live;
        /// Fault (TCP): sent on connect, before anything is read; unset = none.
        banner: Option<String> = None, Optional(NonEmpty("must not be empty (leave it out for no banner)")), Live;
        /// Fault (UDP): share of datagrams
        /// not echoed, 0.0 to 1.0; 0 = off.
        loss: Loss = Loss::default(), Share, Live;
        /// Seed of the faults' random choices (jitter, loss), so that they
        /// repeat exactly; unset = a new seed each start.
        fault_seed: Option<u64> = None, Optional(Int(0, i64::MAX)), Live;
    }
}

impl Listen {
    /// What is wrong with the table's PROXY protocol keys, if anything.
    fn proxy_problem(&self) -> Option<&'static str> {
        let proxy_keys = self.proxy_protocol || !self.proxy_trusted.is_empty();
        if self.protocol == Protocol::Udp && proxy_keys {
            return Some("proxy_protocol and proxy_trusted are for TCP listeners only");
        }
        if self.proxy_protocol && self.proxy_trusted.is_empty() {
            return Some(
                "proxy_protocol = true needs proxy_trusted: the addresses or CIDRs of the proxies that may send a header",
            );
        }
        if !self.proxy_protocol && !self.proxy_trusted.is_empty() {
            return Some("proxy_trusted is set but proxy_protocol is not true");
        }
        None
    }

    /// What is wrong with the table's TLS keys, if anything, and the key
    /// it belongs to.
    fn tls_problem(&self) -> Option<(&'static str, &'static str)> {
        let any = self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_client_ca.is_some()
            || !self.tls_alpn.is_empty();
        if self.protocol == Protocol::Udp && any {
            let key = if self.tls_cert.is_some() {
                "tls_cert"
            } else if self.tls_key.is_some() {
                "tls_key"
            } else if self.tls_client_ca.is_some() {
                "tls_client_ca"
            } else {
                "tls_alpn"
            };
            return Some((key, "TLS is for TCP listeners only"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Some(("tls_cert", "tls_cert needs tls_key (its private key)")),
            (None, Some(_)) => Some(("tls_key", "tls_key needs tls_cert (its certificate)")),
            (None, None) if self.tls_client_ca.is_some() => Some((
                "tls_client_ca",
                "tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS first",
            )),
            (None, None) if !self.tls_alpn.is_empty() => {
                Some(("tls_alpn", "tls_alpn needs tls_cert and tls_key"))
            }
            _ => None,
        }
    }

    /// True if the listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

/// A located diagnostic for `key` (a dotted path such as
/// `listen[1].tls_cert`) of the config file at `path`: the daemon's own
/// checks of what a key names (a certificate that will not load) are
/// reported where the key is, as the file's own errors are. If the key is
/// not found (the file changed meanwhile), the diagnostic points at the
/// file's start.
pub fn locate(path: &Path, key: &str, message: String) -> Diagnostic {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let src = Source {
        text: &text,
        file: &file,
    };
    let offset = DeTable::parse(&text)
        .ok()
        .and_then(|t| find_key(t.get_ref(), key))
        .unwrap_or(0);
    src.diag(offset, Some(key.to_string()), message)
}

/// The byte offset of the value of dotted `key` (`a.b`, `listen[1].c`).
fn find_key(table: &DeTable<'_>, key: &str) -> Option<usize> {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let (name, index) = match head.split_once('[') {
        Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
        None => (head, None),
    };
    let (_, mut value) = table.iter().find(|(k, _)| k.get_ref() == name)?;
    if let Some(i) = index {
        match value.get_ref() {
            toml::de::DeValue::Array(items) => value = items.get(i)?,
            _ => return None,
        }
    }
    match (rest, value.get_ref()) {
        (None, _) => Some(value.span().start),
        (Some(rest), toml::de::DeValue::Table(t)) => find_key(t, rest),
        _ => None,
    }
}

/// `[[listen]] mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenMode {
    /// Echo what the client sends (RFC 862).
    #[default]
    Echo,
    /// Answer one JSON line naming the instance, then close.
    Who,
}

/// `[[listen]] protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A host (name or literal, IPv6 without brackets) and a port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `HOST:PORT` (`[V6]:PORT` for IPv6 literals); the error says
    /// what is wrong.
    pub fn parse(text: &str) -> Result<Endpoint, &'static str> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or("an IPv6 address needs brackets and a port")?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "not an IPv6 address in the brackets")?;
            (h, p)
        } else {
            let (h, p) = text.rsplit_once(':').ok_or("no port")?;
            if h.contains(':') {
                return Err("an IPv6 address must be in brackets");
            }
            (h, p)
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err("no host");
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| "the port must be 0 to 65535")?;
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// The same place, whatever the spelling (`::1` and `0:0::1` agree;
    /// names compare case-insensitively).
    fn same_as(&self, other: &Endpoint) -> bool {
        let norm = |h: &str| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => h.to_ascii_lowercase(),
        };
        self.port == other.port && self.port != 0 && norm(&self.host) == norm(&other.host)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where `[log] target = "file"` writes unless `[log] path` says.
pub const DEFAULT_LOG_PATH: &str = "/var/log/echo-lab/echo-lab.log";

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// A line of text (with a timestamp and level, or a journal priority).
    Text,
    /// One JSON object per line, with stable field names.
    Json,
}

/// `[log] level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `[log] target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Stderr,
    Syslog,
    /// `[log] path`, written by the daemon, reopened on SIGUSR1.
    File,
}

/// One worker per CPU the process may run on (within `pool_size`'s range,
/// so that `--print-config` always prints a valid file).
fn default_pool_size() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cpus.min(MAX_POOL as usize)
}

impl Config {
    /// Renders the effective config as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(&Rendered::Table(self.render()))
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// `host:port` as written in the config (for messages and clients).
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The TCP and UDP endpoints served by `host`/`port`/`udp` and every
    /// `[[listen]]` table, in that order.
    pub fn endpoints(&self) -> Vec<(Endpoint, Protocol)> {
        let main = Endpoint {
            host: self.host.clone(),
            port: self.port,
        };
        let mut out = vec![(main.clone(), Protocol::Tcp)];
        if self.udp {
            out.push((main, Protocol::Udp));
        }
        out.extend(self.listen.iter().map(|l| (l.address.clone(), l.protocol)));
        out
    }

    /// What one `[[listen]]` table cannot say alone: its address is
    /// required, and no address may be served twice with one protocol
    /// (counting `host`/`port` and `udp`).
    fn check_listen(&self, table: &DeTable<'_>, r: &mut Reader<'_>) {
        let Some(items) = table.iter().find_map(|(k, v)| match v.get_ref() {
            toml::de::DeValue::Array(items) if k.get_ref() == "listen" => Some(items),
            _ => None,
        }) else {
            return;
        };
        let main = self.endpoints().len() - self.listen.len();
        for (i, (listen, item)) in self.listen.iter().zip(items).enumerate() {
            let at = format!("listen[{i}]");
            let Some(address) = (match item.get_ref() {
                toml::de::DeValue::Table(t) => t
                    .iter()
                    .find(|(k, _)| k.get_ref() == "address")
                    .map(|(_, v)| v),
                _ => None,
            }) else {
                r.fail(item, &at, format!("{at} has no 'address' (HOST:PORT)"));
                continue;
            };
            if listen.address.host.is_empty() {
                continue; // refused already
            }
            if let Some(why) = listen.proxy_problem() {
                r.fail(item, &at, format!("{at}: {why}"));
            }
            if let Some((key, why)) = listen.tls_problem() {
                let value = match item.get_ref() {
                    toml::de::DeValue::Table(t) => t
                        .iter()
                        .find(|(k, _)| k.get_ref() == key)
                        .map_or(item, |(_, v)| v),
                    _ => item,
                };
                r.fail(value, &format!("{at}.{key}"), why.to_string());
            }
            if let toml::de::DeValue::Table(t) = item.get_ref() {
                check_fault_keys(t, listen.protocol, &at, &listen.faults(), r);
            }
            let endpoints = self.endpoints();
            let clash = endpoints[..main + i]
                .iter()
                .position(|(e, p)| *p == listen.protocol && e.same_as(&listen.address));
            if let Some(j) = clash {
                let other = if j < main {
                    if endpoints[j].1 == Protocol::Udp {
                        "host/port with udp = true".to_string()
                    } else {
                        "host/port".to_string()
                    }
                } else {
                    format!("listen[{}]", j - main)
                };
                let proto = match listen.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                r.fail(
                    address,
                    &format!("{at}.address"),
                    format!("{} ({proto}) is already served by {other}", listen.address),
                );
            }
        }
    }

    /// The top-level fault keys: `loss` needs the UDP side of host/port
    /// (`udp = true`), and `jitter` may not exceed `delay`.
    fn check_main_faults(&self, table: &DeTable<'_>, r: &mut Reader<'_>) {
        if !self.udp {
            if let Some(v) = value_of(table, "loss") {
                r.fail(
                    v,
                    "loss",
                    "loss is for UDP: set udp = true, or put it in a [[listen]] table with protocol = \"udp\"".into(),
                );
            }
        }
        check_jitter(table, "", &self.main_faults(), r);
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `file` names it in diagnostics.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let src = Source { text, file };
        let table = DeTable::parse(text).map_err(|e| src.syntax_error(&e))?;
        let mut reader = Reader::new(&src);
        let config = Config::read(table.get_ref(), "", &mut reader);
        config.check_listen(table.get_ref(), &mut reader);
        config.check_main_faults(table.get_ref(), &mut reader);
        let diags = reader.finish();
        if diags.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(diags))
        }
    }
}

/// The value of key `name` in `table`, if it is there.
fn value_of<'a, 'de>(
    table: &'a DeTable<'de>,
    name: &str,
) -> Option<&'a serde_spanned::Spanned<toml::de::DeValue<'de>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == name)
        .map(|(_, v)| v)
}

/// A `[[listen]]` table's fault keys: each must apply to its protocol,
/// and `jitter` may not exceed `delay`.
fn check_fault_keys(
    table: &DeTable<'_>,
    protocol: Protocol,
    at: &str,
    faults: &Faults,
    r: &mut Reader<'_>,
) {
    let (wrong, proto, other): (&[&str], _, _) = match protocol {
        Protocol::Tcp => (&faults::UDP_ONLY, "tcp", "UDP"),
        Protocol::Udp => (&faults::TCP_ONLY, "udp", "TCP"),
    };
    for name in wrong {
        if let Some(v) = value_of(table, name) {
            let key = format!("{at}.{name}");
            r.fail(
                v,
                &key,
                format!(
                    "{name} applies to {other} listeners only; this one is protocol = \"{proto}\""
                ),
            );
        }
    }
    check_jitter(table, at, faults, r);
}

/// `jitter` at most `delay`: a chunk cannot leave before it was read.
fn check_jitter(table: &DeTable<'_>, at: &str, faults: &Faults, r: &mut Reader<'_>) {
    if faults.jitter <= faults.delay {
        return;
    }
    if let Some(v) = value_of(table, "jitter") {
        r.fail(
            v,
            &section::join_key(at, "jitter"),
            format!(
                "jitter ({}) is more than delay ({}); each chunk leaves delay ± jitter after it was read, so jitter may be at most delay",
                format_duration(faults.jitter),
                format_duration(faults.delay)
            ),
        );
    }
}

/// Every key whose value differs from `old` to `new`, in declaration
/// order, with both values as the file would say them and when the new
/// one applies (the reload report).
pub fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    Config::changes(old, new, "", Apply::Live, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Vec<Diagnostic> {
        match Config::parse(text, "t.toml") {
            Err(ConfigError::Invalid(d)) => d,
            other => panic!("expected diagnostics, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("", "t.toml").unwrap(), Config::default());
    }

    #[test]
    fn all_keys_parse() {
        let c = Config::parse(
            "host = \"::1\"\nport = 0\nbacklog = 16\npool_size = 2\nidle_timeout = \"90s\"\n\
             max_connections = 5\ndrain_timeout = 3\nmax_pending_bytes = 4096\n\
             busy_poll = 10\ncpu_affinity = true\n\
             control_socket = \"/tmp/x.sock\"\ncontrol_group = \"adm\"\n[log]\nlevel = \"debug\"\ntarget = \"syslog\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.address(), "[::1]:0");
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.drain_timeout, Duration::from_secs(3));
        assert_eq!(c.busy_poll, Duration::from_micros(10));
        assert!(c.cpu_affinity);
        assert_eq!(c.log.level, LogLevel::Debug);
        assert_eq!(c.log.target, Some(LogTarget::Syslog));
    }

    #[test]
    fn busy_poll_is_microseconds() {
        let us = |text: &str| Config::parse(text, "t.toml").unwrap().busy_poll;
        assert_eq!(us("busy_poll = 50\n"), Duration::from_micros(50));
        assert_eq!(us("busy_poll = \"50\"\n"), Duration::from_micros(50));
        assert_eq!(us("busy_poll = \"50us\"\n"), Duration::from_micros(50));
        assert_eq!(us("busy_poll = \"2ms\"\n"), Duration::from_millis(2));
        assert_eq!(us("busy_poll = 0\n"), Duration::ZERO);
        assert_eq!(format_duration(Duration::from_micros(50)), "50us");
        assert_eq!(format_duration(Duration::from_millis(2)), "2ms");
        let d = err("\nbusy_poll = \"11ms\"\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_deref()),
            (2, 13, Some("busy_poll"))
        );
        assert!(d[0]
            .message
            .contains("allowed: 0 (off) to 10000 microseconds"));
        let d = err("busy_poll = \"1500ns\"\n");
        assert!(d[0].message.contains("whole number of microseconds"));
        let d = err("busy_poll = -1\n");
        assert!(d[0].message.contains("out of range"));
    }

    #[test]
    fn unknown_key_is_located_and_suggested() {
        let d = err("host = \"x\"\nprot = 5\n");
        assert_eq!((d[0].line, d[0].column), (2, 1));
        assert_eq!(d[0].key.as_deref(), Some("prot"));
        assert!(
            d[0].message.contains("did you mean 'port'"),
            "{}",
            d[0].message
        );
        let d = err("[log]\nlevle = \"info\"\n");
        assert_eq!(d[0].key.as_deref(), Some("log.levle"));
        assert!(d[0].message.contains("'log.level'"));
    }

    #[test]
    fn wrong_type_names_key() {
        let d = err("port = \"abc\"\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_deref()),
            (1, 8, Some("port"))
        );
        let d = err("\n[log]\nlevel = \"loud\"\n");
        assert_eq!((d[0].line, d[0].key.as_deref()), (3, Some("log.level")));
    }

    #[test]
    fn out_of_range_quotes_range() {
        let d = err("port = 70000\n");
        assert!(d[0].message.contains("allowed: 0 to 65535"));
        assert_eq!((d[0].line, d[0].column), (1, 8));
        let d = err("idle_timeout = \"soon\"\n");
        assert_eq!(d[0].key.as_deref(), Some("idle_timeout"));
        let d = err("pool_size = 0\nbacklog = -1\n");
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn access_rules_parse_in_order() {
        let c = Config::parse(
            "access = [\"allow 192.0.2.0/24\", \"deny 192.0.2.7\", \"deny all\"]\n",
            "t.toml",
        )
        .unwrap();
        let got: Vec<String> = c.access.iter().map(|r| r.to_string()).collect();
        assert_eq!(got, ["allow 192.0.2.0/24", "deny 192.0.2.7", "deny all"]);
        assert!(Config::default().access.is_empty());
    }

    #[test]
    fn a_bad_rule_is_located_at_its_own_place() {
        let d = err("\naccess = [\"allow 10.0.0.0/8\", \"deny all\",\n  \"permit 10.1.0.0/16\"]\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_deref()),
            (3, 3, Some("access[2]"))
        );
        assert!(
            d[0].message.contains("not allow or deny"),
            "{}",
            d[0].message
        );
        let d = err("access = [\"deny 10.0.0.1/8\", 5]\n");
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].column, d[0].key.as_deref()), (11, Some("access[0]")));
        assert!(
            d[0].message.contains("did you mean 10.0.0.0/8"),
            "{}",
            d[0].message
        );
        assert_eq!(d[1].key.as_deref(), Some("access[1]"));
        let d = err("access = \"deny all\"\n");
        assert!(
            d[0].message.contains("expected an array of rule strings"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn a_listen_table_has_its_own_rules() {
        let c = Config::parse(
            "access = [\"deny all\"]\n[[listen]]\naddress = \"127.0.0.1:7008\"\nprotocol = \"udp\"\naccess = [\"allow all\"]\n\
             [[listen]]\naddress = \"127.0.0.1:7009\"\nprotocol = \"udp\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.listen[0].access.as_ref().map(|a| a.len()), Some(1));
        assert_eq!(c.listen[1].access, None);
        let d = err("[[listen]]\naddress = \"127.0.0.1:7008\"\nprotocol = \"udp\"\naccess = [\"deny 300.0.0.1\"]\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_deref()),
            (4, 11, Some("listen[0].access[0]"))
        );
    }

    #[test]
    fn per_source_limits_parse_and_are_checked() {
        let c = Config::parse(
            "max_connections_per_source = 5\nconnection_rate_per_source = \"20/s burst 40\"\n\
             source_prefix_v4 = 24\nsource_prefix_v6 = 56\nsource_table_size = 1000\nlimits_dry_run = true\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.max_connections_per_source, 5);
        assert_eq!(c.connection_rate_per_source.to_string(), "20/s burst 40");
        assert_eq!((c.source_prefix_v4, c.source_prefix_v6), (24, 56));
        assert!(c.limits_dry_run);
        let rate = |t: &str| {
            Config::parse(t, "t.toml")
                .unwrap()
                .connection_rate_per_source
        };
        assert_eq!(rate("connection_rate_per_source = 0\n"), ConnRate::OFF);
        assert_eq!(rate("connection_rate_per_source = \"0\"\n"), ConnRate::OFF);
        assert_eq!(rate("connection_rate_per_source = \"30/m\"\n").per_secs, 60);
        let d = err("connection_rate_per_source = \"20 per second\"\n");
        assert_eq!(
            (d[0].column, d[0].key.as_deref()),
            (30, Some("connection_rate_per_source"))
        );
        let d = err("connection_rate_per_source = 20\n");
        assert!(d[0].message.contains("no unit"), "{}", d[0].message);
        let d = err("source_prefix_v4 = 33\nsource_prefix_v6 = 129\n");
        assert_eq!(d.len(), 2);
        assert!(d[0].message.contains("allowed: 0 to 32"));
    }

    #[test]
    fn tls_keys_parse_and_their_mistakes_are_located_at_the_key() {
        let c = Config::parse(
            "[[listen]]\naddress = \"127.0.0.1:7443\"\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"\n\
             tls_client_ca = \"/etc/ca.pem\"\ntls_alpn = [\"echo\"]\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.listen[0].tls());
        assert_eq!(c.listen[0].tls_alpn, ["echo"]);
        assert_eq!(Config::parse(&c.to_toml(), "p").unwrap(), c);
        for (text, key, needle) in [
            (
                "tls_cert = \"/c.pem\"",
                "listen[0].tls_cert",
                "needs tls_key",
            ),
            (
                "tls_key = \"/k.pem\"",
                "listen[0].tls_key",
                "needs tls_cert",
            ),
            (
                "tls_client_ca = \"/ca.pem\"",
                "listen[0].tls_client_ca",
                "mutual TLS is TLS first",
            ),
            ("tls_alpn = [\"x\"]", "listen[0].tls_alpn", "needs tls_cert"),
            (
                "protocol = \"udp\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"",
                "listen[0].tls_cert",
                "TCP listeners only",
            ),
            (
                "tls_cert = \"c.pem\"",
                "listen[0].tls_cert",
                "absolute path",
            ),
            (
                "tls_alpn = [\"a\", \"a\"]",
                "listen[0].tls_alpn[1]",
                "listed twice",
            ),
        ] {
            let d = err(&format!(
                "[[listen]]\naddress = \"127.0.0.1:7443\"\n{text}\n"
            ));
            let hit = d.iter().find(|d| d.key.as_deref() == Some(key));
            let hit = hit.unwrap_or_else(|| panic!("{text}: no diagnostic at {key}: {d:?}"));
            assert!(hit.line >= 3, "{text}: {hit}");
            assert!(hit.message.contains(needle), "{text}: {hit}");
        }
    }

    #[test]
    fn fault_keys_parse_per_listener() {
        let c = Config::parse(
            "delay = 20\njitter = \"5ms\"\nbandwidth = \"1MB/s\"\nreset_after_bytes = 0\n\
             close_after = \"1.5s\"\nbanner = \"hi\\r\\n\"\nfault_seed = 7\n\
             [[listen]]\naddress = \"127.0.0.1:7008\"\nprotocol = \"udp\"\nloss = 0.1\ndelay = \"250us\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.delay, Duration::from_millis(20));
        assert_eq!(c.jitter, Duration::from_millis(5));
        assert_eq!(c.bandwidth, Bandwidth(1_000_000));
        assert_eq!(c.reset_after_bytes, Some(0));
        assert_eq!(c.close_after, Duration::from_millis(1500));
        assert_eq!(c.banner.as_deref(), Some("hi\r\n"));
        assert_eq!(c.fault_seed, Some(7));
        assert_eq!(c.listen[0].loss.per_million(), 100_000);
        assert_eq!(c.listen[0].delay, Duration::from_micros(250));
        assert_eq!(Config::parse(&c.to_toml(), "p").unwrap(), c);
    }

    #[test]
    fn fault_keys_are_refused_where_they_do_not_apply() {
        let d = err("[[listen]]\naddress = \"127.0.0.1:7008\"\nprotocol = \"udp\"\nbandwidth = \"1MB/s\"\nbanner = \"x\"\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_deref()),
            (4, 13, Some("listen[0].bandwidth"))
        );
        assert!(
            d[0].message.contains("TCP listeners only"),
            "{}",
            d[0].message
        );
        assert_eq!(d[1].key.as_deref(), Some("listen[0].banner"));
        let d = err("[[listen]]\naddress = \"127.0.0.1:7008\"\nloss = 0.5\n");
        assert_eq!(
            (d[0].line, d[0].key.as_deref()),
            (3, Some("listen[0].loss"))
        );
        assert!(
            d[0].message.contains("UDP listeners only"),
            "{}",
            d[0].message
        );
        let d = err("\nloss = 0.5\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_deref()),
            (2, 8, Some("loss"))
        );
        assert!(d[0].message.contains("udp = true"), "{}", d[0].message);
        assert!(Config::parse("udp = true\nloss = 0.5\n", "t").is_ok());
    }

    #[test]
    fn bad_fault_values_are_located() {
        for (text, key, needle) in [
            ("bandwidth = \"1 Mbps\"", "bandwidth", "not a rate"),
            ("bandwidth = \"1mb/s\"", "bandwidth", "not a unit"),
            ("delay = \"soon\"", "delay", "not a duration"),
            ("delay = \"2h\"", "delay", "out of range"),
            (
                "delay = \"1500ns\"",
                "delay",
                "whole number of microseconds",
            ),
            ("delay = 10\njitter = 11", "jitter", "more than delay"),
            (
                "udp = true\nloss = 1.5",
                "loss",
                "allowed: 0.0 (off) to 1.0",
            ),
            (
                "reset_after_bytes = -1",
                "reset_after_bytes",
                "out of range",
            ),
            ("banner = \"\"", "banner", "must not be empty"),
            ("fault_seed = \"x\"", "fault_seed", "invalid type"),
        ] {
            let d = err(text);
            assert_eq!(d[0].key.as_deref(), Some(key), "{text}");
            assert!(d[0].message.contains(needle), "{text}: {}", d[0].message);
        }
    }

    #[test]
    fn locate_finds_a_key_in_an_array_of_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = "port = 1\n[[listen]]\naddress = \"127.0.0.1:9\"\n[[listen]]\naddress = \"127.0.0.1:8\"\n  tls_cert = \"/x\"\n";
        std::fs::write(&path, text).unwrap();
        let d = locate(&path, "listen[1].tls_cert", "bad".into());
        assert_eq!((d.line, d.column), (6, 14), "{d}");
        let d = locate(&path, "listen[5].tls_cert", "bad".into());
        assert_eq!((d.line, d.column), (1, 1));
    }

    #[test]
    fn syntax_error_is_located() {
        let d = err("port = 7007\nhost = \n");
        assert_eq!(d[0].line, 2);
    }

    #[test]
    fn udp_and_listen_tables_parse() {
        let c = Config::parse(
            "udp = true\nudp_rate_packets = 0\n[[listen]]\naddress = \"[::1]:7008\"\nprotocol = \"udp\"\n\
             [[listen]]\naddress = \"localhost:7009\"\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.udp);
        assert_eq!(c.udp_rate_packets, 0);
        let got: Vec<(String, Protocol)> = c
            .endpoints()
            .iter()
            .map(|(e, p)| (e.to_string(), *p))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:7007".to_string(), Protocol::Tcp),
                ("127.0.0.1:7007".to_string(), Protocol::Udp),
                ("[::1]:7008".to_string(), Protocol::Udp),
                ("localhost:7009".to_string(), Protocol::Tcp),
            ]
        );
        assert_eq!(Config::parse(&c.to_toml(), "p").unwrap(), c);
    }

    #[test]
    fn bad_listen_addresses_are_located() {
        for (text, needle) in [
            ("::1:7007", "must be in brackets"),
            ("[::1]", "needs brackets and a port"),
            ("[nope]:7", "not an IPv6 address"),
            ("host:99999", "0 to 65535"),
            (":7007", "no host"),
            ("7007", "no port"),
        ] {
            let d = err(&format!("[[listen]]\naddress = \"{text}\"\n"));
            assert_eq!(
                (d[0].line, d[0].column, d[0].key.as_deref()),
                (2, 11, Some("listen[0].address")),
                "{text}"
            );
            assert!(d[0].message.contains(needle), "{text}: {}", d[0].message);
        }
        let d = err("[[listen]]\nprotocol = \"udp\"\n");
        assert_eq!((d[0].line, d[0].key.as_deref()), (1, Some("listen[0]")));
        assert!(d[0].message.contains("no 'address'"), "{}", d[0].message);
        let d = err("[[listen]]\naddress = \"127.0.0.1:7\"\nprotocol = \"sctp\"\n");
        assert!(
            d.iter()
                .any(|d| d.key.as_deref() == Some("listen[0].protocol") && d.line == 3),
            "{d:?}"
        );
    }

    #[test]
    fn listen_mode_is_echo_or_who() {
        let c = Config::parse(
            "[[listen]]\naddress = \"127.0.0.1:7008\"\nmode = \"who\"\n\
             [[listen]]\naddress = \"127.0.0.1:7009\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.listen[0].mode, ListenMode::Who);
        assert_eq!(c.listen[1].mode, ListenMode::Echo);
        let c = Config::parse(
            "[[listen]]\naddress = \"127.0.0.1:7\"\nprotocol = \"udp\"\nmode = \"who\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.listen[0].mode, ListenMode::Who);
        let d = err("[[listen]]\naddress = \"127.0.0.1:7\"\nmode = \"whom\"\n");
        assert_eq!(d[0].key.as_deref(), Some("listen[0].mode"), "{d:?}");
    }

    #[test]
    fn proxy_keys_are_checked_where_they_are() {
        let c = Config::parse(
            "[[listen]]\naddress = \"127.0.0.1:7008\"\nproxy_protocol = true\n\
             proxy_trusted = [\"10.0.0.0/8\", \"::1\", \"192.0.2.7\"]\n",
            "t.toml",
        )
        .unwrap();
        let l = &c.listen[0];
        assert!(l.proxy_protocol && l.protocol == Protocol::Tcp);
        let nets: Vec<String> = l.proxy_trusted.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
        let d = err("[[listen]]\naddress = \"127.0.0.1:7\"\nproxy_protocol = true\n");
        assert_eq!((d[0].line, d[0].key.as_deref()), (1, Some("listen[0]")));
        assert!(
            d[0].message.contains("needs proxy_trusted"),
            "{}",
            d[0].message
        );
        let d = err(
            "[[listen]]\naddress = \"127.0.0.1:7\"\nprotocol = \"udp\"\n\
                     proxy_protocol = true\nproxy_trusted = [\"::1\"]\n",
        );
        assert!(
            d[0].message.contains("TCP listeners only"),
            "{}",
            d[0].message
        );
        let d = err(
            "[[listen]]\naddress = \"127.0.0.1:7\"\nproxy_protocol = true\n\
                     proxy_trusted = [\"::1\", \"10.0.0.0/33\"]\n",
        );
        let bad = d
            .iter()
            .find(|d| d.key.as_deref() == Some("listen[0].proxy_trusted[1]"))
            .expect("the bad CIDR located");
        assert_eq!((bad.line, bad.column), (4, 25));
        assert!(
            bad.message.contains("not an address or CIDR"),
            "{}",
            bad.message
        );
        let d = err("[[listen]]\naddress = \"127.0.0.1:7\"\nproxy_trusted = [\"::1\"]\n");
        assert!(
            d[0].message.contains("proxy_protocol is not true"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn an_extra_tcp_listener_may_not_repeat_host_port() {
        let d = err("port = 7007\n[[listen]]\naddress = \"127.0.0.1:7007\"\n");
        assert!(
            d[0].message.contains("already served by host/port"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn duplicate_addresses_are_refused_where_they_repeat() {
        let d = err("port = 7\n[[listen]]\naddress = \"127.0.0.1:7\"\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_deref()),
            (3, 11, Some("listen[0].address"))
        );
        assert!(
            d[0].message
                .contains("127.0.0.1:7 (tcp) is already served by host/port"),
            "{}",
            d[0].message
        );
        let d = err("udp = true\n[[listen]]\naddress = \"127.0.0.1:7007\"\nprotocol = \"udp\"\n");
        assert!(
            d[0].message.contains("host/port with udp = true"),
            "{}",
            d[0].message
        );
        let d = err("[[listen]]\naddress = \"[::1]:8\"\nprotocol = \"udp\"\n\
             [[listen]]\naddress = \"[0:0::1]:8\"\nprotocol = \"udp\"\n");
        assert_eq!(
            (d[0].line, d[0].key.as_deref()),
            (5, Some("listen[1].address"))
        );
        assert!(
            d[0].message.contains("already served by listen[0]"),
            "{}",
            d[0].message
        );
        // The same address over the other protocol, and port 0, are fine.
        Config::parse(
            "[[listen]]\naddress = \"127.0.0.1:7007\"\nprotocol = \"udp\"\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
             [[listen]]\naddress = \"127.0.0.1:0\"\nprotocol = \"udp\"\n",
            "t.toml",
        )
        .unwrap();
    }

    #[test]
    fn print_config_round_trips() {
        let c = Config::default();
        assert_eq!(Config::parse(&c.to_toml(), "p").unwrap(), c);
    }
}

/// The reload report and the live/restart marks, from the declarations.
#[cfg(test)]
mod change_report {
    use super::*;

    /// A config in which every key differs from [`Config::default`]
    /// (a struct literal, so a new key cannot be forgotten here).
    fn every_key_changed() -> (Config, Config) {
        let old = Config {
            pool_size: 1,
            ..Config::default()
        };
        let new = Config {
            host: "::1".into(),
            port: 7,
            backlog: 16,
            pool_size: 4,
            idle_timeout: Duration::from_secs(90),
            max_connections: 5,
            drain_timeout: Duration::from_secs(3),
            max_pending_bytes: 4096,
            busy_poll: Duration::from_micros(50),
            spin_when_busy: false,
            cpu_affinity: true,
            udp: true,
            udp_rate_packets: 10,
            udp_rate_bytes: 1000,
            udp_rate_sources: 8,
            access: vec![
                Rule::parse("allow 192.0.2.0/24").unwrap(),
                Rule::parse("deny all").unwrap(),
            ],
            max_connections_per_source: 4,
            connection_rate_per_source: ConnRate::parse("20/s").unwrap(),
            source_prefix_v4: 24,
            source_prefix_v6: 48,
            source_table_size: 1000,
            limits_dry_run: true,
            control_socket: Some("/tmp/x.sock".into()),
            control_group: Some("adm".into()),
            listen: vec![Listen {
                address: Endpoint {
                    host: "::1".into(),
                    port: 9,
                },
                protocol: Protocol::Udp,
                proxy_protocol: false,
                proxy_trusted: Vec::new(),
                name: None,
                access: Some(vec![Rule::parse("deny ::1").unwrap()]),
                mode: ListenMode::Echo,
                loss: Loss::from_share(0.25).unwrap(),
                ..Listen::default()
            }],
            metrics_listen: Some("127.0.0.1:9707".parse().unwrap()),
            shutdown_delay: Duration::from_secs(2),
            instance: Some("edge-1".into()),
            log: LogConfig {
                level: LogLevel::Debug,
                target: Some(LogTarget::Syslog),
                path: "/tmp/e.log".into(),
                format: LogFormat::Json,
                sessions: false,
            },
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            bandwidth: Bandwidth(1_000_000),
            reset_after_bytes: Some(100),
            stall_after_bytes: Some(200),
            close_after: Duration::from_secs(30),
            banner: Some("hello".into()),
            loss: Loss::from_share(0.1).unwrap(),
            fault_seed: Some(7),
        };
        (old, new)
    }

    fn table(changes: &[Change]) -> Vec<(&str, &str, &str, Apply)> {
        changes
            .iter()
            .map(|c| (c.key.as_str(), c.from.as_str(), c.to.as_str(), c.apply))
            .collect()
    }

    #[test]
    fn every_key_is_reported_with_both_values_and_its_mark() {
        use Apply::{AtRestart, Live};
        let (old, new) = every_key_changed();
        assert_eq!(
            table(&changes(&old, &new)),
            vec![
                ("host", "127.0.0.1", "::1", Live),
                ("port", "7007", "7", Live),
                ("backlog", "1024", "16", Live),
                ("pool_size", "1", "4", Live),
                ("idle_timeout", "5m", "90s", Live),
                ("max_connections", "10000", "5", Live),
                ("drain_timeout", "10s", "3s", Live),
                ("max_pending_bytes", "65536", "4096", Live),
                ("busy_poll", "0s", "50us", Live),
                ("spin_when_busy", "true", "false", Live),
                ("cpu_affinity", "false", "true", AtRestart),
                ("udp", "false", "true", Live),
                ("udp_rate_packets", "100", "10", Live),
                ("udp_rate_bytes", "65536", "1000", Live),
                ("udp_rate_sources", "16384", "8", Live),
                (
                    "access",
                    "[]",
                    "[\"allow 192.0.2.0/24\", \"deny all\"]",
                    Live
                ),
                ("max_connections_per_source", "0", "4", Live),
                ("connection_rate_per_source", "0", "20/s", Live),
                ("source_prefix_v4", "32", "24", Live),
                ("source_prefix_v6", "64", "48", Live),
                ("source_table_size", "65536", "1000", Live),
                ("limits_dry_run", "false", "true", Live),
                ("control_socket", "unset", "/tmp/x.sock", AtRestart),
                ("control_group", "unset", "adm", AtRestart),
                (
                    "listen",
                    "[]",
                    "[{ address = \"[::1]:9\", protocol = \"udp\", proxy_protocol = false, proxy_trusted = [], access = [\"deny ::1\"], mode = \"echo\", tls_alpn = [], loss = 0.25 }]",
                    Live
                ),
                ("metrics_listen", "unset", "127.0.0.1:9707", Live),
                ("shutdown_delay", "0s", "2s", Live),
                ("instance", "unset", "edge-1", Live),
                ("delay", "unset", "20ms", Live),
                ("jitter", "unset", "5ms", Live),
                ("bandwidth", "unset", "1MB/s", Live),
                ("reset_after_bytes", "unset", "100", Live),
                ("stall_after_bytes", "unset", "200", Live),
                ("close_after", "unset", "30s", Live),
                ("banner", "unset", "hello", Live),
                ("loss", "unset", "0.1", Live),
                ("fault_seed", "unset", "7", Live),
                ("log.level", "info", "debug", Live),
                ("log.target", "unset", "syslog", Live),
                ("log.path", DEFAULT_LOG_PATH, "/tmp/e.log", Live),
                ("log.format", "text", "json", Live),
                ("log.sessions", "true", "false", Live),
            ]
        );
        // And back: the same keys, values swapped.
        let back = changes(&new, &old);
        assert_eq!(back.len(), 42);
        assert_eq!(back[10].to_string(), "cpu_affinity: true -> false");
        assert_eq!(back[38].to_string(), "log.target: syslog -> unset");
    }

    #[test]
    fn only_what_differs_is_reported() {
        let c = Config::default();
        assert!(changes(&c, &c.clone()).is_empty());
        let mut new = c.clone();
        new.idle_timeout = Duration::from_secs(2);
        new.log.level = LogLevel::Warn;
        let got: Vec<String> = changes(&c, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(got, ["idle_timeout: 5m -> 2s", "log.level: info -> warn"]);
    }

    #[test]
    fn a_parsed_file_reports_as_it_was_written() {
        let old = Config::parse("idle_timeout = 60\n", "a").unwrap();
        let new = Config::parse("idle_timeout = \"1s\"\nbusy_poll = \"2ms\"\n", "b").unwrap();
        let got: Vec<String> = changes(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(got, ["idle_timeout: 1m -> 1s", "busy_poll: 0s -> 2ms"]);
    }

    /// The man page's `reload: yes/no` for each key, keyed by dotted path.
    fn man_page_marks() -> Vec<(String, bool)> {
        let man = include_str!("../../../man/echo-lab.toml.5");
        let mut marks = Vec::new();
        let mut table = String::new();
        let mut key: Option<String> = None;
        for line in man.lines() {
            if let Some(rest) = line.strip_prefix(".Ss The [") {
                table = rest.split(']').next().unwrap_or("").to_string();
            } else if let Some(rest) = line.strip_prefix(".It Ic ") {
                let name = rest.split_whitespace().next().unwrap_or("");
                key = Some(section::join_key(&table, name));
            } else if let Some(rest) = line.strip_prefix(".Sy reload: ") {
                if let Some(k) = key.take() {
                    marks.push((k, rest.starts_with("yes")));
                }
            }
        }
        marks
    }

    #[test]
    fn the_man_page_documents_every_key_with_its_reload_mark() {
        let (old, new) = every_key_changed();
        let declared: Vec<(String, bool)> = changes(&old, &new)
            .into_iter()
            .map(|c| (c.key, c.apply == Apply::Live))
            .collect();
        assert_eq!(man_page_marks(), declared);
    }

    #[test]
    fn the_shipped_config_shows_every_key() {
        let shipped = include_str!("../../../config/echo-lab.toml");
        let (old, new) = every_key_changed();
        for c in changes(&old, &new) {
            let (table, name) = c.key.rsplit_once('.').unwrap_or(("", &c.key));
            let at = if table.is_empty() {
                0
            } else {
                shipped
                    .find(&format!("\n[{table}]\n"))
                    .unwrap_or_else(|| panic!("no [{table}] in config/echo-lab.toml"))
            };
            let written = shipped[at..].lines().any(|l| {
                let l = l.trim_start_matches('#');
                l.starts_with(&format!("{name} =")) || l.starts_with(&format!("{name}="))
            });
            assert!(written, "config/echo-lab.toml does not show {}", c.key);
        }
    }
}

/// The design takes nested tables and arrays of tables (`[[listen]]`)
/// without change: a section declared here, as a new key would be.
#[cfg(test)]
mod nested {
    use super::kinds::Tables;
    use super::*;

    section! {
        /// A file with an array of tables and a restart-only table.
        struct Demo {
            /// A plain key.
            name: String = "demo".to_string(), NonEmpty("must not be empty"), Live;
            /// `[[listen]]`.
            listen: Vec<Listen> = Vec::new(), Tables, Live;
            /// `[frozen]`: its keys apply at restart whatever they say.
            frozen: Frozen = Frozen::default(), Table, AtRestart;
        }
    }

    section! {
        /// One `[[listen]]` element.
        struct Listen {
            /// Address.
            host: String = "127.0.0.1".to_string(), Host, Live;
            /// Port.
            port: u16 = 7, Int(0, 65535), Live;
        }
    }

    section! {
        /// `[frozen]`.
        struct Frozen {
            /// Marked live, but inside a restart-only table.
            depth: u32 = 1, Int(1, 9), Live;
        }
    }

    fn read(text: &str) -> Result<Demo, Vec<Diagnostic>> {
        let src = Source {
            text,
            file: "n.toml",
        };
        let table =
            DeTable::parse(text).map_err(|e| src.syntax_error(&e).diagnostics().to_vec())?;
        let mut r = Reader::new(&src);
        let demo = Demo::read(table.get_ref(), "", &mut r);
        let diags = r.finish();
        if diags.is_empty() {
            Ok(demo)
        } else {
            Err(diags)
        }
    }

    fn located(d: &[Diagnostic]) -> Vec<(usize, usize, &str)> {
        d.iter()
            .map(|d| (d.line, d.column, d.key.as_deref().unwrap_or("")))
            .collect()
    }

    #[test]
    fn arrays_of_tables_are_read_in_order() {
        let demo = read("[[listen]]\nport = 1\n[[listen]]\nhost = \"::1\"\nport = 2\n").unwrap();
        let got: Vec<(&str, u16)> = demo
            .listen
            .iter()
            .map(|l| (l.host.as_str(), l.port))
            .collect();
        assert_eq!(got, [("127.0.0.1", 1), ("::1", 2)]);
    }

    #[test]
    fn nested_keys_are_checked_and_located_by_element() {
        let d = read("[[listen]]\nport = 1\n[[listen]]\nprot = 2\nport = 70000\n").unwrap_err();
        assert_eq!(
            located(&d),
            [(4, 1, "listen[1].prot"), (5, 8, "listen[1].port")]
        );
        assert!(
            d[0].message.contains("did you mean 'listen[1].port'?"),
            "{}",
            d[0].message
        );
        assert!(
            d[1].message.contains("allowed: 0 to 65535"),
            "{}",
            d[1].message
        );
        let d = read("listen = 5\n").unwrap_err();
        assert_eq!(located(&d), [(1, 10, "listen")]);
        assert!(
            d[0].message.contains("expected an array of tables"),
            "{}",
            d[0].message
        );
        let d = read("listen = [{ port = 1 }, 3]\n").unwrap_err();
        assert_eq!(located(&d), [(1, 25, "listen[1]")]);
        assert!(
            d[0].message.contains("expected a table"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn arrays_of_tables_render_and_read_back() {
        let text = "name = \"x\"\n[[listen]]\nport = 1\n[[listen]]\nhost = \"::1\"\nport = 2\n[frozen]\ndepth = 3\n";
        let demo = read(text).unwrap();
        let printed = toml::to_string(&Rendered::Table(demo.render())).unwrap();
        assert!(printed.contains("[[listen]]"), "{printed}");
        assert_eq!(read(&printed).unwrap(), demo, "{printed}");
    }

    #[test]
    fn a_restart_only_table_caps_its_keys_and_arrays_report_whole() {
        let old = read("").unwrap();
        let new = read("[frozen]\ndepth = 2\n[[listen]]\nport = 9\n").unwrap();
        let mut out = Vec::new();
        Demo::changes(&old, &new, "", Apply::Live, &mut out);
        let got: Vec<(String, Apply)> = out.iter().map(|c| (c.to_string(), c.apply)).collect();
        assert_eq!(
            got,
            [
                (
                    "listen: [] -> [{ host = \"127.0.0.1\", port = 9 }]".to_string(),
                    Apply::Live
                ),
                ("frozen.depth: 1 -> 2".to_string(), Apply::AtRestart),
            ]
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A real config to mutate: the shipped defaults, printed.
    fn corpus() -> String {
        format!(
            "{}control_socket = \"/run/x.sock\"\n",
            Config::default().to_toml()
        )
    }

    fn check_located(text: &str, result: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
        if let Err(e) = result {
            let diags = e.diagnostics();
            prop_assert!(!diags.is_empty(), "error without a location: {e}");
            let lines = text.split('\n').count();
            for d in diags {
                prop_assert!(
                    d.line >= 1 && d.line <= lines.max(1),
                    "line {} of {}",
                    d.line,
                    lines
                );
                prop_assert!(d.column >= 1);
                prop_assert!(!d.message.is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary text never panics the parser, and every rejection is
        /// located in the file.
        #[test]
        fn arbitrary_text(text in "\\PC{0,200}") {
            check_located(&text, Config::parse(&text, "f.toml"))?;
        }

        /// Random edits of a real config (a byte replaced, a span deleted,
        /// text inserted) never panic, and rejections are located.
        #[test]
        fn mutated_config(pos in any::<usize>(), len in 0usize..8, insert in "[a-z_=\"\\[\\]. 0-9\n-]{0,10}") {
            let base = corpus();
            let mut bytes = base.into_bytes();
            let at = pos % (bytes.len() + 1);
            let end = (at + len).min(bytes.len());
            bytes.splice(at..end, insert.bytes());
            let text = String::from_utf8_lossy(&bytes).into_owned();
            check_located(&text, Config::parse(&text, "f.toml"))?;
        }

        /// Any integer for any numeric key is accepted in range and refused
        /// outside it with a location.
        #[test]
        fn numeric_ranges(key in prop::sample::select(vec!["port", "backlog", "pool_size", "max_connections", "max_pending_bytes", "idle_timeout", "drain_timeout", "busy_poll"]),
                          value in any::<i64>()) {
            let text = format!("{key} = {value}\n");
            let r = Config::parse(&text, "f.toml");
            check_located(&text, r)?;
        }
    }
}
