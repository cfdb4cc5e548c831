//! Health and readiness as a load balancer or Kubernetes asks for them:
//! the state behind `GET /healthz` and `GET /readyz` on the metrics
//! listener, and the instance's name.
//!
//! The supervisor writes it; the metrics endpoint's handler threads read
//! it. It is a shared [`Probes`] of atomics (and one mutex the probe
//! threads and the supervisor alone take), not a question to the
//! supervisor's inbox as `/metrics` is: a probe comes every few seconds
//! from every balancer and kubelet, must stay cheap, and above all must
//! not wait on the thread whose liveness it reports — a supervisor stuck
//! in a long reload would otherwise make `/healthz` time out instead of
//! answering why. So:
//!
//! * **readiness** is two flags the supervisor sets the moment it decides:
//!   taken out of rotation (`echo-labctl ready off`) and the stop phase
//!   (a stop request during `shutdown_delay`, then the drain). `/readyz`
//!   reads them and answers 200, or 503 with the reason, in one line.
//! * **health** is the supervisor's last turn (it turns at least every
//!   50 ms; [`SUPERVISOR_STALL`] without one is a wedged supervisor) and
//!   the verdict of [`Stalls`], which the supervisor feeds each turn with
//!   the heartbeats of the accept loop, every worker and the UDP thread
//!   (each bumps its own at least every 500 ms): one that has not moved
//!   for [`THREAD_STALL`] names the thread. A thread that died is
//!   replaced at the supervisor's next turn, or the daemon exits; either
//!   way no probe sees a daemon serving without a part.
//!
//! Never: a probe takes no lock a thread that serves clients holds, and
//! never asks the supervisor anything.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A supervisor that has not turned for this long is wedged.
pub(crate) const SUPERVISOR_STALL: Duration = Duration::from_secs(5);

/// A heartbeat that has not moved for this long means a wedged thread
/// (every serving loop turns at least every 500 ms).
pub(crate) const THREAD_STALL: Duration = Duration::from_secs(2);

/// Where the daemon is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Serving; no stop asked.
    Serving = 0,
    /// A stop request arrived: serving for `shutdown_delay` still.
    Delaying = 1,
    /// The drain runs.
    Draining = 2,
}

/// Readiness and health, shared by the supervisor and the probe handlers.
pub(crate) struct Probes {
    epoch: Instant,
    /// Milliseconds since `epoch` of the supervisor's last turn.
    turned_ms: AtomicU64,
    /// `echo-labctl ready off` is in force.
    out_of_rotation: AtomicBool,
    /// A [`Phase`].
    phase: AtomicU8,
    /// Why a serving thread is not healthy, if one is not.
    unhealthy: Mutex<Option<String>>,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            epoch: Instant::now(),
            turned_ms: AtomicU64::new(0),
            out_of_rotation: AtomicBool::new(false),
            phase: AtomicU8::new(Phase::Serving as u8),
            unhealthy: Mutex::new(None),
        }
    }
}

impl Probes {
    /// The supervisor turned (called once per turn).
    pub(crate) fn turned(&self) {
        self.turned_ms.store(self.millis(Instant::now()), Relaxed);
    }

    /// Takes the instance out of rotation (`false`) or puts it back.
    pub(crate) fn set_in_rotation(&self, on: bool) {
        self.out_of_rotation.store(!on, Relaxed);
    }

