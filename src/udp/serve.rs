//! The UDP thread: one epoll set over every UDP socket, and the per-batch
//! decision of what to echo.
//!
//! The thread sleeps in `epoll_wait` until a socket is readable, a command
//! arrives (its waker) or the heartbeat period passes. A readable socket
//! is served batch by batch until the kernel has nothing more queued (a
//! short batch says so, since `recvmmsg` with `MSG_DONTWAIT` stops at the
//! first empty read) or [`TURN_BATCHES`] batches have gone by; then the
//! other sockets and the commands get their turn and the busy socket is
//! served again at once. Commands are therefore never stuck behind a
//! flood, and one flooded socket cannot starve another.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::batch::{Batch, MAX_DATAGRAM};
use super::bucket::{RateLimit, SourceTable};
use super::counters::UdpStats;
use super::faults::{Fate, FaultBoard, HeldQueue, SocketFaults};
use super::guard::{BadSource, Guard};
use super::UdpCommand;
use crate::admission::rules::RuleList;
use crate::admission::{Gate, Listener};
use crate::throttle::Throttle;
use crate::watch::{Commanded, Watcher};

const WAKER: Token = Token(usize::MAX);

/// Loop period when idle (heartbeat for the watchdog).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Batches one socket gets before the others and the commands get a turn.
const TURN_BATCHES: usize = 16;

/// At most one log line about refused sources per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One socket being served.
struct Served {
    socket: UdpSocket,
    /// IPv6 socket that also receives IPv4 (sources appear v4-mapped).
    dual_stack: bool,
    /// What the access rules know it as.
    listener: Option<Listener>,
    /// Its access rules, and the gate's generation they are from.
    rules: Option<(u64, Arc<RuleList>)>,
    /// Its faults, and the board's generation they are from.
    faults: (u64, Option<SocketFaults>),
    /// Its local address (where its delayed echoes leave from).
    local: SocketAddr,
}

struct Service {
    poll: Poll,
    inbox: Receiver<UdpCommand>,
    sockets: Vec<Served>,
    guard: Guard,
    table: SourceTable,
    stats: Arc<UdpStats>,
    epoch: Instant,
    /// Refused sources since the last log line, and the latest one.
    refused: (u64, Option<(SocketAddr, BadSource)>),
    refused_log: Throttle,
    /// The access rules (none: everyone may have an echo).
    gate: Option<Arc<Gate>>,
    /// Datagrams the access rules refused since the last line about them,
    /// and the latest source.
    denied: (u64, Option<SocketAddr>),
    denied_log: Throttle,
    /// Local addresses of `mode = "who"` sockets.
    who: Vec<SocketAddr>,
    /// Each socket's faults, as the supervisor posts them.
    board: Arc<FaultBoard>,
    /// Delayed echoes.
    held: HeldQueue,
}

/// The UDP thread's name (what its death is reported as).
pub(crate) const THREAD: &str = "udp";

/// Starts the thread, watched by `watcher`; returns its inbox, its waker
/// and its handle.
pub(super) fn spawn(
    sockets: Vec<std::net::UdpSocket>,
    limit: RateLimit,
    stats: Arc<UdpStats>,
    (gate, board): (Option<Arc<Gate>>, Arc<FaultBoard>),
    who: Vec<SocketAddr>,
    watcher: &Watcher,
) -> io::Result<Commanded<UdpCommand>> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, inbox) = std::sync::mpsc::channel();
    let mut service = Service {
        poll,
        inbox,
        sockets: Vec::new(),
        guard: Guard::from_interfaces(),
        table: SourceTable::new(limit),
        stats,
        epoch: Instant::now(),
        refused: (0, None),
        refused_log: Throttle::new(LOG_INTERVAL),
        gate,
        denied: (0, None),
        denied_log: Throttle::new(LOG_INTERVAL),
        who,
        board,
        held: HeldQueue::default(),
    };
    service.set_sockets(sockets)?;
    let thread = watcher.spawn(THREAD, move || {
        service.run();
        Ok(())
    })?;
    Ok(Commanded::new(THREAD, tx, waker, thread))
}

