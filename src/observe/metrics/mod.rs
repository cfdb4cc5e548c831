//! The metrics endpoint: an optional HTTP listener (`metrics_listen`)
//! answering `GET /metrics` for Prometheus, `GET /healthz` and
//! `GET /readyz` for load balancers and Kubernetes probes, and a 404 to
//! anything else.
//!
//! It is deliberately small and out of the way of the echo service: one
//! thread of its own (mio, with a waker to stop it) accepts connections
//! and reads their request heads without blocking, and only a whole
//! request goes to the fixed pool of [`HANDLERS`] threads, which answer
//! one request per connection, `Connection: close`. A client has
//! [`REQUEST_TIMEOUT`] to send a head of at most [`MAX_REQUEST`] bytes
//! (else it is closed, or answered 400), and as long again to take the
//! answer; beyond [`MAX_IN_FLIGHT`] connections at once a new one is
//! closed at once. A client that connects and sends nothing therefore
//! holds no handler, and nothing of the endpoint touches the echo path.
//!
//! The request head is parsed by `httparse` (hyper's parser); the body of
//! the answer comes from [`export`], which uses the Prometheus project's
//! own Rust client, `prometheus-client`: it encodes both the Prometheus
//! text format (the default) and OpenMetrics (when `Accept` names
//! `application/openmetrics-text`, as Prometheus itself asks), and its
//! [`Collector`](prometheus_client::collector::Collector) takes values at
//! scrape time, which is how per-worker counters merged on demand fit.
//! `metrics` + `metrics-exporter-prometheus` were the alternative; that
//! exporter writes only the Prometheus text format, and its recorder
//! model wants every count to go through its handles on the hot path.
//!
//! The values come from the supervisor, as `echo-labctl status` gets
//! them: the endpoint is handed a [`StatusSource`] that asks the
//! supervisor for the status document and waits a bounded time, so this
//! module knows the document, not the supervisor. Reload binds a
//! new address before the old endpoint is stopped ([`bind`] then
//! [`MetricsServer::start`]), so a bind failure fails the reload and
//! changes nothing ([`MetricsError`]).
//!
//! The probes (`/healthz`, `/readyz`) are answered by the accepting
//! thread itself, from the shared [`Probes`] (see
//! [`crate::observe::probe`] for why they do not ask the supervisor):
//! the answer is one short line, written with one non-blocking write
//! (which a fresh socket's send buffer always takes whole; a short write
//! just closes), so a probe never waits behind a slow scrape on the
//! handler threads, and a wedged supervisor is reported, not waited for.
//! Like `/metrics` they are under the top-level access rules and are not
//! sessions: nothing is logged or counted for them.
//!
//! The accepting thread is watched ([`crate::watch`]): the endpoint
//! keeps its own duplicate of the listening socket, so when the thread
//! dies [`MetricsServer::revive`] starts a new one on the same socket (no
//! scraper sees the port closed). A poll that fails for good ends the
//! thread with an error, which is reported the same way.

mod export;
mod process;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::admission::Gate;
use crate::observe::probe::Probes;
use crate::watch::{Commanded, Watcher};
use echo_lab_proto::status::Status;
use export::{Export, Format};

/// Threads serving requests.
pub const HANDLERS: usize = 2;
/// Connections served or waiting for a handler at once; more are closed.
pub const MAX_IN_FLIGHT: usize = 64;
/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head, and again to read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The accepting thread's name (what its death is reported as).
pub(crate) const THREAD: &str = "metrics-accept";

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// The metrics endpoint cannot be bound or started.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `metrics_listen` cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The endpoint's thread could not be started.
    #[error("cannot start the metrics endpoint: {0}")]
    Start(#[source] io::Error),
}

/// Binds the metrics listener (before the old one, if any, is let go).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let bound = TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l));
    bound.map_err(|source| MetricsError::Bind { addr, source })
}

/// The running endpoint; stopped (listener closed) when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    thread: Commanded<Stop>,
    /// Our duplicate of the listener, and what the thread needs, kept to
    /// start a new thread if this one dies.
    listener: TcpListener,
    status: StatusSource,
    watcher: Watcher,
    gate: Arc<Gate>,
    probes: Arc<Probes>,
}

/// Where a scrape gets the status document: the supervisor's answer (a
/// request and a bounded wait for the reply), or why there is none.
pub(crate) type StatusSource = Arc<dyn Fn() -> Result<Status, String> + Send + Sync>;

impl MetricsServer {
    /// Serves `GET /metrics` on `listener` (from [`bind`]), asking
    /// `status` for the counters on each scrape, and the probes from
    /// `probes`; the thread's death goes to `watcher`. Clients the
    /// top-level `access` rules refuse are closed at once.
    pub(crate) fn start(
        listener: TcpListener,
        status: StatusSource,
        watcher: Watcher,
        gate: Arc<Gate>,
        probes: Arc<Probes>,
    ) -> Result<MetricsServer, MetricsError> {
        let addr = listener.local_addr().map_err(MetricsError::Start)?;
        let thread =
            launch(&listener, &status, &watcher, &gate, &probes).map_err(MetricsError::Start)?;
        Ok(MetricsServer {
            addr,
            thread,
            listener,
            status,
            watcher,
            gate,
            probes,
        })
    }

