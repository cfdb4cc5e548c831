//! The echo protocol: what the server does with the bytes a client sends,
//! and the few lines it sends unasked.
//!
//! Everything a client sends is echoed back byte for byte as soon as it is
//! read: no framing, no newline needed, any bytes. The one exception is the
//! word `disconnect`, which ends a session when it arrives
//!
//! * as a complete line (ended by `\n`), even if the line came in several
//!   reads, or
//! * as a whole chunk, exactly as one read returned it (the teaching lab's
//!   Python client sends `disconnect` with no newline),
//!
//! compared ASCII case-insensitively, surrounding ASCII white space
//! (space, tab, CR, LF, vertical tab, form feed) ignored. The `disconnect` line is not echoed (the part of it that came in
//! earlier reads already was: echo is never delayed to wait for a line);
//! bytes before it are. The server then sends a goodbye notice and closes.
//!
//! Notices are single lines starting with [`NOTICE_PREFIX`], so a person or a
//! client can tell them from echo. The [`Detector`] is pure state over byte
//! slices (no I/O), so it is tested exhaustively here, in property tests,
//! and by fuzz/fuzz_targets/protocol.rs against a model of the rule.

use std::time::Duration;

/// The marker that starts every line the server sends on its own.
pub const NOTICE_PREFIX: &str = "[echo-lab] ";

/// The largest UDP datagram echoed (the largest IPv4 UDP payload); a
/// larger one is dropped, so a client sends nothing larger.
pub const MAX_DATAGRAM: usize = 65_507;

/// The command word that ends a session.
const WORD: &[u8] = b"disconnect";

/// A line the server sends without being asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The client said `disconnect`.
    Goodbye,
    /// The connection carried no traffic for the idle timeout.
    Idle(Duration),
    /// The server is at `max_connections`.
    Busy(usize),
    /// The client's source has `max_connections_per_source` open.
    SourceBusy(usize),
    /// The client's source is over `connection_rate_per_source`: `count`
    /// new connections per `per_secs` seconds.
    SourceRate { count: u32, per_secs: u32 },
    /// The daemon is draining (SIGTERM); the client may finish.
    ShuttingDown,
    /// The worker given the connection cannot watch its socket (the
    /// kernel refused to add it to the worker's poller).
    Unavailable,
    /// The session reached its listener's `close_after`.
    SessionLimit,
}

impl Notice {
    /// The notice as sent: prefix, text, CRLF (so telnet shows it properly).
    pub fn line(&self) -> String {
        let text = match self {
            Notice::Goodbye => "goodbye".to_string(),
            Notice::Idle(d) => format!("idle for {}s, closing", d.as_secs()),
            Notice::Busy(max) => {
                format!("busy: {max} connections already open, try again later")
            }
            Notice::SourceBusy(max) => {
                format!("busy: {max} connections from your address already open, try again later")
            }
            Notice::SourceRate { count, per_secs } => format!(
                "busy: more than {count} new connections per {} from your address, try again later",
                if *per_secs == 60 { "minute" } else { "second" }
            ),
            Notice::ShuttingDown => "shutting down".to_string(),
            Notice::Unavailable => "cannot serve this connection now, try again later".to_string(),
            Notice::SessionLimit => "session time limit reached, closing".to_string(),
        };
        format!("{NOTICE_PREFIX}{text}\r\n")
    }
}

/// Is `b` whitespace that may surround the command word?
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// True if `chunk`, trimmed of surrounding whitespace, is `disconnect`.
pub fn is_disconnect(chunk: &[u8]) -> bool {
    let start = chunk.iter().position(|&b| !is_space(b));
    let end = chunk.iter().rposition(|&b| !is_space(b));
    match (start, end) {
        (Some(s), Some(e)) => chunk[s..=e].eq_ignore_ascii_case(WORD),
        _ => false,
    }
}

/// Where the current input line stands with respect to the command word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Only whitespace so far on this line (or nothing).
    Leading,
    /// The first `n` letters of the word matched.
    Word(u8),
    /// The whole word, then only whitespace.
    Trailing,
    /// Anything else: this line is data.
    Data,
}

/// What to do with one chunk a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Echo the whole chunk.
    Echo,
    /// Echo the first `echo` bytes, then say goodbye and close.
    Disconnect { echo: usize },
}

/// Finds `disconnect` in a client's byte stream, one read at a time.
///
/// Keeps one byte of state per connection (the current line's progress),
/// and skips data lines with `memchr` so the common case costs a scan for
/// newlines.
#[derive(Debug, Clone, Copy)]
pub struct Detector {
    line: Line,
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            line: Line::Leading,
        }
    }
}

