//! One load connection's byte stream: plain TCP, or TLS over it.
//!
//! The engines ([`super::reactor`], [`super::paced`]) drive non-blocking
//! mio sockets and only ever `read`, `write` and wait for readiness; a
//! [`Link`] gives them those same three operations whether the connection
//! is plain or a rustls `ClientConnection` over the socket (the way the
//! rustls repository's `tlsclient-mio` example drives it, without tokio).
//!
//! For TLS the rules are: every `read` and `write` first sends what rustls
//! still has queued (a record that did not fit in the socket, an alert, a
//! key update), so the writable edge that follows a full socket gets it
//! out whichever state the connection is in; a `read` hands out plaintext
//! rustls already holds before it reads the socket, and reads the socket
//! until it would block or plaintext appears, so an edge-triggered poller
//! is not left with unread bytes while the echo is incomplete. A TLS error
//! reads as `InvalidData` and is counted as a handshake failure (during the
//! handshake) or a reset (after it). This module never waits: it would
//! block the load thread's other connections.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use rustls::ClientConnection;

/// A connection's stream, as the engines use it.
pub(crate) enum Link {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// A TLS connection over a non-blocking socket.
pub(crate) struct Tls {
    tcp: TcpStream,
    conn: ClientConnection,
}

impl Link {
    /// `tcp` under TLS when `conn` is given.
    pub(crate) fn new(tcp: TcpStream, conn: Option<ClientConnection>) -> Link {
        match conn {
            None => Link::Plain(tcp),
            Some(conn) => Link::Tls(Box::new(Tls { tcp, conn })),
        }
    }

    /// The socket (to register it, and for its connect state).
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(t) => &mut t.tcp,
        }
    }

    /// Advances the TLS handshake as far as the socket allows: `Ok(true)`
    /// when it is complete (at once for plain TCP), `Ok(false)` when it
    /// waits for the socket.
    pub(crate) fn handshake(&mut self) -> io::Result<bool> {
        let Link::Tls(t) = self else {
            return Ok(true);
        };
        loop {
            if !t.flush()? {
                return Ok(false);
            }
            if !t.conn.is_handshaking() {
                return Ok(true);
            }
            match t.conn.read_tls(&mut t.tcp) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => t.process()?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads plaintext (0: the server closed).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Tls(t) => t.read(buf),
        }
    }

    /// Writes plaintext.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(buf),
            Link::Tls(t) => t.write(buf),
        }
    }

    /// Says goodbye before the socket is dropped: a `close_notify` for TLS,
    /// sent if the socket takes it at once.
    pub(crate) fn close(&mut self) {
        if let Link::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush();
        }
    }
}

impl Tls {
    /// Sends what rustls has queued: `Ok(true)` when all of it went out,
    /// `Ok(false)` when the socket is full.
    fn flush(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Decrypts what `read_tls` took in.
    fn process(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                // The alert rustls queued for the server, if the socket
                // takes it.
                let _ = self.flush();
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flush()?;
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The server closed without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.tcp) {
                Ok(0) => {
                    // End of the socket: what rustls still holds, then 0.
                    self.process()?;
                    return match self.conn.reader().read(buf) {
                        Ok(n) => Ok(n),
                        Err(_) => Ok(0),
                    };
                }
                Ok(_) => self.process()?,
                Err(e) => return Err(e),
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.flush()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(buf)?;
        self.flush()?;
        Ok(n)
    }
}
