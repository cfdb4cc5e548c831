//! The connection's state machine driven alone, over [`Script`]: an
//! in-memory transport whose reads return exactly what the test feeds
//! (data cut where the test cuts it, `WouldBlock`, the end of stream, an
//! error) and whose writes take only as many bytes as the test allows.
//! No socket, no poller, no timing: each case is the sequence of events a
//! worker would deliver, so an ordering that is rare on real sockets
//! (the end of stream reported while reading is paused) is exact here.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::admission::Limits;
use crate::observe::stats::ServerStats;

/// The pending-bytes cap most cases use.
const CAP: usize = 100;
/// The scratch buffer most cases use (the worker's is 64 KiB).
const BUF: usize = 64;

/// What the next read returns.
#[derive(Debug)]
enum Feed {
    /// These bytes; a read with a smaller buffer leaves the rest for the
    /// next read. Two `Data` are never merged: a cut is a short read.
    Data(Vec<u8>),
    /// `WouldBlock` once.
    Block,
    /// `Interrupted` once.
    Interrupt,
    /// The end of stream, from then on.
    End,
    /// A reset, once.
    Fail,
}

fn data(bytes: &[u8]) -> Feed {
    Feed::Data(bytes.to_vec())
}

/// An in-memory transport that does what the test says.
#[derive(Debug, Default)]
struct Script {
    /// What reads return, in order; `WouldBlock` when empty.
    feed: VecDeque<Feed>,
    /// The buffer length of every read, in order.
    asked: Vec<usize>,
    /// Every byte writes took.
    out: Vec<u8>,
    /// How many more bytes writes may take; `WouldBlock` at 0.
    room: usize,
    /// Writes fail with a reset.
    write_fails: bool,
    /// `shutdown_write` was called.
    shut: bool,
    /// Bytes of the transport's own still to send (a TLS transport's
    /// handshake or `close_notify`); `flush` sends them within `room`.
    own: usize,
    /// Bytes of its own a shutdown queues (a `close_notify`).
    own_on_shutdown: usize,
    /// Of its own bytes, how many went out.
    own_sent: usize,
}

impl Script {
    fn feeding(feed: impl IntoIterator<Item = Feed>) -> Self {
        Script {
            feed: feed.into_iter().collect(),
            ..Script::default()
        }
    }

    fn room(mut self, room: usize) -> Self {
        self.room = room;
        self
    }

    /// Bytes fed but not read yet.
    fn unread(&self) -> usize {
        self.feed
            .iter()
            .map(|f| match f {
                Feed::Data(d) => d.len(),
                _ => 0,
            })
            .sum()
    }

    fn reads(&self) -> usize {
        self.asked.len()
    }
}

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.asked.push(buf.len());
        match self.feed.pop_front() {
            None | Some(Feed::Block) => Err(io::ErrorKind::WouldBlock.into()),
            Some(Feed::Interrupt) => Err(io::ErrorKind::Interrupted.into()),
            Some(Feed::Fail) => Err(io::ErrorKind::ConnectionReset.into()),
            Some(Feed::End) => {
                self.feed.push_front(Feed::End);
                Ok(0)
            }
            Some(Feed::Data(mut d)) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                if n < d.len() {
                    self.feed.push_front(Feed::Data(d.split_off(n)));
                }
                Ok(n)
            }
        }
    }
}

impl Write for Script {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.write_fails {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.out.extend_from_slice(&buf[..n]);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let n = self.own.min(self.room);
        self.own -= n;
        self.room -= n;
        self.own_sent += n;
        if self.own > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}

impl Transport for Script {
    const SHORT_READ_DRAINS: bool = true;

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shut = true;
        self.own += self.own_on_shutdown;
        Ok(())
    }

    fn wants_write(&self) -> bool {
        self.own > 0
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50000))
}

fn conn(script: Script) -> Connection<Script> {
    let stats = Arc::new(ServerStats::default());
    let ends = Ends {
        peer: peer(),
        local: Some(SocketAddr::from(([127, 0, 0, 1], 7))),
    };
    Connection::new(script, Open::new(&stats), ends)
}

fn read(c: &mut Connection<Script>, end_reported: bool) -> (Step, ReadReport) {
    c.on_readable(&mut [0; BUF], CAP, end_reported)
}

fn line(notice: Notice) -> Vec<u8> {
    notice.line().into_bytes()
}

