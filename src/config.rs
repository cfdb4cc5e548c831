//! The configuration: what an operator can set, its defaults, and the
//! parsing and validation of `/etc/echo-lab.toml`.
//!
//! This module owns the one rule every other part relies on: a [`Config`]
//! value is always whole and valid. Parsing happens in three passes over the
//! file text, and every rejection is a [`Diagnostic`] naming file, line,
//! column and key, so an operator can go straight to the mistake:
//!
//! 1. `toml` parses the document into a spanned table (syntax errors);
//! 2. every key is checked against the known ones, and an unknown key is
//!    refused with the nearest known key as a suggestion (a typo must never
//!    silently fall back to a default);
//! 3. serde deserializes into [`RawFile`], whose fields keep their spans, and
//!    each value is range-checked and turned into the typed [`Config`].
//!
//! Nothing here touches sockets or threads: the daemon decides what to do
//! with a valid config (start, or apply it on reload); a bad file therefore
//! never changes a running server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/echo-lab.toml";

/// The default listening port: unprivileged, so the embedded defaults need
/// no root. Packaging uses port 7 (RFC 862) through socket activation.
pub const DEFAULT_PORT: u16 = 7007;

/// Every key the file may contain, as dotted paths; used to refuse unknown
/// keys and to suggest the nearest known one.
const KNOWN_TOP: &[&str] = &[
    "host",
    "port",
    "backlog",
    "pool_size",
    "idle_timeout",
    "max_connections",
    "drain_timeout",
    "max_pending_bytes",
    "busy_poll",
    "cpu_affinity",
    "control_socket",
    "control_group",
    "log",
];
const KNOWN_LOG: &[&str] = &["level", "target"];

/// Allowed ranges, shared by validation and the messages that quote them.
const PORT_RANGE: (i64, i64) = (0, 65535);
const BACKLOG_RANGE: (i64, i64) = (1, 65535);
const POOL_RANGE: (i64, i64) = (1, 1024);
const MAX_CONN_RANGE: (i64, i64) = (1, 1_000_000);
const PENDING_RANGE: (i64, i64) = (1024, 64 * 1024 * 1024);
/// idle_timeout: 0 (never) to 7 days.
const IDLE_MAX_SECS: u64 = 7 * 24 * 3600;
/// drain_timeout: 0 (close at once) to 1 hour.
const DRAIN_MAX_SECS: u64 = 3600;
/// busy_poll: 0 (off) to 10 ms, in microseconds.
const BUSY_POLL_MAX_MICROS: u64 = 10_000;

/// The effective configuration of the daemon, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Host name or IPv4/IPv6 literal to listen on.
    pub host: String,
    /// TCP port; 0 asks the kernel for an ephemeral one (tests use it).
    pub port: u16,
    /// listen(2) backlog: the kernel's queue of connections not yet accepted.
    pub backlog: u32,
    /// Number of worker threads doing connection I/O.
    pub pool_size: usize,
    /// Close a connection after this long without traffic; zero = never.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Connections beyond this get a one-line busy notice and are closed.
    pub max_connections: usize,
    /// How long a SIGTERM drain lets clients finish before closing them.
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    /// Cap on echo bytes waiting for a client that does not read; the server
    /// stops reading from that client until it drains (backpressure).
    pub max_pending_bytes: usize,
    /// After traffic, a worker polls without sleeping for this long (lower
    /// latency for a core's worth of CPU while traffic flows); zero = off.
    #[serde(serialize_with = "ser_duration")]
    pub busy_poll: Duration,
    /// Pin worker k to the k-th allowed CPU and deal each connection to
    /// the worker on the CPU its packets arrive on (see `affinity`).
    pub cpu_affinity: bool,
    /// Unix control socket path; `None` = the platform default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Group (besides root and the daemon's own user) allowed on the
    /// control socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_group: Option<String>,
    /// Logging settings (`[log]`).
    pub log: LogConfig,
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// Most verbose level written.
    pub level: LogLevel,
    /// Where log lines go; unset = stderr, or syslog with `--daemon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<LogTarget>,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".to_string(),
            port: DEFAULT_PORT,
            backlog: 1024,
            pool_size: default_pool_size(),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
            max_pending_bytes: 64 * 1024,
            busy_poll: Duration::ZERO,
            cpu_affinity: true,
            control_socket: None,
            control_group: None,
            log: LogConfig {
                level: LogLevel::Info,
                target: None,
            },
        }
    }
}

