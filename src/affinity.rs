//! CPU affinity: workers pinned to CPUs, and each connection dealt to the
//! worker on the CPU its packets arrive on.
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
//! So with `cpu_affinity` on (the default) worker *k* is pinned to the
//! *k*-th CPU the daemon may use (its affinity mask, so `taskset`, cpusets
//! and systemd's `CPUAffinity=` are respected), and the accept loop reads
//! SO_INCOMING_CPU — the CPU that processed the connection's last packet,
//! the final ACK of its handshake — and deals the connection to a worker
//! on that CPU. Each worker then shares a core with the traffic it serves:
//! its wakeups are local, and client and server on one core take turns
//! instead of preempting each other. This is the per-CPU design of
//! high-rate servers (Linux's own advice for SO_REUSEPORT groups,
//! nginx's `worker_cpu_affinity`, HAProxy's `cpu-map`), done here with one
//! listening socket.
//!
//! Locality must not cost balance: when all connections arrive on one CPU
//! (a single-queue NIC, one client thread), pure locality would load one
//! worker and leave the rest idle. [`pick`] therefore prefers the local
//! worker only while it has at most [`SLACK_PERCENT`] more connections
//! (plus [`SLACK_MIN`]) than the least loaded one; past that, and for
//! packets from a CPU with no worker, the least loaded worker gets the
//! connection.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;

use crate::worker::WorkerHandle;

/// How much more loaded than the least loaded worker, in per cent, a
/// local worker may be and still get the next connection.
pub const SLACK_PERCENT: usize = 25;
/// ... plus this many connections, so small counts never spill.
pub const SLACK_MIN: usize = 8;

/// The CPUs this process may run on (its affinity mask), in order; empty
/// if the kernel will not say.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, valid when zeroed; the kernel
    // writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread (only it) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: as in [`allowed_cpus`]; `cpu` is below CPU_SETSIZE and
    // sched_setaffinity only reads the set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPU that processed the connection's last incoming packet
/// (SO_INCOMING_CPU), if the kernel says.
pub fn incoming_cpu(stream: &impl AsRawFd) -> Option<usize> {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cpu`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut cpu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && cpu >= 0).then_some(cpu as usize)
}

/// True if the pool's workers are pinned (`cpu_affinity`).
pub fn any_pinned(workers: &[WorkerHandle]) -> bool {
    workers.iter().any(|w| w.stats.cpu.is_some())
}

/// The worker to give a connection that arrived on `cpu`: the least loaded
/// of those pinned to it, unless even that one is over the balance slack
/// (see the module essay) or none is, in which case the least loaded
/// worker of all. `dealt` counts connections given to each worker that its
/// counter may not show yet. `None` when no worker is pinned: deal
/// round-robin.
pub fn pick(workers: &[WorkerHandle], cpu: usize, dealt: &[usize]) -> Option<usize> {
    if !any_pinned(workers) {
        return None;
    }
    let load =
        |i: usize| workers[i].stats.connections.load(Relaxed) + dealt.get(i).copied().unwrap_or(0);
    let (least, least_load) = (0..workers.len())
        .map(|i| (i, load(i)))
        .min_by_key(|&(_, l)| l)?;
    let limit = least_load + least_load * SLACK_PERCENT / 100 + SLACK_MIN;
    let local = (0..workers.len())
        .filter(|&i| workers[i].stats.cpu == Some(cpu))
        .map(|i| (i, load(i)))
        .min_by_key(|&(_, l)| l);
    match local {
        Some((i, l)) if l < limit => Some(i),
        _ => Some(least),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use super::*;
    use crate::stats::ServerStats;
    use crate::worker::{Settings, Worker};

    /// Handles of workers (never run) pinned to `cpus`, with `loads`
    /// connections each.
    fn pool(cpus: &[Option<usize>], loads: &[usize]) -> Vec<WorkerHandle> {
        let settings = Arc::new(Settings {
            idle_timeout: Duration::ZERO,
            max_pending_bytes: 1024,
            busy_poll: Duration::ZERO,
        });
        let peers = Arc::new(RwLock::new(Vec::new()));
        cpus.iter()
            .zip(loads)
            .map(|(&cpu, &load)| {
                let (_, h) = Worker::new(
                    settings.clone(),
                    Arc::new(ServerStats::default()),
                    cpu,
                    peers.clone(),
                )
                .expect("worker");
                h.stats.connections.store(load, Relaxed);
                h
            })
            .collect()
    }

    #[test]
    fn unpinned_pool_is_dealt_round_robin() {
        let w = pool(&[None, None], &[0, 0]);
        assert_eq!(pick(&w, 0, &[0, 0]), None);
    }

    #[test]
    fn local_worker_while_within_the_slack() {
        let w = pool(&[Some(0), Some(1)], &[10, 10]);
        assert_eq!(pick(&w, 1, &[0, 0]), Some(1));
        // Limit with the least at 10: 10 + 2 + 8 = 20; the local one takes
        // connections while it has fewer.
        let w = pool(&[Some(0), Some(1)], &[10, 19]);
        assert_eq!(pick(&w, 1, &[0, 0]), Some(1));
        let w = pool(&[Some(0), Some(1)], &[10, 20]);
        assert_eq!(pick(&w, 1, &[0, 0]), Some(0));
        // Connections dealt in this batch count too.
        let w = pool(&[Some(0), Some(1)], &[10, 15]);
        assert_eq!(pick(&w, 1, &[0, 5]), Some(0));
    }

    #[test]
    fn least_loaded_of_several_on_one_cpu_and_fallback_for_other_cpus() {
        let w = pool(&[Some(0), Some(1), Some(0), Some(1)], &[5, 5, 3, 4]);
        assert_eq!(pick(&w, 0, &[0; 4]), Some(2));
        assert_eq!(pick(&w, 1, &[0; 4]), Some(3));
        // Packets from a CPU with no worker: the least loaded of all.
        assert_eq!(pick(&w, 7, &[0; 4]), Some(2));
    }
}
