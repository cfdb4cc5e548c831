//! The systemd notify protocol: readiness, reload and stop announcements,
//! status lines, the watchdog, and the file-descriptor store.
//!
//! Every call is a no-op without `NOTIFY_SOCKET`, so the daemon behaves the
//! same under systemd, under another init system and in a terminal. The
//! messages follow sd_notify(3): `READY=1` once listening; `RELOADING=1`
//! with `MONOTONIC_USEC=` at the start of a reload and `READY=1` when it is
//! done (applied or not — the STATUS says which); `STOPPING=1` at the start
//! of the drain.
//!
//! The watchdog is only fed while the daemon really works: every event
//! loop (the accept loop and each worker) bumps a heartbeat counter at
//! least every 500 ms, and the ping (every half of `WATCHDOG_USEC`) is
//! withheld while any counter has stood still for 2 s. A wedged worker
//! thus stops the pings and systemd restarts the service — the point of a
//! watchdog, which a timer thread pinging blindly would defeat.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Name under which listening sockets are kept in systemd's fd store.
pub const FDSTORE_NAME: &str = "listener";

/// Talks to the service manager, if there is one.
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set at start.
    enabled: bool,
    /// Watchdog state, when `WATCHDOG_USEC` asked for pings.
    watchdog: Option<Watchdog>,
}

struct Watchdog {
    /// Ping period: half of `WATCHDOG_USEC`.
    period: Duration,
    last_ping: Instant,
    /// Each heartbeat's last value and when it last changed.
    seen: Vec<(u64, Instant)>,
    /// The last check found a stall (logged once per stall).
    stalled: bool,
}

/// A heartbeat that has not moved for this long means a wedged thread.
/// Every loop turns at least every 500 ms, so this leaves a wide margin.
const STALL_AFTER: Duration = Duration::from_secs(2);

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = sd_notify::watchdog_enabled().map(|usec| Watchdog {
            period: (usec / 2).max(Duration::from_millis(100)),
            last_ping: Instant::now(),
            seen: Vec::new(),
            stalled: false,
        });
        Notifier { enabled, watchdog }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                log::warn!("cannot notify the service manager: {e}");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the monotonic timestamp systemd 253+ requires.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading"),
            ]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `STATUS=...` alone.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Hands listening sockets to the fd store (`FDSTORE=1`), replacing
    /// what was stored under our name before.
    pub fn store_listeners(&self, fds: &[BorrowedFd<'_>]) {
        if !self.enabled || fds.is_empty() {
            return;
        }
        let _ = sd_notify::notify(&[
            NotifyState::FdStoreRemove,
            NotifyState::FdName(FDSTORE_NAME),
        ]);
        let states = [NotifyState::FdStore, NotifyState::FdName(FDSTORE_NAME)];
        if let Err(e) = sd_notify::notify_with_fds(&states, fds) {
            log::warn!("cannot store the listening socket with the service manager: {e}");
        }
    }

    /// Pings the watchdog when its period elapsed, unless a heartbeat (the
    /// accept loop's or a worker's) has not moved for [`STALL_AFTER`].
    pub fn watchdog_tick(&mut self, beats: Vec<u64>) {
        let Some(w) = self.watchdog.as_mut() else {
            return;
        };
        let now = Instant::now();
        if w.seen.len() != beats.len() {
            // The pool changed size: start watching afresh.
            w.seen = beats.iter().map(|&b| (b, now)).collect();
        }
        for (seen, &beat) in w.seen.iter_mut().zip(&beats) {
            if seen.0 != beat {
                *seen = (beat, now);
            }
        }
        let stalled = w
            .seen
            .iter()
            .any(|(_, t)| now.duration_since(*t) > STALL_AFTER);
        if stalled {
            if !w.stalled {
                log::error!(
                    "a worker or the accept loop made no progress for {}s; withholding the watchdog ping",
                    STALL_AFTER.as_secs()
                );
            }
            w.stalled = true;
            return;
        }
        w.stalled = false;
        if now.duration_since(w.last_ping) >= w.period {
            w.last_ping = now;
            if self.enabled {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        }
    }
}

/// Borrows the fds of sockets for [`Notifier::store_listeners`].
pub fn borrow_all<T: AsFd>(items: &[T]) -> Vec<BorrowedFd<'_>> {
    items.iter().map(|i| i.as_fd()).collect()
}
