//! A worker's alarm clock: a `timerfd` in the worker's own poller, so the
//! loop can sleep in `epoll_wait` with no timeout at all.
//!
//! A worker must wake at its nearest deadline (an idle, lingering or
//! PROXY-header timeout, the drain deadline) and at least every heartbeat
//! period for the watchdog. Passing that deadline to `epoll_wait` as its
//! timeout makes the kernel arm and cancel a high-resolution timer on every
//! sleep, and a worker sleeps up to once per message: at a fixed rate
//! that is a few per cent of the CPU per round trip on a virtual machine,
//! where programming the timer hardware is an exit to the hypervisor
//! (figures in docs/PERFORMANCE.md). Here the deadline is handed to a
//! `timerfd` instead, and
//! only when it must be: deadlines move later as connections are used (a
//! touched idle deadline never moves earlier), so an alarm already set for
//! no later than the new deadline stays; it may ring early, in which case
//! the loop finds nothing due and sets it again. Under traffic the alarm is
//! set about once per heartbeat, not once per sleep.
//!
//! The alarm is registered edge-triggered under its own token; the loop
//! calls [`WakeTimer::rang`] when that token is reported. The `timerfd`
//! calls themselves ([`timerfd`], [`arm`], [`clear`]) are shared with the
//! fixed-rate load generator (`bench::paced`), which sleeps on one too.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

/// A one-shot monotonic alarm that a worker's poller watches.
#[derive(Debug)]
pub(crate) struct WakeTimer {
    fd: OwnedFd,
    /// When the alarm is set to ring, if it is set.
    armed: Option<Instant>,
}

impl WakeTimer {
    /// Creates the alarm and registers it with `registry` under `token`.
    pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<WakeTimer> {
        let fd = timerfd()?;
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(WakeTimer { fd, armed: None })
    }

    /// Makes sure the alarm rings no later than `at`: sets it only if it is
    /// not set, has rung (or is due), or is set for later than `at`.
    pub(crate) fn ring_by(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        let keep = self.armed.is_some_and(|armed| armed > now && armed <= at);
        if keep {
            return Ok(());
        }
        arm(&self.fd, at.saturating_duration_since(now))?;
        self.armed = Some(at);
        Ok(())
    }

    /// Called when the poller reports the alarm: clears it.
    pub(crate) fn rang(&mut self) {
        clear(&self.fd);
        self.armed = None;
    }
}

/// A non-blocking monotonic timerfd (also the paced load generator's clock).
pub(crate) fn timerfd() -> io::Result<OwnedFd> {
    Ok(timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?)
}

/// Arms `timer` to expire once, `after` from now (at least 1 ns: a zero
/// value would disarm it).
pub(crate) fn arm(timer: &OwnedFd, after: Duration) -> io::Result<()> {
    let after = after.max(Duration::from_nanos(1));
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: after.subsec_nanos() as _,
        },
    };
    timerfd_settime(timer, TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

/// Reads the expiry count so `timer` is not readable until it fires again.
pub(crate) fn clear(timer: &OwnedFd) {
    let mut count = [0u8; 8];
    // A failure (EAGAIN: nothing to clear) changes nothing.
    let _ = rustix::io::read(timer, &mut count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    const ALARM: Token = Token(7);

    fn rings_within(poll: &mut Poll, bound: Duration) -> bool {
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            poll.poll(&mut events, Some(deadline - Instant::now()))
                .expect("poll");
            if events.iter().any(|e| e.token() == ALARM) {
                return true;
            }
        }
        false
    }

    #[test]
    fn the_alarm_rings_at_the_deadline_and_not_before() {
        let mut poll = Poll::new().expect("poll");
        let mut timer = WakeTimer::new(poll.registry(), ALARM).expect("timer");
        let start = Instant::now();
        timer
            .ring_by(start + Duration::from_millis(30), start)
            .expect("set");
        assert!(rings_within(&mut poll, Duration::from_secs(5)));
        assert!(start.elapsed() >= Duration::from_millis(30));
        timer.rang();
        assert!(
            !rings_within(&mut poll, Duration::from_millis(50)),
            "a rung alarm stays quiet until set again"
        );
    }

    #[test]
    fn a_later_deadline_keeps_the_alarm_an_earlier_one_moves_it() {
        let mut poll = Poll::new().expect("poll");
        let mut timer = WakeTimer::new(poll.registry(), ALARM).expect("timer");
        let now = Instant::now();
        timer
            .ring_by(now + Duration::from_secs(60), now)
            .expect("set");
        timer
            .ring_by(now + Duration::from_secs(120), now)
            .expect("kept");
        assert_eq!(timer.armed, Some(now + Duration::from_secs(60)));
        let start = Instant::now();
        timer
            .ring_by(start + Duration::from_millis(20), start)
            .expect("moved");
        assert!(rings_within(&mut poll, Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_alarm_that_is_due_is_set_again() {
        let mut poll = Poll::new().expect("poll");
        let mut timer = WakeTimer::new(poll.registry(), ALARM).expect("timer");
        let start = Instant::now();
        timer.ring_by(start, start).expect("set");
        assert!(rings_within(&mut poll, Duration::from_secs(5)));
        // Not told that it rang: a deadline in the past still sets it.
        let later = Instant::now();
        timer
            .ring_by(later + Duration::from_millis(10), later)
            .expect("set again");
        assert!(rings_within(&mut poll, Duration::from_secs(5)));
    }
}