    /// Starts a new thread on the same socket if `id` is the one serving
    /// (it died); true if so.
    pub fn revive(&mut self, id: u64) -> io::Result<bool> {
        if self.thread.id() != Some(id) {
            return Ok(false);
        }
        let thread = launch(
            &self.listener,
            &self.status,
            &self.watcher,
            &self.gate,
            &self.probes,
        )?;
        self.thread.replace(thread);
        Ok(true)
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // The thread takes the stop, drops its duplicate of the listener
        // and returns; ours closes as the struct goes.
        self.thread.stop(Stop);
    }
}

/// Starts the accepting thread on a duplicate of `listener`.
fn launch(
    listener: &TcpListener,
    status: &StatusSource,
    watcher: &Watcher,
    gate: &Arc<Gate>,
    probes: &Arc<Probes>,
) -> io::Result<Commanded<Stop>> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, inbox) = std::sync::mpsc::channel();
    let mut listener = mio::net::TcpListener::from_std(listener.try_clone()?);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let accept = Acceptor {
        poll,
        inbox,
        listener,
        status: status.clone(),
        gate: gate.clone(),
        probes: probes.clone(),
        pool: threadpool::Builder::new()
            .num_threads(HANDLERS)
            .thread_name("metrics".into())
            .build(),
        pending: slab::Slab::new(),
        in_flight: Arc::new(AtomicUsize::new(0)),
    };
    let thread = watcher.spawn(THREAD, move || accept.run())?;
    Ok(Commanded::new(THREAD, tx, waker, thread))
}

/// A connection whose request head is still arriving.
struct Pending {
    stream: mio::net::TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

/// The one command the accepting thread takes.
struct Stop;

struct Acceptor {
    poll: Poll,
    /// Where [`Stop`] arrives (with a wakeup).
    inbox: Receiver<Stop>,
    listener: mio::net::TcpListener,
    status: StatusSource,
    /// The access rules: the top-level list applies to scrapers too.
    gate: Arc<Gate>,
    /// Readiness and health, answered here.
    probes: Arc<Probes>,
    pool: threadpool::ThreadPool,
    /// Connections reading their request head, by token.
    pending: slab::Slab<Pending>,
    /// Requests handed to the pool and not yet answered.
    in_flight: Arc<AtomicUsize>,
}

/// Tokens of pending connections start here.
const FIRST: usize = 2;

impl Acceptor {
    /// True once [`Stop`] was sent, or the server that sends it is gone.
    fn stop_asked(&self) -> bool {
        !matches!(self.inbox.try_recv(), Err(TryRecvError::Empty))
    }

