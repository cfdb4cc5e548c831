//! thread-echo: the classic echo server, one blocking thread per connection.
//!
//! This is the model most echo servers start from, written in plain Rust
//! with the standard library only: accept, spawn a thread, and in it read
//! into a buffer and write the same bytes back until the client closes. It
//! is a peer in echo-lab's benchmarks: the baseline an event-driven daemon
//! has to beat (or at least match) at every concurrency. Threads get a small
//! stack (64 KiB) so that ten thousand connections fit in memory; a thread
//! that cannot be spawned drops its connection and says so.
//!
//! Usage: `thread-echo [ADDR]` (default `127.0.0.1:0`). Prints
//! `listening on ADDR` on stdout once the socket is bound, so scripts can
//! use port 0 and read the real port.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

const STACK: usize = 64 * 1024;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    if let Err(e) = serve(&addr) {
        eprintln!("thread-echo: {e}");
        std::process::exit(1);
    }
}

fn serve(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            // Out of descriptors, aborted handshakes: keep serving the rest.
            Err(e) => {
                eprintln!("thread-echo: accept: {e}");
                thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || echo(stream))
        {
            eprintln!("thread-echo: cannot start a thread: {e}");
        }
    }
}

/// Echoes until the peer closes or an error occurs.
fn echo(mut stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}
