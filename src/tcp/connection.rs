//! One client connection: its transport, the echo bytes it has not taken
//! yet, where it is in its life, and the byte-level work of serving it.
//!
//! A `Connection` never waits. The worker that owns it calls
//! [`Connection::on_readable`] and [`Connection::on_writable`] when the
//! poller says so; each does as much as the transport allows without
//! blocking and reports what the worker must do next ([`Step`]). The socket
//! is registered once for both readiness kinds, edge-triggered, so serving a
//! message costs one `read` and one `write` after the wakeup — no
//! re-registration syscalls.
//!
//! Its life is one [`State`], each variant holding what that stage needs
//! and nothing else: awaiting a PROXY header (the bytes so far, the gate
//! that judges the client it names), echoing (the `disconnect` detector,
//! whether output ends a line, whether input is flowing, paused or ended),
//! closing (a final notice is queued), lingering (write side shut, input
//! discarded). A header buffer while echoing, a pause while closing, or
//! echo after the goodbye cannot be represented.
//!
//! The connection is generic over its [`Transport`] (see that module for
//! what it asks of one, and where TLS fits): the worker serves
//! `Connection<Stream>`, the default: a plain socket or a TLS session
//! (`crate::tcp::tls::stream`), an enum, so the echo path is static dispatch (one
//! branch on the tag, then the very socket call), and the unit tests here
//! drive the same code over an in-memory transport that returns short
//! reads, `WouldBlock`, the end of stream and errors when a test says.
//!
//! Backpressure lives here: echo that the client has not read is kept in a
//! pending buffer capped at `max_pending_bytes`; once the cap is reached the
//! connection stops reading (the kernel's receive window then pushes back on
//! the client) until the client drains it. A client that never reads thus
//! holds at most the cap in server memory and costs others nothing. The
//! poller's report that the client closed its side is an edge: a paused
//! connection keeps it, and once resumed reads on to the end of stream
//! whatever a short read suggests (a stall once seen in the half-close
//! tests).
//!
//! Closing is lingering, as nginx does it: after the final notice is
//! flushed the write side is shut down and input is discarded until the
//! client closes (or a short timeout), so a goodbye is never lost to a TCP
//! reset caused by unread input. A connection already saying goodbye says
//! nothing more: a later notice (the drain's) is dropped.
//!
//! This module must never block, never touch the poller, and never decide
//! timeouts: those are the worker's.

mod transport;

#[cfg(test)]
mod tests;

use std::io::{self, ErrorKind, Write};
use std::sync::Arc;

use crate::admission::{Admission, Gate, Listener, SourceHold};
use crate::observe::session::Session;
use crate::observe::stats::{CloseReason, Open};
use crate::protocol::{Detector, Notice, Scan};
use crate::tcp::affinity::Steer;
use crate::tcp::faults::{AtBudget, FaultState, TcpFaults};
use crate::tcp::proxy::{self, Parsed};

pub(crate) use transport::{Stream, Transport};

/// At most this many reads per readiness event before yielding to other
/// connections (fairness: one fast client cannot monopolise a worker).
const READ_BUDGET: usize = 16;

/// What the worker sees of a connection's [`State`]: which timeout
/// applies (idle while open, the lingering one once closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Awaiting its PROXY header, or echoing.
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

/// Where a connection is in its life, with what that stage needs.
///
/// `repr(u8)`: a plain tag byte, so the check on every event is one
/// compare (a niche in the header buffer would cost a few more).
#[derive(Debug)]
#[repr(u8)]
enum State {
    /// On a PROXY listener, before anything is echoed: the header's bytes
    /// so far, and who judges the client it names. Needs no memory of the
    /// poller's end-of-input report: it reads until `WouldBlock`, the end,
    /// or a whole header (and then echoes on in the same event).
    AwaitingHeader { got: Vec<u8>, gate: Arc<Gate> },
    /// Echoing what the client sends.
    Echoing(Echo),
    /// A final notice is queued: flush it, then linger. `input_ended`: the
    /// client had already closed its side, so there is nothing to linger
    /// for and the connection closes once the notice is out.
    Closing { input_ended: bool },
    /// Write side shut; discarding input until the client closes.
    Lingering,
}

