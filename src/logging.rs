//! The daemon's log backend behind the `log` facade: where lines go
//! (`[log] target`), how they are written (`[log] format`), and reopening
//! the log file on SIGUSR1.
//!
//! Three sinks, switchable at any time (a reload may change the target):
//!
//! * stderr, one line per record. Under systemd (`JOURNAL_STREAM` is set
//!   when stderr is the journal) each line starts with the sd-daemon `<N>`
//!   priority prefix, so `journalctl -p` works and the journal adds its own
//!   timestamps; otherwise a line carries an RFC 3339 timestamp and the
//!   level name.
//! * syslog (the `syslog` crate, facility daemon, RFC 3164 over /dev/log),
//!   the default for `--daemon`, where stderr is gone. If /dev/log cannot
//!   be reached the logger says so on stderr and stays there.
//! * a file (`[log] path`), opened for appending, each line one `write`
//!   (whole lines, even with other writers). SIGUSR1 reopens it by name,
//!   the logrotate convention nginx follows: logrotate renames the file,
//!   signals, and the next line goes to the new file. The swap happens
//!   under the sink's lock, so every line lands in one file or the other.
//!
//! Session lines, which come one per connection and can be thousands a
//! second, are not written one by one: they gather in a buffer written in
//! one `write` when it holds 32 KiB, when any other line is logged (which
//! keeps the order), on every turn of the supervisor (at most 50 ms
//! later, [`flush_pending`]), before a reopen or a change of sink, and at
//! exit. nginx's `access_log ... buffer=` makes the same trade; a
//! SIGKILL can lose the last 50 ms of session lines, never a daemon
//! event, which is written at once.
//!
//! A record is rendered once, by the format: `text` is the message
//! followed by its key-values as `key=value` (the session lines of
//! [`crate::session`]); `json` is one object per line with stable field
//! names — `ts`, `level`, `event` (`session` or `daemon`), `msg`, then
//! the record's key-values — for log pipelines. Either way a line to the
//! journal keeps its `<N>` priority prefix and a syslog message its
//! severity.
//!
//! Changing the target is two steps, as a reload is ([`prepare`], which
//! may fail — a file that cannot be opened — and changes nothing, then
//! [`install`]). The level is the `log` crate's global filter, also
//! changed on reload.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::{LogConfig, LogFormat, LogTarget};

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

enum Sink {
    Stderr,
    Syslog(Syslog),
    File { path: PathBuf, file: File },
}

/// What the logger writes to and how.
struct State {
    sink: Sink,
    format: LogFormat,
    /// Session lines not yet written (stderr and file sinks).
    pending: String,
}

/// Session lines are written when this many bytes wait, or on the next
/// daemon event, or on [`flush_pending`] (the supervisor's tick).
const BATCH: usize = 32 * 1024;

impl State {
    /// Writes the waiting lines, in one `write` (whole lines); to stderr
    /// if the file refuses them.
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let written = match &mut self.sink {
            Sink::File { file, .. } => file.write_all(self.pending.as_bytes()).is_ok(),
            Sink::Stderr | Sink::Syslog(_) => false,
        };
        if !written {
            let _ = std::io::stderr().lock().write_all(self.pending.as_bytes());
        }
        self.pending.clear();
    }
}

/// The installed logger; see the module docs.
struct DaemonLogger {
    /// stderr is the journal: use `<N>` prefixes, no timestamps.
    journal: bool,
    /// Where records go now, and in which format.
    state: Mutex<State>,
}

static LOGGER: OnceLock<&'static DaemonLogger> = OnceLock::new();

/// sd-daemon priority of a level (syslog numbering).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Renders a record's key-values as ` key=value` (text).
struct TextPairs<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextPairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// Collects a record's key-values into a JSON object.
struct JsonPairs<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonPairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(f) = value.to_f64() {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.to_string(), v);
        Ok(())
    }
}

/// The record as text: message, then ` key=value` pairs.
fn text_body(record: &Record<'_>) -> String {
    let mut s = String::new();
    text_into(&mut s, record);
    s
}

