//! One client connection: its socket, the echo bytes it has not taken yet,
//! and the byte-level work of serving it.
//!
//! A `Connection` never waits. The worker that owns it calls
//! [`Connection::on_readable`] and [`Connection::on_writable`] when the
//! poller says so; each does as much as the socket allows without blocking
//! and reports what the worker must do next ([`Step`]). The socket is
//! registered once for both readiness kinds, edge-triggered, so serving a
//! message costs one `read` and one `write` after the wakeup — no
//! re-registration syscalls.
//!
//! Backpressure lives here: echo that the client has not read is kept in a
//! pending buffer capped at `max_pending_bytes`; once the cap is reached the
//! connection stops reading (the kernel's receive window then pushes back on
//! the client) until the client drains it. A client that never reads thus
//! holds at most the cap in server memory and costs others nothing.
//!
//! Closing is lingering, as nginx does it: after the final notice is
//! flushed the write side is shut down and input is discarded until the
//! client closes (or a short timeout), so a goodbye is never lost to a TCP
//! reset caused by unread input.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;

use crate::admission::{Admission, Gate, Listener, SourceHold};
use crate::affinity::Steer;
use crate::protocol::{Detector, Notice, Scan};
use crate::proxy::{self, Parsed};
use crate::session::Session;
use crate::stats::{CloseReason, Open};

/// At most this many reads per readiness event before yielding to other
/// connections (fairness: one fast client cannot monopolise a worker).
const READ_BUDGET: usize = 16;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Echoing.
    Open,
    /// A final notice is queued; close once it is flushed.
    Closing,
    /// Write side shut; discarding input until the client closes.
    Lingering,
}

/// What the worker must do after an event was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing special; wait for the next event.
    Wait,
    /// The read budget ran out with input possibly left: handle again soon.
    Again,
    /// The connection is finished: deregister and drop it.
    Close,
}

/// Result of one readable event, for the worker's bookkeeping.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadReport {
    /// Bytes read from the client (a PROXY header not included).
    pub bytes_in: usize,
    /// The client said `disconnect`.
    pub disconnected: bool,
    /// What became of the PROXY header this read completed or refused.
    pub header: Option<HeaderOutcome>,
}

/// The end of a connection's wait for its PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderOutcome {
    /// A valid header; [`Connection::ends`] now names the client it gave.
    Accepted,
    /// Not a valid header: the connection must close.
    Refused(String),
    /// A valid header naming a client the access rules or its source's
    /// limits refuse (the admission logged it): closed at once, or after
    /// the busy notice.
    Denied,
}

/// Echo bytes not yet written, consumed from the front.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    pos: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.pos = 0;
            self.buf.clear();
            // An idle connection should not keep a burst's worth of memory.
            if self.buf.capacity() > 16 * 1024 {
                self.buf = Vec::new();
            }
        }
    }
}

/// How many data-bearing reads between placement checks.
pub(crate) const PLACEMENT_EVERY: u32 = 64;

/// Who a connection is between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ends {
    /// The client: the TCP peer, or the source a PROXY header names.
    pub peer: std::net::SocketAddr,
    /// The address the client reached (the listener's), if known.
    pub local: Option<std::net::SocketAddr>,
}

