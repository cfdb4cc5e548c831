//! Fixed rate: messages sent on a schedule, latency from the schedule.
//!
//! A closed-loop generator (ping-pong) sends the next message only after the
//! echo of the last one. When the server stalls for 50 ms, such a client
//! stalls with it and records one slow round trip, where an open stream of
//! users would have seen every request of those 50 ms wait: the tail is
//! understated, the "coordinated omission" Gil Tene described and wrk2
//! corrects. This engine is open-loop instead. `--rate R` over `C`
//! connections gives message *m* of connection *j* (numbered over the whole
//! run) the send time
//!
//! ```text
//! go + (j + m·C) / R
//! ```
//!
//! so the R messages a second are spread evenly over time and over the
//! connections (each connection sends R/C a second). A message is written
//! when its time comes, whether or not earlier echoes came back; echoes come
//! back in order on a connection, so each completes the oldest message in
//! flight there, is compared byte for byte with it, and its latency is
//! counted from the message's *scheduled* time, not from when it was
//! actually written. A server that falls behind therefore shows it in the
//! latencies and in an achieved rate below the one asked for.
//!
//! Each load thread keeps the schedule of its own connections (their send
//! times, in order, interleave with the other threads' ones) and sleeps in
//! the same `poll` that watches its sockets, woken by a `timerfd` armed for
//! the next send: epoll's own timeout counts in milliseconds, far coarser
//! than the tens of microseconds between sends at useful rates. Connections
//! are opened one after another with a blocking connect (a fixed-rate run
//! is about steady load, not about how fast a crowd is accepted) and, with
//! `--tls`, a blocking handshake, then made non-blocking. When the window closes, nothing new is scheduled and the
//! thread waits for the echoes still in flight.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::clock;
use super::link::Link;
use super::payload;
use super::plan::{Plan, Round};
use super::tally::{Failure, Progress, Tally};
use super::wire::{self, Step};

/// How often messages in flight are checked against the timeout.
const SWEEP: Duration = Duration::from_millis(100);

/// The token of the thread's timer (connections use their index).
const TIMER: Token = Token(usize::MAX);

/// The send times of a run: `R` messages a second over `C` connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Nanoseconds between two sends of the whole run (1 / R).
    gap_ns: f64,
    /// Connections in the whole run (C).
    connections: u64,
}

impl Schedule {
    pub(crate) fn new(per_sec: f64, connections: u64) -> Self {
        Schedule {
            gap_ns: 1e9 / per_sec,
            connections: connections.max(1),
        }
    }

    /// When, after "go", message `m` of connection `id` is due.
    fn due(&self, id: u64, m: u64) -> Duration {
        let slot = id.saturating_add(m.saturating_mul(self.connections));
        Duration::from_nanos((slot as f64 * self.gap_ns) as u64)
    }
}

/// A message written (or waiting to be) whose echo has not come back.
#[derive(Debug, Clone, Copy)]
struct Pending {
    round: u64,
    due: Instant,
    measured: bool,
}

struct Conn {
    /// `None` once closed (finished or failed).
    stream: Option<Link>,
    /// Connection number, unique in the run (seeds the messages).
    id: u64,
    /// Bytes scheduled but not yet written, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// Messages sent or waiting to be, oldest first: the order of echoes.
    in_flight: VecDeque<Pending>,
    /// The echo of the oldest message, as far as it has arrived.
    echoed: Vec<u8>,
    have: usize,
}

/// One load thread's connections, their schedule and their poller.
struct Loop<'a> {
    plan: &'a Plan,
    progress: &'a Progress,
    schedule: Schedule,
    poll: Poll,
    timer: OwnedFd,
    conns: Vec<Conn>,
    /// The next send of this thread: cycle `m` and connection index `k`.
    cycle: u64,
    next: usize,
    /// No more sends: the window is over.
    stopped: bool,
    /// Messages in flight on all connections.
    in_flight: usize,
    /// Connections still open.
    open: usize,
    /// Scratch for the expected echo.
    expect: Vec<u8>,
    tally: Tally,
}

