//! The plan every load thread follows: where to connect, what to send, and
//! when to start and stop measuring.
//!
//! A run has four stretches: connecting (every connection is established
//! before any message is sent, so a slow accept queue shows up in the
//! connect time and not in the latencies), a warmup (round trips happen but
//! are not recorded, so page faults and cold caches do not count), the
//! measured window, and a drain (no new round trips start; the ones in
//! flight finish and count). The window ends either at a time
//! (`--duration`) or after a number of round trips shared by all
//! connections (`--requests`). The coordinator fixes the window when it
//! gives the "go" after connecting ([`Plan::open_window`]);
//! [`Plan::next_round`] is the single place that decides about each round
//! trip. It is called once per round trip, so it only reads the clock the
//! caller already read and, in request mode, bumps one shared counter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustls::ClientConnection;

use crate::tls::TlsTarget;

/// When the measured window ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// At this instant.
    At(Instant),
    /// After this many measured round trips over all connections.
    After(u64),
}

/// Shared, read-mostly description of the run.
#[derive(Debug)]
pub(crate) struct Plan {
    pub addr: SocketAddr,
    /// Bytes per message.
    pub size: usize,
    /// Longest a connect or one round trip may take.
    pub timeout: Duration,
    /// Speak TLS to the server (`--tls`).
    pub tls: Option<TlsTarget>,
    /// Set once all connections are up.
    window: OnceLock<Window>,
    /// Measured round trips handed out so far (request mode).
    claimed: AtomicU64,
}

/// The warmup and measured window, fixed at "go".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// The "go": when round trips may begin (the base of a send schedule).
    pub start: Instant,
    /// Round trips that start before this are warmup.
    pub measure_from: Instant,
    pub stop: Stop,
}

/// Whether a round trip may start, and whether it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    Warmup,
    Measured,
    /// The window is over: finish and close the connection.
    Stop,
}

impl Plan {
    pub(crate) fn new(
        addr: SocketAddr,
        size: usize,
        timeout: Duration,
        tls: Option<TlsTarget>,
    ) -> Self {
        Plan {
            addr,
            size,
            timeout,
            tls,
            window: OnceLock::new(),
            claimed: AtomicU64::new(0),
        }
    }

    /// A fresh TLS client connection for one load connection (`None` for
    /// plain TCP).
    pub(crate) fn tls_connection(&self) -> std::io::Result<Option<ClientConnection>> {
        self.tls
            .as_ref()
            .map(|t| t.connection().map_err(std::io::Error::other))
            .transpose()
    }

    /// Fixes the window; done once, before the load threads are told to go.
    pub(crate) fn open_window(&self, window: Window) {
        // Only the coordinator calls this, once; a second call changes nothing.
        let _ = self.window.set(window);
    }

    /// The "go" instant, once the window is fixed.
    pub(crate) fn start(&self) -> Option<Instant> {
        self.window.get().map(|w| w.start)
    }

    /// Decides about the round trip a connection wants to start at `now`.
    pub(crate) fn next_round(&self, now: Instant) -> Round {
        let Some(w) = self.window.get() else {
            return Round::Stop;
        };
        if now < w.measure_from {
            return Round::Warmup;
        }
        match w.stop {
            Stop::At(end) if now < end => Round::Measured,
            Stop::At(_) => Round::Stop,
            Stop::After(limit) => {
                if self.claimed.fetch_add(1, Ordering::Relaxed) < limit {
                    Round::Measured
                } else {
                    Round::Stop
                }
            }
        }
    }
}
