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

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, RawFd};

use socket2::{Socket, Type};

use crate::systemd::notify::FDSTORE_NAME;

/// Sockets received from the service manager.
#[derive(Debug, Default)]
pub struct Inherited {
    /// From a `.socket` unit: `ListenStream=`, with its
    /// `FileDescriptorName=`.
    pub activated: Vec<(String, TcpListener)>,
    /// From a `.socket` unit: `ListenDatagram=`, with its name.
    pub datagram: Vec<(String, UdpSocket)>,
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
            Some(Passed::Stream(l)) => out.activated.push((name, l)),
            Some(Passed::Datagram(s)) => out.datagram.push((name, s)),
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

/// Which listener an activated socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `host`/`port` (TCP) or `udp` (UDP): the unit decides the address.
    Main,
    /// The `[[listen]]` table at this index.
    Table(usize),
}

/// A `[[listen]]` table as matching sees it: its name, what its address
/// resolves to, and whether it has the socket's protocol.
pub struct Candidate<'a> {
    pub name: Option<&'a str>,
    pub addrs: Vec<SocketAddr>,
    pub same_protocol: bool,
}

/// Matches an activated socket to a listener: the table whose `name` is
/// the socket's `FileDescriptorName=`, else the table whose address it is
/// bound to; a socket with the unit's default name (`NAME.socket`, or
/// none) and no table serves as `host`/`port` (or `udp`). A socket with a
/// name of its own that no table claims is an error: the unit and the
/// config disagree, and serving it as something else would hide that.
pub fn assign(
    name: &str,
    addr: Option<SocketAddr>,
    tables: &[Candidate<'_>],
) -> Result<Role, String> {
    let by_name = tables.iter().position(|t| t.name == Some(name));
    let by_addr = || {
        tables
            .iter()
            .position(|t| t.same_protocol && addr.is_some_and(|a| t.addrs.contains(&a)))
    };
    if let Some(i) = by_name {
        if !tables[i].same_protocol {
            return Err(format!(
                "the socket named '{name}' passed by the service manager is not of listen[{i}]'s protocol"
            ));
        }
        return Ok(Role::Table(i));
    }
    if let Some(i) = by_addr() {
        return Ok(Role::Table(i));
    }
    if name.is_empty() || name == "unknown" || name.ends_with(".socket") {
        return Ok(Role::Main);
    }
    let at = addr.map_or_else(|| "?".to_string(), |a| a.to_string());
    Err(format!(
        "the service manager passed a socket named '{name}' ({at}) that no [[listen]] table claims (name = \"{name}\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table<'a>(name: Option<&'a str>, addr: &str, same: bool) -> Candidate<'a> {
        Candidate {
            name,
            addrs: vec![addr.parse().expect("addr")],
            same_protocol: same,
        }
    }

    #[test]
    fn sockets_go_to_their_table_by_name_then_address_else_to_host_port() {
        let tables = [
            table(Some("proxied"), "127.0.0.1:7008", true),
            table(None, "127.0.0.1:7009", true),
            table(Some("dgram"), "127.0.0.1:7010", false),
        ];
        let a = |s: &str| Some(s.parse().expect("addr"));
        assert_eq!(
            assign("proxied", a("0.0.0.0:99"), &tables),
            Ok(Role::Table(0))
        );
        assert_eq!(
            assign("echo-lab.socket", a("127.0.0.1:7009"), &tables),
            Ok(Role::Table(1))
        );
        assert_eq!(
            assign("echo-lab.socket", a("0.0.0.0:7"), &tables),
            Ok(Role::Main)
        );
        assert_eq!(assign("unknown", a("0.0.0.0:7"), &tables), Ok(Role::Main));
        let err = assign("extra", a("0.0.0.0:7"), &tables).unwrap_err();
        assert!(
            err.contains("'extra'") && err.contains("no [[listen]] table"),
            "{err}"
        );
        let err = assign("dgram", a("0.0.0.0:7"), &tables).unwrap_err();
        assert!(err.contains("protocol"), "{err}");
    }
}
