//! udp-echo: the minimal UDP echo server (RFC 862), the baseline echo-lab's
//! UDP side is measured against.
//!
//! One blocking socket, one thread, and for each datagram one `recv_from`
//! and one `send_to` back to the source: the loop every UDP echo server
//! starts from, two system calls per datagram. It has none of echo-lab's
//! guards (no source-port check, no rate limit): it is a benchmark peer on
//! loopback, never something to expose.
//!
//! Usage: `udp-echo [ADDR]` (default `127.0.0.1:0`). Prints
//! `listening on ADDR` on stdout once the socket is bound, so scripts can
//! use port 0 and read the real port.

use std::io::{self, Write};
use std::net::UdpSocket;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    if let Err(e) = serve(&addr) {
        eprintln!("udp-echo: {e}");
        std::process::exit(1);
    }
}

fn serve(addr: &str) -> io::Result<()> {
    let socket = UdpSocket::bind(addr)?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {}", socket.local_addr()?)?;
    out.flush()?;
    drop(out);
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("udp-echo: receive: {e}");
                continue;
            }
        };
        if let Err(e) = socket.send_to(&buf[..n], from) {
            eprintln!("udp-echo: send to {from}: {e}");
        }
    }
}
