//! Fuzzes the UDP source guard, `udp::guard::Guard::check`, on any source
//! address and port.
//!
//! Invariants: it never panics, and it agrees with a plain model of
//! OpenBSD inetd's `dg_badinput` rule as the module documents it — a port
//! below 1024 or 2049 is refused; an IPv4 source in 0/8, 255/8, 224/4 or
//! one of the host's broadcast addresses is refused; an IPv6 source that is
//! unspecified, multicast, IPv4-compatible or (on a v6-only socket)
//! IPv4-mapped is refused; a v4-mapped source on a dual-stack socket is
//! judged as the IPv4 address it carries.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use echo_lab::udp::guard::Guard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let port = u16::from_be_bytes([data[0], data[1]]);
    let dual_stack = data[2] & 1 == 1;
    let v6 = data[2] & 2 == 2;
    let broadcast = Ipv4Addr::new(data[15], data[16], data[17], data[18]);
    let guard = Guard {
        broadcasts: vec![broadcast],
    };
    let ip: IpAddr = if v6 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&data[3..19]);
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(data[3], data[4], data[5], data[6]))
    };
    let src = SocketAddr::new(ip, port);
    let got = guard.check(&src, dual_stack).is_ok();
    assert_eq!(
        got,
        allowed(&src, dual_stack, broadcast),
        "{src} dual {dual_stack}"
    );
});

/// The model: true if the datagram may be answered.
fn allowed(src: &SocketAddr, dual_stack: bool, broadcast: Ipv4Addr) -> bool {
    let port = src.port();
    if port < 1024 || port == 2049 {
        return false;
    }
    let v4_ok = |ip: Ipv4Addr| {
        let first = ip.octets()[0];
        !(first == 0 || first == 255 || (224..=239).contains(&first) || ip == broadcast)
    };
    match src.ip() {
        IpAddr::V4(ip) => v4_ok(ip),
        IpAddr::V6(ip) => {
            let s = ip.segments();
            let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
            if mapped {
                let o = ip.octets();
                return dual_stack && v4_ok(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            let compatible = s[..6] == [0; 6] && ip != Ipv6Addr::LOCALHOST;
            !(ip.is_unspecified() || s[0] >> 8 == 0xff || compatible)
        }
    }
}
