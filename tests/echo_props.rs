//! Property tests against one running daemon: any sequence of writes — every
//! byte value, invalid UTF-8, zero-length writes, 1-byte and 1 MiB writes,
//! with and without pauses between them — comes back byte for byte and
//! nothing more; and `disconnect` split across reads in any way ends the
//! session exactly as the protocol says (checked against a model written
//! from the README's rule, not from the daemon's code).
//!
//! Each property starts one daemon and runs a bounded number of cases on
//! it (a fresh connection per case).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::*;

/// Cases per property; `ECHO_LAB_PROP_CASES` asks for more.
fn cases() -> u32 {
    std::env::var("ECHO_LAB_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        // Each case is real network traffic: keep shrinking bounded.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    })
}

/// What one write carries.
#[derive(Debug, Clone)]
enum Kind {
    /// Pseudo-random bytes.
    Random(u64),
    /// One byte value repeated.
    Constant(u8),
    /// 0, 1, ..., 255, 0, 1, ...
    AllBytes,
    /// Byte sequences that are not UTF-8 (overlong, surrogates, stray
    /// continuation bytes, 0xFE/0xFF).
    InvalidUtf8,
    /// Text lines with CRLF and LF endings.
    Lines,
}

#[derive(Debug, Clone)]
struct Chunk {
    len: usize,
    kind: Kind,
    /// Sleep a little before this write, so it arrives as its own read.
    pause: bool,
}

impl Chunk {
    fn bytes(&self) -> Vec<u8> {
        match self.kind {
            Kind::Random(seed) => pseudo_random(self.len, seed),
            Kind::Constant(b) => vec![b; self.len],
            Kind::AllBytes => (0..self.len).map(|i| i as u8).collect(),
            Kind::InvalidUtf8 => {
                const BAD: &[u8] =
                    b"\xc0\x80\xed\xa0\x80\xff\xfe\x80\xbf\xf8\x88\x80\x80\x80\xe2\x28\xa1";
                BAD.iter().copied().cycle().take(self.len).collect()
            }
            Kind::Lines => b"line 0123456789 \t\xc3\xa9\r\nx\n"
                .iter()
                .copied()
                .cycle()
                .take(self.len)
                .collect(),
        }
    }
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let len = prop_oneof![
        2 => Just(0usize),
        3 => Just(1usize),
        4 => 2usize..256,
        2 => 256usize..65536,
        1 => Just(1usize << 20),
    ];
    let kind = prop_oneof![
        any::<u64>().prop_map(Kind::Random),
        any::<u8>().prop_map(Kind::Constant),
        Just(Kind::AllBytes),
        Just(Kind::InvalidUtf8),
        Just(Kind::Lines),
    ];
    (len, kind, any::<bool>()).prop_map(|(len, kind, pause)| Chunk { len, kind, pause })
}

/// Writes `chunks` on one thread while this one reads; checks the echo is
/// exactly their concatenation, then that nothing else follows.
fn check_echo(d: &Daemon, chunks: &[Chunk]) -> Result<(), TestCaseError> {
    let data: Vec<Vec<u8>> = chunks.iter().map(Chunk::bytes).collect();
    let all = data.concat();
    prop_assume!(!contains_disconnect_word(&all));
    let mut s = connect(d.addr());
    let mut w = s.try_clone().unwrap();
    let pauses: Vec<bool> = chunks.iter().map(|c| c.pause).collect();
    let writer = std::thread::spawn(move || {
        for (bytes, pause) in data.iter().zip(pauses) {
            if pause {
                std::thread::sleep(Duration::from_millis(2));
            }
            if bytes.is_empty() {
                // A real zero-length write(2), not write_all's no-op.
                assert_eq!(w.write(&[]).expect("zero-length write"), 0);
            } else {
                w.write_all(bytes).expect("write");
            }
        }
    });
    let back = read_n(&mut s, all.len());
    writer.join().expect("writer");
    prop_assert_eq!(back.len(), all.len());
    if let Some(at) = back.iter().zip(&all).position(|(a, b)| a != b) {
        return Err(TestCaseError::fail(format!(
            "echo differs at byte {at} of {}",
            all.len()
        )));
    }
    // Nothing extra: the next bytes are the echo of the next message.
    round_trip(&mut s, b"end of case\n");
    Ok(())
}

#[test]
fn any_sequence_of_writes_is_echoed_byte_exact() {
    let d = Daemon::start("pool_size = 2\nmax_pending_bytes = 65536\n");
    let mut r = runner();
    let total = std::cell::Cell::new(0usize);
    r.run(&prop::collection::vec(chunk(), 1..12), |chunks| {
        total.set(total.get() + chunks.iter().map(|c| c.len).sum::<usize>());
        check_echo(&d, &chunks)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "echo properties: {} cases, {} bytes echoed byte-exact",
        cases(),
        total.get()
    );
}

#[test]
fn every_byte_value_alone_and_together() {
    let d = Daemon::start("pool_size = 2\n");
    let mut s = connect(d.addr());
    let all: Vec<u8> = (0..=255u8).collect();
    round_trip(&mut s, &all);
    for b in 0..=255u8 {
        round_trip(&mut s, &[b]);
    }
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    round_trip(&mut s, &reversed);
}

// ---------------------------------------------------------------- disconnect

/// Whitespace the README says may surround the command word.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_word(bytes: &[u8]) -> bool {
    let s = bytes.iter().position(|&b| !is_space(b));
    let e = bytes.iter().rposition(|&b| !is_space(b));
    match (s, e) {
        (Some(s), Some(e)) => bytes[s..=e].eq_ignore_ascii_case(b"disconnect"),
        _ => false,
    }
}

/// The README's rule, one read at a time: `disconnect` ends the session
/// as a whole chunk, or as a complete line (which may have started in
/// earlier reads). Returns `None` (all echoed) or `Some(n)`: the first `n`
/// bytes of this chunk are echoed, then goodbye.
fn model(sent_before: &[u8], chunk: &[u8]) -> Option<usize> {
    if is_word(chunk) {
        return Some(0);
    }
    let mut line_start = sent_before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let stream = [sent_before, chunk].concat();
    for (j, &b) in chunk.iter().enumerate() {
        let at = sent_before.len() + j;
        if b == b'\n' {
            if is_word(&stream[line_start..at]) {
                return Some(line_start.saturating_sub(sent_before.len()));
            }
            line_start = at + 1;
        }
    }
    None
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[dD][iI][sS][cC][oO][nN][nN][eE][cC][tT]",
        2 => "[dD][iI][sS]",
        2 => "[cC][oO][nN][nN]",
        2 => "[eE][cC][tT]",
        3 => Just("\n".to_string()),
        1 => Just("\r\n".to_string()),
        2 => "[ \t]{1,2}",
        2 => "[a-z0-9]{1,4}",
    ]
}

