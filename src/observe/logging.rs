//! The daemon's log backend behind the `log` facade: where lines go
//! (`[log] target`), how they are rendered (`[log] format`), and reopening
//! the log file on SIGUSR1. The writing itself is
//! [`crate::observe::log_writer`]'s: this module renders a record on the thread
//! that logs it and hands the line to the writer's queue, so no thread
//! that serves clients ever waits on a sink that has stopped taking
//! bytes (a full queue drops session lines and counts them:
//! [`lines_dropped`]).
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
//! * a file (`[log] path`), opened for appending, each batch one `write`
//!   (whole lines, even with other writers). SIGUSR1 reopens it by name,
//!   the logrotate convention nginx follows: logrotate renames the file,
//!   signals, and the next line goes to the new file. The swap travels
//!   the writer's queue, so every line lands in one file or the other.
//!
//! Session lines, which come one per connection and can be thousands a
//! second, are written in batches of up to 32 KiB, at most 50 ms after
//! they were logged; daemon events at once (see [`crate::observe::log_writer`]).
//! nginx's `access_log ... buffer=` makes the same trade; a SIGKILL can
//! lose the last 50 ms of session lines. At a normal exit the supervisor
//! waits (at most [`EXIT_FLUSH_WAIT`]) until everything queued is written.
//!
//! A record is rendered once, by the format: `text` is the message
//! followed by its key-values as `key=value` (the session lines of
//! [`crate::observe::session`]); `json` is one object per line with stable field
//! names — `ts`, `level`, `event` (`session` or `daemon`), `instance`
//! (the `instance` key, else the host name: which instance of a fleet
//! wrote it), `msg`, then the record's key-values — for log pipelines.
//! The name is an `Arc<str>` behind a read-write lock that only a reload
//! writes ([`set_instance`]); a line takes the read lock just long enough
//! to clone the `Arc` (never across I/O), and the `Arc` is the one
//! allocation it shares with every other line. Either way a line to the
//! journal keeps its `<N>` priority prefix and a syslog message its
//! severity. A line logged while a reload changes the format may come in
//! either format; it is whole either way.
//!
//! Until [`install`] first runs (startup, before any other thread exists
//! and before `--daemon` forks) there is no writer thread and lines are
//! written to stderr directly. [`init`] marks the thread that calls it as
//! one that may wait for room in the queue, as the supervisor marks its
//! own ([`allow_waiting`]); no other thread ever waits.
//!
//! Changing the target is two steps, as a reload is ([`prepare`], which
//! may fail — a file that cannot be opened — and changes nothing, then
//! [`install`]). The level is the `log` crate's global filter, also
//! changed on reload.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use log::{LevelFilter, Log, Metadata, Record};

use crate::config::{LogConfig, LogFormat, LogTarget};
use crate::observe::log_line::render;
pub(crate) use crate::observe::log_line::set_instance;
use crate::observe::log_writer::{self, Msg, Queue, Sink};

/// How long a normal exit waits for the writer to write what is queued
/// (a sink stalled longer than that loses it).
pub const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The target in force, as the supervisor set it.
#[derive(Default)]
struct Current {
    /// `None` until [`install`] first runs (stderr then).
    target: Option<LogTarget>,
    /// The log file's path while the target is a file.
    path: Option<PathBuf>,
}

/// The installed logger; see the module docs.
struct DaemonLogger {
    /// stderr is the journal: use `<N>` prefixes, no timestamps.
    journal: bool,
    /// Render lines as JSON (`[log] format`).
    json: AtomicBool,
    /// The writer's queue, from the first [`install`] on.
    queue: OnceLock<Queue>,
    /// What [`install`] last put in force; only the supervisor (and
    /// startup) touch it, never a thread that logs a line.
    current: Mutex<Current>,
}

static LOGGER: OnceLock<&'static DaemonLogger> = OnceLock::new();

impl Log for DaemonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = render(record, self.json.load(Relaxed));
        match self.queue.get() {
            Some(queue) => queue.send(line),
            // Startup: one thread, stderr (see the module docs).
            None => line.write_to_stderr(self.journal),
        }
    }

    /// On a thread that may wait (the supervisor at exit): returns once
    /// everything queued is written, or after [`EXIT_FLUSH_WAIT`]. On any
    /// other thread: only asks the writer to write its batch.
    fn flush(&self) {
        if let Some(queue) = self.queue.get() {
            queue.flush(log_writer::may_wait().then_some(EXIT_FLUSH_WAIT));
        }
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (once per process) on stderr at `level`; the
/// calling thread (main, at startup) may wait for room in the log queue.
pub fn init(level: LevelFilter) {
    allow_waiting();
    let logger: &'static DaemonLogger = Box::leak(Box::new(DaemonLogger {
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        json: AtomicBool::new(false),
        queue: OnceLock::new(),
        current: Mutex::new(Current::default()),
    }));
    if log::set_logger(logger).is_ok() {
        let _ = LOGGER.set(logger);
    }
    log::set_max_level(level);
}

/// Lets the calling thread wait for room in the log queue, so its daemon
/// events are never dropped. Only for the supervisor: a thread that
/// serves clients must never call it.
pub(crate) fn allow_waiting() {
    log_writer::allow_waiting();
}

/// Log lines dropped since start because the queue to the writer was full
/// (its sink stalled) or the writer was gone.
pub fn lines_dropped() -> u64 {
    LOGGER
        .get()
        .and_then(|l| l.queue.get())
        .map_or(0, Queue::dropped)
}

