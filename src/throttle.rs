//! A log throttle: at most one line per interval about an event that may
//! recur thousands of times a second (accept failing for want of
//! descriptors, a scan of a PROXY listener, refused datagrams), so the
//! event is still reported without flooding the log.
//!
//! A [`Throttle`] owns only when its last line was written and how many
//! occurrences went unreported since. It never writes the line itself (the
//! caller knows what to say), never sleeps, and reads no clock: the caller
//! passes `now`, so a loop uses the instant it already has.

use std::time::{Duration, Instant};

/// At most one line per `every`; the first occurrence is always reported.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    every: Duration,
    /// When the last line was written, if ever.
    last: Option<Instant>,
    /// Occurrences counted by [`Throttle::occur`] and not reported since.
    unreported: u64,
}

impl Throttle {
    pub(crate) const fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            unreported: 0,
        }
    }

    /// True if a line may be written at `now` (none yet, or the last is at
    /// least the interval old); the line is then taken as written. For
    /// callers that keep their own tally of what the line reports.
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        if due {
            self.last = Some(now);
        }
        due
    }

    /// Records one occurrence at `now`: `Some(n)` if a line is due (and
    /// taken as written), `n` being the occurrences left unreported since
    /// the previous line; `None` if not, this one then counted among them.
    pub(crate) fn occur(&mut self, now: Instant) -> Option<u64> {
        if self.ready(now) {
            Some(std::mem::take(&mut self.unreported))
        } else {
            self.unreported += 1;
            None
        }
    }
}

/// What a line adds for `n` occurrences left unreported before it: empty
/// for none, else ` (n more since the last report)`.
pub(crate) fn more_since(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more since the last report)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_occurrence_is_reported_then_one_per_interval_with_the_count() {
        let t0 = Instant::now();
        let mut t = Throttle::new(EVERY);
        assert_eq!(t.occur(t0), Some(0));
        assert_eq!(t.occur(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.occur(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.occur(t0 + EVERY), Some(2));
        assert_eq!(t.occur(t0 + EVERY + Duration::from_secs(1)), None);
        assert_eq!(t.occur(t0 + EVERY * 3), Some(1));
    }

    #[test]
    fn ready_counts_nothing_and_is_due_again_after_the_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::new(EVERY);
        assert!(t.ready(t0));
        assert!(!t.ready(t0 + Duration::from_secs(5)));
        assert!(!t.ready(t0 + Duration::from_secs(9)));
        assert!(t.ready(t0 + EVERY));
        // An instant older than the last line is not due.
        assert!(!t.ready(t0));
    }

    #[test]
    fn more_since_says_nothing_for_none() {
        assert_eq!(more_since(0), "");
        assert_eq!(more_since(3), " (3 more since the last report)");
    }
}
