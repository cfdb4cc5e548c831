//! What the UDP service has done: counters its one thread writes (relaxed
//! atomics, as the TCP workers' are) and the snapshot `status` shows.

pub use echo_lab_proto::status::UdpSnapshot;
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
    /// Dropped: on a `who` socket, a datagram smaller than the reply.
    pub who_too_small: AtomicU64,
    /// Dropped by the `loss` fault.
    pub fault_loss: AtomicU64,
    /// Dropped because the delayed echoes' queue was full.
    pub fault_overflow: AtomicU64,
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
            dropped_who_too_small: self.who_too_small.load(Relaxed),
            dropped_loss: self.fault_loss.load(Relaxed),
            dropped_delay_queue: self.fault_overflow.load(Relaxed),
        }
    }
}
