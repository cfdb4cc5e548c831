//! The daemon's log backend behind the `log` facade.
//!
//! Two sinks, switchable at any time (a reload may change `[log] target`):
//!
//! * stderr, one line per record. Under systemd (`JOURNAL_STREAM` is set
//!   when stderr is the journal) each line starts with the sd-daemon `<N>`
//!   priority prefix, so `journalctl -p` works and the journal adds its own
//!   timestamps; otherwise a line carries an RFC 3339 timestamp and the
//!   level name.
//! * syslog (the `syslog` crate, facility daemon, RFC 3164 over /dev/log),
//!   the default for `--daemon`, where stderr is gone. If /dev/log cannot
//!   be reached the logger says so on stderr and stays there.
//!
//! The level is the `log` crate's global filter, also changed on reload.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::{LogConfig, LogTarget};

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

enum Sink {
    Stderr,
    Syslog(Syslog),
}

/// The installed logger; see the module docs.
struct DaemonLogger {
    /// stderr is the journal: use `<N>` prefixes, no timestamps.
    journal: bool,
    /// Where records go now.
    sink: Mutex<Sink>,
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

impl DaemonLogger {
    fn stderr_line(&self, record: &Record<'_>) {
        let line = if self.journal {
            format!("<{}>{}\n", priority(record.level()), record.args())
        } else {
            format!(
                "{} {:<5} {}\n",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                record.level(),
                record.args()
            )
        };
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
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Sink::Syslog(s) = &mut *sink {
            let msg = record.args().to_string();
            let sent = match record.level() {
                Level::Error => s.err(msg),
                Level::Warn => s.warning(msg),
                Level::Info => s.info(msg),
                Level::Debug | Level::Trace => s.debug(msg),
            };
            if sent.is_ok() {
                return;
            }
        }
        drop(sink);
        self.stderr_line(record);
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (once per process) on stderr at `level`.
pub fn init(level: LevelFilter) {
    let logger: &'static DaemonLogger = Box::leak(Box::new(DaemonLogger {
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        sink: Mutex::new(Sink::Stderr),
    }));
    if log::set_logger(logger).is_ok() {
        let _ = LOGGER.set(logger);
    }
    log::set_max_level(level);
}

/// Applies `[log]`: level and target. `default_target` is used when the
/// file does not say (syslog for `--daemon`, else stderr).
pub fn apply(config: &LogConfig, default_target: LogTarget) {
    log::set_max_level(config.level.filter());
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let want = config.target.unwrap_or(default_target);
    let mut sink = logger.sink.lock().unwrap_or_else(|p| p.into_inner());
    match (want, &*sink) {
        (LogTarget::Stderr, Sink::Syslog(_)) => *sink = Sink::Stderr,
        (LogTarget::Syslog, Sink::Stderr) => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: "echo-lab".into(),
                pid: std::process::id(),
            };
            match syslog::unix(formatter) {
                Ok(s) => *sink = Sink::Syslog(s),
                Err(e) => {
                    drop(sink);
                    log::error!("cannot log to syslog ({e}); logging to stderr");
                }
            }
        }
        _ => {}
    }
}
