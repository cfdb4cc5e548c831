//! A worker: one thread of the pool, its own event loop, and the
//! connections it owns.
//!
//! The model is memcached's: the accept loop hands each new connection to
//! one worker, and from then on that worker alone serves it — reads, echo,
//! idle timeout, close — with no per-message hand-off between threads and no
//! lock on the hot path. A connection waiting for data costs a slab slot
//! and an epoll registration, never a thread, so `pool_size` threads hold
//! tens of thousands of clients. Apache's event MPM (one poller handing
//! ready connections to workers) was the alternative; it pays a cross-thread
//! wakeup per message. Here a message costs `epoll_wait`, `read`, `write` on
//! the thread that was already waiting.
//!
//! The loop never blocks except in `epoll_wait`, which wakes at the latest
//! at the nearest deadline (idle, lingering close, drain) or the heartbeat
//! period: a [`WakeTimer`] in the same poller rings then, so the wait
//! itself needs no timeout (and the kernel no timer per sleep).
//! Commands from the rest of the daemon (a new connection, new settings,
//! drain, stop, retire) arrive in the worker's [`Mailbox`], with a
//! [`mio::Waker`] to interrupt the wait. A panic while serving one
//! connection closes that connection only; the loop and every other client
//! carry on.
//!
//! A worker knows nothing of the pool's table: where a connection should
//! move, and who takes a connection it cannot keep, it asks through the
//! [`Peers`] seam that the pool implements. When a worker ends, whatever
//! way, its mailbox is closed first (a sender then gets its connection
//! back) and connections still queued in it go to a peer, or, if none is
//! left, are told `shutting down` and closed. A connection the poller
//! refuses is told so (`Notice::Unavailable`), then closed, counted and
//! logged: none is dropped unheard.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::observe::stats::{CloseReason, WorkerStats};
use crate::protocol::Notice;
use crate::tcp::affinity;
use crate::tcp::connection::{Connection, Ends, HeaderOutcome, Phase, Step, Stream};
use crate::tcp::faults::FaultTimers;
use crate::tcp::proxy::HEADER_TIMEOUT;
use crate::tcp::spin_governor::SpinGovernor;
use crate::tcp::timeouts::TimeoutQueue;
use crate::tcp::tls::HANDSHAKE_TIMEOUT;
use crate::tcp::wake_timer::WakeTimer;

/// Token of the waker; connection tokens are slab keys.
const WAKER: Token = Token(usize::MAX);
/// Token of the alarm that wakes the loop at its next deadline.
const ALARM: Token = Token(usize::MAX - 1);

/// Longest sleep: the loop turns at least this often so the watchdog sees
/// a heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A wakeup that served at least this many connections finds traffic
/// dense: more is likely to be ready within [`DENSE_SPIN`].
pub(crate) const DENSE_READY: usize = 2;
/// How long a worker polls without sleeping after a dense wakeup
/// (`spin_when_busy`). Under clients that hand the server a few messages
/// at a time, a worker that sleeps as soon as it runs dry pays a sleep and
/// a wakeup every few round trips; a short spin catches the next ones
/// awake. One connection's wakeups serve one event each, so it never
/// spins, and when traffic stops a worker spins this long at most once.
/// Spins that keep finding nothing turn it off ([`SpinGovernor`]).
pub(crate) const DENSE_SPIN: Duration = Duration::from_micros(50);

/// How long to poll without sleeping after a wakeup that served `served`
/// connections: `busy_poll` after any traffic, else [`DENSE_SPIN`] after
/// a dense wakeup with `spin_when_busy` if `governor` allows it, else not
/// at all.
fn spin_after(settings: &Settings, served: usize, governor: &mut SpinGovernor) -> Option<Duration> {
    if served == 0 {
        None
    } else if !settings.busy_poll.is_zero() {
        Some(settings.busy_poll)
    } else if settings.spin_when_busy && served >= DENSE_READY && governor.allow() {
        Some(DENSE_SPIN)
    } else {
        None
    }
}

/// How long a closing connection may keep sending before it is dropped.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Scratch buffer for reads, shared by all connections of a worker.
const READ_BUF: usize = 64 * 1024;

