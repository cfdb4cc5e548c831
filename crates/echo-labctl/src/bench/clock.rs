//! The paced generator's clock: a non-blocking monotonic timerfd that the
//! generator's poller waits on, so sends leave at their planned times
//! without a poll timeout rounded to milliseconds.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

/// A new non-blocking, close-on-exec monotonic timerfd.
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
            tv_sec: after.as_secs() as _,
            tv_nsec: after.subsec_nanos() as _,
        },
    };
    timerfd_settime(timer, TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

/// Reads the expiry count so `timer` is not readable until it fires again
/// (nothing to read, `EAGAIN`, changes nothing).
pub(crate) fn clear(timer: &OwnedFd) {
    let mut count = [0u8; 8];
    let _ = rustix::io::read(timer, &mut count);
}