/// Appends the record as text to `out`.
fn text_into(out: &mut String, record: &Record<'_>) {
    let _ = write!(out, "{}", record.args());
    let _ = record.key_values().visit(&mut TextPairs(out));
}

/// The record as one JSON object (no newline).
fn json_body(record: &Record<'_>) -> String {
    let mut map = serde_json::Map::new();
    map.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    map.insert(
        "level".into(),
        record.level().as_str().to_ascii_lowercase().into(),
    );
    let event = if record.target() == crate::session::TARGET {
        "session"
    } else {
        "daemon"
    };
    map.insert("event".into(), event.into());
    map.insert("msg".into(), record.args().to_string().into());
    let _ = record.key_values().visit(&mut JsonPairs(&mut map));
    serde_json::Value::Object(map).to_string()
}

impl DaemonLogger {
    /// The line for stderr or a file. `journal`: stderr is the journal.
    fn line(format: LogFormat, record: &Record<'_>, journal: bool) -> String {
        let mut out = String::new();
        Self::line_into(&mut out, format, record, journal);
        out
    }

    /// Appends the line to `out`, formatted in place (a session line costs
    /// no allocation of its own).
    fn line_into(out: &mut String, format: LogFormat, record: &Record<'_>, journal: bool) {
        if journal {
            let _ = write!(out, "<{}>", priority(record.level()));
        }
        match format {
            LogFormat::Json => out.push_str(&json_body(record)),
            LogFormat::Text => {
                if !journal {
                    let _ = write!(
                        out,
                        "{} {:<5} ",
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                        record.level()
                    );
                }
                text_into(out, record);
            }
        }
        out.push('\n');
    }

    fn stderr_line(&self, format: LogFormat, record: &Record<'_>) {
        let line = Self::line(format, record, self.journal);
        // One write per line keeps lines whole across threads.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

impl Log for DaemonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let format = state.format;
        if let Sink::Syslog(s) = &mut state.sink {
            let msg = match format {
                LogFormat::Json => json_body(record),
                LogFormat::Text => text_body(record),
            };
            let sent = match record.level() {
                Level::Error => s.err(msg),
                Level::Warn => s.warning(msg),
                Level::Info => s.info(msg),
                Level::Debug | Level::Trace => s.debug(msg),
            };
            if sent.is_err() {
                drop(state);
                self.stderr_line(format, record);
            }
            return;
        }
        // Session lines wait in a buffer (one write per batch, not per
        // session: see the module docs); any other line is written at
        // once, after the sessions before it.
        let journal = self.journal && matches!(state.sink, Sink::Stderr);
        Self::line_into(&mut state.pending, format, record, journal);
        if record.target() != crate::session::TARGET || state.pending.len() >= BATCH {
            state.write_pending();
        }
    }

    fn flush(&self) {
        flush_pending();
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (once per process) on stderr at `level`.
pub fn init(level: LevelFilter) {
    let logger: &'static DaemonLogger = Box::leak(Box::new(DaemonLogger {
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        state: Mutex::new(State {
            sink: Sink::Stderr,
            format: LogFormat::Text,
            pending: String::with_capacity(BATCH + 1024),
        }),
    }));
    if log::set_logger(logger).is_ok() {
        let _ = LOGGER.set(logger);
    }
    log::set_max_level(level);
}

