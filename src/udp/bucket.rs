//! Per-source rate limits: a token bucket for packets and one for bytes
//! per source address, in a table of bounded size.
//!
//! The source guard stops loops with other services; this stops echo-lab
//! from being used to flood a victim whose address an attacker forges. A
//! source may have at most `packets` datagrams and `bytes` bytes echoed per
//! second, with bursts up to one second's worth (each bucket holds at most
//! its rate). A datagram is echoed only if both buckets hold enough; a
//! refused one takes nothing from either, so a source sending above its
//! rate still gets its rate. Since the echo is never larger than the
//! datagram, the worst a forger can do is reflect, never amplify, and at
//! most at this rate per victim address.
//!
//! Sources are keyed by IP address alone: a forger picks source ports at
//! will, the victim is the address. IPv4 addresses (plain or v4-mapped) are
//! keyed as their v4-mapped form, so one host has one entry however it
//! arrives.
//!
//! The table is bounded: at most `max_sources` entries, allocated up front,
//! so a flood from many (forged) sources cannot grow memory. When it is
//! full the oldest entry (first seen longest ago) gives way to the newcomer.
//! Memory per entry: the key (16 bytes) and the [`Bucket`] (16 bytes) in
//! the hash map, plus the 16-byte key again in the insertion-order ring.
//! The map is sized up front for `max_sources` (hashbrown rounds up to a
//! power of two over 7/8 load: 32 768 slots of 33 bytes for 16 384), so
//! an entry costs 82 bytes and the default 16 384 sources 1.3 MiB. Evicting a source
//! that is still sending gives it a fresh, full bucket when it comes back:
//! a forger cycling through more than `max_sources` addresses can reset a
//! victim's bucket, which buys one extra second's burst per cycle, still at
//! most 1:1 in bytes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Limits on what is echoed to one source; zero rates mean no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Datagrams echoed per second per source (and the burst); 0 = unlimited.
    pub packets: u32,
    /// Bytes echoed per second per source (and the burst); 0 = unlimited.
    pub bytes: u32,
    /// Sources tracked at once; the oldest gives way when full.
    pub max_sources: usize,
}

impl RateLimit {
    /// The defaults: 100 datagrams and 64 KiB per second per source,
    /// 16 384 sources.
    pub const DEFAULT: RateLimit = RateLimit {
        packets: 100,
        bytes: 64 * 1024,
        max_sources: 16_384,
    };

    /// True when neither rate is limited (no table is kept).
    pub fn unlimited(&self) -> bool {
        self.packets == 0 && self.bytes == 0
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::DEFAULT
    }
}

/// One source's two buckets. Tokens are kept as `f32` (exact for whole
/// numbers up to 2^24, far above any bucket here) and time as nanoseconds
/// since the table was made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    packets: f32,
    bytes: f32,
    last_ns: u64,
}

impl Bucket {
    /// A full bucket at `now_ns`.
    pub fn full(limit: &RateLimit, now_ns: u64) -> Bucket {
        Bucket {
            packets: limit.packets as f32,
            bytes: limit.bytes as f32,
            last_ns: now_ns,
        }
    }

    /// Refills for the time since the last call, then takes one packet and
    /// `len` bytes if both are there. A refusal takes nothing.
    pub fn take(&mut self, limit: &RateLimit, now_ns: u64, len: usize) -> bool {
        let dt = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = self.last_ns.max(now_ns);
        let refill = |tokens: f32, rate: u32| -> f32 {
            (tokens as f64 + dt * rate as f64).min(rate as f64) as f32
        };
        self.packets = refill(self.packets, limit.packets);
        self.bytes = refill(self.bytes, limit.bytes);
        let packet_ok = limit.packets == 0 || self.packets >= 1.0;
        let bytes_ok = limit.bytes == 0 || self.bytes >= len as f32;
        if packet_ok && bytes_ok {
            if limit.packets > 0 {
                self.packets -= 1.0;
            }
            if limit.bytes > 0 {
                self.bytes -= len as f32;
            }
            true
        } else {
            false
        }
    }
}

/// The bounded table of sources and their buckets.
#[derive(Debug)]
pub struct SourceTable {
    limit: RateLimit,
    buckets: HashMap<u128, Bucket>,
    /// Keys in the order they were first seen (oldest at the front).
    order: VecDeque<u128>,
}

impl SourceTable {
    /// An empty table with room for `limit.max_sources` entries.
    pub fn new(limit: RateLimit) -> SourceTable {
        let cap = if limit.unlimited() {
            0
        } else {
            limit.max_sources
        };
        SourceTable {
            limit,
            buckets: HashMap::with_capacity(cap),
            order: VecDeque::with_capacity(cap),
        }
    }

