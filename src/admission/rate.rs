//! Connection rates: the `connection_rate_per_source` setting, the token
//! bucket that enforces it for one source, and the counter that measures
//! a source's rate for `echo-labctl sources`.
//!
//! A rate is written `"N/s"` or `"N/m"` (0 = off), optionally followed by
//! `burst B`. The bucket holds at most the burst (by default N) and
//! refills at N per second or per minute; each new connection takes one
//! token, and a connection that finds none is refused. Each source has its
//! own bucket, so a source over its rate is refused alone: nobody else is
//! slowed, unlike xinetd's `cps`, which stops the whole service.
//!
//! The measured rate is HAProxy's `conn_rate`: connections counted in
//! fixed periods of [`PERIOD_SECS`], the current period's count plus the
//! previous period's weighted by how much of it still lies within one
//! period of now (HAProxy's `read_freq_ctr_period`).

pub use echo_lab_config::rate::{ConnRate, PERIOD_SECS};

/// One source's token bucket: tokens, and when it was last refilled (in
/// milliseconds since the table's epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    tokens: f32,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(rate: &ConnRate, now_ms: u64) -> Bucket {
        Bucket {
            tokens: rate.burst as f32,
            at_ms: now_ms,
        }
    }

    /// Refills for the time since the last call, then takes a token if
    /// there is one. A refusal takes nothing.
    pub(crate) fn take(&mut self, rate: &ConnRate, now_ms: u64) -> bool {
        let dt = now_ms.saturating_sub(self.at_ms) as f64;
        self.at_ms = self.at_ms.max(now_ms);
        let filled = (f64::from(self.tokens) + dt * rate.per_ms()).min(f64::from(rate.burst));
        self.tokens = filled as f32;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is there now, taking nothing (for a dry run's
    /// "would refuse", which must not change what the source gets).
    pub(crate) fn would_take(&self, rate: &ConnRate, now_ms: u64) -> bool {
        let mut copy = *self;
        copy.take(rate, now_ms)
    }
}

/// Connections counted per period, for the measured rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Freq {
    /// The period `cur` counts (seconds since the epoch / PERIOD_SECS).
    period: u32,
    cur: u32,
    prev: u32,
}

impl Freq {
    /// Counts one connection at `now_ms`.
    pub(crate) fn add(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.cur = self.cur.saturating_add(1);
    }

    fn roll(&mut self, now_ms: u64) {
        let period = (now_ms / (u64::from(PERIOD_SECS) * 1000)) as u32;
        if period != self.period {
            self.prev = if period == self.period.wrapping_add(1) {
                self.cur
            } else {
                0
            };
            self.cur = 0;
            self.period = period;
        }
    }

    /// Connections over the last period (rounded).
    pub(crate) fn per_period(&self, now_ms: u64) -> u64 {
        let mut f = *self;
        f.roll(now_ms);
        let len = u64::from(PERIOD_SECS) * 1000;
        let into = (now_ms % len) as f64 / len as f64;
        (f64::from(f.cur) + f64::from(f.prev) * (1.0 - into)).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let r = ConnRate::parse("10/s").unwrap();
        let mut b = Bucket::full(&r, 0);
        assert_eq!((0..50).filter(|_| b.take(&r, 0)).count(), 10);
        // 300 ms later: three more.
        assert_eq!((0..50).filter(|_| b.take(&r, 300)).count(), 3);
        // Much later: never more than the burst.
        assert_eq!((0..50).filter(|_| b.take(&r, 3_600_000)).count(), 10);
        let r = ConnRate::parse("6/m burst 1").unwrap();
        let mut b = Bucket::full(&r, 0);
        assert!(b.take(&r, 0));
        assert!(!b.take(&r, 9_000));
        assert!(b.take(&r, 10_000));
        assert!(!b.would_take(&r, 10_001));
    }

    #[test]
    fn a_steady_storm_gets_the_rate() {
        // 1000 attempts/s for 5 s against 50/s: burst 50 + 250.
        let r = ConnRate::parse("50/s").unwrap();
        let mut b = Bucket::full(&r, 0);
        let got = (0..5000u64).filter(|i| b.take(&r, *i)).count();
        assert!((299..=301).contains(&got), "{got}");
    }

    #[test]
    fn the_measured_rate_follows_the_connections() {
        let mut f = Freq::default();
        // 100 connections in the first period (10 s).
        for i in 0..100u64 {
            f.add(i * 100);
        }
        assert_eq!(f.per_period(9_999), 100);
        // Halfway through the next period, none since: half the weight.
        assert_eq!(f.per_period(15_000), 50);
        // Two periods later: nothing.
        assert_eq!(f.per_period(30_000), 0);
    }
}
