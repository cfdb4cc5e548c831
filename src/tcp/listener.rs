//! The accept loop: the only thread that touches the listening sockets.
//!
//! It accepts connections as fast as the kernel hands them over, closes
//! those the access rules refuse ([`crate::admission`]), refuses
//! those beyond `max_connections` with a one-line busy notice, and hands
//! the rest to the pool's [`Dealer`] in batches (which worker gets each is
//! the pool's business: see [`crate::tcp::pool`]), with the CPU the connection
//! arrived on when workers are pinned. It never reads from or writes to a
//! client otherwise, so a slow client cannot slow accepting.
//!
//! Accept errors never kill the loop. Running out of file descriptors
//! (EMFILE, ENFILE) or kernel memory leaves the connection in the queue and
//! the edge-triggered poller silent, so the loop retries on a timer instead
//! of spinning, and logs at most once per interval; transient per-connection
//! errors (ECONNABORTED and the like) are skipped.
//!
//! The listening sockets can be swapped while running (reload to a new
//! address: the daemon binds the new one first, then hands it here), and
//! dropping them is how the drain stops accepting.
//!
//! The thread is watched ([`crate::watch`]): if it dies, the server
//! starts a new one on duplicates of the same sockets (`Server::revive`);
//! connections queued meanwhile wait in the kernel's accept queue.

use std::io::{self, ErrorKind};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::admission::{Admission, Gate, Listener};
use crate::observe::stats::{self, ServerStats};
use crate::protocol::Notice;
use crate::tcp::affinity;
use crate::tcp::connection::{Connection, Ends, Stream};
use crate::tcp::faults::TcpFaults;
use crate::tcp::pool::{Batch, Dealer};
use crate::tcp::tls::stream::TlsStream;
use crate::tcp::tls::TlsSlot;
use crate::watch::{Commanded, Watcher};

/// The accept loop's thread name (what its death is reported as).
pub(crate) const THREAD: &str = "accept";
use crate::throttle::{more_since, Throttle};

const WAKER: Token = Token(usize::MAX);

/// Loop turn period when idle (heartbeat for the watchdog).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Retry period after running out of descriptors or memory.
const RETRY: Duration = Duration::from_millis(100);

/// At most one resource-error log line per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts per listener per turn before waking workers and checking
/// commands again.
const BATCH: usize = 256;

/// A listening socket and what its connections get.
pub(crate) struct Listening {
    pub socket: std::net::TcpListener,
    /// PROXY protocol on: the proxies trusted to send a header; a
    /// connection from anyone else is closed at once.
    pub proxy: Option<Arc<Vec<IpNet>>>,
    /// `mode = "who"`: each connection gets the `who` reply, not echo.
    pub who: bool,
    /// TLS on: the listener's certificate slot (swapped on reload).
    pub tls: Option<Arc<TlsSlot>>,
    /// The listener's faults, given to each connection it accepts.
    pub faults: Option<Arc<TcpFaults>>,
}

/// What a listener asks of its connections, and where they may go.
struct How<'a> {
    /// PROXY protocol on: the proxies trusted to send a header.
    proxy: Option<&'a Vec<IpNet>>,
    /// `mode = "who"`.
    who: bool,
    /// Workers are pinned (ask the kernel where packets arrive).
    pinned: bool,
}

/// A listening socket as the loop holds it.
struct Open {
    socket: TcpListener,
    proxy: Option<Arc<Vec<IpNet>>>,
    who: bool,
    tls: Option<Arc<TlsSlot>>,
    faults: Option<Arc<TcpFaults>>,
    /// Its address, named in each connection's ends.
    local: Option<std::net::SocketAddr>,
    /// Its connections open now (the metrics' per-listener gauge).
    count: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// Where an accepted connection came in.
struct Arrival {
    ends: Ends,
    /// Its listener's open-connection gauge.
    count: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// Its listener's TLS, if any.
    tls: Option<Arc<TlsSlot>>,
    /// Its listener's faults, if any.
    faults: Option<Arc<TcpFaults>>,
}

/// Messages to the accept loop.
pub(crate) enum AcceptCommand {
    /// Replace the listening sockets (old ones are closed).
    SetListeners(Vec<Listening>),
    /// New connection limit.
    SetMaxConnections(usize),
    /// Close the listening sockets and exit.
    Stop,
}

/// Handle on the running accept loop.
pub(crate) struct AcceptorHandle(Commanded<AcceptCommand>);

impl AcceptorHandle {
    /// Sends a command and wakes the loop.
    pub(crate) fn send(&self, cmd: AcceptCommand) {
        self.0.send(cmd);
    }

    /// Stops accepting: the listening sockets are closed when this returns,
    /// so new connects are refused.
    pub(crate) fn stop(&mut self) {
        self.0.stop(AcceptCommand::Stop);
    }