/// What an echoing connection knows.
#[derive(Debug)]
struct Echo {
    /// Finds `disconnect` across reads.
    detector: Detector,
    /// Whether the last byte sent (or queued) ended a line; a notice after
    /// a partial line starts on a new line so it stays recognisable.
    at_line_start: bool,
    /// Whether the client's input still flows.
    input: Input,
}

impl Echo {
    fn new(end_reported: bool) -> Self {
        Echo {
            detector: Detector::default(),
            at_line_start: true,
            input: Input::Reading {
                paused: false,
                end_reported,
            },
        }
    }
}

/// The client's side of an echoing connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Reading when the poller says so.
    Reading {
        /// Stopped because the pending echo reached the cap; a writable
        /// event that drains below it resumes reading.
        paused: bool,
        /// The poller has reported the client's end of input. Kept,
        /// because that report is an edge: if it came while reading was
        /// paused, no later event repeats it, and a short read must not be
        /// taken to mean "nothing more until the next event" (the end of
        /// stream is next).
        end_reported: bool,
    },
    /// The client closed its sending side: finish writing, then close.
    Ended,
}

/// A client connection owned by one worker, over transport `T` (the
/// worker's is the TCP socket).
#[derive(Debug)]
pub(crate) struct Connection<T: Transport = Stream> {
    /// The client's transport (non-blocking; the worker registers it).
    stream: T,
    /// Where the connection is in its life.
    state: State,
    /// Echo (and notices) accepted from the client but not yet written.
    pending: Pending,
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
    /// On a `mode = "who"` listener: what the reply needs that `ends`
    /// will not say (see [`crate::who`]).
    who: Option<Box<WhoWait>>,
    /// The listener's faults in progress (delay, bandwidth, reset, stall,
    /// session end); `None` on a listener without faults, which keeps the
    /// echo path as it is without them.
    faults: Option<Box<FaultState>>,
}

/// A `who` connection before its reply: its TCP peer (a PROXY header
/// replaces `ends.peer`), and the worker serving it, once adopted.
#[derive(Debug)]
struct WhoWait {
    peer: std::net::SocketAddr,
    worker: u64,
}

impl Connection {
    /// Best-effort single write of a notice on a socket that is about to be
    /// dropped (busy refusals, forced closes at the drain deadline).
    pub(crate) fn send_last_words(stream: &mut impl Write, notice: Notice) -> io::Result<()> {
        stream.write_all(notice.line().as_bytes())
    }
}

impl<T: Transport> Connection<T> {
    /// Wraps an accepted, non-blocking transport; `open` counts it.
    pub(crate) fn new(stream: T, open: Open, ends: Ends) -> Self {
        Connection {
            stream,
            state: State::Echoing(Echo::new(false)),
            pending: Pending::default(),
            reads_since_placed: 0,
            steer: Steer::placed_at(std::time::Instant::now()),
            session: Session::new(),
            _open: open,
            source: None,
            ends,
            who: None,
            faults: None,
        }
    }

    /// Makes the connection answer with the `who` reply instead of
    /// echoing, as soon as it would start echoing (after its PROXY header,
    /// if one is expected). Call before the first event.
    pub(crate) fn ask_who(&mut self) {
        self.who = Some(Box::new(WhoWait {
            peer: self.ends.peer,
            worker: 0,
        }));
    }

    /// Adopted by `worker`: a `who` connection that is not waiting for a
    /// header answers now (`Some`: what the worker must do next); one
    /// that is answers once the header arrives.
    pub(crate) fn answer_who(&mut self, worker: u64) -> Option<Step> {
        let wait = self.who.as_mut()?;
        wait.worker = worker;
        match self.state {
            State::Echoing(_) => Some(self.reply_who()),
            _ => None,
        }
    }

    /// Sends the `who` reply as the connection's last words, then closes
    /// (lingering, as after a goodbye).
    fn reply_who(&mut self) -> Step {
        let Some(wait) = self.who.take() else {
            return Step::Wait;
        };
        let line = crate::who::Reply::now(crate::who::Asked {
            listener: self.ends.local,
            client: self.ends.peer,
            peer: wait.peer,
            worker: Some(wait.worker),
        })
        .line();
        self.session.end(CloseReason::Who);
        self.pending.push(&line);
        self.state = State::Closing { input_ended: false };
        if let Err(step) = self.flush() {
            return step;
        }
        self.linger_when_flushed()
    }