    /// The limits in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// May `len` bytes be echoed to `src` at `now_ns`? Charges its buckets
    /// if so.
    pub fn allow(&mut self, src: IpAddr, len: usize, now_ns: u64) -> bool {
        if self.limit.unlimited() {
            return true;
        }
        let key = key_of(src);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.take(&self.limit, now_ns, len);
        }
        if self.limit.max_sources == 0 {
            return false;
        }
        while self.buckets.len() >= self.limit.max_sources {
            match self.order.pop_front() {
                Some(old) => {
                    self.buckets.remove(&old);
                }
                None => break,
            }
        }
        let mut bucket = Bucket::full(&self.limit, now_ns);
        let allowed = bucket.take(&self.limit, now_ns, len);
        self.buckets.insert(key, bucket);
        self.order.push_back(key);
        allowed
    }
}

/// IPv6 addresses as themselves, IPv4 as their v4-mapped form.
fn key_of(ip: IpAddr) -> u128 {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    u128::from(v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limit(packets: u32, bytes: u32, max_sources: usize) -> RateLimit {
        RateLimit {
            packets,
            bytes,
            max_sources,
        }
    }

    #[test]
    fn a_full_bucket_allows_one_seconds_burst_then_refuses() {
        let l = limit(10, 0, 4);
        let mut b = Bucket::full(&l, 0);
        let allowed = (0..25).filter(|_| b.take(&l, 0, 64)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn refill_follows_the_rate_and_stops_at_the_burst() {
        let l = limit(10, 0, 4);
        let mut b = Bucket::full(&l, 0);
        while b.take(&l, 0, 1) {}
        // 0.5 s later: five more.
        let half = (0..10).filter(|_| b.take(&l, SEC / 2, 1)).count();
        assert_eq!(half, 5);
        // An hour later: never more than the burst.
        let later = (0..100).filter(|_| b.take(&l, 3600 * SEC, 1)).count();
        assert_eq!(later, 10);
    }

    #[test]
    fn bytes_limit_applies_and_a_refusal_takes_nothing() {
        let l = limit(0, 1000, 4);
        let mut b = Bucket::full(&l, 0);
        assert!(b.take(&l, 0, 600));
        assert!(!b.take(&l, 0, 600)); // 400 left: refused, nothing taken
        assert!(b.take(&l, 0, 400));
        assert!(!b.take(&l, 0, 1));
    }

    #[test]
    fn a_datagram_larger_than_the_byte_burst_is_never_echoed() {
        let l = limit(0, 1000, 4);
        let mut b = Bucket::full(&l, 0);
        assert!(!b.take(&l, 10 * SEC, 1001));
    }

    #[test]
    fn steady_sender_above_its_rate_gets_its_rate() {
        // 100/s allowed; the source sends 1000/s for 10 s.
        let l = limit(100, 0, 4);
        let mut t = SourceTable::new(l);
        let src: IpAddr = "192.0.2.1".parse().unwrap();
        let echoed = (0..10_000u64)
            .filter(|i| t.allow(src, 64, i * SEC / 1000))
            .count();
        // Burst of 100 plus 100/s over the ~10 s.
        assert!((1090..=1101).contains(&echoed), "{echoed}");
    }

    #[test]
    fn sources_are_limited_separately_and_v4_mapped_is_the_same_host() {
        let mut t = SourceTable::new(limit(2, 0, 8));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a_mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(t.allow(a, 1, 0));
        assert!(t.allow(a_mapped, 1, 0));
        assert!(!t.allow(a, 1, 0));
        assert!(t.allow(b, 1, 0));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let mut t = SourceTable::new(limit(1, 0, 3));
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        for n in 1..=3 {
            assert!(t.allow(ip(n), 1, 0));
        }
        assert!(!t.allow(ip(1), 1, 0));
        // A fourth source evicts 10.0.0.1, the oldest.
        assert!(t.allow(ip(4), 1, 0));
        assert_eq!(t.len(), 3);
        // 10.0.0.2 is still tracked (refused); 10.0.0.1 comes back fresh.
        assert!(!t.allow(ip(2), 1, 0));
        assert!(t.allow(ip(1), 1, 0));
        for n in 0..200 {
            t.allow(IpAddr::from([10, 1, 0, n]), 1, 0);
        }
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn unlimited_keeps_no_table() {
        let mut t = SourceTable::new(limit(0, 0, 100));
        for n in 0..=255u8 {
            assert!(t.allow(IpAddr::from([10, 0, 0, n]), 65_507, 0));
        }
        assert!(t.is_empty());
    }
}
