//! Faults on demand for TCP: one listener's bad-network settings
//! ([`TcpFaults`]), the per-connection state that applies them
//! ([`FaultState`]: held echo and its release times, the bandwidth's token
//! bucket, the byte count toward a reset or a stall, the session's end),
//! and a worker's timers for their deadlines ([`FaultTimers`]).
//!
//! A connection on a listener without faults carries none of this (an
//! empty `Option`), so its echo path is the one it always was. A
//! connection with faults keeps its echo in its pending buffer as usual;
//! the bytes of chunks not yet due are *held*, always the tail of that
//! buffer, so they count toward `max_pending_bytes` like any unsent echo
//! and backpressure works unchanged. What may be written is the head
//! before the held tail, and with a bandwidth no more than the bucket's
//! tokens.
//!
//! This module decides times and amounts only. It never touches a socket
//! or the poller, never sleeps, and never draws a random number except
//! from the connection's own seeded generator.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_lab_config::Faults;

/// One TCP listener's faults, shared by its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpFaults {
    delay: Duration,
    jitter: Duration,
    /// Bytes per second; 0 = no cap.
    rate: u64,
    reset_after: Option<u64>,
    stall_after: Option<u64>,
    close_after: Duration,
    banner: Option<Box<[u8]>>,
    seed: Option<u64>,
}

impl TcpFaults {
    /// The TCP faults of a listener, or `None` when it has none (its
    /// connections then carry no fault state at all).
    pub(crate) fn of(faults: &Faults) -> Option<Arc<TcpFaults>> {
        let f = faults.clone().for_protocol(echo_lab_config::Protocol::Tcp);
        if f.is_none() {
            return None;
        }
        Some(Arc::new(TcpFaults {
            delay: f.delay,
            jitter: f.jitter,
            rate: f.bandwidth.0,
            reset_after: f.reset_after_bytes,
            stall_after: f.stall_after_bytes,
            close_after: f.close_after,
            banner: f.banner.map(|b| b.into_bytes().into_boxed_slice()),
            seed: f.seed,
        }))
    }

    /// The banner sent on connect, if any.
    pub(crate) fn banner(&self) -> Option<&[u8]> {
        self.banner.as_deref()
    }
}

/// What a connection with faults does once its byte budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtBudget {
    /// Reset (RST) once everything echoed so far is out.
    Reset,
    /// Neither read nor write until the idle timeout.
    Stall,
}

/// A token bucket for the echo of one connection.
#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// The most tokens kept: 20 ms of the rate, at least two bytes; twice
    /// the quantum, so a wakeup up to 10 ms late loses no tokens.
    cap: f64,
    /// What a write waits for: 10 ms of the rate, at least one byte.
    quantum: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate as f64;
        let quantum = (rate / 100.0).max(1.0).floor();
        Bucket {
            rate,
            cap: 2.0 * quantum,
            quantum,
            tokens: quantum,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.last = now;
    }

    /// Whole bytes that may be written now.
    fn available(&self) -> usize {
        self.tokens as usize
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// When `want` bytes (at most the quantum) will be available; `None`
    /// if they are now.
    fn ready_at(&self, want: usize) -> Option<Instant> {
        let need = (want as f64).min(self.quantum);
        if self.tokens >= need {
            return None;
        }
        let secs = (need - self.tokens) / self.rate;
        Some(self.last + Duration::from_secs_f64(secs))
    }
}

/// One connection's faults in progress.
#[derive(Debug)]
pub(crate) struct FaultState {
    plan: Arc<TcpFaults>,
    /// Draws the jitter; seeded with `fault_seed` when set.
    rng: fastrand::Rng,
    /// Chunks held at the tail of the pending buffer, oldest first: when
    /// each may leave, and its length.
    held: VecDeque<(Instant, usize)>,
    /// Their total length.
    held_bytes: usize,
    /// The release time of the last chunk held (a later chunk never
    /// leaves before it).
    last_due: Option<Instant>,
    bucket: Option<Bucket>,
    /// Bytes taken for echo so far (toward a reset or a stall).
    taken: u64,
    /// When the session is closed (`close_after`).
    close_at: Option<Instant>,
    /// The earliest deadline the worker's timers hold for it.
    armed: Option<Instant>,
    /// Set when the budget ran out with `AtBudget::Reset`: the worker
    /// closes the socket with `SO_LINGER` 0, so the peer sees a reset.
    resetting: bool,
}

impl FaultState {
    /// The state for a connection accepted `now` on a listener with `plan`.
    pub(crate) fn new(plan: Arc<TcpFaults>, now: Instant) -> FaultState {
        let rng = match plan.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        FaultState {
            rng,
            held: VecDeque::new(),
            held_bytes: 0,
            last_due: None,
            bucket: (plan.rate > 0).then(|| Bucket::new(plan.rate, now)),
            taken: 0,
            close_at: (!plan.close_after.is_zero()).then(|| now + plan.close_after),
            armed: None,
            resetting: false,
            plan,
        }
    }

