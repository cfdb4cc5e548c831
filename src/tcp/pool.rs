//! The worker pool: the table of workers, where each connection goes, and
//! every change to the set of workers — the one place that knows both.
//!
//! Like memcached's `thread.c`, the dispatch table sits next to the worker
//! threads that own their connections. The table is the list of running
//! workers in pool order; position *k* is the *k*-th allowed CPU when
//! workers are pinned (`cpu_affinity`), so the pool covers the CPUs evenly
//! as it grows and shrinks from the end, and a worker that dies is replaced
//! at its own position, on its own CPU, with the settings in force.
//!
//! Three parties use the table, each through a narrow face:
//!
//! * the accept loop sees only a [`Dealer`] (pelikan's rule: the listener
//!   sees a queue facade). It deals a batch of new connections, each to the
//!   worker [`affinity::choose`] picks from the workers' loads and the CPU
//!   the connection arrived on, and wakes each worker once per batch;
//! * workers see only [`Peers`]: where a connection whose client moved
//!   should go, and who takes a connection a worker that ended still held;
//! * the server owns the [`Pool`]: start, resize (prepare, then apply),
//!   new settings, drain, stop, and replacing workers that died.
//!
//! Settings and new workers cannot disagree: a resize is prepared from the
//! new settings (the new workers are built with them) and applying it
//! broadcasts those same settings to the workers that were already there.
//!
//! The threads are a `threadpool` pool with one long-running job per
//! worker. The crate fits: jobs are started by the pool, a thread whose job
//! panicked is replaced by the crate, and resizing is `set_num_threads`.
//! What it cannot say is which job ended, so each job reports its own end
//! on a channel, which [`Pool::reap`] reads.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use threadpool::ThreadPool;

use crate::observe::stats::{ServerStats, Snapshot, WorkerStats};
use crate::protocol::Notice;
use crate::tcp::affinity::{self, Load};
use crate::tcp::connection::Connection;
use crate::tcp::worker::{Command, Peers, Settings, Worker, WorkerHandle};

/// How long a shrinking pool waits for a retiring worker to hand back its
/// connections.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

/// The running workers, in pool order.
#[derive(Default)]
struct Table {
    workers: RwLock<Vec<WorkerHandle>>,
}

impl Table {
    fn read(&self) -> RwLockReadGuard<'_, Vec<WorkerHandle>> {
        self.workers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<WorkerHandle>> {
        self.workers.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn loads(workers: &[WorkerHandle]) -> Vec<Load> {
    workers
        .iter()
        .map(|w| Load {
            cpu: w.stats.cpu,
            connections: w.stats.connections.load(Relaxed),
        })
        .collect()
}

impl Peers for Table {
    fn local_to(&self, me: u64, cpu: usize) -> Option<WorkerHandle> {
        let workers = self.read();
        let to = affinity::choose(&loads(&workers), Some(cpu))?;
        let target = &workers[to];
        (target.stats.cpu == Some(cpu) && target.id != me).then(|| target.clone())
    }

    fn others(&self, me: u64) -> Vec<WorkerHandle> {
        let mut others: Vec<WorkerHandle> =
            self.read().iter().filter(|w| w.id != me).cloned().collect();
        others.sort_by_key(|w| w.stats.connections.load(Relaxed));
        others
    }
}

/// The accept loop's face of the pool: deals new connections.
#[derive(Clone)]
pub(crate) struct Dealer(Arc<Table>);

impl Dealer {
    /// Starts dealing a batch; the workers that got connections are woken
    /// when the batch is dropped.
    pub(crate) fn batch(&self) -> Batch<'_> {
        let workers = self.0.read();
        let woken = vec![false; workers.len()];
        Batch { workers, woken }
    }
}

/// A batch of connections being dealt (holds the table for its length).
pub(crate) struct Batch<'a> {
    workers: RwLockReadGuard<'a, Vec<WorkerHandle>>,
    woken: Vec<bool>,
}

