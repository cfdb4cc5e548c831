//! Listening sockets: resolving the configured host, binding with the
//! configured backlog, and changing the backlog of a socket in place; and
//! binding the UDP sockets of the UDP echo service the same way.
//!
//! std's `TcpListener::bind` hard-codes the listen(2) backlog, so sockets
//! are made with socket2. `SO_REUSEADDR` lets a restarted daemon bind while
//! old connections sit in TIME_WAIT; an IPv6 socket is v6-only unless it is
//! the wildcard `::`, which then serves IPv4 too (dual stack).
//!
//! Changing only the backlog never closes the socket: calling listen(2)
//! again on a listening socket updates its queue length in place, so
//! nothing in the accept queue is lost on reload.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Resolves `host:port` to every address it names, in resolver order,
/// without duplicates.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in (host, port).to_socket_addrs()? {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("host '{host}' resolves to no address"),
        ));
    }
    Ok(addrs)
}

/// Binds and listens on one address.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let SocketAddr::V6(v6) = addr {
        socket.set_only_v6(!v6.ip().is_unspecified())?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog_arg(backlog))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds every address `host` resolves to. With port 0 the first socket
/// picks the port and the others reuse it, so all share one port.
pub fn bind_all(host: &str, port: u16, backlog: u32) -> io::Result<Vec<TcpListener>> {
    let mut out: Vec<TcpListener> = Vec::new();
    let mut port = port;
    for addr in resolve(host, port)? {
        let mut addr = addr;
        addr.set_port(port);
        let l = bind(addr, backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        if port == 0 {
            port = l.local_addr()?.port();
        }
        out.push(l);
    }
    Ok(out)
}

/// Binds a UDP socket on one address, with the same rules as [`bind`]:
/// `SO_REUSEADDR`, and an IPv6 socket v6-only unless it is the wildcard.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if let SocketAddr::V6(v6) = addr {
        socket.set_only_v6(!v6.ip().is_unspecified())?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds a UDP socket on every address `host` resolves to. With port 0
/// the first socket picks the port and the others reuse it. An error
/// names the address that failed (`host:port` if it did not resolve).
pub fn bind_all_udp(host: &str, port: u16) -> Result<Vec<UdpSocket>, (String, io::Error)> {
    let mut out: Vec<UdpSocket> = Vec::new();
    let mut port = port;
    let spec = |port| {
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    for mut addr in resolve(host, port).map_err(|e| (spec(port), e))? {
        addr.set_port(port);
        let s = bind_udp(addr).map_err(|e| (addr.to_string(), e))?;
        if port == 0 {
            port = s.local_addr().map_err(|e| (addr.to_string(), e))?.port();
        }
        out.push(s);
    }
    Ok(out)
}

/// Applies a new backlog to a listening socket without closing it.
pub fn relisten(listener: &TcpListener, backlog: u32) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(backlog_arg(backlog))
}

fn backlog_arg(backlog: u32) -> i32 {
    i32::try_from(backlog).unwrap_or(i32::MAX)
}

/// Formats addresses for log lines: `127.0.0.1:7007, [::1]:7007`.
pub fn describe(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
