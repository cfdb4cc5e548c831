//! The source guard: which datagrams must never be answered.
//!
//! A UDP echo server answers whoever the source address claims to be, and
//! the source address of a datagram is trivially forged. Two attacks follow
//! (CVE-1999-0103, and the 2024 "loop DoS", CERT VU#417980): a datagram
//! forged from another UDP service's port (echo 7, chargen 19, DNS 53,
//! NTP 123, ...) makes two servers answer each other forever; one forged
//! from a broadcast or multicast address makes a whole network answer. The
//! rule here is OpenBSD inetd's `dg_badinput`, the reference the issue
//! names:
//!
//! * the source port is below 1024 (every well-known service) or 2049
//!   (NFS, historically outside the reserved range);
//! * the IPv4 source is in 0.0.0.0/8 (unspecified, "this network"), in
//!   255.0.0.0/8 (which holds the limited broadcast), multicast
//!   (224.0.0.0/4), or the broadcast address of one of the host's own
//!   interfaces (inetd's `dg_broadcast`; the list is asked of the kernel
//!   when the service starts and on every reload);
//! * the IPv6 source is unspecified (`::`), multicast (`ff00::/8`),
//!   IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible (`::a.b.c.d`).
//!
//! One deliberate refinement for Linux: on a dual-stack socket (an IPv6
//! socket with `IPV6_V6ONLY` off, as `host = "::"` or a `ListenDatagram=`
//! unit with the kernel's default gives) every IPv4 client arrives with a
//! v4-mapped source, and Linux drops IPv6 packets whose real source is
//! v4-mapped (RFC 4291 §2.5.5.2). There a v4-mapped source is unmapped and
//! judged by the IPv4 rules instead of refusing every IPv4 client; on a
//! v6-only socket it can only be forged and is dropped as OpenBSD does.
//!
//! Everything here is a pure function of the source address, so it is
//! tested exhaustively on its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Ports below this are the well-known services (`IPPORT_RESERVED`).
const RESERVED_PORTS: u16 = 1024;

/// NFS, refused as well (`NFS_PORT` in inetd).
const NFS_PORT: u16 = 2049;

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadSource {
    /// A well-known service port, or NFS.
    Port(u16),
    /// Unspecified, "this network", or the 255/8 block.
    Unspecified,
    /// A broadcast address (limited or an interface's directed one).
    Broadcast,
    /// A multicast group.
    Multicast,
    /// IPv4-mapped or IPv4-compatible on a socket where IPv4 cannot arrive.
    Mapped,
}

/// What the guard needs to know besides the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    /// Directed broadcast addresses of the host's interfaces.
    pub broadcasts: Vec<Ipv4Addr>,
}

impl Guard {
    /// A guard that knows the host's interface broadcast addresses now.
    pub fn from_interfaces() -> Guard {
        Guard {
            broadcasts: interface_broadcasts(),
        }
    }

    /// Judges `src`, received on a socket that is dual-stack (IPv4 clients
    /// appear v4-mapped) or not.
    pub fn check(&self, src: &SocketAddr, dual_stack: bool) -> Result<(), BadSource> {
        match src.ip() {
            IpAddr::V4(ip) => self.check_v4(ip)?,
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) if dual_stack => self.check_v4(v4)?,
                Some(_) => return Err(BadSource::Mapped),
                None => check_v6(&ip)?,
            },
        }
        let port = src.port();
        if port < RESERVED_PORTS || port == NFS_PORT {
            return Err(BadSource::Port(port));
        }
        Ok(())
    }

    fn check_v4(&self, ip: Ipv4Addr) -> Result<(), BadSource> {
        if ip.is_multicast() {
            return Err(BadSource::Multicast);
        }
        if ip.is_broadcast() || self.broadcasts.contains(&ip) {
            return Err(BadSource::Broadcast);
        }
        match ip.octets()[0] {
            0 | 255 => Err(BadSource::Unspecified),
            _ => Ok(()),
        }
    }
}

