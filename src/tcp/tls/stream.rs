//! A TLS session as a connection's [`Transport`]: a rustls
//! `ServerConnection` over the non-blocking socket, driven the way the
//! rustls `tlsserver-mio` example drives it (`read_tls` +
//! `process_new_packets` when the socket is readable, `write_tls` while
//! rustls wants to write), with no thread and no runtime of its own.
//!
//! The connection above it sees plaintext: `read` returns decrypted
//! bytes (pulling and decrypting records as needed, so a short read
//! proves nothing: `SHORT_READ_DRAINS` is false), `write` encrypts. It
//! keeps backpressure honest: new plaintext is taken only once every
//! record rustls had queued is on the socket, so at most one write's worth
//! of records waits inside rustls, reported by `wants_write`; the rest of
//! the echo stays in the connection's pending buffer, under
//! `max_pending_bytes`. `shutdown_write` queues `close_notify` and shuts
//! the socket's sending side once it is out.
//!
//! It counts its handshake's outcome in its listener's counters once
//! (finished, failed, the client gone, or timed out), and keeps what the
//! session log says of the session (version, cipher suite, SNI, ALPN, the
//! client certificate's subject).
//!
//! With the PROXY protocol the header comes before any TLS byte: the
//! connection reads it through [`Transport::read_raw`] (the socket
//! itself), and hands the bytes that followed it back through
//! [`Transport::take_early`], which feeds them to rustls as the start of the
//! handshake.
//!
//! It must never block and never panic on what a client sends: every
//! rustls error closes the session (after the alert rustls queued, best
//! effort) and nothing else.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConnection;

use crate::observe::session::TlsSummary;
use crate::tcp::connection::Transport;
use crate::tcp::tls::{Handshakes, Outcome};

/// A rustls server session over a TCP socket.
#[derive(Debug)]
pub(crate) struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
    /// Its listener's handshake counters.
    handshakes: Arc<Handshakes>,
    /// Until the handshake's outcome is counted.
    handshaking: bool,
    /// The socket reported the end of input.
    eof: bool,
    /// `close_notify` is queued: shut the socket's write side once out.
    shut_pending: bool,
    /// Known once the handshake finished.
    summary: Option<Box<TlsSummary>>,
}

impl TlsStream {
    /// A session on `sock` with `config` (the listener's, in force now),
    /// counted in `handshakes`.
    pub(crate) fn new(
        sock: TcpStream,
        config: Arc<rustls::ServerConfig>,
        handshakes: Arc<Handshakes>,
    ) -> Result<TlsStream, rustls::Error> {
        let tls = ServerConnection::new(config)?;
        Ok(TlsStream {
            sock,
            tls,
            handshakes,
            handshaking: true,
            eof: false,
            shut_pending: false,
            summary: None,
        })
    }

    /// The socket (registration, placement queries).
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// The socket (registration).
    pub(crate) fn socket_mut(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// True until the handshake has ended, whatever way.
    pub(crate) fn handshaking(&self) -> bool {
        self.handshaking
    }

    /// The handshake took too long: counted as a timeout.
    pub(crate) fn timed_out(&mut self) {
        self.end_handshake(Outcome::Timeout);
    }

    /// What the session log says of it, once the handshake finished.
    pub(crate) fn summary(&self) -> Option<&TlsSummary> {
        self.summary.as_deref()
    }

    fn end_handshake(&mut self, outcome: Outcome) {
        if !std::mem::replace(&mut self.handshaking, false) {
            return;
        }
        self.handshakes.count(outcome);
        if outcome == Outcome::Ok {
            self.summary = Some(Box::new(self.summarise()));
        }
    }

    fn summarise(&self) -> TlsSummary {
        let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".to_string());
        let client = self
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| super::describe(der).ok())
            .map(|info| info.subject);
        TlsSummary {
            version: or_dash(self.tls.protocol_version().map(|v| format!("{v:?}"))),
            cipher: or_dash(
                self.tls
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite())),
            ),
            sni: or_dash(self.tls.server_name().map(str::to_string)),
            alpn: or_dash(
                self.tls
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            ),
            client: or_dash(client),
        }
    }

    /// Decrypts what rustls received; a TLS error ends the session (its
    /// alert sent if the socket takes it).
    fn process(&mut self) -> io::Result<()> {
        match self.tls.process_new_packets() {
            Ok(_) => {
                if self.handshaking && !self.tls.is_handshaking() {
                    self.end_handshake(Outcome::Ok);
                }
                Ok(())
            }
            Err(e) => {
                self.end_handshake(Outcome::of(&e));
                let _ = self.push();
                Err(io::Error::new(ErrorKind::InvalidData, e))
            }
        }
    }

    /// Writes rustls's queued records until none is left (`Ok`) or the
    /// socket is full (`WouldBlock`).
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(0) => {
                    self.end_handshake(Outcome::Closed);
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                // The socket closed without close_notify: for an echo, the
                // end of input all the same.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    self.end_handshake(Outcome::Closed);
                    return Ok(0);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.eof {
                self.end_handshake(Outcome::Closed);
                return Ok(0);
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    self.eof = true;
                    self.process()?;
                }
                Ok(_) => self.process()?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        self.end_handshake(Outcome::Closed);
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Backpressure: no new plaintext while earlier records wait.
        self.push()?;
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        match self.push() {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()?;
        if self.shut_pending {
            self.shut_pending = false;
            self.sock.shutdown(Shutdown::Write)?;
        }
        Ok(())
    }
}

impl Transport for TlsStream {
    const SHORT_READ_DRAINS: bool = false;

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.tls.send_close_notify();
        self.shut_pending = true;
        match self.flush() {
            Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    fn wants_write(&self) -> bool {
        self.tls.wants_write() || self.shut_pending
    }

    fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }

    fn take_early(&mut self, mut bytes: &[u8]) -> io::Result<bool> {
        while !bytes.is_empty() {
            let n = self.tls.read_tls(&mut bytes)?;
            if n == 0 {
                break;
            }
            self.process()?;
        }
        Ok(true)
    }

    fn tls_summary(&self) -> Option<&TlsSummary> {
        self.summary()
    }
}