impl Detector {
    /// Scans one chunk as a read returned it.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        if is_disconnect(chunk) {
            self.line = Line::Leading;
            return Scan::Disconnect { echo: 0 };
        }
        let mut line_start = 0;
        let mut i = 0;
        while i < chunk.len() {
            if self.line == Line::Data {
                match memchr::memchr(b'\n', &chunk[i..]) {
                    Some(off) => {
                        i += off + 1;
                        line_start = i;
                        self.line = Line::Leading;
                        continue;
                    }
                    None => return Scan::Echo,
                }
            }
            let b = chunk[i];
            self.line = match (self.line, b) {
                (Line::Trailing, b'\n') | (Line::Word(10), b'\n') => {
                    self.line = Line::Leading;
                    return Scan::Disconnect { echo: line_start };
                }
                (_, b'\n') => {
                    line_start = i + 1;
                    Line::Leading
                }
                (Line::Leading, b) if is_space(b) => Line::Leading,
                (Line::Word(10), b) | (Line::Trailing, b) if is_space(b) => Line::Trailing,
                (Line::Leading, b) if b.eq_ignore_ascii_case(&WORD[0]) => Line::Word(1),
                (Line::Word(n), b) if n < 10 && b.eq_ignore_ascii_case(&WORD[n as usize]) => {
                    Line::Word(n + 1)
                }
                _ => Line::Data,
            };
            i += 1;
        }
        Scan::Echo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Vec<Scan> {
        let mut d = Detector::default();
        chunks.iter().map(|c| d.scan(c)).collect()
    }

    #[test]
    fn plain_data_is_echoed() {
        assert_eq!(
            scan_all(&[b"hello", b"world\n", b"\x00\xff\xfe"]),
            vec![Scan::Echo; 3]
        );
        assert_eq!(scan_all(&[b"disconnected\n"]), vec![Scan::Echo]);
        assert_eq!(scan_all(&[b"dis connect\n"]), vec![Scan::Echo]);
        assert_eq!(scan_all(&[b"x disconnect\n"]), vec![Scan::Echo]);
    }

    #[test]
    fn whole_chunk_without_newline() {
        assert_eq!(
            scan_all(&[b"disconnect"]),
            vec![Scan::Disconnect { echo: 0 }]
        );
        assert_eq!(
            scan_all(&[b"  DisConnect \r\n"]),
            vec![Scan::Disconnect { echo: 0 }]
        );
        // The lab's client: a message, then the word, no newlines anywhere.
        assert_eq!(
            scan_all(&[b"hello", b"disconnect"]),
            vec![Scan::Echo, Scan::Disconnect { echo: 0 }]
        );
    }

    #[test]
    fn line_inside_a_chunk() {
        assert_eq!(
            scan_all(&[b"a\nb\ndisconnect\nafter"]),
            vec![Scan::Disconnect { echo: 4 }]
        );
        assert_eq!(
            scan_all(&[b"a\n\tDISCONNECT\t\r\n"]),
            vec![Scan::Disconnect { echo: 2 }]
        );
    }

    #[test]
    fn line_split_across_reads() {
        assert_eq!(
            scan_all(&[b"one\ndis", b"conn", b"ect\r", b"\n"]),
            vec![
                Scan::Echo,
                Scan::Echo,
                Scan::Echo,
                Scan::Disconnect { echo: 0 }
            ]
        );
        assert_eq!(
            scan_all(&[b"one\ndisconnectx", b"\n"]),
            vec![Scan::Echo, Scan::Echo]
        );
    }

    #[test]
    fn notices_are_marked_lines() {
        assert_eq!(Notice::Goodbye.line(), "[echo-lab] goodbye\r\n");
        assert_eq!(
            Notice::Idle(Duration::from_secs(60)).line(),
            "[echo-lab] idle for 60s, closing\r\n"
        );
        assert!(Notice::Busy(3).line().starts_with(NOTICE_PREFIX));
        assert_eq!(
            Notice::SourceBusy(4).line(),
            "[echo-lab] busy: 4 connections from your address already open, try again later\r\n"
        );
        assert_eq!(
            Notice::SourceRate {
                count: 20,
                per_secs: 1
            }
            .line(),
            "[echo-lab] busy: more than 20 new connections per second from your address, try again later\r\n"
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Splits `data` at the given cut points into chunks.
    fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            if c > last {
                out.push(data[last..c].to_vec());
                last = c;
            }
        }
        out
    }

    /// True if some line of `data` (or `data` itself) is the command.
    fn has_command(data: &[u8]) -> bool {
        data.split(|&b| b == b'\n').any(is_disconnect)
    }

    proptest! {
        /// Data with no `disconnect` line and no chunk equal to it is all
        /// echoed, however it is split.
        #[test]
        fn data_is_echoed(data in proptest::collection::vec(any::<u8>(), 0..2048),
                          cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            prop_assume!(!has_command(&data));
            let mut d = Detector::default();
            for chunk in split(&data, &cuts) {
                prop_assert_eq!(d.scan(&chunk), Scan::Echo);
            }
        }

        /// A `disconnect` line after arbitrary complete lines is found,
        /// however the stream is split, and exactly the bytes before it in
        /// its chunk are echoed.
        #[test]
        fn command_line_is_found(
            lines in proptest::collection::vec("[a-z ]{0,12}", 0..6),
            pre in "[ \t]{0,2}", post in "[ \t\r]{0,2}", upper in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let mut data = Vec::new();
            for l in &lines {
                prop_assume!(!is_disconnect(l.as_bytes()));
                data.extend_from_slice(l.as_bytes());
                data.push(b'\n');
            }
            let start = data.len();
            let word = if upper { "DISCONNECT" } else { "disconnect" };
            data.extend_from_slice(format!("{pre}{word}{post}\n").as_bytes());
            let mut d = Detector::default();
            let mut offset = 0;
            let mut found = None;
            for chunk in split(&data, &cuts) {
                if let Scan::Disconnect { echo } = d.scan(&chunk) {
                    found = Some((offset + echo, is_disconnect(&chunk), offset));
                    break;
                }
                offset += chunk.len();
            }
            let (at, whole_chunk, chunk_start) = found.expect("disconnect not detected");
            if whole_chunk {
                // A read that is exactly the word ends the session at once.
                prop_assert_eq!(at, chunk_start);
            } else {
                // Echo stops at the command line's start, or at the start of
                // the read that completed it when the line began earlier.
                prop_assert_eq!(at, start.max(chunk_start));
            }
        }
    }
}
