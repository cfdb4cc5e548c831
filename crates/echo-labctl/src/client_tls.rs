//! `echo-labctl connect --tls`: the TLS layer under the plain session.
//!
//! The session of [`crate::client`] (its [`crate::client::Demux`], line
//! editor and piped mode) is written for a byte stream it can clone into a
//! reading and a writing half. A rustls connection cannot be split that
//! way, so this module does the handshake on the TCP socket (blocking,
//! bounded by the session's timeout), prints what was negotiated, and then
//! hands the session one end of a Unix socket pair; two threads pump the
//! other end through the `ClientConnection` to and from the server:
//!
//! * **up**: plaintext from the session is encrypted and written to the
//!   server; the session's end of stream sends `close_notify`;
//! * **down**: bytes from the server are read without the lock, then fed
//!   to rustls under it; the plaintext goes to the session, and an end of
//!   stream or a TLS error (said on stderr) closes the session's end so
//!   that the session sees the server leave.
//!
//! Nothing here prints to stdout: in piped mode stdout carries only echoes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use echo_lab_proto::exit::EX_UNAVAILABLE;
use rustls::ClientConnection;

use crate::tls::{describe, TlsTarget};

type Shared = Arc<Mutex<ClientConnection>>;

/// Handshakes over `tcp`, prints the session's description on stderr and
/// returns the session's end of the pump. Errors are one line plus an exit
/// code.
pub(crate) fn start(
    tcp: TcpStream,
    target: &TlsTarget,
    timeout: Duration,
) -> Result<UnixStream, (String, i32)> {
    let mut conn = target
        .connection()
        .map_err(|e| (format!("TLS setup failed: {e}"), 1))?;
    let io_err = |e: io::Error| (format!("cannot set up the session: {e}"), 1);
    tcp.set_read_timeout(Some(timeout)).map_err(io_err)?;
    tcp.set_write_timeout(Some(timeout)).map_err(io_err)?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut &tcp) {
            return Err((handshake_error(&e), EX_UNAVAILABLE));
        }
    }
    eprintln!("{}", describe(&conn));
    tcp.set_read_timeout(None).map_err(io_err)?;
    let (session, ours) = UnixStream::pair().map_err(io_err)?;
    let conn: Shared = Arc::new(Mutex::new(conn));
    let (tcp_up, ours_down) = match (tcp.try_clone(), ours.try_clone()) {
        (Ok(t), Ok(o)) => (t, o),
        (Err(e), _) | (_, Err(e)) => return Err(io_err(e)),
    };
    let up = conn.clone();
    std::thread::spawn(move || pump_up(ours, tcp_up, up));
    std::thread::spawn(move || pump_down(tcp, ours_down, conn));
    Ok(session)
}

/// A failed handshake in one line, with a hint for the usual causes.
fn handshake_error(e: &io::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("invalid peer certificate") {
        " (pass --ca with the CA that signed the server's certificate, --server-name with a name it carries, or --insecure)"
    } else if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
        " (timed out: is this a TLS port?)"
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        " (the server closed the connection: is this a TLS port, or does it want a client certificate?)"
    } else {
        ""
    };
    format!("TLS handshake failed: {text}{hint}")
}

fn lock(conn: &Shared) -> std::sync::MutexGuard<'_, ClientConnection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes whatever rustls has to send.
fn flush(conn: &mut ClientConnection, tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(&mut &*tcp)?;
    }
    Ok(())
}

/// Session → server.
fn pump_up(mut session: UnixStream, tcp: TcpStream, conn: Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match session.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let mut c = lock(&conn);
        if n == 0 {
            c.send_close_notify();
            let _ = flush(&mut c, &tcp);
            let _ = tcp.shutdown(Shutdown::Write);
            return;
        }
        let sent = c
            .writer()
            .write_all(&buf[..n])
            .and_then(|()| flush(&mut c, &tcp));
        if let Err(e) = sent {
            eprintln!("echo-labctl: send failed: {e}");
            let _ = session.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Server → session; see the module docs.
fn pump_down(mut tcp: TcpStream, mut session: UnixStream, conn: Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut plain = vec![0u8; 16 * 1024];
    loop {
        let n = match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("echo-labctl: receive failed: {e}");
                break;
            }
        };
        let mut c = lock(&conn);
        if let Err(e) = feed(&mut c, &buf[..n], &mut plain, &mut session, &tcp) {
            eprintln!("echo-labctl: TLS: {e}");
            break;
        }
    }
    let _ = session.shutdown(Shutdown::Both);
}

/// Hands `data` from the server to rustls and the plaintext it yields to
/// the session; sends what rustls answers (alerts, key updates).
fn feed(
    c: &mut ClientConnection,
    mut data: &[u8],
    plain: &mut [u8],
    session: &mut UnixStream,
    tcp: &TcpStream,
) -> io::Result<()> {
    while !data.is_empty() {
        c.read_tls(&mut data)?;
        let state = c.process_new_packets();
        let _ = flush(c, tcp);
        state.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        loop {
            match c.reader().read(plain) {
                Ok(0) => return Ok(()),
                Ok(n) => session.write_all(&plain[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
