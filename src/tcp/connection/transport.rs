//! The byte transport a [`Connection`](super::Connection) runs over: what
//! it asks of a socket, and nothing of how the socket is polled.
//!
//! A transport is a non-blocking byte stream (`Read + Write`, `WouldBlock`
//! when it cannot go on) plus the two things a connection needs beyond
//! that: shutting its sending direction (the lingering close), and saying
//! whether it has bytes of its own to write. The connection is generic over
//! it, so the echo path is monomorphised for the worker's [`Stream`] (a
//! plain socket or a TLS session: an enum, one branch on its tag, then the
//! very socket call); no trait object sits on the hot path.
//!
//! Registration with the poller is not here: the worker owns the poller
//! and registers the concrete type it holds. This module must never block,
//! never keep bytes the connection does not know about except as
//! [`Transport::wants_write`] reports them, and never decide anything about
//! the echo protocol.
//!
//! It is also where the encrypting transport plugs in
//! (`crate::tcp::tls::stream::TlsStream`). A TLS session (a rustls
//! `ServerConnection` over the socket) reads and writes
//! plaintext through `Read`/`Write`, but has records to send that the
//! connection never queued — handshake messages, `close_notify` — and can
//! hold decrypted bytes that no readiness edge will announce again. The
//! trait names both: [`Transport::wants_write`] (the connection then calls
//! `flush` even with nothing pending, and does not count itself flushed
//! until it is false) and [`Transport::SHORT_READ_DRAINS`] (false: a short
//! read proves nothing, read on to `WouldBlock`).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};

use mio::net::TcpStream;

use crate::observe::session::TlsSummary;
use crate::tcp::tls::stream::TlsStream;

/// A non-blocking byte stream a connection can serve.
///
/// `read` and `write` return `WouldBlock` when they cannot go on without
/// waiting, `Ok(0)` from `read` is the peer's end of input, and `flush`
/// pushes the transport's own buffered bytes (returning `WouldBlock` if it
/// cannot push them all yet).
pub(crate) trait Transport: Read + Write {
    /// True if a read that returns fewer bytes than asked means nothing more
    /// is readable until the poller reports a new edge (a plain socket: the
    /// kernel handed over all it had). The connection then skips the read
    /// that would only say `WouldBlock`. A transport that buffers (TLS
    /// records) says false.
    const SHORT_READ_DRAINS: bool;

    /// Ends the sending direction once what was written is out (TCP: a
    /// FIN). A transport with bytes of its own to send first (TLS:
    /// `close_notify`) queues them and reports them by
    /// [`Transport::wants_write`] until `flush` has sent them.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// True while the transport has bytes of its own to write that the
    /// connection never queued (TLS handshake records, `close_notify`, or
    /// plaintext accepted but not yet encrypted out). A plain socket has
    /// none.
    fn wants_write(&self) -> bool {
        false
    }

    /// [`Transport::SHORT_READ_DRAINS`] for this very transport (a
    /// transport that is one of several kinds answers per value).
    #[inline(always)]
    fn short_read_drains(&self) -> bool {
        Self::SHORT_READ_DRAINS
    }

    /// Reads bytes that come before the transport's own protocol (a PROXY
    /// header before TLS): the socket itself. A plain socket: `read`.
    fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    /// Bytes read by [`Transport::read_raw`] past the PROXY header: true
    /// if the transport took them as its own input (TLS records); false if
    /// they are the client's data, for the connection to echo.
    fn take_early(&mut self, _bytes: &[u8]) -> io::Result<bool> {
        Ok(false)
    }

    /// What the session log says of a TLS session (none for plain TCP).
    fn tls_summary(&self) -> Option<&TlsSummary> {
        None
    }
}

impl Transport for TcpStream {
    const SHORT_READ_DRAINS: bool = true;

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// What a worker holds: a plain socket or a TLS session over one.
///
/// One enum rather than a trait object, so the plain path stays static
/// dispatch: each call is one well-predicted branch on the tag and then
/// the very `TcpStream` call (measured in docs/PERFORMANCE.md, "TLS").
/// The TLS side is boxed: a rustls session is a few hundred bytes that a
/// plain connection's slot should not carry.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A TLS session over TCP.
    Tls(Box<TlsStream>),
}

impl Stream {
    /// The TCP socket underneath.
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.socket(),
        }
    }

    /// The TLS session, if it is one.
    pub(crate) fn tls_mut(&mut self) -> Option<&mut TlsStream> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(t),
        }
    }

    /// True while a TLS handshake has not ended.
    pub(crate) fn handshaking(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.handshaking(),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Plain(s)
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

impl Transport for Stream {
    /// Not used: [`Transport::short_read_drains`] answers per value.
    const SHORT_READ_DRAINS: bool = false;

    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown_write(),
            Stream::Tls(t) => t.shutdown_write(),
        }
    }

    #[inline]
    fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.wants_write(),
        }
    }

    #[inline(always)]
    fn short_read_drains(&self) -> bool {
        matches!(self, Stream::Plain(_))
    }

    fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read_raw(buf),
        }
    }

    fn take_early(&mut self, bytes: &[u8]) -> io::Result<bool> {
        match self {
            Stream::Plain(_) => Ok(false),
            Stream::Tls(t) => t.take_early(bytes),
        }
    }

    fn tls_summary(&self) -> Option<&TlsSummary> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.summary(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket().as_fd()
    }
}

impl mio::event::Source for Stream {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.socket_mut().register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.socket_mut().reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.socket_mut().deregister(registry)
    }
}

impl Stream {
    fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.socket_mut(),
        }
    }
}
