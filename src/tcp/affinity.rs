//! CPU affinity: the operating system's side (which CPUs the daemon may use,
//! pinning a thread, the CPU a connection's packets arrive on) and the pure
//! policy that turns per-worker loads and a CPU hint into a worker.
//!
//! Where a TCP segment is processed is decided before echo-lab sees it: the
//! kernel's receive path runs on the CPU that took the packet (for a remote
//! client the CPU serving the NIC queue's interrupt; over loopback the CPU
//! of the sending thread), and it is that CPU which queues the data on the
//! socket and wakes whoever waits for it. A worker on another CPU costs
//! every message a cross-CPU wakeup and the socket's cache lines a trip
//! between cores; worse, on a small machine where the clients share the
//! cores, a worker that serves connections from every CPU is coupled to
//! every busy thread, is always runnable, and is preempted for whole
//! scheduler ticks with all its connections waiting.
//!
//! So with `cpu_affinity` on worker *k* is pinned to the
//! *k*-th CPU the daemon may use (its affinity mask, so `taskset`, cpusets
//! and systemd's `CPUAffinity=` are respected), and a new connection goes to
//! a worker on the CPU that processed its handshake (SO_INCOMING_CPU). This
//! is the per-CPU design of high-rate servers (Linux's advice for
//! SO_REUSEPORT groups, nginx's `worker_cpu_affinity`, HAProxy's `cpu-map`),
//! done here with one listening socket.
//!
//! Locality must not cost balance: when all connections arrive on one CPU
//! (a single-queue NIC, one client thread), pure locality would load one
//! worker and leave the rest idle. [`choose`] therefore prefers the local
//! worker only while it has at most [`SLACK_PERCENT`] more connections
//! (plus [`SLACK_MIN`]) than the least loaded one; past that, for packets
//! from a CPU with no worker, and for unpinned pools, the least loaded
//! worker gets the connection.
//!
//! Clients move between CPUs too (a scheduler migrates a client thread), and
//! following each move would hand a connection from worker to worker many
//! times a second. [`Steer`] decides when an established connection may move:
//! only after it has stayed [`MIN_DWELL`] where it is, and only when two
//! checks in a row saw its packets on the same other CPU, so a connection
//! moves at most once per [`MIN_DWELL`] whatever its client does.
//!
//! Why it is off by default: locality holds only while each client keeps
//! a connection on one thread that stays on one CPU. A client whose
//! runtime moves connections between threads (tokio's work stealing)
//! sends a connection's packets from either CPU, so the pinned worker
//! gains nothing and keeps its cost: it cannot follow the scheduler to an
//! idle CPU, and at light load each wakeup from the other CPU is a
//! cross-CPU one. docs/PERFORMANCE.md ("Pinning") has the measurements,
//! client by client.
//!
//! Nothing here knows about workers or sockets beyond a file descriptor:
//! the pool (`crate::tcp::pool`) feeds [`choose`] the loads it keeps.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use socket2::SockRef;

/// How much more loaded than the least loaded worker, in per cent, a
/// local worker may be and still get the next connection.
pub(crate) const SLACK_PERCENT: usize = 25;
/// ... plus this many connections, so small counts never spill.
pub(crate) const SLACK_MIN: usize = 8;
/// The least time a connection stays on a worker before it may be handed to
/// another: the bound on hand-offs per connection.
pub(crate) const MIN_DWELL: Duration = Duration::from_secs(10);

/// The CPUs this process may run on (its affinity mask), in order; empty
/// if the kernel will not say.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = sched_getaffinity(None) else {
        return Vec::new();
    };
    (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

/// Pins the calling thread (only it) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    Ok(sched_setaffinity(None, &set)?)
}

/// The CPU that processed the connection's last incoming packet
/// (SO_INCOMING_CPU), if the kernel says.
pub fn incoming_cpu(stream: &impl AsFd) -> Option<usize> {
    let cpu = SockRef::from(stream).cpu_affinity().ok()?;
    // The kernel answers -1 (here: a huge number) before any packet.
    (cpu < CpuSet::MAX_CPU).then_some(cpu)
}

/// What [`choose`] knows of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Load {
    /// The CPU the worker is pinned to, if any.
    pub cpu: Option<usize>,
    /// Connections it serves, including any dealt to it that it has not
    /// counted yet.
    pub connections: usize,
}

