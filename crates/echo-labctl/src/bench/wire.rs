//! What one read or write of an echo means, for every engine.
//!
//! The engines differ in how they wait (a blocking socket with a timeout,
//! edge-triggered readiness, a send schedule) but not in what a system
//! call's result says about the round trip: some bytes moved, nothing to do
//! until the socket is ready again, try again at once (a signal), or the
//! connection failed in one of the ways [`Failure`] counts. That verdict is
//! taken here, once, so that a reset or an early close is counted the same
//! whichever engine saw it; so is the byte-for-byte comparison of an echo.

use std::io;

use super::tally::Failure;

/// The verdict on one `read` or `write` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// This many bytes moved (never 0).
    Moved(usize),
    /// The socket would block: wait for readiness (a blocking socket says
    /// this when its timeout expired; [`Step::blocking`] turns it into a
    /// timeout).
    Again,
    /// Interrupted by a signal: retry the call.
    Retry,
    /// The connection is lost for this run.
    Failed(Failure),
}

impl Step {
    /// The verdict on a `read`: 0 bytes means the server closed.
    pub(crate) fn of_read(result: io::Result<usize>) -> Step {
        match result {
            Ok(0) => Step::Failed(Failure::Closed),
            other => Step::of_write(other),
        }
    }

    /// The verdict on a `write`.
    pub(crate) fn of_write(result: io::Result<usize>) -> Step {
        match result {
            Ok(0) => Step::Failed(Failure::Closed),
            Ok(n) => Step::Moved(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Again,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Retry,
            Err(e) => Step::Failed(io_failure(e)),
        }
    }

    /// On a blocking socket with a timeout, "would block" means the
    /// timeout expired.
    pub(crate) fn blocking(self) -> Step {
        match self {
            Step::Again => Step::Failed(Failure::Timeout),
            other => other,
        }
    }
}

/// Classifies an I/O error on an established connection.
pub(crate) fn io_failure(e: io::Error) -> Failure {
    match e.kind() {
        // What a socket timeout looks like on Unix.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero => Failure::Closed,
        _ => Failure::Reset,
    }
}

/// Whether a complete echo is the message that was sent.
pub(crate) fn verify(sent: &[u8], echoed: &[u8]) -> Result<(), Failure> {
    if sent == echoed {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(Step::of_read(Ok(0)), Step::Failed(Failure::Closed));
        assert_eq!(Step::of_read(Ok(5)), Step::Moved(5));
        let would_block = || Err(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(Step::of_write(would_block()), Step::Again);
        assert_eq!(
            Step::of_write(would_block()).blocking(),
            Step::Failed(Failure::Timeout)
        );
        let reset = Err(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(Step::of_read(reset), Step::Failed(Failure::Reset));
        let eintr = Err(io::Error::from(io::ErrorKind::Interrupted));
        assert_eq!(Step::of_read(eintr), Step::Retry);
        assert_eq!(verify(b"ab", b"ab"), Ok(()));
        assert_eq!(verify(b"ab", b"aB"), Err(Failure::Mismatch));
    }
}
