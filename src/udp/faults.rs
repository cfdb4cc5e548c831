//! Faults on demand for UDP: a listener's `loss`, `delay` and `jitter`
//! for datagrams.
//!
//! The supervisor posts each UDP socket's faults, by its local address, on
//! a [`FaultBoard`] the UDP thread reads only when its generation moved (a
//! relaxed load per turn; the lock is taken once per change, never across
//! I/O). Each socket then draws from its own generator, seeded with
//! `fault_seed` when set, so that a run repeats exactly. A delayed echo
//! waits in the thread's [`HeldQueue`], bounded at [`MAX_HELD`] datagrams
//! (past it a datagram is dropped and counted), and is sent by the local
//! address it arrived at when due.
//!
//! This module decides and keeps; it never reads a socket and never
//! sleeps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use echo_lab_config::{Faults, Loss, Protocol};

/// The most delayed datagrams held at once, over every socket.
pub(crate) const MAX_HELD: usize = 4096;

/// One UDP listener's faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFaults {
    delay: Duration,
    jitter: Duration,
    /// Millionths of the datagrams not echoed.
    loss: u32,
    seed: Option<u64>,
}

impl UdpFaults {
    /// The UDP faults of a listener, or `None` when it has none.
    pub fn of(faults: &Faults) -> Option<UdpFaults> {
        let f = faults.clone().for_protocol(Protocol::Udp);
        (!f.is_none()).then_some(UdpFaults {
            delay: f.delay,
            jitter: f.jitter,
            loss: f.loss.per_million(),
            seed: f.seed,
        })
    }
}

/// Each UDP socket's faults by local address, as the supervisor last
/// posted them.
#[derive(Debug, Default)]
pub struct FaultBoard {
    generation: AtomicU64,
    faults: Mutex<Vec<(SocketAddr, UdpFaults)>>,
}

impl FaultBoard {
    /// Posts the faults in force (sockets not named have none).
    pub fn post(&self, faults: Vec<(SocketAddr, UdpFaults)>) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
        self.generation.fetch_add(1, Relaxed);
    }

    /// Changes each time faults are posted.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The faults of the socket bound to `local`.
    pub(crate) fn of(&self, local: SocketAddr) -> Option<UdpFaults> {
        let f = self.faults.lock().ok()?;
        f.iter().find(|(a, _)| *a == local).map(|(_, f)| f.clone())
    }
}

/// A socket's faults in force, with its generator.
#[derive(Debug)]
pub(crate) struct SocketFaults {
    plan: UdpFaults,
    rng: fastrand::Rng,
}

/// What becomes of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Echoed now.
    Echo,
    /// Not echoed (`loss`).
    Lost,
    /// Echoed at this time.
    Hold(Instant),
}

impl SocketFaults {
    pub(crate) fn new(plan: UdpFaults) -> SocketFaults {
        let rng = match plan.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        SocketFaults { plan, rng }
    }

    /// Draws the fate of a datagram received `now`.
    pub(crate) fn fate(&mut self, now: Instant) -> Fate {
        if self.plan.loss > 0 && self.rng.u32(0..Loss::WHOLE) < self.plan.loss {
            return Fate::Lost;
        }
        if self.plan.delay.is_zero() {
            return Fate::Echo;
        }
        let jitter = self.plan.jitter.as_nanos() as u64;
        let mut delay = self.plan.delay;
        if jitter > 0 {
            let draw = self.rng.u64(0..=2 * jitter);
            delay = (delay + Duration::from_nanos(draw)).saturating_sub(self.plan.jitter);
        }
        Fate::Hold(now + delay)
    }
}

/// A delayed echo.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Held {
    /// When it leaves, then arrival order among equal times.
    pub due: Instant,
    seq: u64,
    /// The local address it arrived at (the socket it leaves from).
    pub local: SocketAddr,
    /// Whom it goes back to.
    pub dest: SocketAddr,
    pub data: Vec<u8>,
}

/// The delayed echoes, earliest first, at most [`MAX_HELD`].
#[derive(Debug, Default)]
pub(crate) struct HeldQueue {
    heap: BinaryHeap<Reverse<Held>>,
    seq: u64,
}

impl HeldQueue {
    /// Holds an echo until `due`; false (nothing held) when full.
    pub(crate) fn hold(
        &mut self,
        due: Instant,
        local: SocketAddr,
        dest: SocketAddr,
        data: &[u8],
    ) -> bool {
        if self.heap.len() >= MAX_HELD {
            return false;
        }
        self.seq += 1;
        self.heap.push(Reverse(Held {
            due,
            seq: self.seq,
            local,
            dest,
            data: data.to_vec(),
        }));
        true
    }

    /// The next echo due by `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Held> {
        match self.heap.peek() {
            Some(Reverse(h)) if h.due <= now => self.heap.pop().map(|Reverse(h)| h),
            _ => None,
        }
    }

    /// When the next echo is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(h)| h.due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_lab_config::Config;

    fn plan(text: &str) -> UdpFaults {
        let c = Config::parse(&format!("udp = true\n{text}"), "t").unwrap();
        UdpFaults::of(&c.main_faults()).unwrap()
    }

    #[test]
    fn loss_with_a_seed_repeats_and_is_near_its_share() {
        let t = Instant::now();
        let lost = || {
            let mut s = SocketFaults::new(plan("loss = 0.1\nfault_seed = 5\n"));
            (0..100_000).filter(|_| s.fate(t) == Fate::Lost).count()
        };
        let n = lost();
        assert_eq!(n, lost());
        // 99 % binomial interval for n = 100 000, p = 0.1: 10 000 ± 245.
        assert!((9_755..=10_245).contains(&n), "{n}");
    }

    #[test]
    fn delayed_datagrams_come_out_in_time_order_and_the_queue_is_bounded() {
        let t = Instant::now();
        let a: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let mut q = HeldQueue::default();
        assert!(q.hold(t + Duration::from_millis(20), a, a, b"late"));
        assert!(q.hold(t + Duration::from_millis(10), a, a, b"early"));
        assert_eq!(q.next_due(), Some(t + Duration::from_millis(10)));
        assert!(q.pop_due(t).is_none());
        let first = q.pop_due(t + Duration::from_millis(30)).unwrap();
        assert_eq!(first.data, b"early");
        for _ in 0..MAX_HELD - 1 {
            assert!(q.hold(t, a, a, b"x"));
        }
        assert!(!q.hold(t, a, a, b"one too many"));
    }

    #[test]
    fn a_delay_is_drawn_within_its_jitter() {
        let t = Instant::now();
        let mut s = SocketFaults::new(plan("delay = 20\njitter = 5\nfault_seed = 1\n"));
        for _ in 0..1000 {
            let Fate::Hold(due) = s.fate(t) else {
                panic!("not held");
            };
            let d = due - t;
            assert!(
                d >= Duration::from_millis(15) && d <= Duration::from_millis(25),
                "{d:?}"
            );
        }
    }
}