#[test]
fn a_short_read_ends_the_event_without_a_read_that_would_block() {
    let mut c = conn(Script::feeding([data(b"hello")]).room(1000));
    let (step, report) = read(&mut c, false);
    assert_eq!(step, Step::Wait);
    assert_eq!(report.bytes_in, 5);
    assert_eq!(c.stream.out, b"hello");
    assert_eq!(c.stream.reads(), 1);
}

#[test]
fn full_reads_go_on_until_the_transport_would_block() {
    let mut c = conn(Script::feeding([data(&[b'a'; BUF * 2]), Feed::Interrupt]).room(1000));
    let (step, report) = read(&mut c, false);
    assert_eq!(step, Step::Wait);
    assert_eq!(report.bytes_in, BUF * 2);
    assert_eq!(c.stream.out.len(), BUF * 2);
    assert_eq!(
        c.stream.reads(),
        4,
        "two full reads, one interrupted, one blocked"
    );
}

#[test]
fn the_read_budget_yields_to_other_connections() {
    let mut c =
        conn(Script::feeding([data(&vec![b'a'; BUF * (READ_BUDGET + 1)])]).room(usize::MAX));
    assert_eq!(read(&mut c, false).0, Step::Again);
    assert_eq!(c.stream.reads(), READ_BUDGET);
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.out.len(), BUF * (READ_BUDGET + 1));
}

/// The poller reports the client's end of input once, as an edge. When it
/// comes while reading is paused at the cap, the read after resuming is
/// short (the last bytes) with the end of stream right behind it: that
/// short read must not end the event, or nothing ever reads the end.
#[test]
fn an_end_of_stream_reported_while_paused_is_read_after_resuming() {
    let mut c = conn(Script::feeding([data(&[b'a'; BUF]), data(&[b'b'; BUF])]));
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.asked, [BUF, CAP - BUF], "reads stop at the cap");
    assert_eq!(c.pending.len(), CAP);

    // The last bytes and the end arrive; the poller says so while paused.
    c.stream.feed.push_back(Feed::End);
    assert_eq!(read(&mut c, true).0, Step::Wait);
    assert_eq!(c.stream.reads(), 2, "paused: nothing read");

    // The client reads its echo: reading resumes, without a new edge.
    c.stream.room = usize::MAX;
    assert_eq!(c.on_writable(CAP), Step::Again);
    let (step, report) = read(&mut c, false);
    assert_eq!(report.bytes_in, 2 * BUF - CAP);
    assert_eq!(
        step,
        Step::Close,
        "the end of stream after the short read was seen"
    );
    assert_eq!(c.stream.out.len(), 2 * BUF);
    assert_eq!(c.session.reason(), CloseReason::Client);
}

#[test]
fn reading_stops_at_the_cap_and_resumes_when_drained() {
    let all: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut c = conn(Script::feeding([Feed::Data(all.clone())]));
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.asked, [BUF, CAP - BUF]);
    assert_eq!((c.pending.len(), c.stream.unread()), (CAP, 200));

    // Readable again, but still at the cap: nothing is read.
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.reads(), 2);

    // The client takes 30 bytes: reading resumes for exactly that room.
    c.stream.room = 30;
    assert_eq!(c.on_writable(CAP), Step::Again);
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.asked[2..], [30]);
    assert_eq!(c.pending.len(), CAP);

    // Nothing drained: a writable event does not resume reading.
    assert_eq!(c.on_writable(CAP), Step::Wait);

    c.stream.room = usize::MAX;
    assert_eq!(c.on_writable(CAP), Step::Again);
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.out, all, "everything echoed, in order");
    assert_eq!(c.stream.unread(), 0);
    assert_eq!(
        c.on_writable(CAP),
        Step::Wait,
        "not paused: nothing to resume"
    );
}