/// One worker per CPU the process may run on.
fn default_pool_size() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Formats a duration the way the config accepts it ("0s", "90s", "5m",
/// and below a second "50us", "2ms").
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        let us = d.as_micros();
        if us.is_multiple_of(1000) {
            format!("{}ms", us / 1000)
        } else {
            format!("{us}us")
        }
    } else if secs == 0 {
        "0s".to_string()
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Config {
    /// Renders the effective config as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// `host:port` as written in the config (for messages and clients).
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
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
        let table = DeTable::parse(text).map_err(|e| src.toml_error(&e, None))?;
        let mut diags = Vec::new();
        check_keys(&src, table.get_ref(), "", &mut diags);
        if !diags.is_empty() {
            return Err(ConfigError::Invalid(diags));
        }
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|s| key_at(table.get_ref(), "", &s));
            src.toml_error(&e, key)
        })?;
        raw.validate(&src)
    }
}

/// A config error: the file could not be read, or its content is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One or more problems in the content, each with its location.
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The individual problems (an I/O error has none).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(d) => d,
        }
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// One problem in a config file, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given by the operator.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path (`log.level`), when the problem belongs to a key.
    pub key: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "key '{key}': ")?;
        }
        f.write_str(&self.message)
    }
}

/// The text being parsed and its name, to turn byte offsets into locations.
struct Source<'a> {
    text: &'a str,
    file: &'a str,
}

impl Source<'_> {
    fn diag(&self, offset: usize, key: Option<String>, message: String) -> Diagnostic {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            key,
            message,
        }
    }

    fn toml_error(&self, e: &toml::de::Error, key: Option<String>) -> ConfigError {
        let offset = e.span().map_or(0, |s| s.start);
        let message = e
            .message()
            .trim()
            .replace("expected i64", "expected an integer")
            .replace("expected struct RawLog", "expected a table");
        let key = key.or_else(|| self.key_on_line(offset));
        ConfigError::Invalid(vec![self.diag(offset, key, message)])
    }

    /// For syntax errors (no parsed table to consult): the bare key that
    /// starts the line holding `offset`, if the line looks like `key = ...`.
    fn key_on_line(&self, offset: usize) -> Option<String> {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        let bare = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        bare.then(|| key.to_string())
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Refuses keys the daemon does not know, suggesting the nearest known one.
fn check_keys(src: &Source<'_>, table: &DeTable<'_>, prefix: &str, diags: &mut Vec<Diagnostic>) {
    let known = if prefix.is_empty() {
        KNOWN_TOP
    } else {
        KNOWN_LOG
    };
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let path = join_key(prefix, name);
        if !known.contains(&name) {
            let mut message = format!("unknown key '{path}'");
            if let Some(near) = nearest(name, known) {
                message.push_str(&format!("; did you mean '{}'?", join_key(prefix, near)));
            }
            diags.push(src.diag(key.span().start, Some(path), message));
            continue;
        }
        if prefix.is_empty() && name == "log" {
            if let DeValue::Table(inner) = value.get_ref() {
                check_keys(src, inner, "log", diags);
            }
        }
    }
}

/// The known key closest to `name`, if it is close enough to be a typo.
fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The dotted key whose key or value span contains `span`.
fn key_at(table: &DeTable<'_>, prefix: &str, span: &std::ops::Range<usize>) -> Option<String> {
    for (key, value) in table.iter() {
        let path = join_key(prefix, key.get_ref());
        let (ks, vs) = (key.span(), value.span());
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(found) = key_at(inner, &path, span) {
                return Some(found);
            }
        }
        let within = |r: &std::ops::Range<usize>| {
            r.start <= span.start && span.start < r.end.max(r.start + 1)
        };
        if within(&ks) || within(&vs) {
            return Some(path);
        }
    }
    None
}