/// A client connection owned by one worker.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The client's socket (non-blocking, registered with the worker).
    stream: TcpStream,
    /// Echo (and notices) accepted from the client but not yet written.
    pending: Pending,
    /// Finds `disconnect` across reads.
    detector: Detector,
    /// Whether the last byte sent (or queued) ended a line; a notice after
    /// a partial line starts on a new line so it stays recognisable.
    at_line_start: bool,
    /// Where the connection is in its life.
    phase: Phase,
    /// The client closed its sending side; finish writing, then close.
    read_closed: bool,
    /// Reading stopped because `pending` reached the cap.
    paused: bool,
    /// The poller has reported the client's end of input. Kept, because
    /// that report is an edge: if it came while reading was paused, no
    /// later event repeats it, and a short read must not be taken to mean
    /// "nothing more until the next event" (the end of stream is next).
    end_reported: bool,
    /// Reads that brought data since the worker last asked where this
    /// connection's packets arrive (see [`Connection::placement_due`]).
    reads_since_placed: u32,
    /// When it may move to another worker (`cpu_affinity`).
    steer: Steer,
    /// How long, how much, why it ended (the session log).
    session: Session,
    /// Counts the connection as open while it lives.
    _open: Open,
    /// Counts the connection in its source (per-source limits) while it
    /// lives; set once the client's address is known.
    source: Option<SourceHold>,
    /// Who it is between.
    ends: Ends,
    /// On a PROXY listener, until the header is read: the bytes so far.
    header: Option<Vec<u8>>,
    /// On a PROXY listener: who judges the client the header names.
    gate: Option<Arc<Gate>>,
}

impl Connection {
    /// Wraps an accepted, non-blocking stream; `open` counts it.
    pub(crate) fn new(stream: TcpStream, open: Open, ends: Ends) -> Self {
        Connection {
            stream,
            pending: Pending::default(),
            detector: Detector::default(),
            at_line_start: true,
            phase: Phase::Open,
            read_closed: false,
            paused: false,
            end_reported: false,
            reads_since_placed: 0,
            steer: Steer::placed_at(std::time::Instant::now()),
            session: Session::new(),
            _open: open,
            source: None,
            ends,
            header: None,
            gate: None,
        }
    }

    /// Makes the connection wait for a PROXY header before anything is
    /// echoed (see [`crate::proxy`]); `gate` then judges the client it
    /// names, as the accept loop judges a direct client.
    pub(crate) fn expect_proxy_header(&mut self, gate: Arc<Gate>) {
        self.header = Some(Vec::new());
        self.gate = Some(gate);
    }

    /// Counts the connection in its source from now on.
    pub(crate) fn hold_source(&mut self, hold: SourceHold) {
        self.source = Some(hold);
    }

    /// True while the PROXY header has not arrived.
    pub(crate) fn awaiting_header(&self) -> bool {
        self.header.is_some()
    }

    /// Who the connection is between.
    pub(crate) fn ends(&self) -> Ends {
        self.ends
    }

    /// Restarts the dwell time: the connection arrived on a new worker.
    pub(crate) fn placed(&mut self, now: std::time::Instant) {
        self.steer = Steer::placed_at(now);
        self.reads_since_placed = 0;
    }

    /// Its placement history, to decide whether it moves.
    pub(crate) fn steer_mut(&mut self) -> &mut Steer {
        &mut self.steer
    }

    /// Counts a read that brought data; true every [`PLACEMENT_EVERY`]th,
    /// when the worker checks that the connection is on the CPU its
    /// packets arrive on (one getsockopt per that many reads).
    pub(crate) fn placement_due(&mut self) -> bool {
        self.reads_since_placed += 1;
        if self.reads_since_placed >= PLACEMENT_EVERY {
            self.reads_since_placed = 0;
            true
        } else {
            false
        }
    }

    /// The socket, for (de)registration with a poller.
    pub(crate) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The socket, for asking about it.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// True if nothing waits to be written (the echo went out in full).
    pub(crate) fn all_sent(&self) -> bool {
        self.pending.len() == 0
    }

    /// Its session record.
    pub(crate) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Logs the session line (see [`Session::log`]).
    pub(crate) fn log_session(&self) {
        self.session.log(self.ends.peer, self.ends.local);
    }