/// `hello\ndisconnect\n` cut in two at every position: what came before
/// the `disconnect` line is echoed, and so is the part of that line that
/// came in an earlier read (echo never waits for a line); then goodbye,
/// on a line of its own, and the write side is shut.
#[test]
fn disconnect_split_over_reads_at_every_position() {
    let input = b"hello\ndisconnect\n";
    for cut in 1..=input.len() {
        let (first, second) = input.split_at(cut);
        let mut feed = vec![data(first)];
        if !second.is_empty() {
            feed.push(data(second));
        }
        let mut c = conn(Script::feeding(feed).room(usize::MAX));
        let (mut step, mut report) = read(&mut c, false);
        if !second.is_empty() {
            assert_eq!(step, Step::Wait, "cut at {cut}");
            assert!(!report.disconnected, "cut at {cut}");
            (step, report) = read(&mut c, false);
        }
        assert!(report.disconnected, "cut at {cut}");
        assert_eq!(step, Step::Again, "cut at {cut}: lingering, reads on");
        let mut want = match cut {
            // The second read, `\ndisconnect\n`, is a whole chunk that
            // trims to the word: not even its newline is echoed.
            5 => b"hello".to_vec(),
            ..=6 | 17 => b"hello\n".to_vec(),
            _ => input[..cut].to_vec(),
        };
        if want.last() != Some(&b'\n') {
            want.extend_from_slice(b"\r\n");
        }
        want.extend(line(Notice::Goodbye));
        assert_eq!(
            String::from_utf8_lossy(&c.stream.out),
            String::from_utf8_lossy(&want),
            "cut at {cut}"
        );
        assert!(c.stream.shut, "cut at {cut}");
        assert_eq!(c.phase(), Phase::Lingering);
        assert_eq!(c.session.reason(), CloseReason::Disconnect);
    }
}

#[test]
fn disconnect_one_byte_per_read() {
    let feed = b"disconnect\n".iter().map(|b| data(&[*b]));
    let mut c = conn(Script::feeding(feed).room(usize::MAX));
    let mut disconnected = false;
    for _ in 0..11 {
        disconnected |= read(&mut c, false).1.disconnected;
    }
    assert!(disconnected);
    let mut want = b"disconnect\r\n".to_vec();
    want.extend(line(Notice::Goodbye));
    assert_eq!(c.stream.out, want);
}

#[test]
fn linger_shuts_the_write_side_then_discards_input_until_the_end() {
    let mut c = conn(Script::feeding([data(b"disconnect")]));
    let (step, report) = read(&mut c, false);
    assert!(report.disconnected);
    assert_eq!(step, Step::Wait, "the goodbye waits for room");
    assert_eq!(c.phase(), Phase::Closing);
    assert!(!c.stream.shut);

    // Closing: input is left alone until the goodbye is out.
    c.stream.feed.push_back(data(b"more"));
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.reads(), 1);

    c.stream.room = usize::MAX;
    assert_eq!(c.on_writable(CAP), Step::Again);
    assert!(c.stream.shut);
    assert_eq!(c.stream.out, line(Notice::Goodbye));
    assert_eq!(c.phase(), Phase::Lingering);

    // Lingering: input is read and dropped, until the end of stream.
    c.stream.feed.push_back(Feed::Block);
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.unread(), 0);
    c.stream.feed.push_back(data(b"still talking"));
    c.stream.feed.push_back(Feed::End);
    assert_eq!(read(&mut c, true).0, Step::Close);
    assert_eq!(
        c.stream.out,
        line(Notice::Goodbye),
        "nothing echoed after goodbye"
    );
    assert_eq!(c.session.reason(), CloseReason::Disconnect);
}

#[test]
fn a_half_closed_client_gets_its_echo_then_the_connection_closes() {
    let mut c = conn(Script::feeding([data(b"abc"), Feed::End]));
    assert_eq!(read(&mut c, true).0, Step::Wait);
    assert_eq!(c.phase(), Phase::Open);
    c.stream.room = 2;
    assert_eq!(c.on_writable(CAP), Step::Wait);
    c.stream.room = usize::MAX;
    assert_eq!(c.on_writable(CAP), Step::Close);
    assert_eq!(c.stream.out, b"abc");
    assert_eq!(c.session.reason(), CloseReason::Client);
}

#[test]
fn a_notice_mid_line_starts_a_line_and_echo_goes_on() {
    let mut c = conn(Script::feeding([data(b"partial"), data(b"more\n")]).room(usize::MAX));
    read(&mut c, false);
    assert_eq!(c.notify(Notice::ShuttingDown), Step::Wait);
    assert_eq!(c.phase(), Phase::Open);
    read(&mut c, false);
    let mut want = b"partial\r\n".to_vec();
    want.extend(line(Notice::ShuttingDown));
    want.extend(b"more\n");
    assert_eq!(c.stream.out, want);
}

