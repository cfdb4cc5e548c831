//! One connection: a tight blocking loop.
//!
//! With a single connection there is nothing to multiplex, and every system
//! call the generator saves is time the server gets on a shared CPU. So the
//! one-connection ping-pong is the simplest loop that can be written:
//! blocking `write_all`, then `read` until the whole echo is in, compare,
//! repeat; with TCP_NODELAY so a small message is not held back by Nagle's
//! algorithm waiting for the previous acknowledgement. That is two system
//! calls per round trip when the echo arrives in one piece, the floor for
//! any echo client. The kernel's socket timeouts stand in for the
//! per-operation timeout: a write or read that makes no progress for
//! `--timeout` fails the connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::payload;
use super::plan::{Plan, Round};
use super::tally::{Failure, Progress, Tally};
use super::wire::{self, Step};

/// Connects, reports through `connected`, waits for `go` (`false` aborts),
/// then runs the ping-pong until the plan says stop or the connection fails.
pub(crate) fn ping_pong(
    plan: &Plan,
    conn: u64,
    progress: &Progress,
    connected: impl FnOnce(&Tally),
    go: impl FnOnce() -> bool,
) -> Tally {
    let mut tally = Tally::new();
    let stream = match connect(plan) {
        Ok(s) => {
            tally.connected_at(Instant::now());
            Some(s)
        }
        Err(_) => {
            tally.fail(Failure::Connect, progress);
            None
        }
    };
    connected(&tally);
    let Some(mut stream) = stream.filter(|_| go()) else {
        return tally;
    };
    let mut sent = vec![0u8; plan.size];
    let mut echoed = vec![0u8; plan.size];
    let mut round = 0u64;
    loop {
        let start = Instant::now();
        let measured = match plan.next_round(start) {
            Round::Stop => break,
            Round::Warmup => false,
            Round::Measured => true,
        };
        payload::fill(&mut sent, conn, round);
        round += 1;
        if let Err(failure) = round_trip(&mut stream, &sent, &mut echoed) {
            tally.fail(failure, progress);
            break;
        }
        if measured {
            let done = Instant::now();
            tally.round_trip(done - start, done, progress);
        }
    }
    tally
}

fn connect(plan: &Plan) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&plan.addr, plan.timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(plan.timeout))?;
    stream.set_write_timeout(Some(plan.timeout))?;
    Ok(stream)
}

/// Sends `sent` and reads exactly as many bytes back into `echoed`.
fn round_trip(stream: &mut TcpStream, sent: &[u8], echoed: &mut [u8]) -> Result<(), Failure> {
    let mut have = 0;
    while have < sent.len() {
        have += moved(Step::of_write(stream.write(&sent[have..])))?;
    }
    have = 0;
    while have < echoed.len() {
        have += moved(Step::of_read(stream.read(&mut echoed[have..])))?;
    }
    wire::verify(sent, echoed)
}

/// Bytes a blocking call moved (0 after a signal), or why it failed.
fn moved(step: Step) -> Result<usize, Failure> {
    match step.blocking() {
        Step::Moved(n) => Ok(n),
        Step::Retry => Ok(0),
        Step::Failed(f) => Err(f),
        // `blocking` turned it into a timeout.
        Step::Again => Err(Failure::Timeout),
    }
}