/// The worker (index into `loads`) to give a connection whose packets
/// arrive on `hint`: the least loaded of those pinned to that CPU, unless
/// even that one is over the balance slack (see the module essay) or none
/// is, in which case the least loaded of all (the first on a tie). `None`
/// only for an empty pool.
pub(crate) fn choose(loads: &[Load], hint: Option<usize>) -> Option<usize> {
    let (least, least_load) = loads
        .iter()
        .enumerate()
        .map(|(i, l)| (i, l.connections))
        .min_by_key(|&(_, c)| c)?;
    let Some(cpu) = hint else {
        return Some(least);
    };
    let limit = least_load + least_load * SLACK_PERCENT / 100 + SLACK_MIN;
    let local = loads
        .iter()
        .enumerate()
        .filter(|(_, l)| l.cpu == Some(cpu))
        .map(|(i, l)| (i, l.connections))
        .min_by_key(|&(_, c)| c);
    match local {
        Some((i, c)) if c < limit => Some(i),
        _ => Some(least),
    }
}

/// An established connection's placement history, for deciding whether it
/// may move to the worker on the CPU its packets now arrive on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Steer {
    /// When the connection arrived on the worker that serves it.
    placed: Instant,
    /// Another CPU the last check saw its packets on.
    seen: Option<usize>,
}

impl Steer {
    /// A connection placed on a worker at `now`.
    pub(crate) fn placed_at(now: Instant) -> Self {
        Steer {
            placed: now,
            seen: None,
        }
    }

    /// Records a check that saw the packets on `observed` while the
    /// connection is served on `mine`; true if it should now move to a
    /// worker on `observed`: it has dwelt [`MIN_DWELL`] and the previous
    /// check saw the same other CPU.
    pub(crate) fn should_move(&mut self, now: Instant, mine: usize, observed: usize) -> bool {
        if observed == mine {
            self.seen = None;
            return false;
        }
        let again = self.seen == Some(observed);
        self.seen = Some(observed);
        again && now.duration_since(self.placed) >= MIN_DWELL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(cpus: &[Option<usize>], counts: &[usize]) -> Vec<Load> {
        cpus.iter()
            .zip(counts)
            .map(|(&cpu, &connections)| Load { cpu, connections })
            .collect()
    }

    #[test]
    fn no_hint_goes_to_the_least_loaded_first_on_a_tie() {
        assert_eq!(choose(&loads(&[None, None], &[0, 0]), None), Some(0));
        assert_eq!(choose(&loads(&[None, None], &[3, 1]), None), Some(1));
        assert_eq!(choose(&[], None), None);
    }

    #[test]
    fn local_worker_while_within_the_slack() {
        let pinned = [Some(0), Some(1)];
        assert_eq!(choose(&loads(&pinned, &[10, 10]), Some(1)), Some(1));
        // Limit with the least at 10: 10 + 2 + 8 = 20; the local one takes
        // connections while it has fewer.
        assert_eq!(choose(&loads(&pinned, &[10, 19]), Some(1)), Some(1));
        assert_eq!(choose(&loads(&pinned, &[10, 20]), Some(1)), Some(0));
        assert_eq!(choose(&loads(&pinned, &[0, 7]), Some(1)), Some(1));
        assert_eq!(choose(&loads(&pinned, &[0, 8]), Some(1)), Some(0));
    }

    #[test]
    fn least_loaded_of_several_on_one_cpu_and_fallback_for_other_cpus() {
        let l = loads(&[Some(0), Some(1), Some(0), Some(1)], &[5, 5, 3, 4]);
        assert_eq!(choose(&l, Some(0)), Some(2));
        assert_eq!(choose(&l, Some(1)), Some(3));
        // Packets from a CPU with no worker: the least loaded of all.
        assert_eq!(choose(&l, Some(7)), Some(2));
    }

    #[test]
    fn unpinned_pool_ignores_the_hint() {
        let l = loads(&[None, None], &[4, 2]);
        assert_eq!(choose(&l, Some(0)), Some(1));
    }

    #[test]
    fn a_connection_moves_only_after_dwelling_and_two_agreeing_checks() {
        let t0 = Instant::now();
        let mut s = Steer::placed_at(t0);
        // Early: never, however often it is seen elsewhere.
        assert!(!s.should_move(t0, 0, 1));
        assert!(!s.should_move(t0 + Duration::from_secs(1), 0, 1));
        let late = t0 + MIN_DWELL;
        // Back home resets the evidence.
        assert!(!s.should_move(late, 0, 0));
        assert!(!s.should_move(late, 0, 1));
        // Two checks in a row on the same other CPU, after the dwell: move.
        assert!(s.should_move(late, 0, 1));
        // Alternating CPUs never agree twice in a row.
        let mut s = Steer::placed_at(t0);
        for i in 0..10 {
            assert!(!s.should_move(late, 0, 1 + i % 2));
        }
    }

    #[test]
    fn incoming_cpu_is_known_after_traffic() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        std::io::Write::write_all(&mut c, b"x").expect("write");
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut &s, &mut b).expect("read");
        let cpu = incoming_cpu(&s).expect("SO_INCOMING_CPU after a packet");
        assert!(allowed_cpus().contains(&cpu) || cpu < CpuSet::MAX_CPU);
    }
}
