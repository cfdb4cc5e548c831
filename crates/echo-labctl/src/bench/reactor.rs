//! Many connections on one thread: a readiness loop over mio.
//!
//! From a few dozen connections up, a thread per connection would spend the
//! machine on context switches and stacks, and on a two-core box the
//! generator would take the CPU the server needs. Instead each load thread
//! owns a slice of the connections, registers them all with one `mio::Poll`
//! (epoll on Linux, edge-triggered) and moves each one through a small state
//! machine:
//!
//! ```text
//! Connecting --> Handshaking --> Idle --(go)--> Writing --> Reading --> verify, record
//!                (TLS only)                        ^                         |
//!                                                  +------- ping-pong -------+--> Closed
//!                                                                          (hold, churn,
//!                                                                      window over, failure)
//! ```
//!
//! The stream is a [`Link`]: plain TCP, or rustls over it with `--tls`
//! (the handshake is its own state, so thousands of them overlap like the
//! connects). **Churn** (`--mode churn`) measures whole sessions instead of
//! round trips on kept connections: after the "go" every slot connects,
//! handshakes (TLS), does one round trip and closes, then starts again
//! until the window is over; the latency recorded is the whole session's,
//! from the connect to the echo.
//!
//! Costs were kept to the minimum a correct echo client needs: connecting is
//! non-blocking so thousands of handshakes overlap; after a message is
//! written the loop goes straight back to `poll` instead of trying a read
//! that would almost always find nothing yet (the readable edge for the echo
//! is queued even if it arrives before the next `poll`); a message is read
//! only up to its own length, so an extra byte from a misbehaving server
//! shows up as a mismatch on the next round trip. Timeouts are checked by a
//! sweep over the connections every [`SWEEP`], which is cheaper than a timer
//! per round trip and precise enough for a limit measured in seconds.
//!
//! Both modes run in two phases. First every connection is connected and
//! parked in `Idle`; the thread reports to the coordinator and waits for its
//! "go" (immediately in ping-pong, after `--hold` in hold mode). Then every
//! connection does round trips until the window closes (ping-pong) or
//! exactly one (hold).

use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::link::Link;
use super::payload;
use super::plan::{Plan, Round};
use super::tally::{Failure, Progress, Tally};
use super::wire::{self, Step};

/// How often connections are checked against the timeout.
const SWEEP: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    /// TCP connected, the TLS handshake under way.
    Handshaking,
    /// Connected, waiting for the hold to end.
    Idle,
    Writing,
    Reading,
    /// Finished or failed; the socket is closed.
    Closed,
}

struct Conn {
    stream: Option<Link>,
    state: State,
    /// Connection number, unique in the run (seeds the messages).
    id: u64,
    round: u64,
    sent: Vec<u8>,
    echoed: Vec<u8>,
    /// Bytes written (Writing) or read (Reading) of the current message.
    done: usize,
    /// Start of the current connect or round trip.
    started: Instant,
    /// Whether the current round trip is recorded (not warmup).
    measured: bool,
}

/// What the connections of a thread do after the "go".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Job {
    /// Round trips until the plan's window is over.
    PingPong,
    /// Exactly one round trip, then close.
    Hold,
    /// Sessions until the plan's window is over: connect, handshake, one
    /// round trip, close, again.
    Churn,
}

/// One load thread's connections and their poller.
struct Loop<'a> {
    plan: &'a Plan,
    progress: &'a Progress,
    job: Job,
    poll: Poll,
    conns: Vec<Conn>,
    /// Connections in Connecting, Writing or Reading.
    busy: usize,
    tally: Tally,
}

/// Connects `ids`, calls `connected` with what happened, waits for `go` to
/// return (`false` aborts), then runs `job` until every connection has
/// finished or failed.
pub(crate) fn run(
    plan: &Plan,
    progress: &Progress,
    ids: Range<u64>,
    job: Job,
    connected: impl FnOnce(&Tally),
    go: impl FnOnce() -> bool,
) -> io::Result<Tally> {
    let mut lp = Loop::new(plan, progress, job, ids)?;
    lp.run()?;
    connected(&lp.tally);
    if !go() {
        return Ok(lp.tally);
    }
    let now = Instant::now();
    for i in 0..lp.conns.len() {
        if job == Job::Churn {
            lp.next_session(i, now);
        } else if lp.conns[i].state == State::Idle {
            lp.begin(i, now);
            lp.drive(i);
        }
    }
    lp.run()?;
    Ok(lp.tally)
}