/// The file as written, every field optional and spanned so that
/// validation can point at the value it refuses.
#[derive(Deserialize)]
struct RawFile {
    host: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    backlog: Option<Spanned<i64>>,
    pool_size: Option<Spanned<i64>>,
    idle_timeout: Option<Spanned<RawDuration>>,
    max_connections: Option<Spanned<i64>>,
    drain_timeout: Option<Spanned<RawDuration>>,
    max_pending_bytes: Option<Spanned<i64>>,
    busy_poll: Option<Spanned<RawDuration>>,
    cpu_affinity: Option<Spanned<bool>>,
    control_socket: Option<Spanned<String>>,
    control_group: Option<Spanned<String>>,
    log: Option<RawLog>,
}

#[derive(Deserialize)]
struct RawLog {
    level: Option<Spanned<LogLevel>>,
    target: Option<Spanned<LogTarget>>,
}

/// A duration as written: an integer (seconds, or microseconds for
/// `busy_poll`) or a string like "90s", "5m" or "50us".
enum RawDuration {
    Secs(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("integer seconds or a duration string like \"90s\" or \"5m\"")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Secs(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawDuration, E> {
                i64::try_from(v)
                    .map(RawDuration::Secs)
                    .map_err(|_| E::custom("duration out of range"))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl RawFile {
    fn validate(self, src: &Source<'_>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut diags = Vec::new();
        let mut v = Validator {
            src,
            diags: &mut diags,
        };
        if let Some(h) = self.host {
            let s = h.get_ref().trim();
            if s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch == '/') {
                v.fail(
                    &h,
                    "host",
                    "must be a host name or an IPv4/IPv6 address".into(),
                );
            } else {
                c.host = s.trim_start_matches('[').trim_end_matches(']').to_string();
            }
        }
        if let Some(x) = v.int(self.port, "port", PORT_RANGE) {
            c.port = x as u16;
        }
        if let Some(x) = v.int(self.backlog, "backlog", BACKLOG_RANGE) {
            c.backlog = x as u32;
        }
        if let Some(x) = v.int(self.pool_size, "pool_size", POOL_RANGE) {
            c.pool_size = x as usize;
        }
        if let Some(x) = v.int(self.max_connections, "max_connections", MAX_CONN_RANGE) {
            c.max_connections = x as usize;
        }
        if let Some(x) = v.int(self.max_pending_bytes, "max_pending_bytes", PENDING_RANGE) {
            c.max_pending_bytes = x as usize;
        }
        if let Some(d) = v.duration(
            self.idle_timeout,
            "idle_timeout",
            IDLE_MAX_SECS,
            "0 = never",
        ) {
            c.idle_timeout = d;
        }
        if let Some(d) = v.duration(self.drain_timeout, "drain_timeout", DRAIN_MAX_SECS, "") {
            c.drain_timeout = d;
        }
        if let Some(d) = v.micros(self.busy_poll, "busy_poll", BUSY_POLL_MAX_MICROS) {
            c.busy_poll = d;
        }
        if let Some(b) = self.cpu_affinity {
            c.cpu_affinity = b.into_inner();
        }
        if let Some(p) = self.control_socket {
            let s = p.get_ref();
            if s.is_empty() || !s.starts_with('/') {
                v.fail(&p, "control_socket", "must be an absolute path".into());
            } else if s.len() > 107 {
                v.fail(
                    &p,
                    "control_socket",
                    "must be at most 107 bytes long (a Unix socket address)".into(),
                );
            } else {
                c.control_socket = Some(PathBuf::from(s));
            }
        }
        if let Some(g) = self.control_group {
            if g.get_ref().is_empty() {
                v.fail(&g, "control_group", "must be a group name or number".into());
            } else {
                c.control_group = Some(g.into_inner());
            }
        }
        if let Some(log) = self.log {
            if let Some(l) = log.level {
                c.log.level = l.into_inner();
            }
            if let Some(t) = log.target {
                c.log.target = Some(t.into_inner());
            }
        }
        if diags.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError::Invalid(diags))
        }
    }
}

/// Collects range errors with the span of the offending value.
struct Validator<'a, 'b> {
    src: &'a Source<'a>,
    diags: &'b mut Vec<Diagnostic>,
}

impl Validator<'_, '_> {
    fn fail<T>(&mut self, value: &Spanned<T>, key: &str, message: String) {
        let d = self
            .src
            .diag(value.span().start, Some(key.to_string()), message);
        self.diags.push(d);
    }

