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
//! Each key is one line of a [`section!`] declaration below:
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
//! ([`changes`]). To add a key:
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
mod kinds;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::DeTable;

use diagnostic::Source;
use kinds::{Flag, Host, Int, Micros, NonEmpty, Optional, Seconds, SocketPath, Table, Word};
use section::{Reader, Rendered, Section};

pub use diagnostic::{ConfigError, Diagnostic};
pub use kinds::format_duration;
pub(crate) use section::{Apply, Change};

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
        /// Pin worker k to the k-th allowed CPU and deal each connection to
        /// the worker on the CPU its packets arrive on (see `affinity`).
        cpu_affinity: bool = true, Flag, AtRestart;
        /// Unix control socket path; `None` = the platform default.
        control_socket: Option<PathBuf> = None, Optional(SocketPath), AtRestart;
        /// Group (besides root and the daemon's own user) allowed on the
        /// control socket.
        control_group: Option<String> = None,
            Optional(NonEmpty("must be a group name or number")), AtRestart;
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
    }
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
        let diags = reader.finish();
        if diags.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(diags))
        }
    }
}

/// Every key whose value differs from `old` to `new`, in declaration
/// order, with both values as the file would say them and when the new
/// one applies (the reload report).
pub(crate) fn changes(old: &Config, new: &Config) -> Vec<Change> {
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