    /// The current phase.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Reads and echoes what the client sent, within the read budget.
    /// `buf` is the worker's scratch buffer; `cap` the pending-bytes cap.
    pub(crate) fn on_readable(
        &mut self,
        buf: &mut [u8],
        cap: usize,
        read_closed_hint: bool,
    ) -> (Step, ReadReport) {
        let mut report = ReadReport::default();
        self.end_reported |= read_closed_hint;
        if self.phase == Phase::Lingering {
            return (self.discard_input(buf), report);
        }
        if self.header.is_some() {
            if let Some(step) = self.read_header(buf, &mut report) {
                return (step, report);
            }
        }
        for _ in 0..READ_BUDGET {
            if self.phase != Phase::Open || self.read_closed {
                break;
            }
            let room = cap.saturating_sub(self.pending.len());
            if room == 0 {
                self.paused = true;
                return (Step::Wait, report);
            }
            let want = room.min(buf.len());
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    self.read_closed = true;
                    self.session.end(CloseReason::Client);
                    break;
                }
                Ok(n) => {
                    if let Some(step) = self.take(&buf[..n], &mut report) {
                        return (step, report);
                    }
                    // A short read drained the socket; with edge-triggered
                    // readiness a later arrival raises a new event. When the
                    // peer has closed, read on to see the end of stream.
                    if n < want && !self.end_reported {
                        return (Step::Wait, report);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return (Step::Wait, report),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.session.end(CloseReason::Error);
                    return (Step::Close, report);
                }
            }
        }
        if self.read_closed {
            // Half-close: the client may still be reading its echo.
            return (self.close_when_flushed(), report);
        }
        if self.phase == Phase::Open {
            (Step::Again, report)
        } else {
            (Step::Wait, report)
        }
    }

    /// Echoes one chunk as read; `Some` if the worker must act at once
    /// (the client said `disconnect`, or the socket failed).
    fn take(&mut self, chunk: &[u8], report: &mut ReadReport) -> Option<Step> {
        report.bytes_in += chunk.len();
        self.session.received(chunk.len());
        #[cfg(feature = "fault-injection")]
        crate::fault::check(chunk);
        match self.detector.scan(chunk) {
            Scan::Echo => self.send(chunk).err(),
            Scan::Disconnect { echo } => {
                report.disconnected = true;
                self.session.end(CloseReason::Disconnect);
                if let Err(step) = self.send(&chunk[..echo]) {
                    return Some(step);
                }
                Some(self.finish(Notice::Goodbye))
            }
        }
    }

    /// Reads toward the PROXY header. `None` once it is complete (the
    /// bytes after it taken as the client's, reading goes on); else what
    /// the worker must do: wait for more, or close (a refused header, or
    /// the client left first).
    fn read_header(&mut self, buf: &mut [u8], report: &mut ReadReport) -> Option<Step> {
        let mut got = self.header.take().unwrap_or_default();
        loop {
            let want = (proxy::MAX_HEADER - got.len()).min(buf.len());
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => return Some(Step::Close),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.header = Some(got);
                    return Some(Step::Wait);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Some(Step::Close),
            }
            match proxy::parse(&got) {
                Parsed::Incomplete => continue,
                Parsed::Invalid(why) => {
                    report.header = Some(HeaderOutcome::Refused(why));
                    self.session.end(CloseReason::Proxy);
                    return Some(Step::Close);
                }
                Parsed::Header { len, source } => {
                    if let Some(client) = source {
                        self.ends.peer = client;
                    }
                    if let Some(step) = self.admit_client() {
                        report.header = Some(HeaderOutcome::Denied);
                        return Some(step);
                    }
                    report.header = Some(HeaderOutcome::Accepted);
                    let rest = got.split_off(len);
                    if rest.is_empty() {
                        return None;
                    }
                    return self.take(&rest, report);
                }
            }
        }
    }

    /// The access rules and the per-source limits for the client a PROXY
    /// header named (the peer itself for a `LOCAL` header): `None` if it
    /// is admitted, else the step that closes it — at once for a rule, after
    /// the busy notice for a limit.
    fn admit_client(&mut self) -> Option<Step> {
        let gate = self.gate.take()?;
        let client = self.ends.peer.ip();
        if !gate.allows(client, self.ends.local.map(Listener::Tcp)) {
            self.session.end(CloseReason::Proxy);
            return Some(Step::Close);
        }
        match gate.admit(client) {
            Admission::Admit(hold) => {
                self.source = Some(hold);
                None
            }
            Admission::Refuse(notice) => Some(self.finish(notice)),
        }
    }

    /// Writes what is pending; resumes reading if backpressure eased.
    /// Returns `Again` when reading should resume right away.
    pub(crate) fn on_writable(&mut self, cap: usize) -> Step {
        if let Err(step) = self.flush() {
            return step;
        }
        match self.phase {
            Phase::Closing if self.pending.len() == 0 => self.linger(),
            Phase::Open if self.read_closed && self.pending.len() == 0 => Step::Close,
            Phase::Open if self.paused && self.pending.len() < cap => {
                self.paused = false;
                Step::Again
            }
            _ => Step::Wait,
        }
    }

    /// Queues a notice and keeps the connection open (used for the drain
    /// notice: the client may go on).
    pub(crate) fn notify(&mut self, notice: Notice) -> Step {
        self.queue_notice(notice);
        match self.flush() {
            Ok(()) => Step::Wait,
            Err(step) => step,
        }
    }

    /// Sends a final notice, then closes (lingering).
    pub(crate) fn finish(&mut self, notice: Notice) -> Step {
        if self.phase != Phase::Open {
            return Step::Wait;
        }
        self.session.end(match notice {
            Notice::Goodbye => CloseReason::Disconnect,
            Notice::Idle(_) => CloseReason::Idle,
            Notice::Busy(_)
            | Notice::SourceBusy(_)
            | Notice::SourceRate { .. }
            | Notice::ShuttingDown => CloseReason::Drain,
            Notice::Unavailable => CloseReason::Error,
        });
        self.queue_notice(notice);
        self.phase = Phase::Closing;
        if let Err(step) = self.flush() {
            return step;
        }
        if self.pending.len() == 0 {
            self.linger()
        } else {
            Step::Wait
        }
    }

    fn queue_notice(&mut self, notice: Notice) {
        if !self.at_line_start {
            self.pending.push(b"\r\n");
        }
        self.pending.push(notice.line().as_bytes());
        self.at_line_start = true;
    }

    /// Echoes `data`: straight to the socket when nothing is queued, else
    /// behind what is queued.
    fn send(&mut self, data: &[u8]) -> Result<(), Step> {
        if data.is_empty() {
            return Ok(());
        }
        self.at_line_start = data.last() == Some(&b'\n');
        if self.pending.len() > 0 {
            self.pending.push(data);
            return Ok(());
        }
        let mut written = 0;
        while written < data.len() {
            match self.stream.write(&data[written..]) {
                Ok(0) => return Err(Step::Close),
                Ok(n) => {
                    written += n;
                    self.session.sent(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Step::Close),
            }
        }
        if written < data.len() {
            self.pending.push(&data[written..]);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Step> {
        while self.pending.len() > 0 {
            match self.stream.write(self.pending.bytes()) {
                Ok(0) => return Err(Step::Close),
                Ok(n) => {
                    self.pending.consume(n);
                    self.session.sent(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Step::Close),
            }
        }
        Ok(())
    }

    fn close_when_flushed(&mut self) -> Step {
        if self.pending.len() == 0 {
            Step::Close
        } else {
            Step::Wait
        }
    }

    /// Shuts the write side and starts discarding input.
    fn linger(&mut self) -> Step {
        self.phase = Phase::Lingering;
        if self.stream.shutdown(Shutdown::Write).is_err() || self.read_closed {
            return Step::Close;
        }
        Step::Again
    }

    fn discard_input(&mut self, buf: &mut [u8]) -> Step {
        for _ in 0..READ_BUDGET {
            match self.stream.read(buf) {
                Ok(0) => return Step::Close,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Step::Close,
            }
        }
        Step::Again
    }

    /// Best-effort single write of a notice on a socket that is about to be
    /// dropped (busy refusals, forced closes at the drain deadline).
    pub(crate) fn send_last_words(stream: &mut impl Write, notice: Notice) -> io::Result<()> {
        stream.write_all(notice.line().as_bytes())
    }
}
