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
//! The watchdog is only fed while the daemon really works: at each period
//! (half of `WATCHDOG_USEC`) the accept loop's and every worker's heartbeat
//! counter must have moved since the previous ping. A wedged worker stops
//! the pings, and systemd restarts the service — the point of a watchdog,
//! which a timer thread pinging blindly would defeat.

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
    period: Duration,
    last_ping: Instant,
    last_beats: Vec<u64>,
    /// The last check found no progress (logged once per stall).
    stalled: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = sd_notify::watchdog_enabled().map(|usec| Watchdog {
            period: (usec / 2).max(Duration::from_millis(100)),
            last_ping: Instant::now(),
            last_beats: Vec::new(),
            stalled: false,
        });
        Notifier { enabled, watchdog }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
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

    /// Pings the watchdog if its period elapsed and every heartbeat moved.
    pub fn watchdog_tick(&mut self, beats: Vec<u64>) {
        let Some(w) = self.watchdog.as_mut() else {
            return;
        };
        if w.last_ping.elapsed() < w.period {
            return;
        }
        let progressed = w.last_beats.len() != beats.len()
            || w.last_beats.iter().zip(&beats).all(|(old, new)| new != old);
        if progressed {
            w.last_ping = Instant::now();
            w.last_beats = beats;
            w.stalled = false;
            if self.enabled {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        } else if !w.stalled {
            w.stalled = true;
            log::error!(
                "a worker or the accept loop made no progress; withholding the watchdog ping"
            );
        }
    }
}

/// Borrows the fds of sockets for [`Notifier::store_listeners`].
pub fn borrow_all<T: AsFd>(items: &[T]) -> Vec<BorrowedFd<'_>> {
    items.iter().map(|i| i.as_fd()).collect()
}