/// What the poller said about a connection.
#[derive(Debug, Clone, Copy)]
struct Readiness {
    /// Input (or end of input, or an error) may be waiting.
    readable: bool,
    /// Output space (or an error) may be available.
    writable: bool,
    /// The peer closed its side: read on to see the end of stream.
    read_closed: bool,
}

impl Readiness {
    /// A connection that used up its read budget and is served again.
    const AGAIN: Readiness = Readiness {
        readable: true,
        writable: false,
        read_closed: false,
    };

    fn of(event: &mio::event::Event) -> Self {
        Readiness {
            readable: event.is_readable() || event.is_read_closed() || event.is_error(),
            writable: event.is_writable() || event.is_write_closed() || event.is_error(),
            read_closed: event.is_read_closed(),
        }
    }
}

/// The settings a worker applies to its connections; replaced whole on
/// reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Close connections idle this long; zero = never.
    pub idle_timeout: Duration,
    /// Per-connection cap on unsent echo.
    pub max_pending_bytes: usize,
    /// After traffic, keep polling without sleeping for this long; zero =
    /// sleep in `epoll_wait` as soon as nothing is ready (see
    /// [`Worker::run`]).
    pub busy_poll: Duration,
    /// Spin for [`DENSE_SPIN`] after a wakeup that served at least
    /// [`DENSE_READY`] connections (`spin_when_busy`).
    pub spin_when_busy: bool,
    /// Log a line per finished session (`[log] sessions`).
    pub sessions: bool,
    /// Time each echo for the latency histogram (while metrics are on).
    pub latency: bool,
}

/// Messages to a worker.
pub(crate) enum Command {
    /// Serve this connection from now on (boxed: a message stays small).
    Adopt(Box<Connection>),
    /// Apply new settings (reload).
    Settings(Arc<Settings>),
    /// Tell every client the server is going away, serve them until they
    /// leave or `deadline`, then exit.
    Drain(Instant),
    /// Close everything now and exit.
    Stop,
    /// Give every connection back through the sender and exit (the pool is
    /// shrinking; the connections move to other workers).
    Retire(Sender<Vec<Connection>>),
}

/// A worker's inbox: the sending side, which the worker closes when it
/// ends, and the waker that interrupts its wait.
struct Mailbox {
    /// `None` once the worker has ended: nothing can be queued any more.
    tx: Mutex<Option<Sender<Command>>>,
    waker: Waker,
}

impl Mailbox {
    /// Closes the inbox; true if it was open.
    fn close(&self) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }
}

/// The rest of the daemon's handle on a running worker.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    /// Unique for the life of the process (positions in the pool change).
    pub id: u64,
    mailbox: Arc<Mailbox>,
    /// The worker's counters (and the CPU it is pinned to).
    pub stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// Queues a command without waking the worker (see [`Self::wake`]);
    /// gives it back if the worker has ended.
    /// A connection queued counts in the worker's load at once, so the
    /// next one dealt sees it; it is counted under the mailbox's lock, so
    /// never after the worker has ended.
    pub fn queue(&self, cmd: Command) -> Result<(), Command> {
        let tx = self.mailbox.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(cmd);
        };
        let adopting = matches!(cmd, Command::Adopt(_));
        if adopting {
            self.stats.connections.fetch_add(1, Relaxed);
        }
        tx.send(cmd).map_err(|e| {
            if adopting {
                self.stats.connections.fetch_sub(1, Relaxed);
            }
            e.0
        })
    }

    /// Interrupts the worker's wait so it reads its commands.
    pub fn wake(&self) {
        if let Err(e) = self.mailbox.waker.wake() {
            log::error!("cannot wake worker: {e}");
        }
    }

    /// Queues a command and wakes the worker; gives it back if the worker
    /// has ended.
    pub fn send(&self, cmd: Command) -> Result<(), Command> {
        self.queue(cmd)?;
        self.wake();
        Ok(())
    }

    /// Hands a connection over; gives it back if the worker has ended.
    pub fn adopt(&self, conn: Box<Connection>) -> Result<(), Box<Connection>> {
        match self.send(Command::Adopt(conn)) {
            Ok(()) => Ok(()),
            Err(Command::Adopt(conn)) => Err(conn),
            Err(_) => unreachable!("send gives back what it was given"),
        }
    }
}

