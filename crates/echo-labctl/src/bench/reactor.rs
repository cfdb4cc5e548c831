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
//! Connecting --> Idle --(go)--> Writing --> Reading --> verify, record
//!                                  ^                         |
//!                                  +------- ping-pong -------+--> Closed
//!                                                          (hold, window
//!                                                        over, or failure)
//! ```
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

use std::io::{self, Read, Write};
use std::ops::Range;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::payload;
use super::plan::{Plan, Round};
use super::tally::{Failure, Progress, Tally};
use super::wire::{self, Step};

/// How often connections are checked against the timeout.
const SWEEP: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    /// Connected, waiting for the hold to end.
    Idle,
    Writing,
    Reading,
    /// Finished or failed; the socket is closed.
    Closed,
}

struct Conn {
    stream: Option<TcpStream>,
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
        if lp.conns[i].state == State::Idle {
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
            let token = Token(lp.conns.len());
            let started = Instant::now();
            let stream = TcpStream::connect(plan.addr).and_then(|mut s| {
                lp.poll.registry().register(
                    &mut s,
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(s)
            });
            let (stream, state) = match stream {
                Ok(s) => {
                    lp.busy += 1;
                    (Some(s), State::Connecting)
                }
                Err(_) => {
                    lp.tally.fail(Failure::Connect, progress);
                    (None, State::Closed)
                }
            };
            lp.conns.push(Conn {
                stream,
                state,
                id,
                round: 0,
                sent: vec![0; plan.size],
                echoed: vec![0; plan.size],
                done: 0,
                started,
                measured: false,
            });
        }
        Ok(lp)
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
            let busy = matches!(c.state, State::Connecting | State::Writing | State::Reading);
            if busy && now.saturating_duration_since(c.started) > self.plan.timeout {
                self.fail(i, Failure::Timeout);
            }
        }
    }

    /// Closes connection `i` (finished, failed or no longer needed).
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if matches!(c.state, State::Connecting | State::Writing | State::Reading) {
            self.busy -= 1;
        }
        c.state = State::Closed;
        c.stream = None;
    }

    fn fail(&mut self, i: usize, failure: Failure) {
        self.tally.fail(failure, self.progress);
        self.close(i);
    }

    /// Starts the next round trip on connection `i` (which must not be busy
    /// or be finishing one), or closes it if the window is over.
    fn begin(&mut self, i: usize, now: Instant) {
        let round = match self.job {
            Job::PingPong => self.plan.next_round(now),
            Job::Hold => Round::Measured,
        };
        if round == Round::Stop {
            self.close(i);
            return;
        }
        let c = &mut self.conns[i];
        if !matches!(c.state, State::Connecting | State::Writing | State::Reading) {
            self.busy += 1;
        }
        c.measured = round == Round::Measured;
        payload::fill(&mut c.sent, c.id, c.round);
        c.round += 1;
        c.done = 0;
        c.started = now;
        c.state = State::Writing;
    }

    /// Makes as much progress on connection `i` as its socket allows: one
    /// step of its state machine after another until one has to wait.
    fn drive(&mut self, i: usize) {
        loop {
            let flow = match self.conns[i].state {
                State::Idle | State::Closed => Flow::Wait,
                State::Connecting => self.finish_connect(i),
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

    /// Connecting: checks whether the handshake is over and parks the
    /// connection in Idle.
    fn finish_connect(&mut self, i: usize) -> Flow {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return Flow::Wait;
        };
        match connect_result(stream) {
            Ok(false) => Flow::Wait,
            Ok(true) if stream.set_nodelay(true).is_ok() => {
                self.tally.connected_at(Instant::now());
                c.state = State::Idle;
                self.busy -= 1;
                Flow::Wait
            }
            Ok(true) | Err(_) => Flow::Fail(Failure::Connect),
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
        }
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
