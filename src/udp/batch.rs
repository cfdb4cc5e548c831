//! Datagrams in batches: one `recvmmsg(2)` fills up to [`BATCH`] slots and
//! one `sendmmsg(2)` sends back the ones the service decided to echo.
//!
//! A flood of small datagrams is where a UDP echo server spends its time in
//! system calls: `recvfrom` + `sendto` per datagram is two calls for 64
//! bytes of work. With the batch calls a busy socket costs two calls per
//! [`BATCH`] datagrams. The calls are made through `libc` (rustix, which
//! wraps the daemon's other system calls, has no `recvmmsg`) on buffers
//! allocated once: [`BATCH`] slots of 64 KiB (the
//! largest UDP payload fits, and one more byte than echo-lab accepts, so
//! an oversized datagram is seen as such), their source addresses and the
//! headers the kernel fills. The buffer is zeroed memory the kernel only
//! maps as datagrams land in it, so small datagrams touch a page per slot.
//!
//! An echo is the received slot sent back as it is: same bytes, same
//! length, to the address it came from, so it can never be larger than
//! the datagram.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// Bytes per slot: the largest UDP payload over IPv6 (65 527) fits, so a
/// datagram over the 65 507 echo-lab serves is seen whole, never cut.
const SLOT: usize = 65_536;

pub use echo_lab_proto::protocol::MAX_DATAGRAM;

/// One received datagram.
pub struct Datagram<'a> {
    /// Where it came from (and where its echo goes).
    pub src: SocketAddr,
    /// Its payload.
    pub data: &'a [u8],
    /// The kernel cut it to fit the slot.
    pub truncated: bool,
}

/// What [`Batch::send`] achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Echoes the kernel took.
    pub sent: usize,
    /// Echoes that failed (send buffer full, unreachable, ...).
    pub failed: usize,
    /// Bytes in the echoes the kernel took.
    pub bytes: u64,
    /// `sendmmsg` calls made.
    pub calls: usize,
}

/// Preallocated buffers for one socket loop.
pub struct Batch {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Slots filled by the last receive.
    filled: usize,
    /// Slots picked for echo, in order.
    picked: Vec<usize>,
    out_iovs: Vec<libc::iovec>,
    out_hdrs: Vec<libc::mmsghdr>,
}

fn zeroed_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

