//! The log writer: one thread that owns the log sink (stderr or the
//! journal, syslog, a file) and does every write to it, fed by a bounded
//! queue of rendered lines. It exists so that a sink which stops taking
//! bytes — stderr into a pipe nobody reads, a journal or a syslog daemon
//! that has stalled, a file on a hung disk — stalls this thread and no
//! other: no thread that serves clients ever waits on a log sink.
//!
//! [`crate::observe::logging`] renders each record on the thread that logs it (the
//! message, its key-values, JSON if asked) into a [`Line`] and hands it to
//! [`Queue::send`]. The queue holds at most [`CAPACITY`] lines (a
//! `sync_channel`, whose `try_send` never blocks); a session line is
//! about 150 bytes, so a full queue holds about 150 KiB. What happens when
//! it is full depends on the line and the thread:
//!
//! * a session line is dropped and counted, on any thread;
//! * a daemon event (anything else) logged by a thread that may wait —
//!   the supervisor, and the main thread during startup, which say so
//!   with [`allow_waiting`] — waits for room: those lines are never lost;
//! * a daemon event logged by any other thread (workers, the accept loop,
//!   the UDP thread, control and metrics handlers) is dropped and counted
//!   in the same counter, never waited for.
//!
//! The supervisor's wait has no bound: a sink stalled for good with a
//! full queue holds the supervisor at its next event (the echo goes on;
//! under systemd the watchdog pings, which the supervisor sends, stop and
//! the service is restarted). Only the exit's flush is bounded
//! ([`Queue::flush`], 5 s from `crate::observe::logging`).
//!
//! The counter ([`Queue::dropped`]) is what `echo-labctl status` shows as
//! `log_lines_dropped` and `/metrics` as
//! `echo_lab_log_lines_dropped_total`. Once the writer finds the queue
//! empty again (the sink took everything it had), it logs one warning
//! saying how many lines were dropped since it last said so — or every
//! [`REPORT_EVERY`] while the drops go on without the queue ever emptying.
//!
//! The writer keeps the batching of session lines: they gather in a
//! buffer written in one `write` when it holds [`BATCH`] bytes, when a
//! daemon event comes (which keeps the order), [`FLUSH_AFTER`] after the
//! first of them came, before the sink changes and on [`Queue::flush`].
//! A daemon event is written at once. Changes of sink ([`Msg::Install`])
//! and the SIGUSR1 reopen ([`Msg::Reopen`]) travel the same queue, so
//! every line logged before them goes to the old sink and every line
//! after to the new one.
//!
//! If the writer thread dies (a panic: a bug), the queue's receiving end
//! goes with it and [`Queue::alive`] turns false. Logging never hangs on a
//! dead writer: a send then fails at once, session lines and lines of
//! threads that may not wait are dropped and counted, and a daemon event
//! of a thread that may wait is written directly to stderr (the file or
//! syslog connection died with the writer). Nothing restarts the writer
//! (what its queue held is gone with it): the supervisor sees
//! [`crate::observe::logging::writer_died`] on its next turn, says so on stderr
//! and exits with status 70, so the service manager restarts the daemon.
//!
//! This module must never write from a thread other than its own, except
//! in that fallback and before the writer starts (startup, while the
//! process has one thread), and must never block a sender that is not
//! allowed to wait.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::Level;

pub(crate) use crate::observe::log_line::Line;

/// The writer thread's name (what its death is reported as).
pub(crate) const THREAD: &str = "log-writer";

/// How many lines the queue holds. Small enough that a stalled sink costs
/// little memory (about 150 KiB of session lines), large enough to ride
/// out a writer that is briefly off the CPU.
pub(crate) const CAPACITY: usize = 1024;

/// Session lines are written when this many bytes wait.
pub(crate) const BATCH: usize = 32 * 1024;

/// The longest a session line waits in the writer's buffer.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// While lines are being dropped and the queue never empties, the drop
/// count is reported at most this often.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// Where the writer writes.
pub(crate) enum Sink {
    /// Standard error (the journal when `JOURNAL_STREAM` is set).
    Stderr,
    /// The local syslog daemon.
    Syslog(Box<Syslog>),
    /// A file opened for appending, by the path it was opened at.
    File { path: PathBuf, file: File },
}

