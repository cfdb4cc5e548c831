//! The daemon's log backend behind the `log` facade.
//!
//! Lines go to stderr, one per record. Under systemd (`JOURNAL_STREAM` is
//! set when stderr is the journal) each line starts with the sd-daemon
//! `<N>` priority prefix so `journalctl -p` filters work and the journal
//! adds its own timestamps; otherwise a line carries an RFC 3339 timestamp
//! and the level name. The level is a global filter that a reload can
//! change at any time.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// stderr logger; see the module docs.
struct StderrLogger {
    /// stderr is the journal: use `<N>` prefixes, no timestamps.
    journal: bool,
}

/// sd-daemon priority of a level (syslog numbering).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
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

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (once per process) with the given level.
pub fn init(level: LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if log::set_boxed_logger(Box::new(StderrLogger { journal })).is_ok() {
        log::set_max_level(level);
    }
}

/// Changes the level (reload).
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}