    /// Bytes that may still be read for echo before the budget is spent,
    /// and what happens then; `None` when there is no budget.
    pub(crate) fn budget(&self) -> Option<(u64, AtBudget)> {
        let left = |n: u64| n.saturating_sub(self.taken);
        match (self.plan.reset_after, self.plan.stall_after) {
            (None, None) => None,
            (Some(r), None) => Some((left(r), AtBudget::Reset)),
            (None, Some(s)) => Some((left(s), AtBudget::Stall)),
            (Some(r), Some(s)) if r <= s => Some((left(r), AtBudget::Reset)),
            (Some(_), Some(s)) => Some((left(s), AtBudget::Stall)),
        }
    }

    /// Counts `n` bytes taken for echo.
    pub(crate) fn took(&mut self, n: usize) {
        self.taken += n as u64;
    }

    /// When a chunk read at `read_at` may leave: `delay` ± `jitter` later,
    /// never before the chunk before it. `None`: at once.
    pub(crate) fn due(&mut self, read_at: Instant) -> Option<Instant> {
        if self.plan.delay.is_zero() && self.plan.jitter.is_zero() {
            return None;
        }
        let mut delay = self.plan.delay;
        let jitter = self.plan.jitter.as_nanos() as u64;
        if jitter > 0 {
            // Uniform in delay - jitter ..= delay + jitter (jitter <= delay).
            let draw = self.rng.u64(0..=2 * jitter);
            delay = (delay + Duration::from_nanos(draw)).saturating_sub(self.plan.jitter);
        }
        let due = (read_at + delay).max(self.last_due.unwrap_or(read_at));
        Some(due)
    }

    /// Holds `len` bytes just pushed to the tail of the pending buffer
    /// until `due`.
    pub(crate) fn hold(&mut self, due: Instant, len: usize) {
        self.held.push_back((due, len));
        self.held_bytes += len;
        self.last_due = Some(due);
    }

    /// Bytes just pushed to the tail (a notice) follow the chunks held:
    /// held with the last one's release time, or free if none is held.
    pub(crate) fn follow(&mut self, len: usize) {
        if let Some(&(due, _)) = self.held.back() {
            self.hold(due, len);
        }
    }

    /// Frees the chunks due by `now`.
    pub(crate) fn release(&mut self, now: Instant) {
        while let Some(&(due, len)) = self.held.front() {
            if due > now {
                break;
            }
            self.held.pop_front();
            self.held_bytes -= len;
        }
    }

    /// Of `pending` bytes, how many may be written now: those not held,
    /// within the bucket's tokens.
    pub(crate) fn writable(&mut self, pending: usize, now: Instant) -> usize {
        self.release(now);
        let free = pending - self.held_bytes.min(pending);
        match &mut self.bucket {
            None => free,
            Some(b) => {
                b.refill(now);
                free.min(b.available())
            }
        }
    }

    /// Counts `n` bytes written.
    pub(crate) fn wrote(&mut self, n: usize) {
        if let Some(b) = &mut self.bucket {
            b.spend(n);
        }
    }

    /// True once `close_after` has passed.
    pub(crate) fn close_due(&self, now: Instant) -> bool {
        self.close_at.is_some_and(|at| at <= now)
    }

    /// The session is being closed: `close_after` is done with.
    pub(crate) fn closing(&mut self) {
        self.close_at = None;
    }

    /// Marks the connection to be reset when it closes.
    pub(crate) fn reset(&mut self) {
        self.resetting = true;
    }

    /// True if it must close with a reset.
    pub(crate) fn resetting(&self) -> bool {
        self.resetting
    }

    /// The next time something is due (a held chunk, tokens for the
    /// bytes free to go, the session's end), given `pending` bytes.
    fn next_deadline(&self, pending: usize) -> Option<Instant> {
        let held = self.held.front().map(|&(due, _)| due);
        let free = pending - self.held_bytes.min(pending);
        let tokens = match &self.bucket {
            Some(b) if free > 0 => b.ready_at(free),
            _ => None,
        };
        [held, tokens, self.close_at].into_iter().flatten().min()
    }

    /// The deadline the worker must add to its timers, if it is earlier
    /// than the one it holds already (which then counts as armed).
    pub(crate) fn deadline_to_arm(&mut self, pending: usize) -> Option<Instant> {
        let next = self.next_deadline(pending)?;
        if self.armed.is_some_and(|a| a <= next) {
            return None;
        }
        self.armed = Some(next);
        Some(next)
    }