#[test]
fn finish_flushes_the_notice_then_lingers_and_says_nothing_more() {
    let mut c = conn(Script::feeding([data(b"line\n")]).room(5));
    read(&mut c, false);
    let idle = Notice::Idle(Duration::from_secs(5));
    assert_eq!(c.finish(idle), Step::Wait, "no room for the notice yet");
    assert_eq!(c.phase(), Phase::Closing);
    let queued = c.pending.len();
    assert_eq!(c.notify(Notice::ShuttingDown), Step::Wait);
    assert_eq!(c.finish(Notice::Goodbye), Step::Wait);
    assert_eq!(c.pending.len(), queued, "closing: no second notice");

    c.stream.room = usize::MAX;
    assert_eq!(c.on_writable(CAP), Step::Again);
    let mut want = b"line\n".to_vec();
    want.extend(line(idle));
    assert_eq!(c.stream.out, want);
    assert!(c.stream.shut);
    assert_eq!(c.session.reason(), CloseReason::Idle);
}

#[test]
fn a_notice_to_a_client_whose_input_ended_closes_without_lingering() {
    let mut c = conn(Script::feeding([data(b"x"), Feed::End]));
    assert_eq!(read(&mut c, true).0, Step::Wait);
    let idle = Notice::Idle(Duration::from_secs(1));
    assert_eq!(c.finish(idle), Step::Wait);
    c.stream.room = usize::MAX;
    assert_eq!(c.on_writable(CAP), Step::Close);
    let mut want = b"x\r\n".to_vec();
    want.extend(line(idle));
    assert_eq!(c.stream.out, want);
    assert_eq!(
        c.session.reason(),
        CloseReason::Client,
        "the first reason stands"
    );
}

#[test]
fn read_and_write_errors_close_the_connection() {
    let mut c = conn(Script::feeding([data(b"ok"), Feed::Fail]).room(usize::MAX));
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(read(&mut c, false).0, Step::Close);
    assert_eq!(c.session.reason(), CloseReason::Error);

    let mut c = conn(Script::feeding([data(b"echo me")]));
    c.stream.write_fails = true;
    assert_eq!(read(&mut c, false).0, Step::Close);

    let mut c = conn(Script::feeding([data(b"queued")]));
    read(&mut c, false);
    c.stream.write_fails = true;
    assert_eq!(c.on_writable(CAP), Step::Close);
}

/// A transport with bytes of its own (a TLS handshake, a `close_notify`)
/// gets them written on writable events with nothing pending, and the
/// write side is shut only once they and the notice are out.
#[test]
fn a_transports_own_bytes_are_written_before_the_close() {
    let mut c = conn(Script::default());
    c.stream.own = 10;
    c.stream.room = 4;
    assert_eq!(c.on_writable(CAP), Step::Wait);
    assert_eq!(c.stream.own_sent, 4);

    let goodbye = line(Notice::Goodbye);
    c.stream.room = 6 + goodbye.len() - 1;
    c.stream.own_on_shutdown = 3;
    assert_eq!(c.finish(Notice::Goodbye), Step::Wait);
    assert!(!c.stream.shut, "the transport still had a byte to send");
    c.stream.room = 1;
    assert_eq!(c.on_writable(CAP), Step::Again);
    assert!(c.stream.shut);
    assert_eq!((c.stream.own, c.stream.own_sent), (3, 10));

    c.stream.room = 3;
    c.stream.feed.push_back(Feed::Block);
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.stream.own, 0, "the close_notify went out after a read");
    assert_eq!(c.stream.out, goodbye);
}

/// A v1 header naming 192.0.2.7:40000, then the client's bytes.
const V1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7\r\n";

/// The same in v2: signature, PROXY command, TCP over IPv4, 12 address
/// bytes (source, destination, their ports).
fn v2() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend([192, 0, 2, 7, 198, 51, 100, 1]);
    h.extend(40000u16.to_be_bytes());
    h.extend(7u16.to_be_bytes());
    h
}

fn open_gate(limits: Limits) -> Arc<Gate> {
    Arc::new(Gate::new(Vec::new(), limits))
}