    /// Serves until woken to stop (`Ok`), or until poll fails for good.
    fn run(mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self
                .pending
                .iter()
                .map(|(_, p)| p.deadline)
                .min()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("metrics endpoint: poll failed: {e}"));
            }
            for event in events.iter() {
                match event.token() {
                    WAKER if self.stop_asked() => return Ok(()),
                    WAKER => {}
                    LISTENER => self.accept_all(),
                    Token(t) => self.read_head(t - FIRST),
                }
            }
            self.expire();
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    #[cfg(feature = "fault-injection")]
                    crate::fault::thread_event(THREAD);
                    // Refused by rule: closed unanswered, counted and
                    // logged as any refused client is.
                    if self.gate.allows(peer.ip(), None) {
                        self.admit(stream);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: the listener stays
                    // readable, so poll would spin; pause a little.
                    log::warn!("metrics endpoint: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    /// Starts reading a connection's request head, unless too many are
    /// pending or in flight already (then it is closed at once).
    fn admit(&mut self, mut stream: mio::net::TcpStream) {
        if self.pending.len() + self.in_flight.load(Relaxed) >= MAX_IN_FLIGHT {
            log::debug!("metrics endpoint: too many connections at once; closed one");
            return;
        }
        let entry = self.pending.vacant_entry();
        let token = Token(entry.key() + FIRST);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            log::debug!("metrics endpoint: cannot register a connection: {e}");
            return;
        }
        entry.insert(Pending {
            stream,
            buf: Vec::new(),
            deadline: Instant::now() + REQUEST_TIMEOUT,
        });
        // Data may have come with the connection.
        let key = token.0 - FIRST;
        self.read_head(key);
    }

    /// Reads what a pending connection sent; a whole head goes to a
    /// handler, a bad or oversized one is answered 400 and closed.
    fn read_head(&mut self, key: usize) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        let mut chunk = [0u8; 2048];
        let outcome = loop {
            match p.stream.read(&mut chunk) {
                Ok(0) => break Some(Err(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    p.buf.extend_from_slice(&chunk[..n]);
                    match parse(&p.buf) {
                        Ok(Some(req)) => break Some(Ok(req)),
                        Ok(None) if p.buf.len() >= MAX_REQUEST => {
                            break Some(Err(io::ErrorKind::InvalidData))
                        }
                        Ok(None) => {}
                        Err(_) => break Some(Err(io::ErrorKind::InvalidData)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(Err(e.kind())),
            }
        };
        let Some(outcome) = outcome else {
            return;
        };
        let mut p = self.pending.remove(key);
        let _ = self.poll.registry().deregister(&mut p.stream);
        let stream: TcpStream = std::os::fd::OwnedFd::from(p.stream).into();
        match outcome {
            Ok(req @ (Request::Health | Request::Ready)) => self.probe(stream, &req),
            Ok(req) => self.dispatch(stream, req),
            Err(io::ErrorKind::InvalidData) => {
                let mut stream = stream;
                let _ = stream.set_nonblocking(false);
                let _ = write_all(
                    &mut stream,
                    &response("400 Bad Request", "text/plain", "bad request\n"),
                );
            }
            Err(_) => {}
        }
    }

    /// Closes pending connections whose head did not come in time.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in late {
            let mut p = self.pending.remove(key);
            let _ = self.poll.registry().deregister(&mut p.stream);
            log::debug!("metrics endpoint: closed a connection that sent no request in time");
        }
    }

    /// Answers a probe at once, with one non-blocking write (see the
    /// module docs).
    fn probe(&self, mut stream: TcpStream, req: &Request) {
        let verdict = match req {
            Request::Health => self.probes.health(),
            _ => self.probes.readiness().map_err(str::to_string),
        };
        let answer = match verdict {
            Ok(()) => response("200 OK", "text/plain", "ok\n"),
            Err(why) => response("503 Service Unavailable", "text/plain", &format!("{why}\n")),
        };
        let _ = stream.write(&answer);
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }

    /// Hands a whole request to a handler thread.
    fn dispatch(&self, stream: TcpStream, req: Request) {
        self.in_flight.fetch_add(1, Relaxed);
        let in_flight = self.in_flight.clone();
        let status = self.status.clone();
        self.pool.execute(move || {
            if let Err(e) = answer(stream, req, &status) {
                log::debug!("metrics endpoint: {e}");
            }
            in_flight.fetch_sub(1, Relaxed);
        });
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics`, in this format.
    Metrics(Format),
    /// `GET /healthz`.
    Health,
    /// `GET /readyz`.
    Ready,
    /// Anything else.
    Other,
}

/// Parses a request head; `None` if incomplete.
fn parse(bytes: &[u8]) -> io::Result<Option<Request>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            match (req.method, path) {
                (Some("GET"), "/metrics") => {}
                (Some("GET"), "/healthz") => return Ok(Some(Request::Health)),
                (Some("GET"), "/readyz") => return Ok(Some(Request::Ready)),
                _ => return Ok(Some(Request::Other)),
            }
            let accept = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("accept"))
                .and_then(|h| std::str::from_utf8(h.value).ok());
            Ok(Some(Request::Metrics(Format::from_accept(accept))))
        }
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// Answers one request and closes (on a handler thread).
fn answer(mut stream: TcpStream, req: Request, status: &StatusSource) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let answer = match req {
        Request::Metrics(format) => match scrape(status, format) {
            Ok(body) => response("200 OK", format.content_type(), &body),
            Err(e) => response("503 Service Unavailable", "text/plain", &format!("{e}\n")),
        },
        Request::Health | Request::Ready | Request::Other => response(
            "404 Not Found",
            "text/plain",
            "only GET /metrics, /healthz and /readyz here\n",
        ),
    };
    write_all(&mut stream, &answer)
}

fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(bytes)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The exposition now: counters from the supervisor, process from /proc.
fn scrape(status: &StatusSource, format: Format) -> Result<String, String> {
    let status = status()?;
    let process = process::read()
        .map_err(|e| log::debug!("metrics endpoint: cannot read /proc: {e}"))
        .ok();
    Export { status, process }
        .encode(format)
        .map_err(|_| "cannot encode the metrics".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_apart() {
        let get = |r: &str| parse(r.as_bytes()).unwrap();
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics(Format::Prometheus))
        );
        assert_eq!(
            get("GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"),
            Some(Request::Metrics(Format::OpenMetrics))
        );
        assert_eq!(get("GET / HTTP/1.1\r\n\r\n"), Some(Request::Other));
        assert_eq!(get("GET /healthz HTTP/1.1\r\n\r\n"), Some(Request::Health));
        assert_eq!(
            get("GET /readyz?v=1 HTTP/1.0\r\n\r\n"),
            Some(Request::Ready)
        );
        assert_eq!(get("HEAD /readyz HTTP/1.1\r\n\r\n"), Some(Request::Other));
        assert_eq!(get("POST /metrics HTTP/1.1\r\n\r\n"), Some(Request::Other));
        assert_eq!(get("GET /metrics HTTP/1.1\r\nHost"), None);
        assert!(parse(b"\x00\x01 garbage\r\n\r\n").is_err());
    }
}