/// What a worker may ask of the rest of the pool; implemented by the pool's
/// table, which the worker never sees.
pub(crate) trait Peers: Send + Sync {
    /// The worker that a connection served by worker `me`, whose packets now
    /// arrive on `cpu`, should move to: one pinned to `cpu` that the balance
    /// allows, never `me`.
    fn local_to(&self, me: u64, cpu: usize) -> Option<WorkerHandle>;
    /// The live workers other than `me`, least loaded first, to take
    /// connections `me` cannot keep.
    fn others(&self, me: u64) -> Vec<WorkerHandle>;
}

/// A worker's event loop and the connections it owns.
pub(crate) struct Worker {
    /// Same as its handle's.
    id: u64,
    /// Readiness of this worker's sockets.
    poll: Poll,
    /// Rings at the loop's next deadline, so `epoll_wait` needs no timeout.
    alarm: WakeTimer,
    /// The connections, keyed by their poll token.
    conns: Slab<Connection>,
    /// Open connections by last activity (idle timeout).
    idle: TimeoutQueue,
    /// Closing connections by when they started lingering.
    linger: TimeoutQueue,
    /// Connections on a PROXY listener still waiting for their header, by
    /// when they arrived.
    header_wait: TimeoutQueue,
    /// TLS connections whose handshake has not ended, by when they
    /// arrived.
    handshake_wait: TimeoutQueue,
    /// Deadlines of connections with faults (held echo, bandwidth,
    /// `close_after`).
    fault_timers: FaultTimers,
    /// Connections that used up their read budget and may have more input.
    again: Vec<usize>,
    /// Commands from the rest of the daemon.
    inbox: Receiver<Command>,
    /// Closed when the worker ends.
    mailbox: Arc<Mailbox>,
    /// Current settings.
    settings: Arc<Settings>,
    /// This worker's counters.
    stats: Arc<WorkerStats>,
    /// Scratch read buffer.
    buf: Box<[u8]>,
    /// Set once draining: when to close whatever is left.
    drain_deadline: Option<Instant>,
    /// Until when the loop polls instead of sleeping (`busy_poll`).
    spin_until: Option<Instant>,
    /// Whether `spin_when_busy` spins pay here.
    governor: SpinGovernor,
    /// The rest of the pool.
    peers: Arc<dyn Peers>,
}

impl Drop for Worker {
    /// Whatever way the loop ended (even a panic outside the per-connection
    /// guard): nothing more can be queued, and connections still queued go
    /// to a peer or are told the server is going away.
    fn drop(&mut self) {
        self.mailbox.close();
        let late = self.take_inbox();
        for conn in late {
            self.pass_on(Box::new(conn));
        }
        self.stats.connections.store(0, Relaxed);
    }
}