/// What goes through the queue.
pub(crate) enum Msg {
    Line(Line),
    /// Write what waits to the old sink, then use this one.
    Install(Sink),
    /// Write what waits to the old file, then write to this one if the
    /// sink is still the file at `path`.
    Reopen {
        path: PathBuf,
        file: File,
    },
    /// Write what waits; answer when done, if asked.
    Flush(Option<SyncSender<()>>),
    /// Makes the writer panic (tests of a dead writer).
    #[cfg(test)]
    Panic,
}

thread_local! {
    /// This thread may wait for room in the queue ([`allow_waiting`]).
    static MAY_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Lets the calling thread wait for room in the log queue instead of
/// dropping its daemon events: for the supervisor and startup, never for
/// a thread that serves clients.
pub(crate) fn allow_waiting() {
    MAY_WAIT.with(|w| w.set(true));
}

/// True if the calling thread may wait for room in the log queue.
pub(crate) fn may_wait() -> bool {
    MAY_WAIT.with(|w| w.get())
}

/// What the senders and the writer share.
#[derive(Default)]
struct Counters {
    /// Lines dropped since start.
    dropped: AtomicU64,
    /// Lines dropped and not yet reported in the log.
    unreported: AtomicU64,
    /// The writer thread runs.
    alive: AtomicBool,
}

impl Counters {
    fn drop_one(&self) {
        self.dropped.fetch_add(1, Relaxed);
        self.unreported.fetch_add(1, Relaxed);
    }
}

/// The sending end of the log queue, and the writer thread behind it.
pub(crate) struct Queue {
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    /// stderr is the journal.
    journal: bool,
}

impl Queue {
    /// Starts the writer thread on `sink`, with a queue of `capacity`
    /// lines. If the thread cannot be started, the queue behaves as with
    /// a dead writer (see the module docs) and the error is returned with
    /// it.
    pub(crate) fn start(
        sink: Sink,
        journal: bool,
        capacity: usize,
    ) -> (Queue, Option<std::io::Error>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let counters = Arc::new(Counters::default());
        counters.alive.store(true, Relaxed);
        let writer = Writer {
            sink,
            journal,
            pending: String::with_capacity(BATCH + 1024),
            pending_since: None,
            json: false,
            last_report: Instant::now(),
            counters: counters.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || writer.run(rx));
        let error = spawned.err();
        if error.is_some() {
            counters.alive.store(false, Relaxed);
        }
        let queue = Queue {
            tx,
            counters,
            journal,
        };
        (queue, error)
    }

    /// Queues a line: see the module docs for what happens when the queue
    /// is full or the writer is gone. Never blocks unless the calling
    /// thread may wait and the line is a daemon event.
    pub(crate) fn send(&self, line: Line) {
        let wait = !line.session && may_wait();
        let result = if wait {
            self.tx
                .send(Msg::Line(line))
                .map_err(|e| TrySendError::Disconnected(e.0))
        } else {
            self.tx.try_send(Msg::Line(line))
        };
        match result {
            Ok(()) => {}
            Err(TrySendError::Disconnected(Msg::Line(line))) if wait => {
                line.write_to_stderr(self.journal)
            }
            Err(_) => self.counters.drop_one(),
        }
    }

    /// Sends a change of sink or a reopen, waiting for room (the caller
    /// is the supervisor). Returns false if the writer is gone.
    pub(crate) fn control(&self, msg: Msg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Has the writer write what waits in its buffer. With `wait`, also
    /// waits (at most that long, in all) until it has; returns true if it
    /// did in time. Without, only asks, if there is room.
    pub(crate) fn flush(&self, wait: Option<Duration>) -> bool {
        let Some(limit) = wait else {
            return self.tx.try_send(Msg::Flush(None)).is_ok();
        };
        let deadline = Instant::now() + limit;
        let (ack, done) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(Some(ack));
        // No send with a deadline in std: the exit path polls for room.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Lines dropped since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.counters.dropped.load(Relaxed)
    }

    /// The writer thread runs.
    pub(crate) fn alive(&self) -> bool {
        self.counters.alive.load(Relaxed)
    }
}

/// Marks the writer dead when its thread ends, however it ends.
struct AliveGuard(Arc<Counters>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Relaxed);
    }
}

