//! `--check-config` on 200 mutated copies of the shipped config
//! (config/echo-lab.toml): bytes replaced (invalid UTF-8 and NUL among
//! them), spans deleted, TOML fragments and out-of-range values inserted,
//! lines duplicated, swapped and cut. Every run exits 0 or 78 — never a
//! signal, never a hang — and every rejection names the file.
//!
//! (The parser itself is fuzzed in-process by the property tests in
//! crates/echo-lab-config; this drives the real binary.)

mod support;

use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use support::*;

const CASES: u64 = 200;

/// Fragments worth inserting: syntax, keys, extreme and wrong values.
const FRAGMENTS: &[&str] = &[
    "=",
    "\"",
    "'''",
    "[",
    "]",
    "[log]\n",
    "[[log]]\n",
    "[log.level]\n",
    "\n",
    "#",
    "\\",
    "\\u0000",
    "-1",
    "0",
    "99999999999999999999999",
    "1e400",
    "nan",
    "-inf",
    "true",
    "{}",
    "[1, 2]",
    "\"5x\"",
    "\"1h 99999999999h\"",
    "\"\"",
    "port = ",
    "pool_size = 0\n",
    "pool_size = 100000\n",
    "backlog = -5\n",
    "max_connections = 0\n",
    "max_pending_bytes = 1\n",
    "idle_timeout = \"8d\"\n",
    "drain_timeout = 1.5\n",
    "control_socket = \"relative.sock\"\n",
    "control_group = \"\"\n",
    "level = \"loud\"\n",
    "target = \"file\"\n",
    "unknown_key = 1\n",
    "\u{feff}",
    "\u{0}",
    "é",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        // Half the time, somewhere in a line that is not a comment (most
        // of the shipped file is comments).
        let live: Vec<usize> = {
            let mut v = Vec::new();
            let mut line_start = true;
            let mut comment = false;
            for (i, &c) in b.iter().enumerate() {
                if line_start {
                    comment = c == b'#';
                }
                if !comment {
                    v.push(i);
                }
                line_start = c == b'\n';
            }
            v
        };
        let at = if rng.below(2) == 0 && !live.is_empty() {
            live[rng.below(live.len())]
        } else {
            rng.below(b.len() + 1)
        };
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            1 => {
                let end = (at + 1 + rng.below(40)).min(b.len());
                b.drain(at..end);
            }
            2 | 3 => {
                let f = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                b.splice(at..at, f.iter().copied());
            }
            4 | 5 => {
                let mut lines: Vec<Vec<u8>> =
                    b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                let (i, j) = (rng.below(lines.len()), rng.below(lines.len()));
                if rng.below(2) == 0 {
                    let dup = lines[i].clone();
                    lines.insert(j, dup);
                } else {
                    lines.swap(i, j);
                }
                b = lines.join(&b'\n');
            }
            _ => b.truncate(at),
        }
    }
    b
}

/// A mutation that turned `host` into a name would make the check ask a
/// DNS server; this machine has none to ask. Only literals pass.
fn host_is_literal(text: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(text) else {
        return true; // rejected before any lookup
    };
    let Ok(t) = s.parse::<toml::Table>() else {
        return true;
    };
    match t.get("host").and_then(|h| h.as_str()) {
        Some(h) => h.parse::<IpAddr>().is_ok(),
        None => true,
    }
}

#[test]
fn mutated_configs_exit_0_or_78_never_a_crash() {
    let base = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/echo-lab.toml"))
        .expect("the shipped config");
    let mut rng = Rng(0x00c0_ffee_1234_5678);
    let (mut ok, mut rejected, mut skipped) = (0, 0, 0);
    let mut case = 0;
    while case < CASES {
        let text = mutate(&base, &mut rng);
        if !host_is_literal(&text) {
            skipped += 1;
            continue;
        }
        case += 1;
        let f = config_file("");
        std::fs::write(f.path(), &text).unwrap();
        let out = run_with_input(
            Command::new(ECHO_LAB)
                .args(["--check-config", "--config"])
                .arg(f.path())
                // Belt and braces against a resolver that waits.
                .env("RES_OPTIONS", "timeout:1 attempts:1"),
            b"",
            IO_TIMEOUT,
        );
        let shown = String::from_utf8_lossy(&text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            None,
            "case {case}: killed by a signal; stderr {stderr}\nconfig:\n{shown}"
        );
        match out.status.code() {
            Some(0) => ok += 1,
            Some(78) => {
                rejected += 1;
                assert!(
                    stderr.contains(&*f.path().to_string_lossy()),
                    "case {case}: the rejection does not name the file: {stderr}\nconfig:\n{shown}"
                );
            }
            other => panic!("case {case}: exit {other:?}; stderr {stderr}\nconfig:\n{shown}"),
        }
    }
    eprintln!(
        "config mutation: {CASES} mutated configs checked: {ok} OK (exit 0), {rejected} rejected (exit 78), 0 crashes ({skipped} host-name mutations skipped)"
    );
    assert!(rejected > 0 && ok + rejected == CASES);
}