impl Batch<'_> {
    /// No worker to deal to (not yet, or no longer).
    pub(crate) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// True if the workers are pinned, so the CPU a connection arrives on
    /// is worth asking the kernel for.
    pub(crate) fn pinned(&self) -> bool {
        self.workers.iter().any(|w| w.stats.cpu.is_some())
    }

    /// Gives a new connection to the worker chosen for it (`hint`: the CPU
    /// its packets arrive on), or to any other if that one has ended; if
    /// none is left, says the server is going away and closes it.
    pub(crate) fn deal(&mut self, mut conn: Box<Connection>, hint: Option<usize>) {
        let first = affinity::choose(&loads(&self.workers), hint).unwrap_or(0);
        let order = (0..self.workers.len()).map(|i| (first + i) % self.workers.len());
        for w in order {
            match self.workers[w].queue(Command::Adopt(conn)) {
                Ok(()) => {
                    self.woken[w] = true;
                    return;
                }
                Err(Command::Adopt(back)) => conn = back,
                Err(_) => unreachable!("queue gives back what it was given"),
            }
        }
        let _ = Connection::send_last_words(conn.stream_mut(), Notice::ShuttingDown);
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for (w, woken) in self.woken.iter().enumerate() {
            if *woken {
                self.workers[w].wake();
            }
        }
    }
}

/// A resize built and ready to apply: workers made with `settings` for the
/// positions from the current size up to `size`.
pub(crate) struct Prepared {
    size: usize,
    settings: Arc<Settings>,
    fresh: Vec<(Worker, WorkerHandle)>,
}

/// The worker pool.
pub(crate) struct Pool {
    /// The running workers, shared with the accept loop and the workers.
    table: Arc<Table>,
    /// The threads the workers run on.
    threads: ThreadPool,
    /// Settings in force; every worker started gets these.
    settings: Arc<Settings>,
    /// CPUs to pin to, position k to `cpus[k % len]`; empty = unpinned.
    cpus: Vec<usize>,
    /// The next worker's id.
    next_id: u64,
    /// Counters of workers that left the table, so totals survive.
    retired: Vec<Arc<WorkerStats>>,
    /// Each worker job says here when it has returned.
    done_tx: Sender<u64>,
    done_rx: Receiver<u64>,
    /// Worker jobs started and not yet returned.
    running: usize,
    /// Set once draining or stopping: ended workers are not replaced.
    ending: bool,
}

impl Pool {
    /// Starts `size` workers with `settings`, pinned one per allowed CPU if
    /// `pinned`.
    pub(crate) fn start(size: usize, settings: Settings, pinned: bool) -> io::Result<Pool> {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut pool = Pool {
            table: Arc::new(Table::default()),
            threads: threadpool::Builder::new()
                .num_threads(size.max(1))
                .thread_name("worker".into())
                .build(),
            settings: Arc::new(settings),
            cpus: if pinned {
                affinity::allowed_cpus()
            } else {
                Vec::new()
            },
            next_id: 0,
            retired: Vec::new(),
            done_tx,
            done_rx,
            running: 0,
            ending: false,
        };
        let settings = pool.settings.clone();
        let prepared = pool.prepare(size, settings)?;
        pool.apply(prepared);
        Ok(pool)
    }

    /// The accept loop's face of the pool.
    pub(crate) fn dealer(&self) -> Dealer {
        Dealer(self.table.clone())
    }

    /// Workers running now.
    pub(crate) fn len(&self) -> usize {
        self.table.read().len()
    }

    /// Builds worker `pos` (its CPU follows from the position).
    fn build(
        &mut self,
        pos: usize,
        settings: &Arc<Settings>,
    ) -> io::Result<(Worker, WorkerHandle)> {
        let cpu = (!self.cpus.is_empty()).then(|| self.cpus[pos % self.cpus.len()]);
        let id = self.next_id;
        self.next_id += 1;
        let peers: Arc<dyn Peers> = self.table.clone();
        Worker::new(id, settings.clone(), cpu, peers)
    }

    /// Runs a built worker on a pool thread.
    fn launch(&mut self, worker: Worker, id: u64) {
        // Says "returned" even if the loop panicked.
        struct Done(Sender<u64>, u64);
        impl Drop for Done {
            fn drop(&mut self) {
                let _ = self.0.send(self.1);
            }
        }
        let done = Done(self.done_tx.clone(), id);
        self.threads.execute(move || {
            let _done = done;
            worker.run();
        });
        self.running += 1;
    }