    /// The stop phase.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
    }

    /// The verdict of the thread check: `None` healthy, else why not.
    pub(crate) fn set_unhealthy(&self, why: Option<String>) {
        *self
            .unhealthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// `Ok` while new clients are wanted, else the one-line reason.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        match self.phase.load(Relaxed) {
            p if p == Phase::Draining as u8 => Err("draining: stop requested"),
            p if p == Phase::Delaying as u8 => {
                Err("shutting down: stop requested, serving until shutdown_delay ends")
            }
            _ if self.out_of_rotation.load(Relaxed) => {
                Err("out of rotation (echo-labctl ready off)")
            }
            _ => Ok(()),
        }
    }

    /// `Ok` while the supervisor and every serving thread turn, else the
    /// one-line reason.
    pub(crate) fn health(&self) -> Result<(), String> {
        self.health_at(Instant::now())
    }

    fn health_at(&self, now: Instant) -> Result<(), String> {
        let since = self
            .millis(now)
            .saturating_sub(self.turned_ms.load(Relaxed));
        if since >= SUPERVISOR_STALL.as_millis() as u64 {
            return Err(format!(
                "the supervisor has not turned for {:.1}s",
                since as f64 / 1000.0
            ));
        }
        match &*self
            .unhealthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// The supervisor's view of the serving threads' heartbeats: each value
/// and when it last moved.
#[derive(Default)]
pub(crate) struct Stalls {
    seen: Vec<(String, u64, Instant)>,
}

impl Stalls {
    /// Takes the heartbeats now (`(thread, counter)`, the same threads in
    /// the same order each time unless the pool changed size); returns
    /// why the daemon is unhealthy, if a thread has stood still for
    /// [`THREAD_STALL`].
    pub(crate) fn check(&mut self, beats: Vec<(String, u64)>, now: Instant) -> Option<String> {
        let same =
            self.seen.len() == beats.len() && self.seen.iter().zip(&beats).all(|(s, b)| s.0 == b.0);
        if !same {
            self.seen = beats.into_iter().map(|(n, b)| (n, b, now)).collect();
            return None;
        }
        for (seen, (_, beat)) in self.seen.iter_mut().zip(beats) {
            if seen.1 != beat {
                seen.1 = beat;
                seen.2 = now;
            }
        }
        self.seen
            .iter()
            .find(|s| now.duration_since(s.2) >= THREAD_STALL)
            .map(|s| {
                format!(
                    "the {} thread has not turned for {:.1}s",
                    s.0,
                    now.duration_since(s.2).as_secs_f64()
                )
            })
    }
}

/// The host name as the kernel has it (uname's nodename: no DNS).
pub(crate) fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_strongest_reason() {
        let p = Probes::default();
        assert_eq!(p.readiness(), Ok(()));
        p.set_in_rotation(false);
        assert!(p.readiness().unwrap_err().contains("ready off"));
        p.set_phase(Phase::Delaying);
        assert!(p.readiness().unwrap_err().contains("shutdown_delay"));
        p.set_phase(Phase::Draining);
        assert!(p.readiness().unwrap_err().contains("draining"));
        p.set_phase(Phase::Serving);
        p.set_in_rotation(true);
        assert_eq!(p.readiness(), Ok(()));
    }

    #[test]
    fn a_supervisor_that_stopped_turning_is_unhealthy() {
        let p = Probes::default();
        p.turned();
        let now = Instant::now();
        assert_eq!(p.health_at(now), Ok(()));
        let late = now + SUPERVISOR_STALL + Duration::from_millis(10);
        assert!(p.health_at(late).unwrap_err().contains("supervisor"));
        p.set_unhealthy(Some("the accept thread has not turned for 2.0s".into()));
        assert!(p.health_at(now).unwrap_err().contains("accept"));
    }

    #[test]
    fn a_heartbeat_that_stands_still_names_its_thread() {
        let mut s = Stalls::default();
        let t0 = Instant::now();
        let beats = |a, w| vec![("accept".to_string(), a), ("worker-1".to_string(), w)];
        assert_eq!(s.check(beats(1, 1), t0), None);
        let t1 = t0 + THREAD_STALL - Duration::from_millis(1);
        assert_eq!(s.check(beats(2, 1), t1), None);
        let t2 = t0 + THREAD_STALL;
        let why = s.check(beats(3, 1), t2).unwrap();
        assert!(why.contains("worker-1"), "{why}");
        // It moved again: healthy.
        assert_eq!(s.check(beats(4, 2), t2), None);
        // A new pool size starts afresh.
        assert_eq!(s.check(vec![("accept".into(), 4)], t2 + THREAD_STALL), None);
    }
}