/// A chunk: one to four tokens, never empty.
fn word_chunk() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(token(), 1..4).prop_map(|t| t.concat().into_bytes())
}

/// Sends each chunk as its own read (waiting for its echo before the
/// next), and checks echo, goodbye and close against [`model`].
fn check_disconnect(d: &Daemon, chunks: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut s: TcpStream = connect(d.addr());
    let mut sent: Vec<u8> = Vec::new();
    let mut echoed: Vec<u8> = Vec::new();
    // A last line of data ends the case (it may itself complete a
    // `disconnect` line that an earlier chunk started).
    let last = b"\nstill open\n".to_vec();
    for chunk in chunks.iter().chain(std::iter::once(&last)) {
        s.write_all(chunk).unwrap();
        match model(&sent, chunk) {
            None => {
                let back = read_n(&mut s, chunk.len());
                prop_assert_eq!(
                    String::from_utf8_lossy(&back),
                    String::from_utf8_lossy(chunk),
                    "after {:?}",
                    String::from_utf8_lossy(&sent)
                );
                sent.extend_from_slice(chunk);
                echoed.extend_from_slice(chunk);
            }
            Some(n) => {
                echoed.extend_from_slice(&chunk[..n]);
                let mut want = chunk[..n].to_vec();
                if echoed.last().is_some_and(|&b| b != b'\n') {
                    want.extend_from_slice(b"\r\n");
                }
                want.extend_from_slice(GOODBYE);
                let got = read_to_eof(&mut s);
                prop_assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "chunk {:?} after {:?}",
                    String::from_utf8_lossy(chunk),
                    String::from_utf8_lossy(&sent)
                );
                return Ok(());
            }
        }
    }
    // No command in the whole session: it is still open.
    round_trip(&mut s, b"more\n");
    Ok(())
}

#[test]
fn disconnect_split_across_reads_follows_the_rule() {
    let d = Daemon::start("pool_size = 2\n");
    let mut r = runner();
    let goodbyes = std::cell::Cell::new(0);
    r.run(&prop::collection::vec(word_chunk(), 1..8), |chunks| {
        let mut sent = Vec::new();
        let last = b"\nstill open\n".to_vec();
        if chunks.iter().chain(std::iter::once(&last)).any(|c| {
            let end = model(&sent, c).is_some();
            sent.extend_from_slice(c);
            end
        }) {
            goodbyes.set(goodbyes.get() + 1);
        }
        check_disconnect(&d, &chunks)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "disconnect properties: {} cases, {} ended with goodbye",
        cases(),
        goodbyes.get()
    );
}