/// Connects `ids`, calls `connected`, waits for `go` (`false` aborts), then
/// sends on `schedule` until the plan's window closes and every echo in
/// flight has come back or failed.
pub(crate) fn run(
    plan: &Plan,
    progress: &Progress,
    ids: Range<u64>,
    schedule: Schedule,
    connected: impl FnOnce(&Tally),
    go: impl FnOnce() -> bool,
) -> io::Result<Tally> {
    let mut lp = Loop::new(plan, progress, schedule, ids)?;
    connected(&lp.tally);
    if !go() || lp.open == 0 {
        return Ok(lp.tally);
    }
    let Some(start) = plan.start() else {
        return Ok(lp.tally);
    };
    lp.run(start)?;
    Ok(lp.tally)
}

impl<'a> Loop<'a> {
    /// Creates the poller and the timer and connects every id.
    fn new(
        plan: &'a Plan,
        progress: &'a Progress,
        schedule: Schedule,
        ids: Range<u64>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let timer = clock::timerfd()?;
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        let mut lp = Loop {
            plan,
            progress,
            schedule,
            poll,
            timer,
            conns: Vec::new(),
            cycle: 0,
            next: 0,
            stopped: false,
            in_flight: 0,
            open: 0,
            expect: vec![0; plan.size],
            tally: Tally::new(),
        };
        for id in ids {
            let token = Token(lp.conns.len());
            let stream = match connect(plan).and_then(|mut s| {
                lp.poll.registry().register(
                    s.tcp(),
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(s)
            }) {
                Ok(s) => {
                    lp.tally.connected_at(Instant::now());
                    lp.open += 1;
                    Some(s)
                }
                Err(e) => {
                    let failure = match e.kind() {
                        io::ErrorKind::InvalidData => Failure::Handshake,
                        _ => Failure::Connect,
                    };
                    lp.tally.fail(failure, progress);
                    None
                }
            };
            lp.conns.push(Conn {
                stream,
                id,
                out: Vec::new(),
                written: 0,
                in_flight: VecDeque::new(),
                echoed: vec![0; plan.size],
                have: 0,
            });
        }
        Ok(lp)
    }

    /// Sends on schedule and takes in echoes until the window is over and
    /// nothing is in flight, or every connection has closed.
    fn run(&mut self, start: Instant) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let now = Instant::now();
            let wait = self.send_due(start, now)?;
            if self.open == 0 || (self.stopped && self.in_flight == 0) {
                return Ok(());
            }
            match self.poll.poll(&mut events, Some(wait.min(SWEEP))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    TIMER => clock::clear(&self.timer),
                    Token(i) => {
                        if event.is_writable() {
                            self.flush(i);
                        }
                        if event.is_readable() {
                            self.take_echoes(i);
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP;
            }
        }
    }

    /// Writes every message whose time has come; arms the timer for the
    /// next one and returns how long until it is due.
    fn send_due(&mut self, start: Instant, now: Instant) -> io::Result<Duration> {
        while !self.stopped {
            let c = &self.conns[self.next];
            let due = start + self.schedule.due(c.id, self.cycle);
            if due > now {
                let wait = due - now;
                clock::arm(&self.timer, wait)?;
                return Ok(wait);
            }
            let measured = match self.plan.next_round(due) {
                Round::Stop => {
                    self.stopped = true;
                    break;
                }
                Round::Warmup => false,
                Round::Measured => true,
            };
            let (i, round) = (self.next, self.cycle);
            self.next += 1;
            if self.next == self.conns.len() {
                self.next = 0;
                self.cycle += 1;
            }
            self.send(i, round, due, measured);
        }
        Ok(SWEEP)
    }

    /// Queues message `round` of connection `i` and writes what it can.
    fn send(&mut self, i: usize, round: u64, due: Instant, measured: bool) {
        let size = self.plan.size;
        let c = &mut self.conns[i];
        if c.stream.is_none() {
            return;
        }
        if c.written == c.out.len() {
            c.out.clear();
            c.written = 0;
        }
        let from = c.out.len();
        c.out.resize(from + size, 0);
        payload::fill(&mut c.out[from..], c.id, round);
        c.in_flight.push_back(Pending {
            round,
            due,
            measured,
        });
        self.in_flight += 1;
        self.flush(i);
    }

    /// Writes as much of connection `i`'s queued bytes as the socket takes.
    fn flush(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            if c.written == c.out.len() {
                return;
            }
            match Step::of_write(stream.write(&c.out[c.written..])) {
                Step::Moved(n) => c.written += n,
                Step::Again => return,
                Step::Retry => {}
                Step::Failed(f) => return self.fail(i, f),
            }
        }
    }

