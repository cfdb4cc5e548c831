//! What one load thread observed, and how the threads' observations merge.
//!
//! Every load thread keeps its own [`Tally`] (no locks on the measuring path)
//! and hands it to the coordinating thread when it finishes; the
//! coordinator merges them into one. Latencies go into an HdrHistogram with
//! nanosecond resolution and three significant digits, which keeps p99.9 and
//! the maximum exact enough to compare servers while costing a few
//! kilobytes per thread. Failures are counted by kind, because "5 timeouts"
//! and "5 mismatched echoes" call for very different reactions.
//!
//! Progress for the live line is published separately through the relaxed
//! atomic counters of [`Progress`], shared by all threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why one connection or one round trip failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be established (refused, unreachable,
    /// out of ports or descriptors).
    Connect,
    /// A read or write failed on an established connection (usually a reset).
    Reset,
    /// The server closed the connection before echoing a whole message.
    Closed,
    /// The echo differed from what was sent.
    Mismatch,
    /// No complete echo (or connection) within the per-operation timeout.
    Timeout,
    /// The TLS handshake failed (a certificate not trusted, a protocol
    /// error, the server closing during it).
    Handshake,
}

/// Failure counts by kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Errors {
    /// Sum of all kinds.
    pub total: u64,
    /// Connections that could not be established.
    pub connect: u64,
    /// Read or write errors on established connections.
    pub reset: u64,
    /// Connections the server closed in the middle of an echo.
    pub closed: u64,
    /// Echoes that differed from the message sent.
    pub mismatch: u64,
    /// Connects or round trips that exceeded the timeout.
    pub timeout: u64,
    /// TLS handshakes that failed.
    #[serde(default)]
    pub handshake: u64,
}

impl Errors {
    fn count(&mut self, failure: Failure) {
        self.total += 1;
        match failure {
            Failure::Connect => self.connect += 1,
            Failure::Reset => self.reset += 1,
            Failure::Closed => self.closed += 1,
            Failure::Mismatch => self.mismatch += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Handshake => self.handshake += 1,
        }
    }

    fn merge(&mut self, other: &Errors) {
        self.total += other.total;
        self.connect += other.connect;
        self.reset += other.reset;
        self.closed += other.closed;
        self.mismatch += other.mismatch;
        self.timeout += other.timeout;
        self.handshake += other.handshake;
    }
}

/// Longest latency the histogram tracks exactly; longer ones are recorded
/// as this value (a round trip is bounded by `--timeout` anyway).
const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;

/// One thread's observations.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    /// Round-trip latencies in nanoseconds (measured round trips only).
    pub latency: Histogram<u64>,
    /// Round trips completed and verified inside the measured window.
    pub round_trips: u64,
    pub errors: Errors,
    /// Connections established.
    pub connected: u64,
    /// When the last connection of this thread was established.
    pub last_connected: Option<Instant>,
    /// When the last round trip of this thread completed.
    pub last_echo: Option<Instant>,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Tally {
            latency: Histogram::new_with_bounds(1, HIGHEST_NS, 3)
                .expect("constant histogram bounds are valid"),
            round_trips: 0,
            errors: Errors::default(),
            connected: 0,
            last_connected: None,
            last_echo: None,
        }
    }

    pub(crate) fn connected_at(&mut self, at: Instant) {
        self.connected += 1;
        self.last_connected = later(self.last_connected, Some(at));
    }

    /// Records one verified round trip that took `took`.
    pub(crate) fn round_trip(&mut self, took: Duration, done: Instant, progress: &Progress) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(ns);
        self.round_trips += 1;
        self.last_echo = later(self.last_echo, Some(done));
        progress.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fail(&mut self, failure: Failure, progress: &Progress) {
        self.errors.count(failure);
        progress.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail; a
        // failure would only lose latency samples, never counts.
        let _ = self.latency.add(&other.latency);
        self.round_trips += other.round_trips;
        self.errors.merge(&other.errors);
        self.connected += other.connected;
        self.last_connected = later(self.last_connected, other.last_connected);
        self.last_echo = later(self.last_echo, other.last_echo);
    }
}

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Counters all threads bump as they go, read once a second for the live
/// progress line. Relaxed ordering: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub round_trips: AtomicU64,
    pub errors: AtomicU64,
}