fn check_v6(ip: &Ipv6Addr) -> Result<(), BadSource> {
    if ip.is_unspecified() {
        return Err(BadSource::Unspecified);
    }
    if ip.is_multicast() {
        return Err(BadSource::Multicast);
    }
    // IPv4-compatible (::a.b.c.d, deprecated by RFC 4291), except :: and
    // ::1, which are not IPv4 at all.
    let s = ip.segments();
    if s[..6] == [0; 6] && !ip.is_loopback() {
        return Err(BadSource::Mapped);
    }
    Ok(())
}

/// Interfaces asked about at most (SIOCGIFCONF fills a caller's buffer).
const MAX_INTERFACES: usize = 256;

/// The directed broadcast addresses of the host's IPv4 interfaces, asked
/// of the kernel with `SIOCGIFCONF` and `SIOCGIFBRDADDR` on an AF_INET
/// socket rather than `getifaddrs(3)`, which needs a netlink socket: the
/// shipped unit allows only AF_INET, AF_INET6 and AF_UNIX.
fn interface_broadcasts() -> Vec<Ipv4Addr> {
    match list_broadcasts() {
        Ok(list) => list,
        Err(e) => {
            log::warn!(
                "cannot list network interfaces ({e}); only 255.255.255.255 is refused as a broadcast source"
            );
            Vec::new()
        }
    }
}

