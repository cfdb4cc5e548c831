//! What the UDP service has done: counters its one thread writes (relaxed
//! atomics, as the TCP workers' are) and the snapshot `status` shows.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters written by the UDP thread, read by the supervisor.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct UdpStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Datagrams echoed.
    pub echoed: AtomicU64,
    /// Bytes echoed.
    pub bytes_echoed: AtomicU64,
    /// Dropped: a source the guard refuses (well-known port, broadcast...).
    pub bad_source: AtomicU64,
    /// Dropped: the source is over its rate.
    pub rate_limited: AtomicU64,
    /// Dropped: an access rule refuses the source.
    pub access: AtomicU64,
    /// Dropped: larger than 65 507 bytes, or cut by the kernel.
    pub too_large: AtomicU64,
    /// Echoes the kernel would not send (send buffer full, no route).
    pub send_errors: AtomicU64,
    /// `recvmmsg` calls that returned datagrams.
    pub recv_calls: AtomicU64,
    /// `sendmmsg` calls.
    pub send_calls: AtomicU64,
    /// Sources in the rate-limit table now.
    pub sources: AtomicU64,
    /// Loop turns; the watchdog checks that it moves.
    pub heartbeat: AtomicU64,
}

impl UdpStats {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> UdpSnapshot {
        UdpSnapshot {
            received: self.received.load(Relaxed),
            echoed: self.echoed.load(Relaxed),
            bytes_echoed: self.bytes_echoed.load(Relaxed),
            dropped_bad_source: self.bad_source.load(Relaxed),
            dropped_rate: self.rate_limited.load(Relaxed),
            dropped_access: self.access.load(Relaxed),
            dropped_too_large: self.too_large.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            recv_calls: self.recv_calls.load(Relaxed),
            send_calls: self.send_calls.load(Relaxed),
            sources: self.sources.load(Relaxed),
        }
    }
}

/// The UDP counters in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UdpSnapshot {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams echoed.
    pub echoed: u64,
    /// Bytes echoed.
    pub bytes_echoed: u64,
    /// Dropped for their source (port below 1024 or 2049, broadcast,
    /// multicast, unspecified, mapped).
    pub dropped_bad_source: u64,
    /// Dropped because their source was over its rate.
    pub dropped_rate: u64,
    /// Dropped because an access rule refuses their source.
    #[serde(default)]
    pub dropped_access: u64,
    /// Dropped for being larger than 65 507 bytes.
    pub dropped_too_large: u64,
    /// Echoes the kernel refused to send.
    pub send_errors: u64,
    /// `recvmmsg` calls that returned datagrams.
    pub recv_calls: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// Sources tracked by the rate limit now.
    pub sources: u64,
}
