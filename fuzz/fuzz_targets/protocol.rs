//! Fuzzes the protocol scanner: `Detector` and `is_disconnect` against a
//! plain model of the rule in README.md, and the notices' shape.
//!
//! The input is a client's stream as reads returned it: a length byte,
//! then that many bytes, repeated (empty reads are skipped: a read of 0
//! bytes is end of stream, not a chunk). The model, written from the
//! README and sharing no code with the scanner:
//!
//! * a read that, trimmed of surrounding spaces, tabs, CR, LF, VT and FF,
//!   is `disconnect` (ASCII case-insensitive) ends the session, nothing of
//!   it echoed;
//! * otherwise the first complete line (ended by `\n`) of the stream that,
//!   trimmed likewise, is `disconnect` ends it: the bytes of that read
//!   before the line's start are echoed (none if the line began in an
//!   earlier read);
//! * every other read is echoed whole.
//!
//! The scanner must give the model's verdict for every read up to and
//! including the one that ends the session.

#![no_main]

use std::time::Duration;

use echo_lab::protocol::{is_disconnect, Detector, Notice, Scan, NOTICE_PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let chunks = chunks(data);
    let mut detector = Detector::default();
    let got: Vec<Scan> = chunks.iter().map(|c| detector.scan(c)).collect();
    let want = model(&chunks);
    assert_eq!(&got[..want.len()], &want[..], "chunks: {chunks:?}");
    for c in &chunks {
        assert_eq!(is_disconnect(c), is_word(c), "chunk {c:?}");
    }
    notices(data);
});

/// Splits the input into reads: `[len][len bytes]...`.
fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let n = (len as usize).min(rest.len());
        if n > 0 {
            out.push(&rest[..n]);
        }
        data = &rest[n..];
    }
    out
}

/// Whitespace the rule ignores around the word.
fn blank(b: u8) -> bool {
    b" \t\r\n\x0b\x0c".contains(&b)
}

/// Is `bytes`, trimmed, the word? Spelled out (lowercase, then compare)
/// rather than with the scanner's `eq_ignore_ascii_case`.
#[allow(clippy::manual_ignore_case_cmp)]
fn is_word(bytes: &[u8]) -> bool {
    let mut s = bytes;
    while let [first, rest @ ..] = s {
        if !blank(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !blank(*last) {
            break;
        }
        s = rest;
    }
    s.to_ascii_lowercase() == b"disconnect"
}

/// The verdicts the rule gives, up to the read that ends the session.
fn model(chunks: &[&[u8]]) -> Vec<Scan> {
    let mut out = Vec::new();
    let mut stream: Vec<u8> = Vec::new();
    let mut line_start = 0; // stream offset where the current line began
    for chunk in chunks {
        let offset = stream.len();
        stream.extend_from_slice(chunk);
        if is_word(chunk) {
            out.push(Scan::Disconnect { echo: 0 });
            return out;
        }
        for i in offset..stream.len() {
            if stream[i] != b'\n' {
                continue;
            }
            if is_word(&stream[line_start..i]) {
                let echo = line_start.saturating_sub(offset);
                out.push(Scan::Disconnect { echo });
                return out;
            }
            line_start = i + 1;
        }
        out.push(Scan::Echo);
    }
    out
}

/// Notices are one line each: the prefix, text, CRLF.
fn notices(data: &[u8]) {
    let mut n = [0u8; 8];
    let k = data.len().min(8);
    n[..k].copy_from_slice(&data[..k]);
    let n = u64::from_le_bytes(n);
    for notice in [
        Notice::Goodbye,
        Notice::ShuttingDown,
        Notice::Idle(Duration::from_secs(n)),
        Notice::Busy(n as usize),
    ] {
        let line = notice.line();
        assert!(line.starts_with(NOTICE_PREFIX), "{line:?}");
        assert!(line.ends_with("\r\n"), "{line:?}");
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(!is_word(line.as_bytes()), "{line:?}");
    }
}
