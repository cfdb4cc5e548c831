//! The byte transport a [`Connection`](super::Connection) runs over: what
//! it asks of a socket, and nothing of how the socket is polled.
//!
//! A transport is a non-blocking byte stream (`Read + Write`, `WouldBlock`
//! when it cannot go on) plus the two things a connection needs beyond
//! that: shutting its sending direction (the lingering close), and saying
//! whether it has bytes of its own to write. The connection is generic over
//! it, so the echo path is monomorphised for `mio::net::TcpStream` and a
//! call through the trait costs what a direct call does; no trait object
//! sits on the hot path.
//!
//! Registration with the poller is not here: the worker owns the poller
//! and registers the concrete type it holds. This module must never block,
//! never keep bytes the connection does not know about except as
//! [`Transport::wants_write`] reports them, and never decide anything about
//! the echo protocol.
//!
//! It is also where an encrypting transport plugs in. A TLS session
//! (e.g. a rustls `ServerConnection` over the socket) reads and writes
//! plaintext through `Read`/`Write`, but has records to send that the
//! connection never queued — handshake messages, `close_notify` — and can
//! hold decrypted bytes that no readiness edge will announce again. The
//! trait names both: [`Transport::wants_write`] (the connection then calls
//! `flush` even with nothing pending, and does not count itself flushed
//! until it is false) and [`Transport::SHORT_READ_DRAINS`] (false: a short
//! read proves nothing, read on to `WouldBlock`).

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

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
}

impl Transport for TcpStream {
    const SHORT_READ_DRAINS: bool = true;

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}
