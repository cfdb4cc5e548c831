//! UDP echo (RFC 862): each datagram sent back, unchanged, to its source —
//! unless that would make echo-lab part of a loop or a flood.
//!
//! UDP needs nothing the TCP side has: no connection, no per-client state
//! beyond a rate, no idle timeout, no drain (a datagram has no session to
//! finish). So the UDP service is separate from the TCP worker pool: one
//! thread of its own ([`serve`]) owns every UDP socket, waits for any of
//! them in one epoll set (mio), and serves a readable socket in batches of
//! [`batch::BATCH`] datagrams, one `recvmmsg` and one `sendmmsg` per batch.
//! A UDP flood therefore costs one core at most and never delays a TCP
//! worker, and a TCP crowd never delays UDP.
//!
//! Each datagram passes four checks before it is echoed, each counted
//! when it refuses ([`UdpSnapshot`]):
//!
//! 1. [`guard`]: its source is not a well-known port, NFS, broadcast,
//!    multicast, unspecified or mapped address (OpenBSD inetd's rule), so
//!    no loop with another UDP service and no broadcast storm;
//! 2. its size: at most 65 507 bytes (the largest IPv4 UDP payload), and
//!    not cut by the kernel;
//! 3. the access rules ([`crate::admission`]) of its socket allow its
//!    source (a refused source gets nothing);
//! 4. [`bucket`]: its source is within its packet and byte rate, so a
//!    forged source cannot aim echo-lab at a victim.
//!
//! Then, on a listener with faults ([`faults`]: `loss`, `delay`,
//! `jitter`), it may be dropped or held back for a while.
//!
//! The echo is the received bytes, never more. [`UdpService`] is the handle
//! the daemon holds: start it on bound sockets, swap the sockets or the
//! limits on reload (the daemon binds new sockets first, so a failed bind
//! changes nothing), read its counters, stop it.

pub mod batch;
pub mod bucket;
pub mod counters;
pub mod faults;
pub mod guard;
pub mod listeners;
mod serve;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub use bucket::RateLimit;
pub(crate) use serve::THREAD;

use crate::admission::Gate;
use crate::watch::{Commanded, Watcher};
pub use counters::{UdpSnapshot, UdpStats};
use faults::FaultBoard;

/// Messages to the UDP thread.
pub(crate) enum UdpCommand {
    /// Serve these sockets instead (the old ones close).
    SetSockets(Vec<UdpSocket>),
    /// New rate limits; the interface broadcast list is read again too.
    SetLimit(RateLimit),
    /// Close the sockets and exit.
    Stop,
    /// The local addresses of `mode = "who"` sockets: a datagram there
    /// gets the `who` reply instead of its echo ([`crate::who`]).
    SetWho(Vec<SocketAddr>),
}

/// The running UDP echo service.
pub struct UdpService {
    thread: Commanded<UdpCommand>,
    stats: Arc<UdpStats>,
    /// The access rules and where the thread reports its death, kept for
    /// a restart.
    gate: Option<Arc<Gate>>,
    watcher: Watcher,
    /// Our handles on the sockets (the thread owns duplicates): for
    /// addresses and the fd store.
    sockets: Vec<UdpSocket>,
    limit: RateLimit,
    /// The `who` sockets' addresses, sent again to a restarted thread.
    who: Vec<SocketAddr>,
    /// Each socket's faults, kept for a restart.
    faults: Arc<FaultBoard>,
}

impl UdpService {
    /// Starts the UDP thread on already-bound sockets; every source may
    /// have an echo (within the rate).
    pub fn start(sockets: Vec<UdpSocket>, limit: RateLimit) -> io::Result<UdpService> {
        let faults = Arc::new(FaultBoard::default());
        UdpService::start_with(sockets, limit, None, Watcher::none(), faults)
    }

    /// Starts the UDP thread on already-bound sockets, refusing the
    /// sources `gate`'s access rules refuse; the thread reports its death
    /// to `watcher`.
    pub fn start_with(
        sockets: Vec<UdpSocket>,
        limit: RateLimit,
        gate: Option<Arc<Gate>>,
        watcher: Watcher,
        faults: Arc<FaultBoard>,
    ) -> io::Result<UdpService> {
        let stats = Arc::new(UdpStats::default());
        let theirs = duplicate(&sockets)?;
        let thread = serve::spawn(
            theirs,
            limit,
            stats.clone(),
            (gate.clone(), faults.clone()),
            Vec::new(),
            &watcher,
        )?;
        Ok(UdpService {
            thread,
            stats,
            gate,
            watcher,
            sockets,
            limit,
            who: Vec::new(),
            faults,
        })
    }

    /// Which local addresses answer `who` (the others echo).
    pub(crate) fn set_who(&mut self, who: Vec<SocketAddr>) {
        if who != self.who {
            self.who = who.clone();
            self.send(UdpCommand::SetWho(who));
        }
    }

    /// The id of the thread serving now ([`crate::watch::Death::id`]).
    pub fn thread_id(&self) -> Option<u64> {
        self.thread.id()
    }

    /// Starts a new UDP thread on the same sockets, limits and counters
    /// (after the old one died); the old thread's handle is let go.
    pub fn restart(&mut self) -> io::Result<()> {
        let theirs = duplicate(&self.sockets)?;
        let thread = serve::spawn(
            theirs,
            self.limit,
            self.stats.clone(),
            (self.gate.clone(), self.faults.clone()),
            self.who.clone(),
            &self.watcher,
        )?;
        self.thread.replace(thread);
        Ok(())
    }

    fn send(&self, cmd: UdpCommand) {
        self.thread.send(cmd);
    }

    /// Serves `sockets` from now on; the old ones are closed once the
    /// thread has the new ones. Fails (changing nothing) only if the
    /// sockets cannot be duplicated.
    pub fn set_sockets(&mut self, sockets: Vec<UdpSocket>) -> io::Result<()> {
        let theirs = duplicate(&sockets)?;
        self.swap_sockets(sockets, theirs);
        Ok(())
    }

    /// Serves `ours` from now on, through `theirs` (their duplicates,
    /// which the thread takes); cannot fail.
    pub(crate) fn swap_sockets(&mut self, ours: Vec<UdpSocket>, theirs: Vec<UdpSocket>) {
        self.send(UdpCommand::SetSockets(theirs));
        self.sockets = ours;
    }

    /// Applies new rate limits (and re-reads the interfaces' broadcast
    /// addresses). Sources keep their buckets only if the limits are equal.
    pub fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
        self.send(UdpCommand::SetLimit(limit));
    }

    /// The limits in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// The addresses served (empty once stopped).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The sockets served (for the service manager's fd store).
    pub fn sockets(&self) -> &[UdpSocket] {
        &self.sockets
    }

    /// The counters now.
    pub fn snapshot(&self) -> UdpSnapshot {
        self.stats.snapshot()
    }

    /// The thread's loop counter, for the watchdog.
    pub fn heartbeat(&self) -> u64 {
        self.stats.heartbeat.load(Relaxed)
    }

    /// True while the thread runs.
    pub fn running(&self) -> bool {
        self.thread.running()
    }

    /// Closes every socket and ends the thread; returns once it has.
    pub fn stop(&mut self) {
        self.sockets.clear();
        self.thread.stop(UdpCommand::Stop);
    }
}

impl Drop for UdpService {
    fn drop(&mut self) {
        self.stop();
    }
}

fn duplicate(sockets: &[UdpSocket]) -> io::Result<Vec<UdpSocket>> {
    sockets.iter().map(|s| s.try_clone()).collect()
}
