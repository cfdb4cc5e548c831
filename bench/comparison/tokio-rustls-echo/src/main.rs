//! tokio-rustls-echo: the TLS echo server a tokio user writes first.
//!
//! A peer in echo-lab's TLS benchmarks (bench/tls.sh): tokio's echo
//! example with tokio-rustls' `TlsAcceptor` in front, as its `server`
//! example does — a multi-threaded runtime, one task per connection that
//! does the handshake and then reads into a 1 KiB buffer and writes the
//! bytes back with `write_all`. Like tokio-echo: the address and the number
//! of worker threads come from the command line, accepted sockets get
//! TCP_NODELAY, the bound address is printed once listening, errors end a
//! connection. rustls with the aws-lc-rs provider, TLS 1.2 and 1.3, the
//! certificate chain and key from PEM files (`PemObject`).
//!
//! Usage: `tokio-rustls-echo --cert FILE --key FILE [ADDR] [--workers N]`
//! (default `127.0.0.1:0`, one worker per CPU). Prints `listening on ADDR`
//! on stdout.

use std::io::Write as _;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

struct Options {
    addr: String,
    cert: String,
    key: String,
    workers: Option<usize>,
}

fn parse() -> Options {
    let mut o = Options {
        addr: "127.0.0.1:0".into(),
        cert: String::new(),
        key: String::new(),
        workers: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workers" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => o.workers = Some(n),
                _ => fail("--workers needs a positive number"),
            },
            "--cert" => o.cert = args.next().unwrap_or_default(),
            "--key" => o.key = args.next().unwrap_or_default(),
            _ => o.addr = arg,
        }
    }
    if o.cert.is_empty() || o.key.is_empty() {
        fail("usage: tokio-rustls-echo --cert FILE --key FILE [ADDR] [--workers N]");
    }
    o
}

fn main() {
    let o = parse();
    let acceptor = match tls(&o) {
        Ok(a) => a,
        Err(e) => fail(&e),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_io().enable_time();
    if let Some(n) = o.workers {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    if let Err(e) = runtime.block_on(serve(&o.addr, acceptor)) {
        fail(&e.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("tokio-rustls-echo: {message}");
    std::process::exit(1);
}

/// The acceptor: rustls with the aws-lc-rs provider, as echo-lab's.
fn tls(o: &Options) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(&o.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", o.cert))?;
    let key = PrivateKeyDer::from_pem_file(&o.key).map_err(|e| format!("{}: {e}", o.key))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(addr: &str, acceptor: TlsAcceptor) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tokio-rustls-echo: accept: {e}");
                // Out of descriptors, most likely: give connections time to close.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if socket.set_nodelay(true).is_err() {
                return;
            }
            let Ok(mut tls) = acceptor.accept(socket).await else {
                return;
            };
            let mut buf = vec![0; 1024];
            loop {
                let n = match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if tls.write_all(&buf[0..n]).await.is_err() {
                    return;
                }
                if tls.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}