impl Worker {
    /// Creates worker `id` and its handle; run it with [`Worker::run`] on a
    /// pool thread, which it pins to `cpu` if given.
    pub fn new(
        id: u64,
        settings: Arc<Settings>,
        cpu: Option<usize>,
        peers: Arc<dyn Peers>,
    ) -> std::io::Result<(Worker, WorkerHandle)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let alarm = WakeTimer::new(poll.registry(), ALARM)?;
        let (tx, inbox) = std::sync::mpsc::channel();
        let mailbox = Arc::new(Mailbox {
            tx: Mutex::new(Some(tx)),
            waker,
        });
        let stats = Arc::new(WorkerStats {
            cpu,
            ..WorkerStats::default()
        });
        let worker = Worker {
            id,
            poll,
            alarm,
            conns: Slab::new(),
            idle: TimeoutQueue::default(),
            linger: TimeoutQueue::default(),
            header_wait: TimeoutQueue::default(),
            handshake_wait: TimeoutQueue::default(),
            fault_timers: FaultTimers::default(),
            again: Vec::new(),
            inbox,
            mailbox: mailbox.clone(),
            settings,
            stats: stats.clone(),
            buf: vec![0; READ_BUF].into_boxed_slice(),
            drain_deadline: None,
            spin_until: None,
            governor: SpinGovernor::default(),
            peers,
        };
        Ok((worker, WorkerHandle { id, mailbox, stats }))
    }

    /// Runs the event loop until told to stop, retire, or drained.
    ///
    /// With `busy_poll` set, a worker that served a connection keeps
    /// asking the poller (timeout zero, yielding the CPU between asks) for
    /// that long before it sleeps. A sleeping thread costs the client a
    /// wakeup on its next message: an inter-processor interrupt, and on a
    /// virtual machine whose idle CPU halted, an exit to the hypervisor.
    /// HAProxy's `busy-polling` and Linux's `net.core.busy_poll` make the
    /// same trade: a core's worth of CPU while traffic flows for latency,
    /// off by default.
    pub fn run(mut self) {
        if let Some(cpu) = self.stats.cpu {
            // The worker then runs wherever the scheduler puts it.
            if let Err(e) = affinity::pin_current_thread(cpu) {
                log::warn!("cannot pin a worker to CPU {cpu}: {e}; it runs unpinned");
            }
        }
        let mut events = Events::with_capacity(1024);
        loop {
            if !self.wait(&mut events) {
                self.close_all();
                return;
            }
            let now = Instant::now();
            self.stats.heartbeat.fetch_add(1, Relaxed);
            self.serve_ready(&events, now);
            if !self.read_commands(now) {
                return;
            }
            self.expire(now);
            if self.drain_finished(now) {
                return;
            }
        }
    }

    /// Waits for readiness, or spins while busy polling; false if the
    /// poller failed.
    fn wait(&mut self, events: &mut Events) -> bool {
        let now = Instant::now();
        let timeout = self.poll_timeout(now);
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("worker poll failed: {e}; closing its connections");
                return false;
            }
        }
        if timeout == Some(Duration::ZERO) && events.is_empty() && self.again.is_empty() {
            // Spinning and nothing came: let a thread that shares
            // this CPU (a local client, say) run before asking again.
            std::thread::yield_now();
        }
        true
    }

    /// How long the next poll may block: not at all while spinning or
    /// with connections to serve again; else until woken, with the alarm
    /// set for the next deadline (or, if the alarm cannot be set, until
    /// that deadline, rounded up to the poller's millisecond).
    fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        match self.spin_until {
            Some(until) if now < until => return Some(Duration::ZERO),
            Some(_) => {
                // The spin ran out: whatever it was for, nothing came.
                self.spin_until = None;
                self.governor.ended(false);
            }
            None => {}
        }
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let until = self.next_deadline(now);
        match self.alarm.ring_by(until, now) {
            Ok(()) => None,
            Err(_) => Some(until.saturating_duration_since(now) + Duration::from_micros(999)),
        }
    }

    /// Serves every connection the poller reported, then those that used
    /// up their read budget last turn.
    fn serve_ready(&mut self, events: &Events, now: Instant) {
        let again = std::mem::take(&mut self.again);
        let mut served = 0;
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                ALARM => self.alarm.rang(),
                Token(slot) => {
                    served += 1;
                    self.serve(slot, Readiness::of(event), now);
                }
            }
        }
        if served > 0 {
            // A spin in flight found work.
            self.governor.ended(true);
        }
        if let Some(spin) = spin_after(&self.settings, served, &mut self.governor) {
            self.spin_until = Some(now + spin);
        }
        for slot in again {
            self.serve(slot, Readiness::AGAIN, now);
        }
    }

    /// True when a drain is over: every client left, or the deadline came.
    fn drain_finished(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if now < deadline {
            return false;
        }
        log::info!(
            "drain deadline reached; closing {} connection(s)",
            self.conns.len()
        );
        self.close_all();
        true
    }

    /// The loop's next deadline: the nearest timeout, or the heartbeat.
    fn next_deadline(&self, now: Instant) -> Instant {
        let mut until = now + HEARTBEAT;
        if !self.settings.idle_timeout.is_zero() {
            if let Some(d) = self.idle.next_deadline(self.settings.idle_timeout) {
                until = until.min(d);
            }
        }
        if let Some(d) = self.linger.next_deadline(LINGER_TIMEOUT) {
            until = until.min(d);
        }
        if let Some(d) = self.header_wait.next_deadline(HEADER_TIMEOUT) {
            until = until.min(d);
        }
        if let Some(d) = self.handshake_wait.next_deadline(HANDSHAKE_TIMEOUT) {
            until = until.min(d);
        }
        if let Some(d) = self.drain_deadline {
            until = until.min(d);
        }
        if let Some(d) = self.fault_timers.next() {
            until = until.min(d);
        }
        until
    }

    /// Handles readiness of one connection, isolating panics to it.
    fn serve(&mut self, slot: usize, ready: Readiness, now: Instant) {
        if !self.conns.contains(slot) {
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.serve_inner(slot, ready, now)));
        if let Some(conn) = self.conns.get_mut(slot) {
            let sent = conn.session_mut().take_sent();
            if sent > 0 {
                self.stats.bytes_sent.fetch_add(sent, Relaxed);
            }
            // A TLS handshake that ended leaves its deadline (one tag
            // compare for a plain connection).
            if matches!(conn.stream(), Stream::Tls(t) if !t.handshaking()) {
                self.handshake_wait.remove(slot);
            }
        }
        if let Err(panic) = result {
            #[cfg(feature = "fault-injection")]
            crate::fault::propagate_worker_kill(panic);
            #[cfg(not(feature = "fault-injection"))]
            drop(panic);
            self.stats.panics.fetch_add(1, Relaxed);
            let from = self.conns.get(slot).map(|c| c.ends().peer);
            let from = from.map_or_else(String::new, |p| format!(" from {p}"));
            log::error!("panic while serving a connection{from}; closed it, others unaffected");
            self.close(slot);
        }
    }

    fn serve_inner(&mut self, slot: usize, ready: Readiness, now: Instant) {
        let cap = self.settings.max_pending_bytes;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut step = Step::Wait;
        if ready.writable {
            step = conn.on_writable(cap);
        }
        if step != Step::Close && (ready.readable || step == Step::Again) {
            let (s, report) = conn.on_readable(&mut self.buf, cap, ready.read_closed);
            step = s;
            let due = report.bytes_in > 0 && self.stats.cpu.is_some() && conn.placement_due();
            let all_sent = conn.all_sent();
            let ends = conn.ends();
            if let Some(outcome) = &report.header {
                self.header_done(slot, ends, outcome);
            }
            if report.disconnected {
                self.stats.disconnects.fetch_add(1, Relaxed);
            }
            if report.bytes_in > 0 {
                self.stats.bytes.fetch_add(report.bytes_in as u64, Relaxed);
                if self.settings.latency && all_sent {
                    self.stats.latency.record(now.elapsed());
                }
                self.idle.touch(slot, now);
                self.after(slot, step, now);
                if due {
                    self.steer(slot, now);
                }
                return;
            }
        }
        self.after(slot, step, now);
    }

    /// With pinned workers: if the connection's packets keep arriving on
    /// another CPU (and it has dwelt here long enough: see
    /// [`affinity::Steer`]), hands it to the worker pinned there, when the
    /// balance allows. It leaves with its unsent echo and state; the new
    /// worker's poller reports whatever input is waiting.
    fn steer(&mut self, slot: usize, now: Instant) {
        let (Some(mine), None) = (self.stats.cpu, self.drain_deadline) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.phase() != Phase::Open {
            return;
        }
        let Some(cpu) = affinity::incoming_cpu(conn.stream()) else {
            return;
        };
        if !conn.steer_mut().should_move(now, mine, cpu) {
            return;
        }
        let Some(target) = self.peers.local_to(self.id, cpu) else {
            return;
        };
        let Some(conn) = self.release(slot) else {
            return;
        };
        match target.adopt(Box::new(conn)) {
            Ok(()) => {
                self.stats.moved_out.fetch_add(1, Relaxed);
            }
            // The target has ended: keep serving it here.
            Err(conn) => {
                self.stats.connections.fetch_add(1, Relaxed);
                self.adopt(*conn, now);
            }
        }
    }

    /// A connection's PROXY header arrived, or was refused (it then closes).
    fn header_done(&mut self, slot: usize, ends: Ends, outcome: &HeaderOutcome) {
        self.header_wait.remove(slot);
        let on = ends.local.map_or_else(String::new, |l| format!(" on {l}"));
        match outcome {
            HeaderOutcome::Accepted => log::debug!("PROXY header{on}: client {}", ends.peer),
            // The admission counted and logged it.
            HeaderOutcome::Denied => log::debug!("PROXY header{on}: client {} refused", ends.peer),
            HeaderOutcome::Refused(why) => {
                self.stats.proxy_refused.fetch_add(1, Relaxed);
                log::warn!("closed a connection from {}{on}: {why}", ends.peer)
            }
        }
    }

    /// Takes a connection out of this worker's care without closing it.
    fn release(&mut self, slot: usize) -> Option<Connection> {
        let mut conn = self.conns.try_remove(slot)?;
        let _ = self.poll.registry().deregister(conn.stream_mut());
        self.idle.remove(slot);
        self.linger.remove(slot);
        self.header_wait.remove(slot);
        self.handshake_wait.remove(slot);
        self.stats.connections.fetch_sub(1, Relaxed);
        Some(conn)
    }

    /// Applies the outcome of handling a connection.
    fn after(&mut self, slot: usize, step: Step, now: Instant) {
        match step {
            Step::Close => {
                self.close(slot);
                return;
            }
            Step::Again => self.again.push(slot),
            Step::Wait => {}
        }
        // A closing connection (final notice queued or write side shut)
        // gets the short lingering deadline instead of the idle one, so a
        // client that never reads its goodbye cannot hold the slot.
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let closing = conn.phase() != Phase::Open;
        if let Some(at) = conn.fault_deadline() {
            self.fault_timers.push(at, slot);
        }
        if closing && !self.linger.contains(slot) {
            self.idle.remove(slot);
            self.linger.touch(slot, now);
        }
    }

    /// Reads all queued commands; false when the worker must exit now.
    fn read_commands(&mut self, now: Instant) -> bool {
        loop {
            match self.inbox.try_recv() {
                Ok(Command::Adopt(conn)) => self.adopt(*conn, now),
                Ok(Command::Settings(s)) => self.settings = s,
                Ok(Command::Drain(deadline)) => self.drain(deadline, now),
                Ok(Command::Stop) => {
                    self.close_all();
                    return false;
                }
                Ok(Command::Retire(back)) => {
                    self.retire(back);
                    return false;
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => {
                    self.close_all();
                    return false;
                }
            }
        }
    }

    fn adopt(&mut self, mut conn: Connection, now: Instant) {
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = register(self.poll.registry(), &mut conn, Token(slot)) {
            self.stats.connections.fetch_sub(1, Relaxed);
            self.unwatched(conn, &e);
            return;
        }
        conn.placed(now);
        conn.fault_disarm();
        let waits_for_header = conn.awaiting_header();
        let handshaking = conn.stream().handshaking();
        entry.insert(conn);
        if waits_for_header {
            self.header_wait.touch(slot, now);
        }
        if handshaking {
            self.handshake_wait.touch(slot, now);
        }
        self.idle.touch(slot, now);
        // A `who` connection answers now (or after its PROXY header).
        let step = self
            .conns
            .get_mut(slot)
            .and_then(|c| c.answer_who(self.id))
            .unwrap_or(Step::Wait);
        // A connection moved from a retiring worker may already be closing.
        self.after(slot, step, now);
        if self.drain_deadline.is_some() {
            self.notify(slot, Notice::ShuttingDown, now);
        }
    }

    /// A connection this worker cannot watch (the poller refused it: out
    /// of memory, or past `max_user_watches`): it hears so and closes, and
    /// is counted and logged as a session that ended in error.
    fn unwatched(&self, mut conn: Connection, e: &std::io::Error) {
        log::warn!(
            "closed a connection from {}: cannot watch its socket: {e}",
            conn.ends().peer
        );
        let _ = Connection::send_last_words(conn.stream_mut(), Notice::Unavailable);
        conn.session_mut().end(CloseReason::Error);
        self.finished(&mut conn);
    }

    fn notify(&mut self, slot: usize, notice: Notice, now: Instant) {
        if let Some(conn) = self.conns.get_mut(slot) {
            let step = conn.notify(notice);
            self.after(slot, step, now);
        }
    }

    fn drain(&mut self, deadline: Instant, now: Instant) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(deadline);
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            self.notify(slot, Notice::ShuttingDown, now);
        }
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.settings.idle_timeout;
        if !timeout.is_zero() {
            while let Some(slot) = self.idle.pop_expired(now, timeout) {
                self.stats.idle_closes.fetch_add(1, Relaxed);
                if let Some(conn) = self.conns.get_mut(slot) {
                    let step = conn.finish(Notice::Idle(timeout));
                    self.after(slot, step, now);
                }
            }
        }
        while let Some(slot) = self.linger.pop_expired(now, LINGER_TIMEOUT) {
            self.close(slot);
        }
        self.fault_timers_due(now);
        while let Some(slot) = self.header_wait.pop_expired(now, HEADER_TIMEOUT) {
            self.stats.proxy_refused.fetch_add(1, Relaxed);
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.session_mut().end(CloseReason::Proxy);
                log::warn!(
                    "closed a connection from {}: no PROXY header within {}s",
                    conn.ends().peer,
                    HEADER_TIMEOUT.as_secs()
                );
            }
            self.close(slot);
        }
        while let Some(slot) = self.handshake_wait.pop_expired(now, HANDSHAKE_TIMEOUT) {
            self.handshake_timed_out(slot);
        }
    }

    /// A TLS client that did not finish its handshake in time: closed,
    /// counted (`timeout`); logged at debug only, so a flood of them
    /// cannot flood the log.
    fn handshake_timed_out(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if let Some(tls) = conn.stream_mut().tls_mut() {
                tls.timed_out();
            }
            conn.session_mut().end(CloseReason::Error);
            log::debug!(
                "closed a connection from {}: no TLS handshake within {}s",
                conn.ends().peer,
                HANDSHAKE_TIMEOUT.as_secs()
            );
        }
        self.close(slot);
    }

    /// Serves the connections whose fault deadline came (held echo due,
    /// tokens for the bandwidth, `close_after`).
    fn fault_timers_due(&mut self, now: Instant) {
        let cap = self.settings.max_pending_bytes;
        while let Some((at, slot)) = self.fault_timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            let step = conn.on_fault_timer(at, cap);
            self.after(slot, step, now);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.try_remove(slot) {
            if conn.resetting() {
                // SO_LINGER 0: the close sends a reset, not a FIN.
                let _ = socket2::SockRef::from(conn.stream()).set_linger(Some(Duration::ZERO));
            }
            // Dropping the socket removes it from epoll and counts the
            // connection out.
            self.idle.remove(slot);
            self.linger.remove(slot);
            self.header_wait.remove(slot);
            self.handshake_wait.remove(slot);
            self.stats.connections.fetch_sub(1, Relaxed);
            self.finished(&mut conn);
        }
    }

    /// Counts a session that ended (its last bytes, its reason) and logs
    /// its line if `[log] sessions` is on.
    fn finished(&self, conn: &mut Connection) {
        let session = conn.session_mut();
        let sent = session.take_sent();
        if sent > 0 {
            self.stats.bytes_sent.fetch_add(sent, Relaxed);
        }
        self.stats.closed[session.reason().index()].fetch_add(1, Relaxed);
        if self.settings.sessions {
            conn.log_session();
        }
    }

    fn close_all(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            if let Some(conn) = self.conns.get_mut(slot) {
                // Last chance for queued echo; the client may be reading.
                let _ = conn.on_writable(usize::MAX);
                conn.session_mut().end(CloseReason::Drain);
            }
            self.close(slot);
        }
    }

    /// Closes the mailbox and gives every connection, owned or still
    /// queued, back through `back`.
    fn retire(&mut self, back: Sender<Vec<Connection>>) {
        self.mailbox.close();
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let mut out: Vec<Connection> = slots.into_iter().filter_map(|s| self.release(s)).collect();
        out.extend(self.take_inbox());
        // If nobody takes them, they close as they drop.
        let _ = back.send(out);
    }

    /// Empties the inbox, keeping the connections it held. Call after the
    /// mailbox is closed, so nothing arrives after.
    fn take_inbox(&mut self) -> Vec<Connection> {
        let mut late = Vec::new();
        while let Ok(cmd) = self.inbox.try_recv() {
            if let Command::Adopt(conn) = cmd {
                late.push(*conn);
            }
        }
        late
    }

    /// Gives a connection this ended worker cannot serve to a live peer;
    /// if none is left, says the server is going away and closes it.
    fn pass_on(&self, mut conn: Box<Connection>) {
        for peer in self.peers.others(self.id) {
            match peer.adopt(conn) {
                Ok(()) => return,
                Err(back) => conn = back,
            }
        }
        let _ = Connection::send_last_words(conn.stream_mut(), Notice::ShuttingDown);
        conn.session_mut().end(CloseReason::Drain);
        self.finished(&mut conn);
    }
}