/// True once the log writer thread has started and then ended (a panic:
/// it never ends otherwise while the process runs). The supervisor checks
/// it on every turn and exits rather than run on with a log that is gone.
pub fn writer_died() -> bool {
    LOGGER
        .get()
        .and_then(|l| l.queue.get())
        .is_some_and(|q| !q.alive())
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

/// Connects to the local syslog daemon. Test builds (`fault-injection`)
/// use the socket named by `ECHO_LAB_SYSLOG_SOCKET` instead of /dev/log
/// when it is set.
fn connect_syslog() -> syslog::Result<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>
{
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "echo-lab".into(),
        pid: std::process::id(),
    };
    #[cfg(feature = "fault-injection")]
    if let Some(path) = std::env::var_os(crate::fault::SYSLOG_SOCKET) {
        return syslog::unix_custom(formatter, path);
    }
    syslog::unix(formatter)
}

/// The sink a prepared `[log]` asks for, given what is in force (`None`:
/// keep the sink as it is), and an error to log once it is in force.
/// Connecting to syslog happens here.
fn new_sink(prepared: Prepared, current: &mut Current) -> (Option<Sink>, Option<String>) {
    let target = prepared.target;
    let sink = match (target, prepared.file) {
        (LogTarget::File, Some((path, file))) => {
            current.path = Some(path.clone());
            Sink::File { path, file }
        }
        (LogTarget::File, None) => return (None, None),
        (LogTarget::Stderr, _) => Sink::Stderr,
        (LogTarget::Syslog, _) if current.target == Some(LogTarget::Syslog) => return (None, None),
        (LogTarget::Syslog, _) => match connect_syslog() {
            Ok(s) => Sink::Syslog(Box::new(s)),
            Err(e) => {
                *current = Current {
                    target: Some(LogTarget::Stderr),
                    path: None,
                };
                let error = format!("cannot log to syslog ({e}); logging to stderr");
                return (Some(Sink::Stderr), Some(error));
            }
        },
    };
    if target != LogTarget::File {
        current.path = None;
    }
    current.target = Some(target);
    (Some(sink), None)
}

/// Puts a prepared `[log]` in force; cannot fail (syslog that cannot be
/// reached is said on stderr, which stays the sink). The first call
/// starts the writer thread.
pub fn install(prepared: Prepared) {
    log::set_max_level(prepared.level);
    let Some(logger) = LOGGER.get() else {
        return;
    };
    logger
        .json
        .store(prepared.format == LogFormat::Json, Relaxed);
    let (sink, error) = {
        let mut current = logger.current.lock().unwrap_or_else(|p| p.into_inner());
        new_sink(prepared, &mut current)
    };
    match (logger.queue.get(), sink) {
        (Some(queue), Some(sink)) => {
            queue.control(Msg::Install(sink));
        }
        (Some(_), None) => {}
        (None, sink) => start_writer(logger, sink.unwrap_or(Sink::Stderr)),
    }
    if let Some(error) = error {
        log::error!("{error}");
    }
}

/// Starts the writer thread on `sink`.
fn start_writer(logger: &DaemonLogger, sink: Sink) {
    let (queue, error) = Queue::start(sink, logger.journal, log_writer::CAPACITY);
    let _ = logger.queue.set(queue);
    if let Some(e) = error {
        log::error!("cannot start the log writer thread ({e}); only the supervisor's lines are logged, to stderr");
    }
}

/// Reopens the log file by its name (SIGUSR1, after logrotate renamed it).
/// Lines queued up to the swap go to the old file, every later one to the
/// new. If it cannot be opened the old file is kept. Returns the path, or
/// `None` when the target is not a file.
pub fn reopen() -> Result<Option<PathBuf>, OpenError> {
    let Some(logger) = LOGGER.get() else {
        return Ok(None);
    };
    let path = logger
        .current
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .path
        .clone();
    let Some(path) = path else {
        return Ok(None);
    };
    let file = open_file(&path).map_err(|source| OpenError {
        path: path.clone(),
        source,
    })?;
    if let Some(queue) = logger.queue.get() {
        queue.control(Msg::Reopen {
            path: path.clone(),
            file,
        });
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    fn line_of(format: LogFormat, journal: bool) -> String {
        let kvs: &[(&str, u64)] = &[("received", 12), ("sent", 30)];
        let record = Record::builder()
            .level(Level::Info)
            .target(crate::observe::session::TARGET)
            .args(format_args!("session"))
            .key_values(&kvs)
            .build();
        let mut out = String::new();
        render(&record, format == LogFormat::Json).write_into(&mut out, journal);
        out
    }

    #[test]
    fn text_lines_carry_the_key_values() {
        assert_eq!(
            line_of(LogFormat::Text, true),
            "<6>session received=12 sent=30\n"
        );
        let plain = line_of(LogFormat::Text, false);
        assert!(
            plain.ends_with(" INFO  session received=12 sent=30\n"),
            "{plain}"
        );
    }

    #[test]
    fn json_lines_are_one_object_with_stable_fields() {
        let line = line_of(LogFormat::Json, false);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["event"], "session");
        assert_eq!(v["msg"], "session");
        assert_eq!(v["received"], 12);
        assert_eq!(v["sent"], 30);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        let journal = line_of(LogFormat::Json, true);
        assert!(journal.starts_with("<6>{"), "{journal}");
    }
}
