//! Listening sockets handed over by systemd: socket activation and the
//! file-descriptor store.
//!
//! systemd passes sockets as fds 3, 4, ... with `LISTEN_FDS` (their count),
//! `LISTEN_PID` (must be our pid, otherwise they are meant for someone else
//! and are ignored) and `LISTEN_FDNAMES`. Two kinds arrive that way:
//!
//! * sockets of a `.socket` unit (socket activation): the daemon uses them
//!   as they are and ignores `host`/`port` (and `udp`) — the unit decides
//!   the address, the backlog, and may bind a privileged port for an
//!   unprivileged service. `ListenStream=` sockets (listening TCP) go to
//!   the accept loop, `ListenDatagram=` sockets (bound UDP) to the UDP echo
//!   service;
//! * sockets the daemon itself stored in the fd store before a restart
//!   (named [`FDSTORE_NAME`]): reused when they still match the configured
//!   address, so a `systemctl restart` refuses no connection — the kernel
//!   kept queueing connects while no process was running.
//!
//! Detection is automatic, with no flag. The variables are unset once read
//! so they never leak to a child, and this must run before any thread
//! starts (changing the environment is only sound then).

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, RawFd};

use socket2::{Socket, Type};

use crate::notify::FDSTORE_NAME;

/// Sockets received from the service manager.
#[derive(Debug, Default)]
pub struct Inherited {
    /// From a `.socket` unit: `ListenStream=`.
    pub activated: Vec<TcpListener>,
    /// From a `.socket` unit: `ListenDatagram=`.
    pub datagram: Vec<UdpSocket>,
    /// From our own fd store.
    pub stored: Vec<TcpListener>,
}

/// Takes the sockets systemd passed (if any) and unsets the variables.
///
/// # Safety
/// Must be called before any other thread exists (it changes the
/// environment), and at most once (it takes ownership of the fds).
pub unsafe fn take() -> Inherited {
    let mut out = Inherited::default();
    // SAFETY: single-threaded per this function's contract.
    let fds = match unsafe { sd_notify::listen_fds_with_names_and_unset_env() } {
        Ok(fds) => fds.collect::<Vec<_>>(),
        Err(e) => {
            log::warn!("ignoring sockets passed by the service manager: {e}");
            return out;
        }
    };
    for (fd, name) in fds {
        match classify(fd) {
            Some(Passed::Stream(l)) if name == FDSTORE_NAME => out.stored.push(l),
            Some(Passed::Stream(l)) => out.activated.push(l),
            Some(Passed::Datagram(s)) => out.datagram.push(s),
            None => log::warn!("fd {fd} ({name}) passed by the service manager is neither a listening TCP socket nor a bound UDP socket; ignored"),
        }
    }
    out
}

/// A socket the service manager passed, by kind.
enum Passed {
    Stream(TcpListener),
    Datagram(UdpSocket),
}

/// Wraps `fd` if it is a listening TCP or a bound UDP socket on an IP
/// address (else closes it).
fn classify(fd: RawFd) -> Option<Passed> {
    // SAFETY: systemd passed us this fd and nobody else owns it.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    let inet = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .is_some_and(|a| a.port() != 0);
    if !inet {
        return None;
    }
    let kind = socket.r#type().ok()?;
    if kind == Type::STREAM && socket.is_listener().unwrap_or(false) {
        let _ = socket.set_nonblocking(true);
        Some(Passed::Stream(socket.into()))
    } else if kind == Type::DGRAM {
        let _ = socket.set_nonblocking(true);
        Some(Passed::Datagram(socket.into()))
    } else {
        None
    }
}