/// Adds a connection's socket to a worker's poller under `token`.
fn register(registry: &mio::Registry, conn: &mut Connection, token: Token) -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    crate::fault::fail_registration()?;
    registry.register(
        conn.stream_mut(),
        token,
        Interest::READABLE | Interest::WRITABLE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(busy_poll: Duration, spin_when_busy: bool) -> Settings {
        Settings {
            idle_timeout: Duration::ZERO,
            max_pending_bytes: 1024,
            busy_poll,
            spin_when_busy,
            sessions: false,
            latency: false,
        }
    }

    /// `spin_after` with a fresh governor.
    fn spin_after_fresh(settings: &Settings, served: usize) -> Option<Duration> {
        spin_after(settings, served, &mut SpinGovernor::default())
    }

    #[test]
    fn a_dense_wakeup_spins_briefly_a_single_event_does_not() {
        let s = settings(Duration::ZERO, true);
        assert_eq!(spin_after_fresh(&s, 0), None);
        assert_eq!(spin_after_fresh(&s, 1), None, "one connection never spins");
        assert_eq!(spin_after_fresh(&s, DENSE_READY), Some(DENSE_SPIN));
        assert_eq!(spin_after_fresh(&s, 500), Some(DENSE_SPIN));
    }

    #[test]
    fn spin_when_busy_off_never_spins() {
        let s = settings(Duration::ZERO, false);
        assert_eq!(spin_after_fresh(&s, 1), None);
        assert_eq!(spin_after_fresh(&s, 500), None);
    }

    #[test]
    fn dense_spins_that_find_nothing_stop_busy_poll_does_not() {
        let dense = settings(Duration::ZERO, true);
        let mut g = SpinGovernor::default();
        for _ in 0..6 {
            assert_eq!(spin_after(&dense, 2, &mut g), Some(DENSE_SPIN));
            g.ended(false);
        }
        assert_eq!(spin_after(&dense, 2, &mut g), None, "off after misses");
        let long = Duration::from_millis(2);
        let busy = settings(long, true);
        assert_eq!(
            spin_after(&busy, 2, &mut g),
            Some(long),
            "busy_poll is the operator's choice, not the governor's"
        );
    }

    #[test]
    fn busy_poll_spins_its_own_length_after_any_traffic() {
        let long = Duration::from_millis(2);
        for dense in [true, false] {
            let s = settings(long, dense);
            assert_eq!(
                spin_after_fresh(&s, 0),
                None,
                "nothing served, nothing to wait for"
            );
            assert_eq!(spin_after_fresh(&s, 1), Some(long));
            assert_eq!(spin_after_fresh(&s, 500), Some(long));
        }
    }
}
