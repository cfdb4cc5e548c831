//! Whether a worker's `spin_when_busy` spin is worth taking: an adaptive
//! mutex's rule applied to a poller.
//!
//! After a wakeup that served two or more connections a worker may poll
//! [`DENSE_SPIN`](super::worker::DENSE_SPIN) without sleeping, betting that
//! more traffic comes within it. The bet pays under clients that hand the
//! server a few messages at a time; it costs a CPU's worth of polling, taken
//! from the clients on the same cores, where nothing comes in time (a
//! thousand client threads sharing two cores, say). The governor keeps an
//! exponentially decaying share of recent spins that found work (each
//! outcome weighs [`WEIGHT`], the past the rest) and allows a spin only
//! while that share is at least [`THRESHOLD`]. Off, it lets one probe spin
//! through after [`PROBE_EVERY`] refused opportunities, so that it turns
//! back on when the traffic changes.
//!
//! It owns nothing but its three numbers: no clock, no I/O, no lock. It
//! must never decide how long a spin lasts (the worker does) nor count an
//! outcome for a spin it did not allow.

/// Weight of the latest outcome in the decaying share: an eighth, so about
/// six spins that find nothing in a row turn a fully trusted spin off.
pub(crate) const WEIGHT: f32 = 0.125;
/// The share of recent spins that found work below which a worker stops
/// spinning: a spin is kept while it pays at least every other time.
pub(crate) const THRESHOLD: f32 = 0.5;
/// While off, every this many refused opportunities one spin is let
/// through as a probe.
pub(crate) const PROBE_EVERY: u32 = 64;

/// The decision and its memory; one per worker.
#[derive(Debug, Clone)]
pub(crate) struct SpinGovernor {
    /// Decaying share of recent spins that found work, in [0, 1].
    share: f32,
    /// Opportunities refused since the last spin.
    skipped: u32,
    /// A spin was allowed and its outcome is not yet known.
    in_flight: bool,
}

impl Default for SpinGovernor {
    /// Trusting: the first dense wakeups spin, as `spin_when_busy` always did.
    fn default() -> Self {
        SpinGovernor {
            share: 1.0,
            skipped: 0,
            in_flight: false,
        }
    }
}

impl SpinGovernor {
    /// A dense wakeup: true if the worker should spin now. A spin allowed
    /// here must be followed by [`SpinGovernor::ended`].
    pub(crate) fn allow(&mut self) -> bool {
        if self.share >= THRESHOLD || self.skipped >= PROBE_EVERY {
            self.skipped = 0;
            self.in_flight = true;
            true
        } else {
            self.skipped += 1;
            false
        }
    }

    /// The spin in flight ended: `found` if a poll during it reported a
    /// connection ready. Without a spin in flight it does nothing.
    pub(crate) fn ended(&mut self, found: bool) {
        if !std::mem::take(&mut self.in_flight) {
            return;
        }
        let outcome = if found { 1.0 } else { 0.0 };
        self.share += WEIGHT * (outcome - self.share);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins that each end with `found`, `n` times; how many were allowed.
    fn spins(g: &mut SpinGovernor, n: usize, found: bool) -> usize {
        (0..n)
            .filter(|_| {
                let allowed = g.allow();
                if allowed {
                    g.ended(found);
                }
                allowed
            })
            .count()
    }

    #[test]
    fn spins_that_find_work_keep_it_on() {
        let mut g = SpinGovernor::default();
        assert_eq!(spins(&mut g, 10_000, true), 10_000);
    }

    #[test]
    fn spins_that_find_nothing_turn_it_off() {
        let mut g = SpinGovernor::default();
        let allowed = spins(&mut g, 6, false);
        assert_eq!(allowed, 6, "a trusted spin survives a few misses");
        assert!(!g.allow(), "six misses in a row turn it off");
        // Off, only probes get through: one in PROBE_EVERY + 1.
        let n = 100 * (PROBE_EVERY as usize + 1);
        assert_eq!(spins(&mut g, n, false), 100);
    }

    #[test]
    fn a_probe_comes_after_probe_every_refusals() {
        let mut g = SpinGovernor::default();
        spins(&mut g, 6, false);
        for i in 0..PROBE_EVERY {
            assert!(!g.allow(), "refusal {i} is not a probe");
        }
        assert!(g.allow(), "the probe after {PROBE_EVERY} refusals");
        assert!(g.in_flight, "its outcome is awaited");
    }

    #[test]
    fn probes_that_find_work_turn_it_back_on() {
        let mut g = SpinGovernor::default();
        spins(&mut g, 50, false);
        assert!(!g.allow());
        // Each probe that finds work raises the share, until a dense
        // wakeup spins without waiting for a probe.
        for probe in 1.. {
            let mut refused = 0;
            while !g.allow() {
                refused += 1;
                assert!(refused <= PROBE_EVERY, "a probe within {PROBE_EVERY}");
            }
            g.ended(true);
            if refused == 0 {
                break;
            }
            assert!(probe < 20, "back on within a few successful probes");
        }
        assert_eq!(spins(&mut g, 100, true), 100);
    }

    #[test]
    fn mixed_outcomes_stay_on_above_the_threshold_and_off_below() {
        // Two in three spins find work: kept.
        let mut g = SpinGovernor::default();
        let allowed = (0..3000)
            .filter(|i| {
                let a = g.allow();
                if a {
                    g.ended(i % 3 != 0);
                }
                a
            })
            .count();
        assert_eq!(allowed, 3000);
        // One in four: mostly refused.
        let mut g = SpinGovernor::default();
        let allowed = (0..3000)
            .filter(|i| {
                let a = g.allow();
                if a {
                    g.ended(i % 4 == 0);
                }
                a
            })
            .count();
        assert!(allowed < 300, "{allowed} spins allowed of 3000");
    }

    #[test]
    fn an_outcome_without_a_spin_changes_nothing() {
        let mut g = SpinGovernor::default();
        for _ in 0..100 {
            g.ended(false);
        }
        assert!(g.allow(), "no spin was in flight: the share is intact");
    }
}