    /// The id of the thread accepting now ([`crate::watch::Death::id`]).
    pub(crate) fn thread_id(&self) -> Option<u64> {
        self.0.id()
    }
}

impl Drop for AcceptorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The accept loop's state.
struct Acceptor {
    poll: Poll,
    listeners: Vec<Open>,
    inbox: Receiver<AcceptCommand>,
    dealer: Dealer,
    stats: Arc<ServerStats>,
    /// Access rules and per-source limits.
    gate: Arc<Gate>,
    max_connections: usize,
    /// When to retry accepting after a resource error.
    retry_at: Option<Instant>,
    /// Lines about resource errors (accept failing).
    resource_log: Throttle,
    /// Lines about untrusted PROXY sources.
    untrusted_log: Throttle,
}

/// Starts the accept loop on its own thread, watched by `watcher`.
pub(crate) fn spawn(
    listeners: Vec<Listening>,
    dealer: Dealer,
    stats: Arc<ServerStats>,
    gate: Arc<Gate>,
    max_connections: usize,
    watcher: &Watcher,
) -> io::Result<AcceptorHandle> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, inbox) = std::sync::mpsc::channel();
    let mut acceptor = Acceptor {
        poll,
        listeners: Vec::new(),
        inbox,
        dealer,
        stats,
        gate,
        max_connections,
        retry_at: None,
        resource_log: Throttle::new(LOG_INTERVAL),
        untrusted_log: Throttle::new(LOG_INTERVAL),
    };
    acceptor.set_listeners(listeners)?;
    let thread = watcher.spawn(THREAD, move || {
        acceptor.run();
        Ok(())
    })?;
    Ok(AcceptorHandle(Commanded::new(THREAD, tx, waker, thread)))
}