    /// Applies a listener's faults to this connection, accepted `now`:
    /// its banner is queued first. Call before the first event.
    pub(crate) fn impair(&mut self, plan: Arc<TcpFaults>, now: std::time::Instant) {
        if let Some(banner) = plan.banner() {
            self.pending.push(banner);
        }
        self.faults = Some(Box::new(FaultState::new(plan, now)));
    }

    /// True if it must close with a reset (`reset_after_bytes`).
    pub(crate) fn resetting(&self) -> bool {
        self.faults.as_ref().is_some_and(|f| f.resetting())
    }

    /// The fault deadline the worker must add to its timers, if any is
    /// earlier than the one it holds (see [`FaultState::deadline_to_arm`]).
    pub(crate) fn fault_deadline(&mut self) -> Option<std::time::Instant> {
        let pending = self.pending.len();
        self.faults.as_mut()?.deadline_to_arm(pending)
    }

    /// The connection arrived on another worker: its timers hold nothing.
    pub(crate) fn fault_disarm(&mut self) {
        if let Some(f) = &mut self.faults {
            f.disarm();
        }
    }

    /// A fault timer for `at` rang: releases the echo due, writes what
    /// may go, closes the session past `close_after`. `cap` as for
    /// [`Connection::on_writable`].
    pub(crate) fn on_fault_timer(&mut self, at: std::time::Instant, cap: usize) -> Step {
        let now = std::time::Instant::now();
        let Some(f) = &mut self.faults else {
            return Step::Wait;
        };
        if !f.rang(at) {
            return Step::Wait;
        }
        if f.close_due(now) {
            f.closing();
            return self.finish(Notice::SessionLimit);
        }
        self.on_writable(cap)
    }

    /// With a byte budget (`reset_after_bytes`, `stall_after_bytes`): how
    /// many bytes may still be read, or, spent, what to do instead.
    #[inline]
    fn budget(&mut self) -> Option<Result<usize, Step>> {
        let (left, then) = self.faults.as_ref()?.budget()?;
        if left > 0 {
            return Some(Ok(usize::try_from(left).unwrap_or(usize::MAX)));
        }
        Some(Err(match then {
            AtBudget::Stall => Step::Wait,
            AtBudget::Reset => self.reset_when_flushed(),
        }))
    }

    /// Past `reset_after_bytes`: once the echo is out, closes with a reset.
    fn reset_when_flushed(&mut self) -> Step {
        let Some(f) = &mut self.faults else {
            return Step::Wait;
        };
        let spent = f
            .budget()
            .is_some_and(|(left, then)| left == 0 && then == AtBudget::Reset);
        if !spent || self.pending.len() > 0 {
            return Step::Wait;
        }
        f.reset();
        self.session.end(CloseReason::Error);
        Step::Close
    }

    /// Makes the connection wait for a PROXY header before anything is
    /// echoed (see [`crate::tcp::proxy`]); `gate` then judges the client it
    /// names, as the accept loop judges a direct client. Call before the
    /// first event.
    pub(crate) fn expect_proxy_header(&mut self, gate: Arc<Gate>) {
        self.state = State::AwaitingHeader {
            got: Vec::new(),
            gate,
        };
    }

    /// Counts the connection in its source from now on.
    pub(crate) fn hold_source(&mut self, hold: SourceHold) {
        self.source = Some(hold);
    }