/// `header` then `hi\n`, cut in two at every position (a `WouldBlock`
/// between the halves): nothing is echoed before the header is whole,
/// the header is never echoed, the client is the one it names.
fn header_at_every_cut(header: &[u8]) {
    let mut wire = header.to_vec();
    wire.extend(b"hi\n");
    let client = SocketAddr::from(([192, 0, 2, 7], 40000));
    for cut in 0..=wire.len() {
        let (first, second) = wire.split_at(cut);
        let feed = [data(first), Feed::Block, data(second)];
        // An empty read would be the end of stream: leave it out.
        let feed = feed
            .into_iter()
            .filter(|f| !matches!(f, Feed::Data(d) if d.is_empty()));
        let mut c = conn(Script::feeding(feed).room(usize::MAX));
        c.expect_proxy_header(open_gate(Limits::default()));
        let (step, report) = read(&mut c, false);
        assert_eq!(step, Step::Wait, "cut at {cut}");
        if cut < header.len() {
            assert!(c.awaiting_header(), "cut at {cut}");
            assert_eq!(report.header, None, "cut at {cut}");
            assert!(c.stream.out.is_empty(), "cut at {cut}");
            assert_eq!(c.ends().peer, peer());
            let (_, report) = read(&mut c, false);
            assert_eq!(report.header, Some(HeaderOutcome::Accepted), "cut at {cut}");
            assert_eq!(report.bytes_in, 3, "cut at {cut}");
        } else {
            assert_eq!(report.header, Some(HeaderOutcome::Accepted), "cut at {cut}");
            read(&mut c, false);
        }
        assert!(!c.awaiting_header(), "cut at {cut}");
        assert_eq!(c.stream.out, b"hi\n", "cut at {cut}");
        assert_eq!(c.ends().peer, client, "cut at {cut}");
        assert!(c.source.is_some(), "counted in its source");
    }
}

#[test]
fn a_proxy_v1_header_split_at_every_byte() {
    header_at_every_cut(V1);
}

#[test]
fn a_proxy_v2_header_split_at_every_byte() {
    header_at_every_cut(&v2());
}

#[test]
fn a_bad_proxy_header_is_refused_and_closes() {
    let mut c = conn(Script::feeding([data(b"GET / HTTP/1.1\r\n")]).room(usize::MAX));
    c.expect_proxy_header(open_gate(Limits::default()));
    let (step, report) = read(&mut c, false);
    assert_eq!(step, Step::Close);
    assert!(matches!(report.header, Some(HeaderOutcome::Refused(_))));
    assert!(c.stream.out.is_empty());
    assert_eq!(c.session.reason(), CloseReason::Proxy);
}

#[test]
fn a_client_over_its_source_limit_hears_busy_after_the_header() {
    let gate = open_gate(Limits {
        cap: 1,
        ..Limits::default()
    });
    let Admission::Admit(_first) = gate.admit([192, 0, 2, 7].into()) else {
        panic!("the first connection from the source is admitted");
    };
    let mut wire = V1.to_vec();
    wire.extend(b"not echoed");
    let mut c = conn(Script::feeding([Feed::Data(wire)]).room(usize::MAX));
    c.expect_proxy_header(gate);
    let (step, report) = read(&mut c, false);
    assert_eq!(report.header, Some(HeaderOutcome::Denied));
    assert_eq!(step, Step::Again, "lingering after the notice");
    assert_eq!(c.stream.out, line(Notice::SourceBusy(1)));
    assert!(c.stream.shut);
}

#[test]
fn a_client_gone_before_its_header_closes() {
    let mut c = conn(Script::feeding([data(b"PROXY TCP4 "), Feed::End]));
    c.expect_proxy_header(open_gate(Limits::default()));
    assert_eq!(read(&mut c, true).0, Step::Close);
}

#[test]
fn a_drain_notice_before_the_header_is_sent_and_the_header_still_counts() {
    let mut c = conn(Script::feeding([Feed::Block, data(V1), data(b"x")]).room(usize::MAX));
    c.expect_proxy_header(open_gate(Limits::default()));
    assert_eq!(read(&mut c, false).0, Step::Wait);
    assert_eq!(c.notify(Notice::ShuttingDown), Step::Wait);
    let (_, report) = read(&mut c, false);
    assert_eq!(report.header, Some(HeaderOutcome::Accepted));
    let mut want = line(Notice::ShuttingDown);
    want.extend(b"x");
    assert_eq!(c.stream.out, want);
}

#[test]
fn a_drain_notice_to_a_half_closed_client_closes_once_flushed() {
    let mut c = conn(Script::feeding([data(b"abc\n"), Feed::End]));
    assert_eq!(read(&mut c, true).0, Step::Wait);
    c.stream.room = usize::MAX;
    assert_eq!(c.notify(Notice::ShuttingDown), Step::Close);
    let mut want = b"abc\n".to_vec();
    want.extend(line(Notice::ShuttingDown));
    assert_eq!(c.stream.out, want);
}