    fn int(&mut self, value: Option<Spanned<i64>>, key: &str, (lo, hi): (i64, i64)) -> Option<i64> {
        let value = value?;
        let x = *value.get_ref();
        if (lo..=hi).contains(&x) {
            Some(x)
        } else {
            self.fail(
                &value,
                key,
                format!("{x} is out of range; allowed: {lo} to {hi}"),
            );
            None
        }
    }

    /// A duration in whole seconds, at most `max_secs`.
    fn duration(
        &mut self,
        value: Option<Spanned<RawDuration>>,
        key: &str,
        max_secs: u64,
        note: &str,
    ) -> Option<Duration> {
        let range = format!(
            "allowed: 0 to {max_secs} seconds ({}), as an integer number of seconds or a string like \"90s\", \"5m\"{}",
            format_duration(Duration::from_secs(max_secs)),
            if note.is_empty() { String::new() } else { format!("; {note}") }
        );
        self.duration_in(value, key, Unit::Seconds, max_secs, &range)
    }

    /// A short duration in whole microseconds, at most `max_micros`.
    fn micros(
        &mut self,
        value: Option<Spanned<RawDuration>>,
        key: &str,
        max_micros: u64,
    ) -> Option<Duration> {
        let range = format!(
            "allowed: 0 (off) to {max_micros} microseconds, as an integer number of microseconds or a string like \"50us\", \"1ms\""
        );
        self.duration_in(value, key, Unit::Micros, max_micros, &range)
    }

    /// A duration written as a bare number of `unit`s or a string like
    /// "90s"; refused unless a whole number of `unit`s, at most `max` of
    /// them. `range` ends every message.
    fn duration_in(
        &mut self,
        value: Option<Spanned<RawDuration>>,
        key: &str,
        unit: Unit,
        max: u64,
        range: &str,
    ) -> Option<Duration> {
        let value = value?;
        let parsed = match value.get_ref() {
            RawDuration::Secs(n) if *n >= 0 => Ok(unit.times(*n as u64)),
            RawDuration::Secs(n) => Err(format!("{n} is out of range; {range}")),
            RawDuration::Text(t) => match t.trim().parse::<u64>() {
                Ok(n) => Ok(unit.times(n)),
                Err(_) => humantime::parse_duration(t.trim())
                    .map_err(|e| format!("\"{t}\" is not a duration ({e}); {range}")),
            },
        };
        let message = match parsed {
            Ok(d) if d.as_nanos() % unit.nanos() != 0 => {
                format!("must be a whole number of {}; {range}", unit.name())
            }
            Ok(d) if d <= unit.times(max) => return Some(d),
            Ok(d) => format!("{} is out of range; {range}", format_duration(d)),
            Err(m) => m,
        };
        self.fail(&value, key, message);
        None
    }
}

/// The unit a bare number in a duration setting counts.
#[derive(Clone, Copy)]
enum Unit {
    Seconds,
    Micros,
}

impl Unit {
    fn times(self, n: u64) -> Duration {
        match self {
            Unit::Seconds => Duration::from_secs(n),
            Unit::Micros => Duration::from_micros(n),
        }
    }

    fn nanos(self) -> u128 {
        self.times(1).as_nanos()
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "seconds",
            Unit::Micros => "microseconds",
        }
    }
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
             busy_poll = 10\ncpu_affinity = false\n\
             control_socket = \"/tmp/x.sock\"\ncontrol_group = \"adm\"\n[log]\nlevel = \"debug\"\ntarget = \"syslog\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.address(), "[::1]:0");
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.drain_timeout, Duration::from_secs(3));
        assert_eq!(c.busy_poll, Duration::from_micros(10));
        assert!(!c.cpu_affinity);
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
    fn syntax_error_is_located() {
        let d = err("port = 7007\nhost = \n");
        assert_eq!(d[0].line, 2);
    }

    #[test]
    fn print_config_round_trips() {
        let c = Config::default();
        assert_eq!(Config::parse(&c.to_toml(), "p").unwrap(), c);
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