impl Service {
    fn set_sockets(&mut self, sockets: Vec<std::net::UdpSocket>) -> io::Result<()> {
        let mut new = Vec::with_capacity(sockets.len());
        for (i, s) in sockets.into_iter().enumerate() {
            s.set_nonblocking(true)?;
            let dual_stack = matches!(s.local_addr()?, SocketAddr::V6(_))
                && !socket2::SockRef::from(&s).only_v6()?;
            let local = s.local_addr()?;
            let listener = Some(Listener::Udp(local));
            let mut socket = UdpSocket::from_std(s);
            self.poll
                .registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            new.push(Served {
                socket,
                dual_stack,
                listener,
                rules: None,
                // Read from the board at the first turn.
                faults: (u64::MAX, None),
                local,
            });
        }
        // Dropping the old ones closes them (and leaves the epoll set).
        self.sockets = new;
        Ok(())
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut batch = Batch::new();
        // Sockets that had more queued when their turn ended.
        let mut busy: Vec<usize> = (0..self.sockets.len()).collect();
        loop {
            let timeout = if busy.is_empty() {
                self.held.next_due().map_or(HEARTBEAT, |due| {
                    // Rounded up: the poller counts milliseconds.
                    let wait = due.saturating_duration_since(Instant::now());
                    HEARTBEAT.min(wait + Duration::from_micros(999))
                })
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("UDP loop poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            UdpStats::add(&self.stats.heartbeat, 1);
            match self.read_commands() {
                Turn::Exit => return,
                Turn::NewSockets => busy = (0..self.sockets.len()).collect(),
                Turn::Same => {}
            }
            for e in events.iter().filter(|e| e.token() != WAKER) {
                if !busy.contains(&e.token().0) {
                    busy.push(e.token().0);
                }
            }
            let turn = std::mem::take(&mut busy);
            for i in turn {
                if self.serve_socket(i, &mut batch) {
                    busy.push(i);
                }
            }
            self.send_due();
        }
    }

    /// Applies queued commands.
    fn read_commands(&mut self) -> Turn {
        let mut turn = Turn::Same;
        loop {
            match self.inbox.try_recv() {
                Ok(UdpCommand::SetSockets(s)) => {
                    if let Err(e) = self.set_sockets(s) {
                        log::error!("cannot use the new UDP sockets: {e}");
                    }
                    turn = Turn::NewSockets;
                }
                Ok(UdpCommand::SetLimit(limit)) => {
                    if limit != self.table.limit() {
                        self.table = SourceTable::new(limit);
                    }
                    self.guard = Guard::from_interfaces();
                }
                Ok(UdpCommand::SetWho(who)) => self.who = who,
                Ok(UdpCommand::Stop) | Err(TryRecvError::Disconnected) => {
                    self.sockets.clear();
                    return Turn::Exit;
                }
                Err(TryRecvError::Empty) => return turn,
            }
        }
    }

    /// Socket `i`'s access rules in force (cached until they change).
    fn rules_of(&mut self, i: usize) -> Option<Arc<RuleList>> {
        let gate = self.gate.as_ref()?;
        let served = self.sockets.get_mut(i)?;
        let generation = gate.generation();
        match &served.rules {
            Some((g, rules)) if *g == generation => Some(rules.clone()),
            _ => {
                let rules = gate.rules(served.listener);
                served.rules = Some((generation, rules.clone()));
                Some(rules)
            }
        }
    }

    /// Socket `i`'s faults: read again from the board when it changed.
    fn refresh_faults(&mut self, i: usize) {
        let generation = self.board.generation();
        let Some(served) = self.sockets.get_mut(i) else {
            return;
        };
        if served.faults.0 != generation {
            served.faults = (
                generation,
                self.board.of(served.local).map(SocketFaults::new),
            );
        }
    }

    /// Sends the delayed echoes that are due, each from the socket bound to
    /// the address it arrived at (dropped if that socket is gone).
    fn send_due(&mut self) {
        let now = Instant::now();
        let (mut sent, mut bytes, mut failed) = (0u64, 0u64, 0u64);
        while let Some(h) = self.held.pop_due(now) {
            let Some(served) = self.sockets.iter().find(|s| s.local == h.local) else {
                failed += 1;
                continue;
            };
            match served.socket.send_to(&h.data, h.dest) {
                Ok(_) => {
                    sent += 1;
                    bytes += h.data.len() as u64;
                }
                Err(_) => failed += 1,
            }
        }
        let s = &self.stats;
        UdpStats::add(&s.echoed, sent);
        UdpStats::add(&s.bytes_echoed, bytes);
        UdpStats::add(&s.send_errors, failed);
        UdpStats::add(&s.send_calls, sent + failed);
    }

    /// Serves socket `i` for one turn; true if more may be queued.
    fn serve_socket(&mut self, i: usize, batch: &mut Batch) -> bool {
        let rules = self.rules_of(i).filter(|r| !r.is_empty());
        self.refresh_faults(i);
        let Some(served) = self.sockets.get(i) else {
            return false;
        };
        let fd = served.socket.as_raw_fd();
        let dual_stack = served.dual_stack;
        let who = match served.listener {
            Some(Listener::Udp(local)) if self.who.contains(&local) => Some(local),
            _ => None,
        };
        for _ in 0..TURN_BATCHES {
            let n = match batch.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    // Rare on an unconnected socket; the next datagram's
                    // edge brings the loop back.
                    log::debug!("udp receive: {e}");
                    return false;
                }
            };
            if n == 0 {
                return false;
            }
            #[cfg(feature = "fault-injection")]
            crate::fault::thread_event(THREAD);
            self.echo_batch(batch, (i, fd), n, (dual_stack, who), rules.as_deref());
            if n < super::batch::BATCH {
                return false;
            }
        }
        true
    }

