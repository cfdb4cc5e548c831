//! `echo-labctl who ADDR [--udp] [--count N]`: asks a `mode = "who"`
//! listener (or a load balancer in front of several) which instance
//! answered.
//!
//! One session: connect, read the one JSON line to the end of stream,
//! print its fields one per line (or the line itself with `--json`). Over
//! UDP a session is one datagram of [`UDP_PAD`] bytes from a fresh socket
//! (the daemon never answers with more than it was sent, so the request
//! carries the room for the reply) and the one datagram back. With
//! `--count N`: N sessions one after another, each a new connection, and
//! a table of how many each instance answered — a balancer's distribution
//! in one look. A session that fails (refused, timed out, no valid reply)
//! is counted as failed and makes the exit status 1.
//!
//! Never: sends anything (the reply comes unasked), or waits without a
//! bound.

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use serde_json::Value;

/// The largest reply read; a `who` line is a few hundred bytes.
const MAX_REPLY: u64 = 64 * 1024;

/// The size of a UDP request: room for any reply (a few hundred bytes).
pub const UDP_PAD: usize = 1024;

/// The reply's fields, in the order printed.
pub const FIELDS: [&str; 9] = [
    "instance",
    "hostname",
    "version",
    "listener",
    "client",
    "peer",
    "worker",
    "config_generation",
    "time",
];

/// Why one session gave no reply.
#[derive(Debug, thiserror::Error)]
pub enum WhoError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the reply: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a who reply: {0:?}")]
    NotAReply(String),
}

fn resolve(addr: &str) -> Result<SocketAddr, WhoError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| WhoError::Resolve(addr.to_string()))
}

fn parse(text: &str) -> Result<(String, Value), WhoError> {
    let line = text.trim_end().to_string();
    match serde_json::from_str::<Value>(&line) {
        Ok(v) if v.get("instance").is_some_and(Value::is_string) => Ok((line, v)),
        _ => Err(WhoError::NotAReply(line)),
    }
}

/// One UDP session: a padded datagram from a fresh socket, the reply.
pub fn ask_udp(addr: &str, timeout: Duration) -> Result<(String, Value), WhoError> {
    let target = resolve(addr)?;
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| WhoError::Resolve(addr.to_string()))?;
    let connect = |source| WhoError::Connect {
        addr: addr.to_string(),
        source,
    };
    let socket = UdpSocket::bind(any).map_err(connect)?;
    socket.connect(target).map_err(connect)?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(WhoError::Read)?;
    socket.send(&[b' '; UDP_PAD]).map_err(connect)?;
    let mut buf = vec![0u8; UDP_PAD];
    let n = socket.recv(&mut buf).map_err(WhoError::Read)?;
    parse(&String::from_utf8_lossy(&buf[..n]))
}

/// One session: the reply as sent, parsed.
pub fn ask(addr: &str, timeout: Duration) -> Result<(String, Value), WhoError> {
    let target = resolve(addr)?;
    let stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|source| WhoError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(WhoError::Read)?;
    let mut text = String::new();
    (&stream)
        .take(MAX_REPLY)
        .read_to_string(&mut text)
        .map_err(WhoError::Read)?;
    parse(&text)
}

/// Prints one reply, a field a line (then any field added since).
pub fn print_reply(v: &Value) {
    let shown = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    for name in FIELDS {
        println!("{:<18} {}", format!("{name}:"), shown(&v[name]));
    }
    if let Some(map) = v.as_object() {
        for (k, val) in map.iter().filter(|(k, _)| !FIELDS.contains(&k.as_str())) {
            println!("{:<18} {}", format!("{k}:"), shown(val));
        }
    }
}

/// What `--count` saw: sessions per instance (first seen first), failures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub instances: Vec<(String, u64)>,
    pub failed: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
}

impl Tally {
    /// Counts one session's outcome.
    pub fn add(&mut self, outcome: Result<&Value, &WhoError>) {
        match outcome {
            Ok(v) => {
                let name = v["instance"].as_str().unwrap_or("").to_string();
                match self.instances.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, n)) => *n += 1,
                    None => self.instances.push((name, 1)),
                }
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// The table: instance, sessions, share; then the failures.
    pub fn render(&self) -> String {
        let total: u64 = self.instances.iter().map(|(_, n)| n).sum::<u64>() + self.failed;
        let width = self
            .instances
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(0)
            .max("INSTANCE".len());
        let mut out = format!("{:<width$} {:>8} {:>6}\n", "INSTANCE", "SESSIONS", "SHARE");
        let share = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
        for (name, n) in &self.instances {
            out.push_str(&format!("{name:<width$} {n:>8} {:>5.1}%\n", share(*n)));
        }
        out.push_str(&format!(
            "{:<width$} {:>8} {:>5.1}%\n",
            "(failed)",
            self.failed,
            share(self.failed)
        ));
        if let Some(e) = &self.first_error {
            out.push_str(&format!("first failure: {e}\n"));
        }
        out
    }
}

/// `who`: one session printed, or `count` sessions tallied. Returns the
/// exit status: 0 if every session got a reply, else 1.
pub fn run(addr: &str, udp: bool, count: Option<u64>, json: bool, timeout: Duration) -> i32 {
    let ask = if udp { ask_udp } else { ask };
    let Some(count) = count else {
        return match ask(addr, timeout) {
            Ok((line, v)) => {
                if json {
                    println!("{line}");
                } else {
                    print_reply(&v);
                }
                0
            }
            Err(e) => {
                eprintln!("echo-labctl: {e}");
                1
            }
        };
    };
    let mut tally = Tally::default();
    for _ in 0..count {
        let outcome = ask(addr, timeout);
        tally.add(outcome.as_ref().map(|(_, v)| v));
    }
    print!("{}", tally.render());
    i32::from(tally.failed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_each_instance_and_the_failures() {
        let mut t = Tally::default();
        let a = serde_json::json!({"instance": "a"});
        let b = serde_json::json!({"instance": "bb"});
        t.add(Ok(&a));
        t.add(Ok(&b));
        t.add(Ok(&a));
        t.add(Err(&WhoError::NotAReply("x".into())));
        assert_eq!(t.instances, [("a".to_string(), 2), ("bb".to_string(), 1)]);
        assert_eq!(t.failed, 1);
        let table = t.render();
        assert!(table.starts_with("INSTANCE SESSIONS  SHARE\n"), "{table}");
        assert!(table.contains("a               2  50.0%\n"), "{table}");
        assert!(table.contains("(failed)        1  25.0%\n"), "{table}");
        assert!(table.contains("first failure: not a who reply"), "{table}");
    }
}
