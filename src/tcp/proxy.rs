//! The PROXY protocol (HAProxy's; v1 text and v2 binary): how a proxy in
//! front of echo-lab says who the client really is.
//!
//! Behind HAProxy, a cloud load balancer or any TCP proxy, every connection
//! comes from the proxy's address. On a listener with `proxy_protocol` on,
//! the proxy sends one header before the client's bytes, naming the
//! client's address; echo-lab then uses that address wherever it names the
//! client (logs, access rules, per-source limits).
//!
//! A header is trusted only from a source in the listener's
//! `proxy_trusted` list (anyone else could claim any address), and is
//! never guessed: the connection's first bytes must be a whole, valid
//! header within [`HEADER_TIMEOUT`] and [`MAX_HEADER`] bytes, or the
//! connection is closed. Bytes after the header, even in the same read,
//! are the client's and are echoed as usual. A `LOCAL` (v2) or `UNKNOWN`
//! (v1) header — a proxy's own health check — keeps the connection's own
//! address.
//!
//! Parsing is the `ppp` crate's; this module only frames it: it refuses
//! early what can never become a header (wrong first bytes, a declared
//! length beyond the cap) so that a client who is not a proxy cannot hold a
//! connection for the whole timeout, and says which address to use.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};

/// The longest header accepted: v1 headers are at most 107 bytes; v2
/// headers carry addresses and TLVs, which proxies keep small.
pub const MAX_HEADER: usize = 4096;

/// How long a connection on a PROXY listener may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// How a v2 header starts.
const V2_PREFIX: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Bytes of a v2 header before its addresses: prefix, version and
/// command, family and protocol, length.
const V2_FIXED: usize = 16;

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Could still become a header: read on.
    Incomplete,
    /// A whole header of `len` bytes (what follows is the client's).
    /// `source` is the client it names; `None` for a proxy's own
    /// connection (`LOCAL`, `UNKNOWN`), which keeps its own address.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Cannot become a valid header.
    Invalid(String),
}