    /// Everything a resize to `size` with `settings` needs that can fail,
    /// changing nothing.
    pub(crate) fn prepare(&mut self, size: usize, settings: Arc<Settings>) -> io::Result<Prepared> {
        let have = self.len();
        let mut fresh = Vec::with_capacity(size.saturating_sub(have));
        for pos in have..size {
            fresh.push(self.build(pos, &settings)?);
        }
        Ok(Prepared {
            size,
            settings,
            fresh,
        })
    }

    /// Applies a prepared resize: the settings go to every worker, the new
    /// workers start, and a smaller pool retires workers from the end,
    /// moving their connections to the rest.
    pub(crate) fn apply(&mut self, prepared: Prepared) {
        let Prepared {
            size,
            settings,
            fresh,
        } = prepared;
        if settings != self.settings {
            self.settings = settings;
            for w in self.table.read().iter() {
                let _ = w.send(Command::Settings(self.settings.clone()));
            }
        }
        if !fresh.is_empty() {
            self.threads.set_num_threads(size);
        }
        for (worker, handle) in fresh {
            self.launch(worker, handle.id);
            self.table.write().push(handle);
        }
        if size < self.len() {
            self.shrink(size);
        }
    }

    /// Retires workers down to `n`, moving their connections to the rest.
    fn shrink(&mut self, n: usize) {
        let leaving: Vec<WorkerHandle> = self.table.write().split_off(n);
        // Lower the pool's size first: a pool thread exits when its job
        // returns while the pool is over size, but one that went back to
        // waiting for a job would stay.
        self.threads.set_num_threads(n);
        let (tx, rx) = std::sync::mpsc::channel();
        let asked = leaving
            .iter()
            .filter(|w| w.send(Command::Retire(tx.clone())).is_ok())
            .count();
        drop(tx);
        let mut moved = Vec::new();
        let deadline = Instant::now() + RETIRE_WAIT;
        for _ in 0..asked {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(conns) => moved.extend(conns),
                Err(_) => {
                    log::error!("a retiring worker did not hand back its connections");
                    break;
                }
            }
        }
        let count = moved.len();
        let dealer = self.dealer();
        let mut batch = dealer.batch();
        for conn in moved {
            batch.deal(Box::new(conn), None);
        }
        drop(batch);
        self.retired.extend(leaving.iter().map(|w| w.stats.clone()));
        log::info!("pool shrunk to {n} workers; {count} connection(s) moved");
    }

    /// Every worker: say `shutting down`, serve clients until they leave or
    /// `deadline`, then end.
    pub(crate) fn drain(&mut self, deadline: Instant) {
        self.ending = true;
        for w in self.table.read().iter() {
            let _ = w.send(Command::Drain(deadline));
        }
    }

    /// Every worker: close everything now and end.
    pub(crate) fn stop(&mut self) {
        self.ending = true;
        for w in self.table.read().iter() {
            let _ = w.send(Command::Stop);
        }
    }

    /// Waits up to `timeout` for every worker to end; true if all did.
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.running > 0 {
            match self
                .done_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => self.running -= 1,
                Err(_) => return false,
            }
        }
        true
    }

    /// Notices workers whose loop ended on its own (a panic outside the
    /// per-connection guard, a failed poll) and replaces each at its own
    /// position, so the pool stays at full size on the same CPUs. Their
    /// connections are lost; everyone else's are not.
    pub(crate) fn reap(&mut self) {
        while let Ok(id) = self.done_rx.try_recv() {
            self.running -= 1;
            if self.ending {
                continue;
            }
            let pos = self.table.read().iter().position(|w| w.id == id);
            let Some(pos) = pos else {
                continue; // retired on purpose
            };
            log::error!("worker {pos} stopped unexpectedly; starting a replacement");
            let settings = self.settings.clone();
            match self.build(pos, &settings) {
                Ok((worker, handle)) => {
                    self.launch(worker, handle.id);
                    let old = std::mem::replace(&mut self.table.write()[pos], handle);
                    self.retired.push(old.stats);
                }
                Err(e) => log::error!("cannot start a replacement worker: {e}"),
            }
        }
    }

    /// The shared counters merged with every worker's, retired ones too.
    pub(crate) fn snapshot(&self, server: &ServerStats) -> Snapshot {
        let workers = self.table.read();
        let mut snap = crate::observe::stats::collect(
            server,
            workers
                .iter()
                .map(|w| &*w.stats)
                .chain(self.retired.iter().map(|s| &**s)),
        );
        snap.workers.truncate(workers.len());
        snap.pool_size = workers.len() as u64;
        snap
    }

    /// Each worker's heartbeat (for the systemd watchdog).
    pub(crate) fn heartbeats(&self) -> Vec<u64> {
        self.table
            .read()
            .iter()
            .map(|w| w.stats.heartbeat.load(Relaxed))
            .collect()
    }
}