    /// Decides about each of the `n` datagrams just received, then sends
    /// the echoes in one call.
    fn echo_batch(
        &mut self,
        batch: &mut Batch,
        (socket, fd): (usize, i32),
        n: usize,
        (dual_stack, who): (bool, Option<SocketAddr>),
        rules: Option<&RuleList>,
    ) {
        let now_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (mut bad, mut rate, mut large, mut denied) = (0u64, 0u64, 0u64, 0u64);
        let mut too_small = 0u64;
        let (mut lost, mut overflow) = (0u64, 0u64);
        for i in 0..n {
            let Some(d) = batch.datagram(i) else {
                bad += 1;
                continue;
            };
            if let Err(why) = self.guard.check(&d.src, dual_stack) {
                bad += 1;
                self.refused.0 += 1;
                self.refused.1 = Some((d.src, why));
                continue;
            }
            if rules.is_some_and(|r| !r.check(d.src.ip()).allowed) {
                denied += 1;
                self.denied = (self.denied.0 + 1, Some(d.src));
                continue;
            }
            if d.truncated || d.data.len() > MAX_DATAGRAM {
                large += 1;
                continue;
            }
            if !self.table.allow(d.src.ip(), d.data.len(), now_ns) {
                rate += 1;
                continue;
            }
            if let Some(local) = who {
                let line = crate::who::Reply::now(crate::who::Asked {
                    listener: Some(local),
                    client: d.src,
                    peer: d.src,
                    worker: None,
                })
                .line();
                if !batch.reply(i, &line) {
                    too_small += 1;
                }
                continue;
            }
            if let Some(served) = self.sockets.get_mut(socket) {
                if let Some(faults) = &mut served.faults.1 {
                    match faults.fate(Instant::now()) {
                        Fate::Echo => {}
                        Fate::Lost => {
                            lost += 1;
                            continue;
                        }
                        Fate::Hold(due) => {
                            if !self.held.hold(due, served.local, d.src, d.data) {
                                overflow += 1;
                            }
                            continue;
                        }
                    }
                }
            }
            batch.pick(i);
        }
        let sent = batch.send(fd);
        let s = &self.stats;
        UdpStats::add(&s.received, n as u64);
        UdpStats::add(&s.recv_calls, 1);
        UdpStats::add(&s.send_calls, sent.calls as u64);
        UdpStats::add(&s.echoed, sent.sent as u64);
        UdpStats::add(&s.send_errors, sent.failed as u64);
        UdpStats::add(&s.bytes_echoed, sent.bytes);
        UdpStats::add(&s.bad_source, bad);
        UdpStats::add(&s.rate_limited, rate);
        UdpStats::add(&s.too_large, large);
        UdpStats::add(&s.access, denied);
        UdpStats::add(&s.who_too_small, too_small);
        UdpStats::add(&s.fault_loss, lost);
        UdpStats::add(&s.fault_overflow, overflow);
        s.sources.store(
            self.table.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.log_refused();
    }

    /// Says, at most once per interval, that sources were refused.
    fn log_refused(&mut self) {
        let now = Instant::now();
        if let (count, Some(src)) = self.denied {
            if self.denied_log.ready(now) {
                log::warn!("udp: refused {count} datagram(s) by access rules (latest from {src})");
                self.denied = (0, None);
            }
        }
        if let (count, Some((src, why))) = self.refused {
            if self.refused_log.ready(now) {
                log::warn!(
                    "udp: refused {count} datagram(s) from sources that must not get an echo (latest: {src}, {})",
                    describe(why)
                );
                self.refused = (0, None);
            }
        }
    }
}

/// What the commands changed.
enum Turn {
    Same,
    NewSockets,
    Exit,
}

fn describe(why: BadSource) -> String {
    match why {
        BadSource::Port(p) => format!("source port {p} is a well-known service port"),
        BadSource::Unspecified => "unspecified source address".into(),
        BadSource::Broadcast => "broadcast source address".into(),
        BadSource::Multicast => "multicast source address".into(),
        BadSource::Mapped => "IPv4-mapped or -compatible source address".into(),
    }
}
