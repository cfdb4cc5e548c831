//! Counters: what the daemon has done, for `echo-labctl status`, the
//! systemd STATUS line and the watchdog.
//!
//! Like memcached's per-thread statistics, each worker owns a
//! [`WorkerStats`] (relaxed atomics on cache lines no other worker's
//! counters share) and readers merge them on demand into a [`Snapshot`].
//! The worker alone writes every counter in it but one: its load
//! ([`WorkerStats::connections`]), which whoever hands it a connection
//! (the accept loop dealing, a peer moving one) raises. That counter sits
//! on cache lines of its own ([`OwnLines`]), so those writes never take
//! the lines of the counters the worker bumps per message away from it.
//! The few counters shared by the accept loop and the workers live in
//! [`ServerStats`].
//!
//! The count of open connections is kept by ownership, not by hand: every
//! served connection carries an [`Open`] token that counts it in when it is
//! made and out when it is dropped, wherever that happens (a close, a
//! worker that died, a queue that was dropped), so it can never drift.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A value alone on its cache lines: 128 bytes, aligned, as the adjacent
/// line prefetcher of x86 pairs 64-byte lines (crossbeam's `CachePadded`
/// pads the same).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct OwnLines<T>(pub T);

impl<T> std::ops::Deref for OwnLines<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Counters of one worker: all written by it alone, except `connections`.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    /// Connections this worker owns or has queued to adopt: its load, as
    /// the pool deals by it. Raised by whoever queues a connection to the
    /// worker (the accept loop, a peer), hence on lines of its own.
    pub connections: OwnLines<AtomicUsize>,
    /// Bytes read from clients and echoed.
    pub bytes: AtomicU64,
    /// Bytes written to clients (echo and notices).
    pub bytes_sent: AtomicU64,
    /// Connections closed, by [`CloseReason`] (its index).
    pub closed: [AtomicU64; CloseReason::ALL.len()],
    /// Connections closed for idleness.
    pub idle_closes: AtomicU64,
    /// Connections that ended with `disconnect`.
    pub disconnects: AtomicU64,
    /// Panics caught while serving a connection.
    pub panics: AtomicU64,
    /// Loop turns; the watchdog checks that it moves.
    pub heartbeat: AtomicU64,
    /// Connections handed to the worker on another CPU (`cpu_affinity`).
    pub moved_out: AtomicU64,
    /// Connections on a PROXY listener closed for a bad or missing header.
    pub proxy_refused: AtomicU64,
    /// The CPU the worker is pinned to (`cpu_affinity`); set at creation.
    pub cpu: Option<usize>,
    /// Echo latency inside the daemon (kept while metrics are on).
    pub latency: Latency,
}

pub use echo_lab_proto::status::{Snapshot, WorkerLoad, LATENCY_BOUNDS_US};

/// A histogram of echo latency — from the poller reporting a client's
/// input to its echo written in full — written by one worker: a relaxed
/// add to a bucket and to the sum per message, merged when scraped.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Count per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of all latencies, nanoseconds.
    sum_ns: AtomicU64,
}

impl Latency {
    /// Records one echo that took `d`.
    pub(crate) fn record(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
}

/// Why a connection ended: a label of the closed-connections counter and
/// a field of the session log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed its side (end of stream) and got all its echo.
    Client,
    /// The client said `disconnect`.
    Disconnect,
    /// Closed after `idle_timeout` without traffic.
    Idle,
    /// A reset or another I/O error (the client vanished, or the worker
    /// could not add the socket to its poller).
    Error,
    /// Closed by the server going away (drain deadline, second signal).
    Drain,
    /// On a PROXY listener: no valid header in time.
    Proxy,
    /// On a `mode = "who"` listener: the reply was sent.
    Who,
}

impl CloseReason {
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Client,
        CloseReason::Disconnect,
        CloseReason::Idle,
        CloseReason::Error,
        CloseReason::Drain,
        CloseReason::Proxy,
        CloseReason::Who,
    ];

    /// The word logs and metric labels use.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Disconnect => "disconnect",
            CloseReason::Idle => "idle",
            CloseReason::Error => "error",
            CloseReason::Drain => "drain",
            CloseReason::Proxy => "proxy",
            CloseReason::Who => "who",
        }
    }

    /// Its place in [`WorkerStats::closed`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Counters shared by the accept loop and the workers.
#[derive(Debug)]
pub(crate) struct ServerStats {
    /// When the server started.
    pub started: Instant,
    /// Connections open now (accepted and not yet closed).
    pub active: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused with the busy notice.
    pub refused: AtomicU64,
    /// Connections closed at once on a PROXY listener: their source is not
    /// trusted to send a header.
    pub untrusted_proxy: AtomicU64,
    /// Accept loop turns; the watchdog checks that it moves.
    pub accept_heartbeat: AtomicU64,
    /// Connections open per listener address (see [`Open::on_listener`]).
    pub per_listener: Mutex<Vec<(SocketAddr, Arc<AtomicUsize>)>>,
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            untrusted_proxy: AtomicU64::new(0),
            accept_heartbeat: AtomicU64::new(0),
            per_listener: Mutex::new(Vec::new()),
        }
    }
}

