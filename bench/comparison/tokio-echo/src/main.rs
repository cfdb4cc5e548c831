//! tokio-echo: the echo server of tokio's own `examples/echo.rs`.
//!
//! A peer in echo-lab's benchmarks, written the way tokio teaches it: a
//! multi-threaded runtime, one task per connection, each reading into a
//! 1 KiB buffer and writing the bytes back with `write_all`. The only
//! changes from the example are the ones a fair comparison needs: the listen
//! address and the number of worker threads come from the command line,
//! accepted sockets get TCP_NODELAY (as echo-lab's do), the bound address is
//! printed once listening, and errors end a connection instead of panicking.
//!
//! Usage: `tokio-echo [ADDR] [--workers N]` (default `127.0.0.1:0`, one
//! worker per CPU). Prints `listening on ADDR` on stdout.

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn main() {
    let mut addr = "127.0.0.1:0".to_string();
    let mut workers = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--workers" {
            match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => workers = Some(n),
                _ => fail("--workers needs a positive number"),
            }
        } else {
            addr = arg;
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_io().enable_time();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(serve(&addr)) {
        fail(&e.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("tokio-echo: {message}");
    std::process::exit(1);
}

async fn serve(addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tokio-echo: accept: {e}");
                // Out of descriptors, most likely: give connections time to close.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if socket.set_nodelay(true).is_err() {
                return;
            }
            let mut buf = vec![0; 1024];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[0..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
