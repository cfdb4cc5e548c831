//! `churn ADDR CONNECTIONS SECONDS [SIZE]`: CONNECTIONS client threads,
//! each opening a connection, sending SIZE bytes and `disconnect` in one
//! write, reading the echo and the goodbye to the server's close, closing,
//! and starting over, for SECONDS. Prints sessions per second and the
//! session time percentiles (connect to close), one line:
//!
//! `sessions=N per_sec=R p50_us=A p99_us=B errors=E`
//!
//! The server closes first (it answers `disconnect` with a goodbye and
//! shuts its side), so the TIME_WAIT sockets are the server's, not the
//! client's ephemeral ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn session(addr: SocketAddr, message: &[u8], want: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_nodelay(true).ok();
    s.write_all(message).map_err(|e| format!("write: {e}"))?;
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if got != want {
        return Err(format!("read {got} bytes, expected {want}"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: churn ADDR CONNECTIONS SECONDS [SIZE]");
        std::process::exit(64);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR is HOST:PORT");
    let conns: usize = args[2].parse().expect("CONNECTIONS is a number");
    let secs: f64 = args[3].parse().expect("SECONDS is a number");
    let size: usize = args.get(4).map_or(64, |s| s.parse().expect("SIZE"));
    let mut message = vec![b'x'; size.max(1)];
    *message.last_mut().unwrap() = b'\n';
    let echo = message.len();
    message.extend_from_slice(b"disconnect\n");
    let want = echo + b"[echo-lab] goodbye\r\n".len();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let message = message.clone();
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    match session(addr, &message, want) {
                        Ok(()) => times.push(t.elapsed()),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("churn: {e}");
                            }
                            errors += 1;
                        }
                    }
                }
                (times, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (times, e) = t.join().expect("client thread");
        all.extend(times);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    println!(
        "sessions={} per_sec={:.0} p50_us={} p99_us={} errors={errors}",
        all.len(),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99)
    );
}