impl<'a> Loop<'a> {
    /// Creates the poller and starts a non-blocking connect for every id.
    fn new(plan: &'a Plan, progress: &'a Progress, job: Job, ids: Range<u64>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut lp = Loop {
            plan,
            progress,
            job,
            poll,
            conns: Vec::with_capacity(ids.clone().count()),
            busy: 0,
            tally: Tally::new(),
        };
        for id in ids {
            lp.conns.push(Conn {
                stream: None,
                state: State::Closed,
                id,
                round: 0,
                sent: vec![0; plan.size],
                echoed: vec![0; plan.size],
                done: 0,
                started: Instant::now(),
                measured: false,
            });
            // Churn connects after the "go", a session at a time.
            if job != Job::Churn {
                lp.open(lp.conns.len() - 1, Instant::now());
            }
        }
        Ok(lp)
    }

    /// Starts a non-blocking connect on slot `i` (closed) at `now`.
    fn open(&mut self, i: usize, now: Instant) {
        let registry = self.poll.registry();
        let link = TcpStream::connect(self.plan.addr).and_then(|mut s| {
            registry.register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            Ok(Link::new(s, self.plan.tls_connection()?))
        });
        let c = &mut self.conns[i];
        c.started = now;
        match link {
            Ok(link) => {
                c.stream = Some(link);
                c.state = State::Connecting;
                self.busy += 1;
            }
            Err(_) => self.tally.fail(Failure::Connect, self.progress),
        }
    }

    /// Churn: opens the next session on slot `i`, or leaves it closed when
    /// the window is over.
    fn next_session(&mut self, i: usize, now: Instant) {
        let round = self.plan.next_round(now);
        if round != Round::Stop {
            self.conns[i].measured = round == Round::Measured;
            self.open(i, now);
        }
    }