/// The writer thread's state: the sink and the batch of session lines.
struct Writer {
    sink: Sink,
    journal: bool,
    /// Session lines not yet written (stderr and file sinks).
    pending: String,
    /// When the first of them came.
    pending_since: Option<Instant>,
    /// The format of the last line seen (for the writer's own line).
    json: bool,
    /// When dropped lines were last reported.
    last_report: Instant,
    counters: Arc<Counters>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let _alive = AliveGuard(self.counters.clone());
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => {
                    // The queue is empty: the sink took all it was given.
                    self.report_drops();
                    match self.wait(&rx) {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(()) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            #[cfg(feature = "fault-injection")]
            crate::fault::thread_event(THREAD);
            self.handle(msg);
            if self.last_report.elapsed() >= REPORT_EVERY {
                self.report_drops();
            }
        }
        self.write_pending();
    }

    /// Waits for the next message, or until the batch is due (then writes
    /// it and returns `None`); `Err` once every sender is gone.
    fn wait(&mut self, rx: &Receiver<Msg>) -> Result<Option<Msg>, ()> {
        let Some(since) = self.pending_since else {
            return rx.recv().map(Some).map_err(|_| ());
        };
        let left = FLUSH_AFTER.saturating_sub(since.elapsed());
        match rx.recv_timeout(left) {
            Ok(m) => Ok(Some(m)),
            Err(RecvTimeoutError::Timeout) => {
                self.write_pending();
                Ok(None)
            }
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Line(line) => self.line(&line),
            Msg::Install(sink) => {
                self.write_pending();
                self.sink = sink;
            }
            Msg::Reopen { path, file } => {
                // What waits belongs to the old file, which it was logged for.
                self.write_pending();
                if let Sink::File { path: p, file: f } = &mut self.sink {
                    if *p == path {
                        *f = file;
                    }
                }
            }
            Msg::Flush(ack) => {
                self.write_pending();
                let _ = std::io::stderr().flush();
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            }
            #[cfg(test)]
            Msg::Panic => panic!("log writer panic (test)"),
        }
    }

    /// Writes a line, or adds a session line to the batch.
    fn line(&mut self, line: &Line) {
        self.json = line.json;
        if let Sink::Syslog(s) = &mut self.sink {
            let body = line.body.as_str();
            let sent = match line.level {
                Level::Error => s.err(body),
                Level::Warn => s.warning(body),
                Level::Info => s.info(body),
                Level::Debug | Level::Trace => s.debug(body),
            };
            if sent.is_err() {
                line.write_to_stderr(self.journal);
            }
            return;
        }
        let journal = self.journal && matches!(self.sink, Sink::Stderr);
        line.write_into(&mut self.pending, journal);
        self.pending_since.get_or_insert_with(Instant::now);
        if !line.session || self.pending.len() >= BATCH {
            self.write_pending();
        }
    }