/// One open connection, counted in [`ServerStats::active`] (and in its
/// listener's count, if given) for as long as this token lives.
#[derive(Debug)]
pub(crate) struct Open(Arc<ServerStats>, Option<Arc<AtomicUsize>>);

impl Open {
    /// Counts a new connection in.
    pub(crate) fn new(stats: &Arc<ServerStats>) -> Self {
        stats.active.fetch_add(1, Relaxed);
        Open(stats.clone(), None)
    }

    /// Counts a new connection in, and in `listener`'s count too (one of
    /// [`ServerStats::listener_count`]).
    pub(crate) fn on_listener(
        stats: &Arc<ServerStats>,
        listener: Option<Arc<AtomicUsize>>,
    ) -> Self {
        let mut open = Open::new(stats);
        if let Some(l) = &listener {
            l.fetch_add(1, Relaxed);
        }
        open.1 = listener;
        open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
        if let Some(l) = &self.1 {
            l.fetch_sub(1, Relaxed);
        }
    }
}

impl ServerStats {
    /// The count of connections open on the listener at `addr`, made on
    /// first use and kept (a listener that is removed and comes back goes
    /// on counting; its connections may outlive it).
    pub(crate) fn listener_count(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        let mut all = self.per_listener.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = all.iter().find(|(a, _)| *a == addr) {
            return c.clone();
        }
        let c = Arc::new(AtomicUsize::new(0));
        all.push((addr, c.clone()));
        c
    }
}

/// Merges the shared counters and every worker's.
pub(crate) fn collect<'a>(
    server: &ServerStats,
    workers: impl Iterator<Item = &'a WorkerStats>,
) -> Snapshot {
    let mut s = Snapshot {
        uptime_secs: server.started.elapsed().as_secs(),
        active: server.active.load(Relaxed) as u64,
        total: server.accepted.load(Relaxed),
        refused: server.refused.load(Relaxed),
        proxy_untrusted: server.untrusted_proxy.load(Relaxed),
        ..Snapshot::default()
    };
    s.listeners = server
        .per_listener
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(a, c)| (a.to_string(), c.load(Relaxed) as u64))
        .collect();
    let mut closed = [0u64; CloseReason::ALL.len()];
    s.latency_buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
    for w in workers {
        for (sum, b) in s.latency_buckets.iter_mut().zip(&w.latency.buckets) {
            *sum += b.load(Relaxed);
        }
        s.latency_sum_ns += w.latency.sum_ns.load(Relaxed);
        s.bytes_echoed += w.bytes.load(Relaxed);
        s.bytes_sent += w.bytes_sent.load(Relaxed);
        for (sum, c) in closed.iter_mut().zip(&w.closed) {
            *sum += c.load(Relaxed);
        }
        s.idle_closes += w.idle_closes.load(Relaxed);
        s.disconnects += w.disconnects.load(Relaxed);
        s.panics += w.panics.load(Relaxed);
        s.handoffs += w.moved_out.load(Relaxed);
        s.proxy_refused += w.proxy_refused.load(Relaxed);
        s.pool_size += 1;
        s.workers.push(WorkerLoad {
            cpu: w.cpu,
            connections: w.connections.load(Relaxed) as u64,
            moved_out: w.moved_out.load(Relaxed),
        });
    }
    s.closed = CloseReason::ALL
        .iter()
        .zip(closed)
        .map(|(r, n)| (r.as_str().to_string(), n))
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// The 128-byte block (a pair of cache lines) a field starts in.
    fn block(offset: usize) -> usize {
        offset / 128
    }

    #[test]
    fn the_load_others_write_shares_no_cache_line_with_the_worker_s_counters() {
        let load = offset_of!(WorkerStats, connections);
        let size = std::mem::size_of::<OwnLines<AtomicUsize>>();
        assert_eq!(load % 128, 0, "the load starts a block");
        assert_eq!(size, 128, "and fills it");
        for (name, at) in [
            ("bytes", offset_of!(WorkerStats, bytes)),
            ("bytes_sent", offset_of!(WorkerStats, bytes_sent)),
            ("closed", offset_of!(WorkerStats, closed)),
            ("heartbeat", offset_of!(WorkerStats, heartbeat)),
            ("moved_out", offset_of!(WorkerStats, moved_out)),
            ("latency", offset_of!(WorkerStats, latency)),
        ] {
            assert_ne!(block(at), block(load), "{name} shares the load's lines");
        }
        assert_eq!(
            std::mem::align_of::<WorkerStats>(),
            128,
            "no other worker's either"
        );
    }
}