    /// Polls until no connection is busy.
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        while self.busy > 0 {
            match self.poll.poll(&mut events, Some(SWEEP)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                self.drive(event.token().0);
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP;
            }
        }
        Ok(())
    }

    /// Fails every busy connection whose current operation is overdue.
    fn sweep(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if c.busy() && now.saturating_duration_since(c.started) > self.plan.timeout {
                self.fail(i, Failure::Timeout);
            }
        }
    }

    /// Closes connection `i` (finished, failed or no longer needed).
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.busy() {
            self.busy -= 1;
        }
        c.state = State::Closed;
        if let Some(mut link) = c.stream.take() {
            link.close();
        }
    }

    fn fail(&mut self, i: usize, failure: Failure) {
        self.tally.fail(failure, self.progress);
        self.close(i);
        if self.job == Job::Churn {
            // A failed session is counted; the slot goes on churning.
            self.next_session(i, Instant::now());
        }
    }

    /// Starts the next round trip on connection `i` (which must not be busy
    /// or be finishing one), or closes it if the window is over.
    fn begin(&mut self, i: usize, now: Instant) {
        let round = match self.job {
            Job::PingPong => self.plan.next_round(now),
            Job::Hold => Round::Measured,
            // Decided when the session was opened; its time runs on.
            Job::Churn => {
                let c = &self.conns[i];
                match c.measured {
                    true => Round::Measured,
                    false => Round::Warmup,
                }
            }
        };
        if round == Round::Stop {
            self.close(i);
            return;
        }
        let c = &mut self.conns[i];
        if !c.busy() {
            self.busy += 1;
        }
        c.measured = round == Round::Measured;
        payload::fill(&mut c.sent, c.id, c.round);
        c.round += 1;
        c.done = 0;
        if self.job != Job::Churn {
            c.started = now;
        }
        c.state = State::Writing;
    }

    /// Makes as much progress on connection `i` as its socket allows: one
    /// step of its state machine after another until one has to wait.
    fn drive(&mut self, i: usize) {
        loop {
            let flow = match self.conns[i].state {
                State::Idle | State::Closed => Flow::Wait,
                State::Connecting => self.finish_connect(i),
                State::Handshaking => self.handshake(i),
                State::Writing => self.write_some(i),
                State::Reading => self.read_some(i),
            };
            match flow {
                Flow::Wait => return,
                Flow::Fail(f) => {
                    self.fail(i, f);
                    return;
                }
                Flow::Continue => {}
            }
        }
    }

    /// Connecting: checks whether the TCP handshake is over and moves on
    /// to the TLS one.
    fn finish_connect(&mut self, i: usize) -> Flow {
        let c = &mut self.conns[i];
        let Some(link) = c.stream.as_mut() else {
            return Flow::Wait;
        };
        let stream = link.tcp();
        match connect_result(stream) {
            Ok(false) => Flow::Wait,
            Ok(true) if stream.set_nodelay(true).is_ok() => {
                c.state = State::Handshaking;
                Flow::Continue
            }
            Ok(true) | Err(_) => Flow::Fail(Failure::Connect),
        }
    }

    /// Handshaking: advances the TLS handshake (none for plain TCP); once
    /// done, parks the connection in Idle, or starts its round trip
    /// (churn).
    fn handshake(&mut self, i: usize) -> Flow {
        let c = &mut self.conns[i];
        let Some(link) = c.stream.as_mut() else {
            return Flow::Wait;
        };
        match link.handshake() {
            Ok(false) => Flow::Wait,
            Ok(true) => {
                let now = Instant::now();
                self.tally.connected_at(now);
                c.state = State::Idle;
                self.busy -= 1;
                if self.job != Job::Churn {
                    return Flow::Wait;
                }
                self.begin(i, now);
                Flow::Continue
            }
            Err(_) => Flow::Fail(Failure::Handshake),
        }
    }

    /// Writing: writes what is left of the message; once it is all out, the
    /// echo's readable edge will wake the connection.
    fn write_some(&mut self, i: usize) -> Flow {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return Flow::Wait;
        };
        match Step::of_write(stream.write(&c.sent[c.done..])) {
            Step::Moved(n) => {
                c.done += n;
                if c.done < c.sent.len() {
                    return Flow::Continue;
                }
                c.done = 0;
                c.state = State::Reading;
                Flow::Wait
            }
            Step::Again => Flow::Wait,
            Step::Retry => Flow::Continue,
            Step::Failed(f) => Flow::Fail(f),
        }
    }

    /// Reading: reads up to the end of the echo; a complete one is verified,
    /// recorded, and followed by the next round trip (ping-pong) or the close
    /// (hold).
    fn read_some(&mut self, i: usize) -> Flow {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return Flow::Wait;
        };
        match Step::of_read(stream.read(&mut c.echoed[c.done..])) {
            Step::Moved(n) => c.done += n,
            Step::Again => return Flow::Wait,
            Step::Retry => return Flow::Continue,
            Step::Failed(f) => return Flow::Fail(f),
        }
        if c.done < c.echoed.len() {
            return Flow::Continue;
        }
        if let Err(f) = wire::verify(&c.sent, &c.echoed) {
            return Flow::Fail(f);
        }
        let now = Instant::now();
        if c.measured {
            let took = now.saturating_duration_since(c.started);
            self.tally.round_trip(took, now, self.progress);
        }
        match self.job {
            Job::PingPong => {
                self.begin(i, now);
                Flow::Continue
            }
            Job::Hold => {
                self.close(i);
                Flow::Wait
            }
            Job::Churn => {
                self.close(i);
                self.next_session(i, now);
                Flow::Wait
            }
        }
    }
}

impl Conn {
    /// Whether an operation is under way (counted in `Loop::busy`).
    fn busy(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Handshaking | State::Writing | State::Reading
        )
    }
}

/// What [`Loop::drive`] does after one step of a connection.
enum Flow {
    /// Take the next step at once.
    Continue,
    /// Nothing more until the socket is ready again (or the connection is
    /// parked or closed).
    Wait,
    /// Count the failure and close the connection.
    Fail(Failure),
}

/// Whether a non-blocking connect has completed: `Ok(true)` connected,
/// `Ok(false)` still in progress, `Err` failed (the procedure mio documents
/// for `TcpStream::connect`).
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}