    /// Writes the waiting lines in one `write` (whole lines); to stderr
    /// if the file refuses them.
    fn write_pending(&mut self) {
        self.pending_since = None;
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

    /// Logs how many lines were dropped since the last report, if any.
    fn report_drops(&mut self) {
        self.last_report = Instant::now();
        let n = self.counters.unreported.swap(0, Relaxed);
        if n == 0 {
            return;
        }
        let line = crate::observe::log_line::render(
            &log::Record::builder()
                .level(Level::Warn)
                .target(module_path!())
                .args(format_args!("log sink was blocked: {n} lines dropped"))
                .build(),
            self.json,
        );
        self.line(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::time::SystemTime;

    /// A pipe: the read end, and the write end as a file sink.
    fn pipe_sink() -> (std::io::PipeReader, Sink) {
        let (r, w) = std::io::pipe().expect("pipe");
        let sink = Sink::File {
            path: PathBuf::from("pipe"),
            file: File::from(OwnedFd::from(w)),
        };
        (r, sink)
    }

    fn line(body: &str, session: bool) -> Line {
        Line {
            level: Level::Info,
            session,
            at: SystemTime::now(),
            body: body.to_string(),
            json: false,
        }
    }

    /// Reads from `r` until `needle` has arrived; returns all read.
    fn read_until(r: &mut std::io::PipeReader, needle: &str) -> String {
        let mut all = String::new();
        let mut buf = [0u8; 64 * 1024];
        while !all.contains(needle) {
            let n = r.read(&mut buf).expect("read pipe");
            assert!(n > 0, "pipe closed before {needle:?}: {all}");
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        all
    }

    #[test]
    fn a_stalled_sink_drops_session_lines_and_reports_them_once_it_drains() {
        let (mut r, sink) = pipe_sink();
        let (q, err) = Queue::start(sink, false, 8);
        assert!(err.is_none());
        // The pipe holds 64 KiB; far more than that plus the queue is sent
        // without reading, and no send blocks (this thread may not wait).
        let big = "x".repeat(1000);
        for _ in 0..200 {
            q.send(line(&big, true));
        }
        assert!(q.dropped() > 0, "nothing dropped");
        let dropped = q.dropped();
        // Every drop is reported once the writer catches up (in one line
        // unless the writer caught up for a moment while the test was
        // still sending).
        let mut all = String::new();
        let reported = |all: &str| -> u64 {
            all.split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .filter_map(|l| l.split("log sink was blocked: ").nth(1))
                .map(|rest| rest.split(' ').next().and_then(|n| n.parse().ok()))
                .map(|n: Option<u64>| n.expect("count in the report"))
                .sum()
        };
        while reported(&all) < dropped {
            all.push_str(&read_until(&mut r, "\n"));
        }
        assert_eq!(reported(&all), dropped, "{all}");
    }

    #[test]
    fn session_lines_are_batched_and_flushed_within_the_delay() {
        let (mut r, sink) = pipe_sink();
        let (q, _) = Queue::start(sink, false, CAPACITY);
        let t = Instant::now();
        q.send(line("one session", true));
        let got = read_until(&mut r, "one session");
        assert!(got.ends_with("INFO  one session\n"), "{got}");
        assert!(t.elapsed() >= FLUSH_AFTER, "written before the batch delay");
        q.send(line("a", true));
        q.send(line("event", false));
        let got = read_until(&mut r, "event");
        assert!(got.contains(" a\n") && got.ends_with(" event\n"), "{got}");
    }

    #[test]
    fn a_dead_writer_blocks_no_one_and_says_so() {
        let (_r, sink) = pipe_sink();
        let (q, _) = Queue::start(sink, false, 4);
        assert!(q.alive());
        assert!(q.control(Msg::Panic));
        let t = Instant::now();
        while q.alive() {
            assert!(t.elapsed() < Duration::from_secs(10), "writer still alive");
            std::thread::yield_now();
        }
        // Full or not, sends return at once and count the line.
        for _ in 0..10 {
            q.send(line("after", true));
        }
        assert_eq!(q.dropped(), 10);
        assert!(!q.flush(Some(Duration::from_secs(1))));
    }

    #[test]
    fn flush_waits_until_the_batch_is_written() {
        let (r, sink) = pipe_sink();
        let (q, _) = Queue::start(sink, false, CAPACITY);
        q.send(line("queued", true));
        assert!(q.flush(Some(Duration::from_secs(10))));
        // Written by now: a read that cannot block finds it.
        let mut r = File::from(OwnedFd::from(r));
        rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).expect("O_NONBLOCK");
        let mut buf = [0u8; 4096];
        let n = r.read(&mut buf).expect("the flushed line is in the pipe");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("queued"));
    }
}