    /// A timer for `at` rang: true if it is the one armed (not one
    /// superseded by an earlier deadline), which is then cleared.
    pub(crate) fn rang(&mut self, at: Instant) -> bool {
        if self.armed == Some(at) {
            self.armed = None;
            true
        } else {
            false
        }
    }

    /// The connection moved to another worker, whose timers hold nothing
    /// for it yet.
    pub(crate) fn disarm(&mut self) {
        self.armed = None;
    }
}

/// A worker's fault deadlines: a min-heap of (when, slot). An entry whose
/// connection has since armed an earlier one, or left, is skipped when it
/// comes up (see [`FaultState::rang`]).
#[derive(Debug, Default)]
pub(crate) struct FaultTimers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl FaultTimers {
    pub(crate) fn push(&mut self, at: Instant, slot: usize) {
        self.heap.push(Reverse((at, slot)));
    }

    /// The earliest deadline held.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The next entry due by `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_lab_config::{Bandwidth, Config};

    fn plan(text: &str) -> Arc<TcpFaults> {
        let c = Config::parse(text, "t.toml").unwrap();
        TcpFaults::of(&c.main_faults()).unwrap()
    }

    #[test]
    fn no_fault_means_no_state() {
        assert!(TcpFaults::of(&Faults::default()).is_none());
        let udp_only = Faults {
            loss: echo_lab_config::Loss::from_share(0.5).unwrap(),
            ..Faults::default()
        };
        assert!(TcpFaults::of(&udp_only).is_none());
        let f = Faults {
            bandwidth: Bandwidth(1000),
            ..Faults::default()
        };
        assert!(TcpFaults::of(&f).is_some());
    }

    #[test]
    fn chunks_leave_after_the_delay_in_order() {
        let t0 = Instant::now();
        let mut s = FaultState::new(plan("delay = 20\njitter = 10\nfault_seed = 1\n"), t0);
        let mut dues = Vec::new();
        for i in 0..1000u32 {
            let read = t0 + Duration::from_micros(u64::from(i) * 10);
            let due = s.due(read).unwrap();
            assert!(due >= read + Duration::from_millis(10), "{i}");
            s.hold(due, 1);
            dues.push(due);
        }
        assert!(dues.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(s.writable(1000, t0), 0);
        assert_eq!(s.writable(1000, t0 + Duration::from_millis(40)), 1000);
    }

    #[test]
    fn the_same_seed_draws_the_same_delays() {
        let t0 = Instant::now();
        let draws = || {
            let mut s = FaultState::new(plan("delay = 20\njitter = 10\nfault_seed = 9\n"), t0);
            (0..50).map(|_| s.due(t0).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draws(), draws());
    }

    #[test]
    fn the_bucket_paces_writes_to_the_rate() {
        let t0 = Instant::now();
        let mut s = FaultState::new(plan("bandwidth = \"100KB/s\"\n"), t0);
        // 10 ms of the rate at the start, then the rate.
        assert_eq!(s.writable(1_000_000, t0), 1000);
        s.wrote(1000);
        assert_eq!(s.writable(1_000_000, t0), 0);
        let at = s.next_deadline(1_000_000).unwrap();
        assert_eq!(at.duration_since(t0), Duration::from_millis(10));
        let later = t0 + Duration::from_millis(5);
        assert_eq!(s.writable(1_000_000, later), 500);
    }

    #[test]
    fn the_budget_is_the_nearer_of_reset_and_stall() {
        let t0 = Instant::now();
        let mut s = FaultState::new(plan("reset_after_bytes = 10\nstall_after_bytes = 4\n"), t0);
        assert_eq!(s.budget(), Some((4, AtBudget::Stall)));
        s.took(4);
        assert_eq!(s.budget(), Some((0, AtBudget::Stall)));
        let s = FaultState::new(plan("reset_after_bytes = 3\n"), t0);
        assert_eq!(s.budget(), Some((3, AtBudget::Reset)));
    }

    #[test]
    fn a_superseded_timer_is_skipped() {
        let t0 = Instant::now();
        let mut s = FaultState::new(plan("close_after = 100\ndelay = 50\n"), t0);
        let close = s.deadline_to_arm(0).unwrap();
        assert_eq!(close, t0 + Duration::from_millis(100));
        let due = s.due(t0).unwrap();
        s.hold(due, 5);
        let earlier = s.deadline_to_arm(5).unwrap();
        assert_eq!(earlier, t0 + Duration::from_millis(50));
        assert!(!s.rang(close));
        assert!(s.rang(earlier));
        let mut timers = FaultTimers::default();
        timers.push(close, 3);
        timers.push(earlier, 3);
        assert_eq!(timers.next(), Some(earlier));
        assert_eq!(timers.pop_due(t0), None);
        assert_eq!(timers.pop_due(close), Some((earlier, 3)));
    }
}