    /// True while the PROXY header has not arrived.
    pub(crate) fn awaiting_header(&self) -> bool {
        matches!(self.state, State::AwaitingHeader { .. })
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

    /// The transport, for (de)registration with a poller.
    pub(crate) fn stream_mut(&mut self) -> &mut T {
        &mut self.stream
    }

    /// The transport, for asking about it.
    pub(crate) fn stream(&self) -> &T {
        &self.stream
    }

    /// True if nothing waits to be written (the echo went out in full).
    pub(crate) fn all_sent(&self) -> bool {
        self.pending.len() == 0
    }

    /// True if neither the connection nor its transport has bytes to send.
    fn flushed(&self) -> bool {
        self.pending.len() == 0 && !self.stream.wants_write()
    }

    /// Its session record.
    pub(crate) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Logs the session line (see [`Session::log`]).
    pub(crate) fn log_session(&self) {
        let tls = self.stream.tls_summary();
        self.session.log(self.ends.peer, self.ends.local, tls);
    }

    /// The current phase (the worker's view of the state).
    pub(crate) fn phase(&self) -> Phase {
        match self.state {
            State::AwaitingHeader { .. } | State::Echoing(_) => Phase::Open,
            State::Closing { .. } => Phase::Closing,
            State::Lingering => Phase::Lingering,
        }
    }

    /// Reads and echoes what the client sent, within the read budget.
    /// `buf` is the worker's scratch buffer; `cap` the pending-bytes cap;
    /// `end_reported` whether this event reports the client's end of input.
    pub(crate) fn on_readable(
        &mut self,
        buf: &mut [u8],
        cap: usize,
        end_reported: bool,
    ) -> (Step, ReadReport) {
        let mut report = ReadReport::default();
        let step = self.read(buf, cap, end_reported, &mut report);
        (step, report)
    }

    /// [`Connection::on_readable`]'s work, by state.
    fn read(&mut self, buf: &mut [u8], cap: usize, end: bool, report: &mut ReadReport) -> Step {
        let step = match self.state {
            State::Echoing(_) => self.read_echo(buf, cap, end, report),
            State::AwaitingHeader { .. } => match self.read_header(buf, end, report) {
                Some(step) => step,
                None => self.read_echo(buf, cap, end, report),
            },
            State::Closing { .. } => Step::Wait,
            State::Lingering => self.discard_input(buf),
        };
        if step == Step::Close || !self.stream.wants_write() {
            return step;
        }
        // Reading may have given the transport something to say (a TLS
        // handshake answer); a plain socket never has.
        match self.flush() {
            Ok(()) => step,
            Err(close) => close,
        }
    }

    /// The echo loop: reads (at most the room left under `cap`) and echoes
    /// each chunk, until the transport is drained, the budget is spent, the
    /// cap is reached, or the client's input ends.
    fn read_echo(
        &mut self,
        buf: &mut [u8],
        cap: usize,
        end_reported: bool,
        report: &mut ReadReport,
    ) -> Step {
        let end_reported = match self.start_reading(end_reported) {
            Ok(end_reported) => end_reported,
            Err(step) => return step,
        };
        for _ in 0..READ_BUDGET {
            let room = cap.saturating_sub(self.pending.len());
            if room == 0 {
                self.set_input(Input::Reading {
                    paused: true,
                    end_reported,
                });
                return Step::Wait;
            }
            let mut want = room.min(buf.len());
            match self.budget() {
                None => {}
                Some(Ok(left)) => want = want.min(left),
                Some(Err(step)) => return step,
            }
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => {
                    self.set_input(Input::Ended);
                    self.session.end(CloseReason::Client);
                    // Half-close: the client may still be reading its echo.
                    return self.close_when_flushed();
                }
                Ok(n) => {
                    if let Some(step) = self.take(&buf[..n], report) {
                        return step;
                    }
                    // A short read drained the socket; with edge-triggered
                    // readiness a later arrival raises a new event. When the
                    // peer has closed, read on to see the end of stream.
                    if self.stream.short_read_drains() && n < want && !end_reported {
                        return Step::Wait;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.session.end(CloseReason::Error);
                    return Step::Close;
                }
            }
        }
        Step::Again
    }

    /// Before an echo read: clears the pause (reading goes on) and keeps
    /// this event's end-of-input report with the earlier ones. `Ok`: whether
    /// the end was ever reported; `Err`: what to do instead of reading.
    fn start_reading(&mut self, end_reported: bool) -> Result<bool, Step> {
        match &mut self.state {
            State::Echoing(Echo {
                input:
                    Input::Reading {
                        paused,
                        end_reported: earlier,
                    },
                ..
            }) => {
                *paused = false;
                *earlier |= end_reported;
                Ok(*earlier)
            }
            State::Echoing(_) => Err(self.close_when_flushed()),
            _ => Err(Step::Wait),
        }
    }

    /// The client's input, while echoing.
    fn input(&self) -> Option<Input> {
        match &self.state {
            State::Echoing(echo) => Some(echo.input),
            _ => None,
        }
    }

    fn set_input(&mut self, input: Input) {
        if let State::Echoing(echo) = &mut self.state {
            echo.input = input;
        }
    }

    /// Echoes one chunk as read; `Some` if the worker must act at once
    /// (the client said `disconnect`, or the socket failed).
    fn take(&mut self, chunk: &[u8], report: &mut ReadReport) -> Option<Step> {
        report.bytes_in += chunk.len();
        self.session.received(chunk.len());
        if let Some(f) = &mut self.faults {
            f.took(chunk.len());
        }
        #[cfg(feature = "fault-injection")]
        crate::fault::check(chunk);
        let State::Echoing(echo) = &mut self.state else {
            return None;
        };
        match echo.detector.scan(chunk) {
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
    /// bytes after it taken as the client's, echoing goes on); else what
    /// the worker must do: wait for more, or close (a refused header, or
    /// the client left first).
    fn read_header(
        &mut self,
        buf: &mut [u8],
        end_reported: bool,
        report: &mut ReadReport,
    ) -> Option<Step> {
        loop {
            let State::AwaitingHeader { got, .. } = &mut self.state else {
                return None;
            };
            let want = (proxy::MAX_HEADER - got.len()).min(buf.len());
            match self.stream.read_raw(&mut buf[..want]) {
                Ok(0) => return Some(Step::Close),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(Step::Wait),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Some(Step::Close),
            }
            match proxy::parse(got) {
                Parsed::Incomplete => continue,
                Parsed::Invalid(why) => {
                    report.header = Some(HeaderOutcome::Refused(why));
                    self.session.end(CloseReason::Proxy);
                    return Some(Step::Close);
                }
                Parsed::Header { len, source } => {
                    return self.header_arrived(len, source, end_reported, report);
                }
            }
        }
    }

    /// A whole header of `len` bytes naming `source`: judges the client,
    /// then echoes what followed the header.
    fn header_arrived(
        &mut self,
        len: usize,
        source: Option<std::net::SocketAddr>,
        end_reported: bool,
        report: &mut ReadReport,
    ) -> Option<Step> {
        let echo = State::Echoing(Echo::new(end_reported));
        let State::AwaitingHeader { mut got, gate } = std::mem::replace(&mut self.state, echo)
        else {
            return None;
        };
        if let Some(client) = source {
            self.ends.peer = client;
        }
        if let Some(step) = self.admit_client(&gate) {
            report.header = Some(HeaderOutcome::Denied);
            return Some(step);
        }
        report.header = Some(HeaderOutcome::Accepted);
        if self.who.is_some() {
            // What followed the header is not echoed: the reply is all.
            return Some(self.reply_who());
        }
        let rest = got.split_off(len);
        if rest.is_empty() {
            return None;
        }
        // Behind the header, TLS takes its first records itself.
        match self.stream.take_early(&rest) {
            Ok(true) => None,
            Ok(false) => self.take(&rest, report),
            Err(_) => {
                self.session.end(CloseReason::Error);
                Some(Step::Close)
            }
        }
    }

    /// The access rules and the per-source limits for the client a PROXY
    /// header named (the peer itself for a `LOCAL` header): `None` if it
    /// is admitted, else the step that closes it — at once for a rule, after
    /// the busy notice for a limit.
    fn admit_client(&mut self, gate: &Gate) -> Option<Step> {
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
    #[inline]
    pub(crate) fn on_writable(&mut self, cap: usize) -> Step {
        if let Err(step) = self.flush() {
            return step;
        }
        if self.faults.is_some() && self.reset_when_flushed() == Step::Close {
            return Step::Close;
        }
        // Echoing with input flowing: the event that comes with each
        // round trip.
        if let State::Echoing(Echo {
            input: Input::Reading { paused, .. },
            ..
        }) = &mut self.state
        {
            if !*paused || self.pending.len() >= cap {
                return Step::Wait;
            }
            *paused = false;
            return Step::Again;
        }
        match self.state {
            State::Echoing(_) => self.close_when_flushed(),
            State::Closing { .. } => self.linger_when_flushed(),
            State::AwaitingHeader { .. } | State::Lingering => Step::Wait,
        }
    }

    /// Queues a notice and keeps the connection open (used for the drain
    /// notice: the client may go on). A connection already saying its
    /// goodbye gets no second notice.
    pub(crate) fn notify(&mut self, notice: Notice) -> Step {
        if !self.queue_notice(notice) {
            return Step::Wait;
        }
        if let Err(step) = self.flush() {
            return step;
        }
        match self.input() {
            // A half-closed client waited only for its echo.
            Some(Input::Ended) => self.close_when_flushed(),
            _ => Step::Wait,
        }
    }

    /// Sends a final notice, then closes (lingering).
    pub(crate) fn finish(&mut self, notice: Notice) -> Step {
        let input_ended = match self.state {
            State::AwaitingHeader { .. } => false,
            State::Echoing(ref echo) => echo.input == Input::Ended,
            State::Closing { .. } | State::Lingering => return Step::Wait,
        };
        self.session.end(match notice {
            Notice::Goodbye => CloseReason::Disconnect,
            Notice::Idle(_) | Notice::SessionLimit => CloseReason::Idle,
            Notice::Busy(_)
            | Notice::SourceBusy(_)
            | Notice::SourceRate { .. }
            | Notice::ShuttingDown => CloseReason::Drain,
            Notice::Unavailable => CloseReason::Error,
        });
        self.queue_notice(notice);
        self.state = State::Closing { input_ended };
        if let Err(step) = self.flush() {
            return step;
        }
        self.linger_when_flushed()
    }

    /// Queues a notice line, on a line of its own; false (nothing queued)
    /// once the connection is closing.
    fn queue_notice(&mut self, notice: Notice) -> bool {
        let at_line_start = match &mut self.state {
            State::AwaitingHeader { .. } => true,
            State::Echoing(echo) => std::mem::replace(&mut echo.at_line_start, true),
            State::Closing { .. } | State::Lingering => return false,
        };
        let line = notice.line();
        let mut len = line.len();
        if !at_line_start {
            self.pending.push(b"\r\n");
            len += 2;
        }
        self.pending.push(line.as_bytes());
        if let Some(f) = &mut self.faults {
            f.follow(len);
        }
        true
    }

    /// Echoes `data`: straight to the transport when nothing is queued,
    /// else behind what is queued.
    fn send(&mut self, data: &[u8]) -> Result<(), Step> {
        let Some(&last) = data.last() else {
            return Ok(());
        };
        if let State::Echoing(echo) = &mut self.state {
            echo.at_line_start = last == b'\n';
        }
        if let Some(f) = &mut self.faults {
            self.pending.push(data);
            if let Some(due) = f.due(std::time::Instant::now()) {
                f.hold(due, data.len());
            }
            return self.flush();
        }
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

    /// Writes what is pending, then whatever the transport has of its own.
    fn flush(&mut self) -> Result<(), Step> {
        if self.faults.is_some() {
            if self.flush_impaired()? {
                return Ok(());
            }
        } else {
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
        }
        while self.stream.wants_write() {
            match self.stream.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Step::Close),
            }
        }
        Ok(())
    }

    /// [`Connection::flush`]'s writes with faults: only what is not held,
    /// within the bandwidth's tokens. `Ok(true)` when the transport would
    /// block; bytes held or waiting for tokens stay pending (a fault
    /// deadline releases them).
    #[cold]
    fn flush_impaired(&mut self) -> Result<bool, Step> {
        let Some(f) = &mut self.faults else {
            return Ok(false);
        };
        loop {
            let n = f.writable(self.pending.len(), std::time::Instant::now());
            if n == 0 {
                break;
            }
            match self.stream.write(&self.pending.bytes()[..n]) {
                Ok(0) => return Err(Step::Close),
                Ok(w) => {
                    f.wrote(w);
                    self.pending.consume(w);
                    self.session.sent(w);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Step::Close),
            }
        }
        Ok(false)
    }

    fn close_when_flushed(&self) -> Step {
        if self.flushed() {
            Step::Close
        } else {
            Step::Wait
        }
    }

    fn linger_when_flushed(&mut self) -> Step {
        if self.flushed() {
            self.linger()
        } else {
            Step::Wait
        }
    }

    /// Shuts the write side and starts discarding input (or closes, if the
    /// client's input had ended already).
    fn linger(&mut self) -> Step {
        let State::Closing { input_ended } = self.state else {
            return Step::Wait;
        };
        self.state = State::Lingering;
        if self.stream.shutdown_write().is_err() || input_ended {
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
}
