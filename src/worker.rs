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
//! wakeup per message, which is what keeps tokio's echo far above the
//! syscall floor on one connection. Here a message costs `epoll_wait`,
//! `read`, `write` on the thread that was already waiting.
//!
//! The loop never blocks except in `epoll_wait`, whose timeout is the
//! nearest deadline (idle, lingering close, drain) or the heartbeat period.
//! Commands from the rest of the daemon (a new connection, new settings,
//! drain, stop, retire) arrive on a channel, with a [`mio::Waker`] to
//! interrupt the wait. A panic while serving one connection closes that
//! connection only; the loop and every other client carry on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::affinity;
use crate::connection::{Connection, Phase, Step};
use crate::listener::Workers;
use crate::protocol::Notice;
use crate::stats::{ServerStats, WorkerStats};
use crate::timeouts::TimeoutQueue;

/// Token of the waker; connection tokens are slab keys.
const WAKER: Token = Token(usize::MAX);

/// Longest sleep: the loop turns at least this often so the watchdog sees
/// a heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);

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
}

/// The settings a worker applies to its connections; replaced whole on
/// reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Close connections idle this long; zero = never.
    pub idle_timeout: Duration,
    /// Per-connection cap on unsent echo.
    pub max_pending_bytes: usize,
    /// After traffic, keep polling without sleeping for this long; zero =
    /// sleep in `epoll_wait` as soon as nothing is ready (see
    /// [`Worker::run`]).
    pub busy_poll: Duration,
}

/// Messages to a worker.
pub enum Command {
    /// Serve this connection from now on.
    Adopt(Connection),
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

/// The rest of the daemon's handle on a running worker.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// The worker's counters (and the CPU it is pinned to).
    pub stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// Queues a command without waking the worker (see [`Self::wake`]);
    /// false if the worker is gone.
    pub fn queue(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Interrupts the worker's wait so it reads its commands.
    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake worker: {e}");
        }
    }

    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: Command) -> bool {
        let ok = self.queue(cmd);
        self.wake();
        ok
    }
}

/// A worker's event loop and the connections it owns.
pub struct Worker {
    /// Readiness of this worker's sockets.
    poll: Poll,
    /// The connections, keyed by their poll token.
    conns: Slab<Connection>,
    /// Open connections by last activity (idle timeout).
    idle: TimeoutQueue,
    /// Closing connections by when they started lingering.
    linger: TimeoutQueue,
    /// Connections that used up their read budget and may have more input.
    again: Vec<usize>,
    /// Commands from the rest of the daemon.
    inbox: Receiver<Command>,
    /// Current settings.
    settings: Arc<Settings>,
    /// This worker's counters.
    stats: Arc<WorkerStats>,
    /// Counters shared with the accept loop (`active`).
    server: Arc<ServerStats>,
    /// Scratch read buffer.
    buf: Box<[u8]>,
    /// Set once draining: when to close whatever is left.
    drain_deadline: Option<Instant>,
    /// Every worker of the pool, to hand a connection to the one on the
    /// CPU its packets arrive on.
    peers: Workers,
}

impl Drop for Worker {
    /// Whatever way the loop ended (even a panic outside the per-connection
    /// guard), the connections it still owns close here: keep the shared
    /// count of open connections true.
    fn drop(&mut self) {
        let left = self.conns.len();
        if left > 0 {
            self.server.active.fetch_sub(left, Relaxed);
            self.stats.connections.fetch_sub(left, Relaxed);
        }
    }
}