impl Drop for Pool {
    /// Stops every worker and joins the threads (the Rust book's pool).
    fn drop(&mut self) {
        self.stop();
        self.threads.join();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;
    use crate::observe::stats::Open;

    fn settings() -> Arc<Settings> {
        Arc::new(Settings {
            idle_timeout: Duration::ZERO,
            max_pending_bytes: 1024,
            busy_poll: Duration::ZERO,
            spin_when_busy: true,
            sessions: false,
            latency: false,
        })
    }

    /// A connected pair: the server side wrapped as a counted connection,
    /// and the client.
    fn pair(l: &TcpListener, stats: &Arc<ServerStats>) -> (Box<Connection>, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (server, peer) = l.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let ends = crate::tcp::connection::Ends {
            peer,
            local: server.local_addr().ok(),
        };
        let conn = Connection::new(
            mio::net::TcpStream::from_std(server).into(),
            Open::new(stats),
            ends,
        );
        (Box::new(conn), client)
    }

    #[test]
    fn connections_queued_to_a_worker_that_ends_go_to_a_peer_or_hear_why() {
        let stats = Arc::new(ServerStats::default());
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let table = Arc::new(Table::default());
        let peers: Arc<dyn Peers> = table.clone();
        // Two workers that never run: their inboxes only fill.
        let (a, ha) = Worker::new(1, settings(), None, peers.clone()).expect("worker a");
        let (b, hb) = Worker::new(2, settings(), None, peers).expect("worker b");
        table.write().extend([ha.clone(), hb.clone()]);
        let (conn, mut client) = pair(&l, &stats);
        assert!(ha.adopt(conn).is_ok());
        assert_eq!(stats.active.load(Relaxed), 1);
        assert_eq!(ha.stats.connections.load(Relaxed), 1);

        // a ends with the connection still queued: it goes to b.
        drop(a);
        assert!(
            ha.adopt(pair(&l, &stats).0).is_err(),
            "a's mailbox is closed"
        );
        assert_eq!(hb.stats.connections.load(Relaxed), 1);
        assert_eq!(stats.active.load(Relaxed), 1, "moved, not lost");

        // b ends too: no live peer is left, so the client hears why.
        drop(b);
        assert_eq!(stats.active.load(Relaxed), 0, "counted out");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("read");
        assert_eq!(got, Notice::ShuttingDown.line().as_bytes());
    }

    #[test]
    fn a_batch_skips_a_worker_that_has_ended() {
        let stats = Arc::new(ServerStats::default());
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let table = Arc::new(Table::default());
        let peers: Arc<dyn Peers> = table.clone();
        let (a, ha) = Worker::new(1, settings(), None, peers.clone()).expect("worker a");
        let (_b, hb) = Worker::new(2, settings(), None, peers).expect("worker b");
        table.write().extend([ha.clone(), hb.clone()]);
        drop(a);
        let dealer = Dealer(table.clone());
        let mut batch = dealer.batch();
        for _ in 0..3 {
            batch.deal(pair(&l, &stats).0, None);
        }
        drop(batch);
        assert_eq!(hb.stats.connections.load(Relaxed), 3);
        assert_eq!(stats.active.load(Relaxed), 3);
    }

    #[test]
    fn a_prepared_resize_changes_nothing_until_applied() {
        let mut pool = Pool::start(1, (*settings()).clone(), false).expect("pool");
        let new = Arc::new(Settings {
            idle_timeout: Duration::from_secs(2),
            max_pending_bytes: 4096,
            busy_poll: Duration::from_micros(50),
            spin_when_busy: true,
            sessions: false,
            latency: false,
        });
        let prepared = pool.prepare(3, new.clone()).expect("prepare");
        assert_eq!(pool.len(), 1, "preparing changes nothing");
        pool.apply(prepared);
        assert_eq!(pool.len(), 3);
        assert_eq!(*pool.settings, *new);
    }
}