fn list_broadcasts() -> std::io::Result<Vec<Ipv4Addr>> {
    use std::os::fd::AsRawFd;
    // socket2 sets SOCK_CLOEXEC.
    let fd = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: ifreq is plain C data; all-zero is a valid value.
    let mut reqs: Vec<libc::ifreq> = vec![unsafe { std::mem::zeroed() }; MAX_INTERFACES];
    let mut conf = libc::ifconf {
        ifc_len: (reqs.len() * std::mem::size_of::<libc::ifreq>()) as libc::c_int,
        ifc_ifcu: libc::__c_anonymous_ifc_ifcu {
            ifcu_req: reqs.as_mut_ptr(),
        },
    };
    // SAFETY: SIOCGIFCONF writes at most ifc_len bytes of ifreq records
    // into the buffer `conf` points to, which `reqs` owns.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFCONF as _, &mut conf) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let filled =
        (conf.ifc_len.max(0) as usize / std::mem::size_of::<libc::ifreq>()).min(reqs.len());
    let mut out = Vec::new();
    for req in &reqs[..filled] {
        let mut q: libc::ifreq = *req;
        // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `q`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut q) } < 0 {
            continue;
        }
        // SAFETY: every member of the ifr_ifru union is plain data for
        // which any bytes are valid; SIOCGIFFLAGS just wrote the flags.
        let flags = unsafe { q.ifr_ifru.ifru_flags } as libc::c_int;
        if flags & libc::IFF_BROADCAST == 0 {
            continue;
        }
        let mut q: libc::ifreq = *req;
        // SAFETY: SIOCGIFBRDADDR reads the name and writes the address.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFBRDADDR as _, &mut q) } < 0 {
            continue;
        }
        // SAFETY: every member of the ifr_ifru union is plain data for
        // which any bytes are valid, and SIOCGIFBRDADDR just wrote a
        // sockaddr into it.
        let sa = unsafe { q.ifr_ifru.ifru_broadaddr };
        if sa.sa_family != libc::AF_INET as libc::sa_family_t {
            continue;
        }
        // Family AF_INET: sa_data is a sockaddr_in's port (2 bytes) then
        // its address (4 bytes, network order).
        let a = sa.sa_data.map(|b| b as u8);
        let ip = Ipv4Addr::new(a[2], a[3], a[4], a[5]);
        if !ip.is_unspecified() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(text: &str) -> Result<(), BadSource> {
        let guard = Guard {
            broadcasts: vec![Ipv4Addr::new(192, 168, 1, 255)],
        };
        guard.check(&text.parse().unwrap(), false)
    }

    #[test]
    fn ordinary_sources_pass() {
        for ok in [
            "127.0.0.1:1024",
            "10.1.2.3:40000",
            "192.168.1.254:65535",
            "[::1]:5000",
            "[2001:db8::1]:2048",
            "[2001:db8::1]:2050",
        ] {
            assert_eq!(judge(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn well_known_ports_and_nfs_are_refused() {
        for port in [0u16, 1, 7, 13, 19, 53, 123, 161, 1023, 2049] {
            assert_eq!(
                judge(&format!("127.0.0.1:{port}")),
                Err(BadSource::Port(port))
            );
            assert_eq!(judge(&format!("[::1]:{port}")), Err(BadSource::Port(port)));
        }
    }

    #[test]
    fn broadcast_multicast_and_unspecified_v4_are_refused() {
        assert_eq!(judge("255.255.255.255:5000"), Err(BadSource::Broadcast));
        assert_eq!(judge("192.168.1.255:5000"), Err(BadSource::Broadcast));
        assert_eq!(judge("224.0.0.1:5000"), Err(BadSource::Multicast));
        assert_eq!(judge("239.255.255.250:5000"), Err(BadSource::Multicast));
        assert_eq!(judge("0.0.0.0:5000"), Err(BadSource::Unspecified));
        assert_eq!(judge("0.1.2.3:5000"), Err(BadSource::Unspecified));
        assert_eq!(judge("255.1.2.3:5000"), Err(BadSource::Unspecified));
        // Another subnet's broadcast-looking address is a host elsewhere.
        assert_eq!(judge("10.0.0.255:5000"), Ok(()));
    }

    #[test]
    fn bad_v6_sources_are_refused() {
        assert_eq!(judge("[::]:5000"), Err(BadSource::Unspecified));
        assert_eq!(judge("[ff02::1]:5000"), Err(BadSource::Multicast));
        assert_eq!(judge("[::ffff:10.0.0.1]:5000"), Err(BadSource::Mapped));
        assert_eq!(judge("[::10.0.0.1]:5000"), Err(BadSource::Mapped));
    }

    #[test]
    fn mapped_sources_on_a_dual_stack_socket_get_the_v4_rules() {
        let guard = Guard::default();
        let check = |t: &str| guard.check(&t.parse().unwrap(), true);
        assert_eq!(check("[::ffff:127.0.0.1]:5000"), Ok(()));
        assert_eq!(check("[::ffff:127.0.0.1]:53"), Err(BadSource::Port(53)));
        assert_eq!(
            check("[::ffff:255.255.255.255]:5000"),
            Err(BadSource::Broadcast)
        );
        assert_eq!(check("[::ffff:224.0.0.9]:5000"), Err(BadSource::Multicast));
        // Not mapped: still refused even on a dual-stack socket.
        assert_eq!(check("[::10.0.0.1]:5000"), Err(BadSource::Mapped));
    }

    #[test]
    fn the_host_interfaces_broadcast_addresses_are_listed() {
        let listed = list_broadcasts().expect("SIOCGIFCONF works");
        // Loopback has no broadcast address; every listed one is IPv4 and
        // set.
        assert!(!listed.contains(&Ipv4Addr::LOCALHOST));
        assert!(listed.iter().all(|b| !b.is_unspecified()));
        // What the kernel's routing table calls BROADCAST, where readable.
        if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
            let lines: Vec<&str> = trie.lines().collect();
            for w in lines.windows(2) {
                if w[1].contains("/32 link BROADCAST") {
                    let ip: Ipv4Addr = w[0]
                        .trim_start_matches([' ', '|', '-'])
                        .trim()
                        .parse()
                        .unwrap();
                    // 127.255.255.255 belongs to loopback, which has none.
                    if !ip.is_loopback() {
                        assert!(listed.contains(&ip), "{ip} not in {listed:?}");
                    }
                }
            }
        }
    }
}