/// Parses the start of a connection on a PROXY listener.
pub fn parse(buf: &[u8]) -> Parsed {
    if let Some(reason) = never_a_header(buf) {
        return Parsed::Invalid(reason);
    }
    if buf.starts_with(V1_PREFIX) || (buf.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(buf)) {
        // v1 is a line: ppp reads a cut-off line as a bad one ("127.0" is
        // no address), so it gets the line only once it is whole.
        // The line ends at its first CR, which must be followed by LF
        // (ppp's own reading of where a v1 header ends).
        return match memchr::memchr(b'\r', buf) {
            Some(cr) if cr + 1 >= V1_MAX => {
                Parsed::Invalid(format!("PROXY v1 line longer than {V1_MAX} bytes"))
            }
            Some(cr) => match buf.get(cr + 1) {
                None => Parsed::Incomplete,
                Some(b'\n') => v1_line(&buf[..cr + 2]),
                Some(_) => Parsed::Invalid("PROXY v1 line not ended by CRLF".into()),
            },
            None if buf.len() >= V1_MAX => {
                Parsed::Invalid(format!("PROXY v1 line longer than {V1_MAX} bytes"))
            }
            None => Parsed::Incomplete,
        };
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Parsed::Invalid(format!("no complete header in {MAX_HEADER} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            source: v1_source(&h.addresses),
        },
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            source: v2_source(&h),
        },
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("PROXY v1: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("PROXY v2: {e}")),
    }
}

/// A whole v1 line, CRLF included.
fn v1_line(line: &[u8]) -> Parsed {
    match v1::Header::try_from(line) {
        Ok(h) => Parsed::Header {
            len: h.header.len(),
            source: v1_source(&h.addresses),
        },
        Err(e) => Parsed::Invalid(format!("PROXY v1: {e}")),
    }
}

/// Why `buf` can never start a header, if it cannot: it begins like
/// neither version, or declares a v2 length beyond [`MAX_HEADER`].
fn never_a_header(buf: &[u8]) -> Option<String> {
    let could_be = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    if !could_be(V1_PREFIX) && !could_be(V2_PREFIX) {
        return Some("the connection does not start with a PROXY header".into());
    }
    if buf.len() >= V2_FIXED && buf.starts_with(V2_PREFIX) {
        let declared = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if V2_FIXED + declared > MAX_HEADER {
            return Some(format!(
                "PROXY v2 header of {} bytes is over the {MAX_HEADER}-byte limit",
                V2_FIXED + declared
            ));
        }
    }
    None
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(command: u8, src: [u8; 4], sport: u16, tlv: &[u8]) -> Vec<u8> {
        let mut h = V2_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(0x11); // TCP over IPv4
        h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&7007u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    fn header(len: usize, source: &str) -> Parsed {
        Parsed::Header {
            len,
            source: Some(source.parse().expect("addr")),
        }
    }

    #[test]
    fn v1_headers_name_the_client_and_leave_what_follows() {
        let h = b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 7007\r\n";
        let mut with_data = h.to_vec();
        with_data.extend_from_slice(b"hello");
        assert_eq!(parse(&with_data), header(h.len(), "192.0.2.7:56324"));
        let h6 = b"PROXY TCP6 2001:db8::1 ::1 4000 7007\r\n";
        assert_eq!(parse(h6), header(h6.len(), "[2001:db8::1]:4000"));
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Parsed::Header {
                len: unknown.len(),
                source: None
            }
        );
    }

    #[test]
    fn v2_headers_name_the_client_and_local_keeps_the_peer() {
        let h = v2_header(1, [198, 51, 100, 9], 40000, &[]);
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"disconnect\n");
        assert_eq!(parse(&with_data), header(h.len(), "198.51.100.9:40000"));
        // A TLV (here a NOOP of 3 bytes) is part of the header.
        let t = v2_header(1, [198, 51, 100, 9], 40000, &[0x04, 0, 3, 1, 2, 3]);
        assert_eq!(parse(&t), header(t.len(), "198.51.100.9:40000"));
        let local = v2_header(0, [0, 0, 0, 0], 0, &[]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: local.len(),
                source: None
            }
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 7007\r\n".to_vec();
        let v2 = v2_header(1, [192, 0, 2, 7], 1, &[]);
        for h in [v1, v2] {
            for n in 0..h.len() {
                assert_eq!(parse(&h[..n]), Parsed::Incomplete, "prefix of {n} bytes");
            }
        }
    }

    #[test]
    fn a_v1_line_ends_at_its_first_cr() {
        // Found by fuzzing: a CR not followed by LF inside an UNKNOWN line,
        // and the LF only later. The header must be judged the same alone.
        let input = b"PROXY UNKNOWN :;:\0\x009007PROX 0\xc5\x9b\xc5\x9b4107:OXY \n\r7\rJ\r\n";
        let got = parse(input);
        assert!(
            matches!(got, Parsed::Invalid(ref m) if m.contains("CRLF")),
            "{got:?}"
        );
        let ok = b"PROXY UNKNOWN anything at all\r\nrest";
        assert_eq!(
            parse(ok),
            Parsed::Header {
                len: ok.len() - 4,
                source: None
            }
        );
    }

    #[test]
    fn what_can_never_be_a_header_is_refused_at_once() {
        for junk in [&b"hello"[..], b"GET / HTTP/1.1\r\n", b"\r\n\r\nX", b"PROXZ"] {
            assert!(matches!(parse(junk), Parsed::Invalid(_)), "{junk:?}");
        }
        assert!(matches!(
            parse(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        // A v2 header that declares more than the cap.
        let mut big = V2_PREFIX.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big), Parsed::Invalid(m) if m.contains("limit")));
        // A v1 line that never ends.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_HEADER, b'1');
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes: never a panic; a header never claims more than it was
        /// given or more than the cap.
        #[test]
        fn any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Parsed::Header { len, .. } = parse(&bytes) {
                prop_assert!(len <= bytes.len() && len <= MAX_HEADER);
            }
        }

        /// A real header split at any byte: incomplete before, the same
        /// answer once whole, whatever follows.
        #[test]
        fn split_anywhere(split in 0usize..60, tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            let h = b"PROXY TCP4 203.0.113.5 127.0.0.1 1234 7007\r\n";
            let cut = split.min(h.len());
            if cut < h.len() {
                prop_assert_eq!(parse(&h[..cut]), Parsed::Incomplete);
            }
            let mut whole = h.to_vec();
            whole.extend_from_slice(&tail);
            prop_assert_eq!(
                parse(&whole),
                Parsed::Header { len: h.len(), source: Some("203.0.113.5:1234".parse().unwrap()) }
            );
        }
    }
}