impl Acceptor {
    fn set_listeners(&mut self, listeners: Vec<Listening>) -> io::Result<()> {
        let mut new = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            l.socket.set_nonblocking(true)?;
            let local = l.socket.local_addr().ok();
            let mut socket = TcpListener::from_std(l.socket);
            self.poll
                .registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            new.push(Open {
                socket,
                proxy: l.proxy,
                who: l.who,
                tls: l.tls,
                faults: l.faults,
                local,
                count: local.map(|a| self.stats.listener_count(a)),
            });
        }
        // Dropping the old listeners closes them.
        self.listeners = new;
        // New sockets may have connections queued already.
        self.retry_at = Some(Instant::now());
        Ok(())
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            let timeout = match self.retry_at {
                Some(t) => t.saturating_duration_since(now).min(HEARTBEAT),
                None => HEARTBEAT,
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("accept loop poll failed: {e}");
                    std::thread::sleep(RETRY);
                }
            }
            self.stats.accept_heartbeat.fetch_add(1, Relaxed);
            if !self.read_commands() {
                return;
            }
            let retry_due = self.retry_at.is_some_and(|t| Instant::now() >= t);
            let mut ready: Vec<usize> = events
                .iter()
                .filter(|e| e.token() != WAKER)
                .map(|e| e.token().0)
                .collect();
            if retry_due {
                self.retry_at = None;
                ready = (0..self.listeners.len()).collect();
            }
            for i in ready {
                self.accept_from(i);
            }
        }
    }

    /// False when the loop must exit.
    fn read_commands(&mut self) -> bool {
        loop {
            match self.inbox.try_recv() {
                Ok(AcceptCommand::SetListeners(l)) => {
                    if let Err(e) = self.set_listeners(l) {
                        log::error!("cannot use the new listening sockets: {e}");
                    }
                }
                Ok(AcceptCommand::SetMaxConnections(n)) => self.max_connections = n,
                Ok(AcceptCommand::Stop) | Err(TryRecvError::Disconnected) => {
                    self.listeners.clear();
                    return false;
                }
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// Accepts what listener `i` has queued (up to a batch), dealing each
    /// connection to the pool.
    fn accept_from(&mut self, i: usize) {
        let dealer = self.dealer.clone();
        let mut batch = dealer.batch();
        if batch.is_empty() {
            // Not yet (or no longer) anyone to serve: keep the connections
            // queued and look again soon, as the edge will not fire again.
            self.retry_at = Some(Instant::now() + RETRY);
            return;
        }
        let pinned = batch.pinned();
        let mut drained = false;
        for _ in 0..BATCH {
            let Some(listener) = self.listeners.get(i) else {
                drained = true;
                break;
            };
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    log::debug!("connection from {peer}");
                    #[cfg(feature = "fault-injection")]
                    crate::fault::thread_event(THREAD);
                    let ends = Ends {
                        peer,
                        local: listener.local,
                    };
                    let proxy = listener.proxy.clone();
                    let count = listener.count.clone();
                    let tls = listener.tls.clone();
                    let faults = listener.faults.clone();
                    let on = Arrival {
                        ends,
                        count,
                        tls,
                        faults,
                    };
                    let how = How {
                        proxy: proxy.as_deref(),
                        who: listener.who,
                        pinned,
                    };
                    self.admit(stream, on, how, &mut batch);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    self.log_resource_error(&e);
                    self.retry_at = Some(Instant::now() + RETRY);
                    drained = true;
                    break;
                }
                Err(e) => log::debug!("accept: {e}"),
            }
        }
        // A full batch means more may be queued: come back next turn (the
        // edge-triggered poller will not say so again).
        if !drained && self.retry_at.is_none() {
            self.retry_at = Some(Instant::now());
        }
    }

    /// Closes a connection the access rules refuse (at once, without a
    /// word), refuses one past `max_connections` or its source's limits
    /// with the busy notice, else wraps it in a `Connection` to be dealt
    /// (`None`: it was closed or refused). On a PROXY listener the peer
    /// is the proxy: the rules and limits judge the client once its header
    /// names it (`Connection::expect_proxy_header`), in the worker.
    ///
    /// All of that before any TLS work: a TLS session is set up only for
    /// a connection about to be dealt.
    fn admit(
        &mut self,
        mut stream: mio::net::TcpStream,
        on: Arrival,
        how: How<'_>,
        batch: &mut Batch<'_>,
    ) {
        let Arrival {
            ends,
            count,
            tls,
            faults,
        } = on;
        let How { proxy, who, pinned } = how;
        self.stats.accepted.fetch_add(1, Relaxed);
        if let Some(trusted) = proxy {
            if !trusted.iter().any(|net| net.contains(&ends.peer.ip())) {
                self.stats.untrusted_proxy.fetch_add(1, Relaxed);
                self.log_untrusted(&ends);
                return;
            }
        } else if !self
            .gate
            .allows(ends.peer.ip(), ends.local.map(Listener::Tcp))
        {
            return; // dropping the stream closes it
        }
        if self.stats.active.load(Relaxed) >= self.max_connections {
            self.stats.refused.fetch_add(1, Relaxed);
            log::debug!(
                "refused a connection: max_connections ({}) reached",
                self.max_connections
            );
            let _ = Connection::send_last_words(&mut stream, Notice::Busy(self.max_connections));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return;
        }
        let hold = if proxy.is_some() {
            None
        } else {
            match self.gate.admit(ends.peer.ip()) {
                Admission::Admit(hold) => Some(hold),
                Admission::Refuse(notice) => {
                    let _ = Connection::send_last_words(&mut stream, notice);
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    return;
                }
            }
        };
        // Echo is interactive: never hold back a small write.
        let _ = stream.set_nodelay(true);
        // Asking the kernel costs a system call: only when workers are pinned.
        let hint = if pinned {
            affinity::incoming_cpu(&stream)
        } else {
            None
        };
        let stream = match tls {
            None => Stream::Plain(stream),
            Some(slot) => {
                let config = slot.current().config.clone();
                match TlsStream::new(stream, config, slot.handshakes.clone()) {
                    Ok(t) => Stream::Tls(Box::new(t)),
                    Err(e) => {
                        log::error!("cannot start a TLS session: {e}");
                        return;
                    }
                }
            }
        };
        let open = stats::Open::on_listener(&self.stats, count);
        let mut conn = Connection::new(stream, open, ends);
        match hold {
            Some(hold) => conn.hold_source(hold),
            None => conn.expect_proxy_header(self.gate.clone()),
        }
        if who {
            conn.ask_who();
        }
        if let Some(plan) = faults {
            conn.impair(plan, Instant::now());
        }
        batch.deal(Box::new(conn), hint);
    }

    /// A connection on a PROXY listener from a source not trusted to send
    /// a header: logged at most once per interval (a scan must not flood
    /// the log).
    fn log_untrusted(&mut self, ends: &Ends) {
        let Some(unreported) = self.untrusted_log.occur(Instant::now()) else {
            return;
        };
        let more = more_since(unreported);
        let on = ends.local.map_or_else(String::new, |l| format!(" on {l}"));
        log::warn!(
            "closed a connection from {}{on}: not in proxy_trusted, so it may not send a PROXY header{more}",
            ends.peer
        );
    }

    fn log_resource_error(&mut self, e: &io::Error) {
        if let Some(unreported) = self.resource_log.occur(Instant::now()) {
            log::error!(
                "accept failed: {e}{}; retrying every {}ms",
                more_since(unreported),
                RETRY.as_millis()
            );
        }
    }
}

/// Errors that mean "out of descriptors or memory": retry later.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