impl Worker {
    /// Creates a worker and its handle; run it with [`Worker::run`] on a
    /// pool thread, which it pins to `cpu` if given.
    pub fn new(
        settings: Arc<Settings>,
        server: Arc<ServerStats>,
        cpu: Option<usize>,
        peers: Workers,
    ) -> std::io::Result<(Worker, WorkerHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, inbox) = std::sync::mpsc::channel();
        let stats = Arc::new(WorkerStats {
            cpu,
            ..WorkerStats::default()
        });
        let worker = Worker {
            poll,
            conns: Slab::new(),
            idle: TimeoutQueue::default(),
            linger: TimeoutQueue::default(),
            again: Vec::new(),
            inbox,
            settings,
            stats: stats.clone(),
            server,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            drain_deadline: None,
            peers,
        };
        Ok((worker, WorkerHandle { tx, waker, stats }))
    }

    /// Runs the event loop until told to stop, retire, or drained.
    ///
    /// With `busy_poll` set, a worker that served a connection keeps
    /// asking the poller (timeout zero, yielding the CPU between asks) for
    /// that long before it sleeps. A sleeping thread costs the client a
    /// wakeup on its next message: an inter-processor interrupt, and on a
    /// virtual machine whose idle CPU halted, an exit to the hypervisor.
    /// That is most of a round trip on one connection. HAProxy's
    /// `busy-polling` and Linux's `net.core.busy_poll` make the same trade:
    /// a core's worth of CPU while traffic flows for latency, off by
    /// default.
    pub fn run(mut self) {
        if let Some(cpu) = self.stats.cpu {
            // The worker then runs wherever the scheduler puts it.
            if let Err(e) = affinity::pin_current_thread(cpu) {
                log::warn!("cannot pin a worker to CPU {cpu}: {e}; it runs unpinned");
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut again = Vec::new();
        // Until when the loop polls instead of sleeping.
        let mut spin_until: Option<Instant> = None;
        loop {
            let mut now = Instant::now();
            let mut timeout = self.poll_timeout(now);
            if let Some(until) = spin_until {
                if now < until {
                    timeout = Duration::ZERO;
                } else {
                    spin_until = None;
                }
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("worker poll failed: {e}; closing its connections");
                    self.close_all();
                    return;
                }
            }
            if timeout.is_zero() && events.is_empty() && self.again.is_empty() {
                // Spinning and nothing came: let a thread that shares
                // this CPU (a local client, say) run before asking again.
                std::thread::yield_now();
            }
            now = Instant::now();
            self.stats.heartbeat.fetch_add(1, Relaxed);
            if !self.settings.busy_poll.is_zero() && events.iter().any(|e| e.token() != WAKER) {
                spin_until = Some(now + self.settings.busy_poll);
            }
            std::mem::swap(&mut again, &mut self.again);
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let ready = Readiness {
                    readable: event.is_readable() || event.is_read_closed() || event.is_error(),
                    writable: event.is_writable() || event.is_write_closed() || event.is_error(),
                    read_closed: event.is_read_closed(),
                };
                self.serve(event.token().0, ready, now);
            }
            for slot in again.drain(..) {
                self.serve(slot, Readiness::AGAIN, now);
            }
            if !self.read_commands(now) {
                return;
            }
            self.expire(now);
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() {
                    return;
                }
                if now >= deadline {
                    log::info!(
                        "drain deadline reached; closing {} connection(s)",
                        self.conns.len()
                    );
                    self.close_all();
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        if !self.again.is_empty() {
            return Duration::ZERO;
        }
        let mut until = now + HEARTBEAT;
        if !self.settings.idle_timeout.is_zero() {
            if let Some(d) = self.idle.next_deadline(self.settings.idle_timeout) {
                until = until.min(d);
            }
        }
        if let Some(d) = self.linger.next_deadline(LINGER_TIMEOUT) {
            until = until.min(d);
        }
        if let Some(d) = self.drain_deadline {
            until = until.min(d);
        }
        // Round up to the next millisecond so a wakeup is never early.
        until.saturating_duration_since(now) + Duration::from_micros(999)
    }

    /// Handles readiness of one connection, isolating panics to it.
    fn serve(&mut self, slot: usize, ready: Readiness, now: Instant) {
        if !self.conns.contains(slot) {
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.serve_inner(slot, ready, now)));
        if result.is_err() {
            self.stats.panics.fetch_add(1, Relaxed);
            log::error!("panic while serving a connection; closed it, others unaffected");
            self.close(slot);
        }
    }

    fn serve_inner(&mut self, slot: usize, ready: Readiness, now: Instant) {
        let Readiness {
            readable,
            writable,
            read_closed,
        } = ready;
        let cap = self.settings.max_pending_bytes;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut step = Step::Wait;
        if writable {
            step = conn.on_writable(cap);
        }
        if step != Step::Close && (readable || step == Step::Again) {
            let (s, report) = conn.on_readable(&mut self.buf, cap, read_closed);
            step = s;
            if report.disconnected {
                self.stats.disconnects.fetch_add(1, Relaxed);
            }
            if report.bytes_in > 0 {
                self.stats.bytes.fetch_add(report.bytes_in as u64, Relaxed);
                self.idle.touch(slot, now);
                let due = self.stats.cpu.is_some() && conn.placement_due();
                self.after(slot, step, now);
                if due {
                    self.place(slot);
                }
                return;
            }
        }
        self.after(slot, step, now);
    }

    /// With pinned workers: if the connection's packets now arrive on
    /// another CPU (its client moved, or the accept-time guess was wrong),
    /// hands it to the worker pinned there, when the balance allows (see
    /// [`affinity::pick`]). The connection leaves with its unsent echo and
    /// state; the new worker's poller reports whatever input is waiting.
    fn place(&mut self, slot: usize) {
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        if conn.phase() != Phase::Open || self.drain_deadline.is_some() {
            return;
        }
        let Some(cpu) = affinity::incoming_cpu(conn.stream()) else {
            return;
        };
        if Some(cpu) == self.stats.cpu {
            return;
        }
        // Held while queuing, as the accept loop does: a shrinking pool
        // takes the write lock before retiring workers.
        let peers = self.peers.clone();
        let workers = peers.read().unwrap_or_else(|p| p.into_inner());
        let Some(to) = affinity::pick(&workers, cpu, &[]) else {
            return;
        };
        let target = &workers[to];
        if target.stats.cpu != Some(cpu) || Arc::ptr_eq(&target.stats, &self.stats) {
            return;
        }
        let Some(mut conn) = self.conns.try_remove(slot) else {
            return;
        };
        let _ = self.poll.registry().deregister(conn.stream_mut());
        self.idle.remove(slot);
        self.linger.remove(slot);
        self.stats.connections.fetch_sub(1, Relaxed);
        self.stats.moved_out.fetch_add(1, Relaxed);
        if !target.send(Command::Adopt(conn)) {
            // The target is gone: the connection closed as it dropped.
            self.server.active.fetch_sub(1, Relaxed);
        }
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
        let closing = self
            .conns
            .get(slot)
            .is_some_and(|c| c.phase() != Phase::Open);
        if closing && !self.linger.contains(slot) {
            self.idle.remove(slot);
            self.linger.touch(slot, now);
        }
    }

    /// Reads all queued commands; false when the worker must exit now.
    fn read_commands(&mut self, now: Instant) -> bool {
        loop {
            match self.inbox.try_recv() {
                Ok(Command::Adopt(conn)) => self.adopt(conn, now),
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
        if let Err(e) = self.poll.registry().register(
            conn.stream_mut(),
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register connection: {e}");
            self.server.active.fetch_sub(1, Relaxed);
            return;
        }
        entry.insert(conn);
        self.stats.connections.fetch_add(1, Relaxed);
        self.idle.touch(slot, now);
        // A connection moved from a retiring worker may already be closing.
        self.after(slot, Step::Wait, now);
        if self.drain_deadline.is_some() {
            self.notify(slot, Notice::ShuttingDown, now);
        }
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
    }

    fn close(&mut self, slot: usize) {
        if self.conns.try_remove(slot).is_some() {
            // Dropping the socket removes it from epoll: no deregister call.
            self.idle.remove(slot);
            self.linger.remove(slot);
            self.stats.connections.fetch_sub(1, Relaxed);
            self.server.active.fetch_sub(1, Relaxed);
        }
    }

    fn close_all(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            if let Some(conn) = self.conns.get_mut(slot) {
                // Last chance for queued echo; the client may be reading.
                let _ = conn.on_writable(usize::MAX);
            }
            self.close(slot);
        }
    }

    fn retire(&mut self, back: Sender<Vec<Connection>>) {
        let mut out = Vec::with_capacity(self.conns.len());
        for mut conn in self.conns.drain() {
            let _ = self.poll.registry().deregister(conn.stream_mut());
            out.push(conn);
        }
        self.stats.connections.store(0, Relaxed);
        if let Err(e) = back.send(out) {
            // Nobody to take them: they close as they drop.
            let n = e.0.len();
            self.server.active.fetch_sub(n, Relaxed);
        }
    }
}