fn zeroed_hdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct; all-zero (null pointers, zero
    // lengths) is a valid value.
    unsafe { std::mem::zeroed() }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Batch {
    /// Allocates the buffers.
    pub fn new() -> Batch {
        Batch {
            bufs: vec![0u8; BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain data; zero is valid.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: vec![zeroed_iovec(); BATCH],
            hdrs: vec![zeroed_hdr(); BATCH],
            filled: 0,
            picked: Vec::with_capacity(BATCH),
            out_iovs: vec![zeroed_iovec(); BATCH],
            out_hdrs: vec![zeroed_hdr(); BATCH],
        }
    }

    /// Receives what is queued on `fd`, up to [`BATCH`] datagrams, without
    /// waiting. Returns how many (0 when nothing was queued).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.filled = 0;
        self.picked.clear();
        // One pointer for the whole buffer, offset per slot (each slot lies
        // inside it: BATCH * SLOT bytes), so every iovec shares its origin.
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs[i].iov_base = base.wrapping_add(i * SLOT).cast();
            self.iovs[i].iov_len = SLOT;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        loop {
            // SAFETY: `hdrs` holds BATCH headers, the count passed; each
            // points at its own name (msg_namelen bytes) and one iovec of a
            // SLOT-byte slot inside `bufs`, all owned by `self`, alive and
            // not otherwise borrowed during the call.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                self.filled = n as usize;
                return Ok(self.filled);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    /// The `i`-th datagram of the last receive; `None` if its source is not
    /// an IP address.
    pub fn datagram(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.filled {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(SLOT);
        let src = to_socket_addr(&self.names[i], h.msg_hdr.msg_namelen)?;
        Some(Datagram {
            src,
            data: &self.bufs[i * SLOT..i * SLOT + len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        })
    }

    /// Marks datagram `i` of the last receive for echo.
    pub fn pick(&mut self, i: usize) {
        if i < self.filled {
            self.picked.push(i);
        }
    }

    /// Replaces datagram `i` with `reply` and marks it to be sent back;
    /// false (nothing changed) if `reply` is longer than the datagram, so
    /// an answer is never larger than what asked for it.
    pub fn reply(&mut self, i: usize, reply: &[u8]) -> bool {
        let len = (self.hdrs[i.min(BATCH - 1)].msg_len as usize).min(SLOT);
        if i >= self.filled || reply.len() > len {
            return false;
        }
        self.bufs[i * SLOT..i * SLOT + reply.len()].copy_from_slice(reply);
        self.hdrs[i].msg_len = reply.len() as libc::c_uint;
        self.picked.push(i);
        true
    }

    /// Sends every picked datagram back to its source, unchanged.
    pub fn send(&mut self, fd: RawFd) -> Sent {
        let k = self.picked.len();
        let mut out = Sent::default();
        let base = self.bufs.as_mut_ptr();
        for (j, &i) in self.picked.iter().enumerate() {
            // Slot i lies inside `bufs` (`pick` keeps i below BATCH).
            self.out_iovs[j].iov_base = base.wrapping_add(i * SLOT).cast();
            self.out_iovs[j].iov_len = (self.hdrs[i].msg_len as usize).min(SLOT);
            let h = &mut self.out_hdrs[j].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.hdrs[i].msg_hdr.msg_namelen;
            h.msg_iov = &mut self.out_iovs[j];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut done = 0;
        while done < k {
            out.calls += 1;
            // SAFETY: `out_hdrs[done..]` holds at least k - done headers
            // (k <= BATCH), the count passed; each points at a name, an
            // iovec and a slot that live in `self`; the kernel only reads
            // them.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.out_hdrs[done..].as_mut_ptr(),
                    (k - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                let n = n as usize;
                out.bytes += self.out_iovs[done..done + n]
                    .iter()
                    .map(|v| v.iov_len as u64)
                    .sum::<u64>();
                done += n;
                out.sent += n;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                // The send buffer is full: UDP promises nothing, and the
                // loop must not wait, so the rest of the batch is dropped.
                io::ErrorKind::WouldBlock => {
                    out.failed += k - done;
                    break;
                }
                // This one cannot go (no route, ...): skip it.
                _ => {
                    log::debug!("udp echo send failed: {e}");
                    out.failed += 1;
                    done += 1;
                }
            }
        }
        self.picked.clear();
        out
    }
}

/// An IPv4 or IPv6 source address from what the kernel wrote.
fn to_socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn a_batch_is_received_and_echoed_unchanged_in_few_calls() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let to = server.local_addr().unwrap();
        for i in 0..10u8 {
            client.send_to(&[i; 100], to).unwrap();
        }
        let mut batch = Batch::new();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < 10 && Instant::now() < deadline {
            let n = batch.recv(server.as_raw_fd()).unwrap();
            for i in 0..n {
                let d = batch.datagram(i).unwrap();
                assert_eq!(d.src, client.local_addr().unwrap());
                assert_eq!(d.data.len(), 100);
                assert!(!d.truncated);
                batch.pick(i);
            }
            let sent = batch.send(server.as_raw_fd());
            assert_eq!(sent.sent, n);
            got += n;
        }
        let mut buf = [0u8; 200];
        for i in 0..10u8 {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, to);
            assert_eq!(&buf[..n], &[i; 100]);
        }
    }

    #[test]
    fn nothing_queued_is_zero_not_an_error() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = Batch::new();
        assert_eq!(batch.recv(server.as_raw_fd()).unwrap(), 0);
        assert_eq!(batch.send(server.as_raw_fd()), Sent::default());
    }
}