    /// Reads connection `i`'s echoes until the socket is empty: each
    /// complete one is verified against the oldest message in flight and
    /// its latency counted from that message's scheduled time.
    fn take_echoes(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let Some(&pending) = c.in_flight.front() else {
                // Nothing is owed: any byte now is one the server made up.
                let mut extra = [0u8; 1];
                match Step::of_read(stream.read(&mut extra)) {
                    Step::Moved(_) => return self.fail(i, Failure::Mismatch),
                    Step::Again => return,
                    Step::Retry => continue,
                    Step::Failed(f) => return self.fail(i, f),
                }
            };
            match Step::of_read(stream.read(&mut c.echoed[c.have..])) {
                Step::Moved(n) => c.have += n,
                Step::Again => return,
                Step::Retry => continue,
                Step::Failed(f) => return self.fail(i, f),
            }
            if c.have < c.echoed.len() {
                continue;
            }
            c.have = 0;
            c.in_flight.pop_front();
            self.in_flight -= 1;
            payload::fill(&mut self.expect, c.id, pending.round);
            if let Err(f) = wire::verify(&self.expect, &c.echoed) {
                return self.fail(i, f);
            }
            if pending.measured {
                let now = Instant::now();
                let took = now.saturating_duration_since(pending.due);
                self.tally.round_trip(took, now, self.progress);
            }
        }
    }

    /// Fails every connection whose oldest message is overdue.
    fn sweep(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let overdue = self.conns[i]
                .in_flight
                .front()
                .is_some_and(|p| now.saturating_duration_since(p.due) > self.plan.timeout);
            if overdue {
                self.fail(i, Failure::Timeout);
            }
        }
    }

    /// Counts the failure and closes connection `i`; its messages in flight
    /// are given up and its later send times go unused.
    fn fail(&mut self, i: usize, failure: Failure) {
        self.tally.fail(failure, self.progress);
        let c = &mut self.conns[i];
        if let Some(mut link) = c.stream.take() {
            link.close();
            self.open -= 1;
        }
        self.in_flight -= c.in_flight.len();
        c.in_flight.clear();
        c.out.clear();
        c.written = 0;
    }
}

/// A blocking connect bounded by the timeout, a blocking TLS handshake
/// (with `--tls`; its failure reads as `InvalidData`), then a non-blocking
/// socket with TCP_NODELAY for the poller.
fn connect(plan: &Plan) -> io::Result<Link> {
    let stream = std::net::TcpStream::connect_timeout(&plan.addr, plan.timeout)?;
    stream.set_nodelay(true)?;
    let mut tls = plan.tls_connection()?;
    if let Some(conn) = tls.as_mut() {
        stream.set_read_timeout(Some(plan.timeout))?;
        stream.set_write_timeout(Some(plan.timeout))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut &stream)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
    stream.set_nonblocking(true)?;
    Ok(Link::new(TcpStream::from_std(stream), tls))
}

#[cfg(test)]
mod tests {
    use super::Schedule;
    use std::time::Duration;

    #[test]
    fn sends_are_spread_evenly_over_time_and_connections() {
        // 1000 a second over 4 connections: one every millisecond, each
        // connection every 4 ms, connection j starting at j ms.
        let s = Schedule::new(1000.0, 4);
        assert_eq!(s.due(0, 0), Duration::ZERO);
        assert_eq!(s.due(3, 0), Duration::from_millis(3));
        assert_eq!(s.due(0, 1), Duration::from_millis(4));
        assert_eq!(s.due(2, 10), Duration::from_millis(42));
    }
}