/// Opens a log file for appending (created `0640` if missing).
fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// A file that cannot be opened, with its path.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the log file {}: {source}", path.display())]
pub struct OpenError {
    /// The file named by `[log] path`.
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A `[log]` setting checked and ready to put in force: the level, the
/// format, the target, and the log file already open if it is one.
pub struct Prepared {
    level: LevelFilter,
    format: LogFormat,
    target: LogTarget,
    file: Option<(PathBuf, File)>,
}

/// Does what can fail of applying `[log]` (opening the log file) and
/// nothing else; `default_target` is used when the file does not say
/// (syslog for `--daemon`, else stderr). `--check-config` calls it too.
pub fn prepare(config: &LogConfig, default_target: LogTarget) -> Result<Prepared, OpenError> {
    let target = config.target.unwrap_or(default_target);
    let file = match target {
        LogTarget::File => {
            let file = open_file(&config.path).map_err(|source| OpenError {
                path: config.path.clone(),
                source,
            })?;
            Some((config.path.clone(), file))
        }
        LogTarget::Stderr | LogTarget::Syslog => None,
    };
    Ok(Prepared {
        level: config.level.filter(),
        format: config.format,
        target,
        file,
    })
}

/// Puts a prepared `[log]` in force; cannot fail (syslog that cannot be
/// reached is said on stderr, which stays the sink).
pub fn install(prepared: Prepared) {
    log::set_max_level(prepared.level);
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let mut state = logger.state.lock().unwrap_or_else(|p| p.into_inner());
    state.write_pending();
    state.format = prepared.format;
    match (prepared.target, prepared.file, &state.sink) {
        (LogTarget::File, Some((path, file)), _) => state.sink = Sink::File { path, file },
        (LogTarget::Stderr, _, _) => state.sink = Sink::Stderr,
        (LogTarget::Syslog, _, Sink::Syslog(_)) => {}
        (LogTarget::Syslog, _, _) => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: "echo-lab".into(),
                pid: std::process::id(),
            };
            match syslog::unix(formatter) {
                Ok(s) => state.sink = Sink::Syslog(s),
                Err(e) => {
                    state.sink = Sink::Stderr;
                    drop(state);
                    log::error!("cannot log to syslog ({e}); logging to stderr");
                }
            }
        }
        (LogTarget::File, None, _) => {}
    }
}

/// Applies `[log]` at once ([`prepare`] then [`install`]); a log file that
/// cannot be opened is reported and the sink left as it was.
pub fn apply(config: &LogConfig, default_target: LogTarget) -> Result<(), OpenError> {
    install(prepare(config, default_target)?);
    Ok(())
}

/// Writes the session lines that wait in the buffer. The supervisor
/// calls it on every turn (at least every 50 ms), so a session line is
/// written at most that late.
pub fn flush_pending() {
    if let Some(logger) = LOGGER.get() {
        logger
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_pending();
    }
}

/// Reopens the log file by its name (SIGUSR1, after logrotate renamed it).
/// Lines logged up to the swap are in the old file, every later one in the
/// new. If it cannot be opened the old file is kept. Returns the path, or
/// `None` when the target is not a file.
pub fn reopen() -> Result<Option<PathBuf>, OpenError> {
    let Some(logger) = LOGGER.get() else {
        return Ok(None);
    };
    let path = {
        let state = logger.state.lock().unwrap_or_else(|p| p.into_inner());
        match &state.sink {
            Sink::File { path, .. } => path.clone(),
            _ => return Ok(None),
        }
    };
    // Opened outside the lock: logging goes on meanwhile, to the old file.
    let new = open_file(&path).map_err(|source| OpenError {
        path: path.clone(),
        source,
    })?;
    let mut state = logger.state.lock().unwrap_or_else(|p| p.into_inner());
    // What waits belongs to the old file, which it was logged for.
    state.write_pending();
    if let Sink::File { path: p, file } = &mut state.sink {
        if *p == path {
            *file = new;
        }
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(format: LogFormat, journal: bool) -> String {
        let kvs: &[(&str, u64)] = &[("received", 12), ("sent", 30)];
        let record = Record::builder()
            .level(Level::Info)
            .target(crate::session::TARGET)
            .args(format_args!("session"))
            .key_values(&kvs)
            .build();
        DaemonLogger::line(format, &record, journal)
    }

    #[test]
    fn text_lines_carry_the_key_values() {
        assert_eq!(
            render(LogFormat::Text, true),
            "<6>session received=12 sent=30\n"
        );
        let plain = render(LogFormat::Text, false);
        assert!(
            plain.ends_with(" INFO  session received=12 sent=30\n"),
            "{plain}"
        );
    }

    #[test]
    fn json_lines_are_one_object_with_stable_fields() {
        let line = render(LogFormat::Json, false);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["event"], "session");
        assert_eq!(v["msg"], "session");
        assert_eq!(v["received"], 12);
        assert_eq!(v["sent"], 30);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        let journal = render(LogFormat::Json, true);
        assert!(journal.starts_with("<6>{"), "{journal}");
    }
}
