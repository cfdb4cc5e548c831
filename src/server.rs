//! The server: the accept loop, the worker pool, and the operations that
//! change them while clients are connected — reload and drain.
//!
//! [`Server::start`] takes listening sockets that are already bound (by
//! [`crate::net`], by systemd socket activation, or by a test on port 0)
//! and a valid [`Config`]. It owns:
//!
//! * the worker threads, run as jobs on a `threadpool` pool of `pool_size`
//!   threads, each worker an event loop owning its connections;
//! * the accept loop thread, which deals new connections to the workers.
//!
//! [`Server::reload`] applies a new config without dropping a connection:
//! everything that can fail (binding a new address, re-listening with a new
//! backlog) happens first, and only then is anything changed, so a failed
//! reload leaves the running server exactly as it was. The listening socket
//! is kept when its address is unchanged — closing and re-binding it would
//! drop whatever sits in the accept queue. Shrinking the pool moves the
//! retiring workers' connections to the remaining ones; growing adds
//! workers that take new connections.
//!
//! [`Server::drain`] closes the listeners (new connects are refused) and
//! asks every worker to say `shutting down` and serve its clients until
//! they leave or the deadline; [`Server::stop_now`] ends it early.
//! Dropping the server stops everything (the pool's own Drop joins).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use threadpool::ThreadPool;

use crate::affinity;
use crate::config::{self, Apply, Config};
use crate::listener::{self, AcceptCommand, AcceptorHandle, Workers};
use crate::net;
use crate::stats::{ServerStats, Snapshot, WorkerStats};
use crate::worker::{Command, Settings, Worker, WorkerHandle};

/// How long a shrinking pool waits for a retiring worker to hand back its
/// connections.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

/// A reload that could not be applied; the server is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The new backlog could not be applied.
    #[error("cannot change the backlog: {0}")]
    Backlog(#[source] io::Error),
    /// New workers could not be created.
    #[error("cannot start workers: {0}")]
    Workers(#[source] io::Error),
}

/// What a reload changed, one human-readable line per setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// `idle_timeout: 5m -> 2s`, ...
    pub changes: Vec<String>,
    /// Settings that changed in the file but apply only at restart.
    pub deferred: Vec<String>,
}

impl ReloadReport {
    /// One line for logs and the systemd STATUS.
    pub fn summary(&self) -> String {
        let mut s = if self.changes.is_empty() {
            "no changes".to_string()
        } else {
            self.changes.join(", ")
        };
        if !self.deferred.is_empty() {
            s.push_str(&format!(" (at next restart: {})", self.deferred.join(", ")));
        }
        s
    }
}

/// A running echo server.
pub struct Server {
    /// The config in force.
    config: Config,
    /// Our handles on the listening sockets (the accept loop owns
    /// duplicates): for local addresses and changing the backlog.
    listeners: Vec<TcpListener>,
    /// The sockets came from the service manager: host and port are not
    /// ours to change.
    activated: bool,
    /// The accept loop.
    acceptor: AcceptorHandle,
    /// Workers taking connections now, shared with the accept loop.
    workers: Workers,
    /// Counters of workers that retired, so totals survive pool shrinks.
    retired: Vec<Arc<WorkerStats>>,
    /// The threads the workers run on.
    pool: ThreadPool,
    /// Each worker job says here when it has returned.
    done_tx: Sender<Arc<WorkerStats>>,
    done_rx: Receiver<Arc<WorkerStats>>,
    /// Worker jobs started and not yet returned.
    running: usize,
    /// Counters shared with the accept loop.
    stats: Arc<ServerStats>,
    /// Settings the workers apply.
    settings: Arc<Settings>,
    /// Set once draining.
    draining: Option<Instant>,
}

fn settings_of(config: &Config) -> Settings {
    Settings {
        idle_timeout: config.idle_timeout,
        max_pending_bytes: config.max_pending_bytes,
        busy_poll: config.busy_poll,
    }
}

impl Server {
    /// Starts workers and the accept loop on already-bound listeners.
    /// `activated` says the sockets came from socket activation.
    pub fn start(
        config: Config,
        listeners: Vec<TcpListener>,
        activated: bool,
    ) -> io::Result<Server> {
        let stats = Arc::new(ServerStats::default());
        let settings = Arc::new(settings_of(&config));
        let pool = threadpool::Builder::new()
            .num_threads(config.pool_size)
            .thread_name("worker".into())
            .build();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let workers: Workers = Arc::new(RwLock::new(Vec::new()));
        let mut own = Vec::with_capacity(listeners.len());
        for l in &listeners {
            own.push(l.try_clone()?);
        }
        // The accept loop gets its sockets only once the workers exist, so
        // connections already queued on inherited sockets (socket
        // activation) have somewhere to go at once.
        let acceptor = listener::spawn(
            Vec::new(),
            workers.clone(),
            stats.clone(),
            config.max_connections,
        )?;
        let mut server = Server {
            config,
            listeners: own,
            activated,
            acceptor,
            workers,
            retired: Vec::new(),
            pool,
            done_tx,
            done_rx,
            running: 0,
            stats,
            settings,
            draining: None,
        };
        let handles = server.spawn_workers(server.config.pool_size)?;
        server.write_workers().extend(handles);
        server.acceptor.send(AcceptCommand::SetListeners(listeners));
        Ok(server)
    }

    fn write_workers(&self) -> std::sync::RwLockWriteGuard<'_, Vec<WorkerHandle>> {
        self.workers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_workers(&self) -> std::sync::RwLockReadGuard<'_, Vec<WorkerHandle>> {
        self.workers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates `n` workers and starts them on the pool.
    fn spawn_workers(&mut self, n: usize) -> io::Result<Vec<WorkerHandle>> {
        let mut made = Vec::with_capacity(n);
        // With cpu_affinity, worker k of the pool runs on the k-th allowed
        // CPU (wrapping), so the pool covers the CPUs evenly as it grows
        // and shrinks from the end.
        let cpus = if self.config.cpu_affinity {
            affinity::allowed_cpus()
        } else {
            Vec::new()
        };
        let start = self.read_workers().len();
        for i in 0..n {
            let cpu = (!cpus.is_empty()).then(|| cpus[(start + i) % cpus.len()]);
            made.push(Worker::new(
                self.settings.clone(),
                self.stats.clone(),
                cpu,
                self.workers.clone(),
            )?);
        }
        let mut handles = Vec::with_capacity(n);
        for (worker, handle) in made {
            let done = self.done_tx.clone();
            let id = handle.stats.clone();
            self.pool.execute(move || {
                // Says "returned" (naming the worker by its counters) even
                // if the loop panicked.
                struct Done(Sender<Arc<WorkerStats>>, Option<Arc<WorkerStats>>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        if let Some(id) = self.1.take() {
                            let _ = self.0.send(id);
                        }
                    }
                }
                let _done = Done(done, Some(id));
                worker.run();
            });
            self.running += 1;
            handles.push(handle);
        }
        Ok(handles)
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True if the listening sockets came from socket activation.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Addresses the server listens on (empty once draining).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The listening sockets (for handing to the service manager's fd store).
    pub fn listeners(&self) -> &[TcpListener] {
        &self.listeners
    }

    /// Merged counters.
    pub fn snapshot(&self) -> Snapshot {
        let workers = self.read_workers();
        let mut snap = Snapshot::collect(
            &self.stats,
            workers
                .iter()
                .map(|w| &*w.stats)
                .chain(self.retired.iter().map(|s| &**s)),
        );
        snap.pool_size = workers.len() as u64;
        snap
    }

    /// The counters that prove progress: the accept loop's and each
    /// worker's heartbeat (for the systemd watchdog).
    pub fn heartbeats(&self) -> Vec<u64> {
        let mut beats = vec![self.stats.accept_heartbeat.load(Relaxed)];
        beats.extend(
            self.read_workers()
                .iter()
                .map(|w| w.stats.heartbeat.load(Relaxed)),
        );
        beats
    }

    /// Applies a validated config; on error nothing has changed.
    pub fn reload(&mut self, new: Config) -> Result<ReloadReport, ReloadError> {
        let old = self.config.clone();
        let mut report = ReloadReport::default();
        for change in config::changes(&old, &new) {
            match change.apply {
                Apply::Live => report.changes.push(change.to_string()),
                Apply::AtRestart => report.deferred.push(change.key),
            }
        }

        // 1. Everything that can fail, before anything changes.
        let address_changed = (old.host.as_str(), old.port) != (new.host.as_str(), new.port);
        let mut new_listeners = None;
        if address_changed && self.activated {
            report
                .deferred
                .push("host/port (sockets come from the service manager)".into());
        } else if address_changed {
            let bound = net::bind_all(&new.host, new.port, new.backlog).map_err(|source| {
                ReloadError::Bind {
                    addr: new.address(),
                    source,
                }
            })?;
            new_listeners = Some(bound);
        } else if old.backlog != new.backlog {
            for l in &self.listeners {
                net::relisten(l, new.backlog).map_err(ReloadError::Backlog)?;
            }
        }
        let grow = new.pool_size.saturating_sub(self.read_workers().len());
        let fresh = if grow > 0 {
            self.pool.set_num_threads(new.pool_size);
            self.spawn_workers(grow).map_err(ReloadError::Workers)?
        } else {
            Vec::new()
        };

        // 2. Apply.
        if let Some(bound) = new_listeners {
            let mut theirs = Vec::with_capacity(bound.len());
            for l in &bound {
                match l.try_clone() {
                    Ok(c) => theirs.push(c),
                    Err(e) => log::error!("cannot duplicate listening socket: {e}"),
                }
            }
            self.acceptor.send(AcceptCommand::SetListeners(theirs));
            self.listeners = bound;
        }
        if old.max_connections != new.max_connections {
            self.acceptor
                .send(AcceptCommand::SetMaxConnections(new.max_connections));
        }
        let settings = settings_of(&new);
        if settings != *self.settings {
            self.settings = Arc::new(settings);
            for w in self.read_workers().iter() {
                w.send(Command::Settings(self.settings.clone()));
            }
        }
        self.write_workers().extend(fresh);
        if new.pool_size < self.read_workers().len() {
            self.shrink(new.pool_size);
        }
        self.config = new;
        Ok(report)
    }

    /// Retires workers down to `n`, moving their connections to the rest.
    fn shrink(&mut self, n: usize) {
        let leaving: Vec<WorkerHandle> = {
            let mut w = self.write_workers();
            w.split_off(n)
        };
        // Lower the pool's size first: a pool thread exits when its job
        // returns while the pool is over size, but one that went back to
        // waiting for a job would stay.
        self.pool.set_num_threads(n);
        let (tx, rx) = std::sync::mpsc::channel();
        for w in &leaving {
            w.send(Command::Retire(tx.clone()));
        }
        drop(tx);
        let mut moved = Vec::new();
        let deadline = Instant::now() + RETIRE_WAIT;
        for _ in &leaving {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(conns) => moved.extend(conns),
                Err(_) => {
                    log::error!("a retiring worker did not hand back its connections");
                    break;
                }
            }
        }
        let count = moved.len();
        {
            let workers = self.read_workers();
            for (i, conn) in moved.into_iter().enumerate() {
                workers[i % workers.len()].queue(Command::Adopt(conn));
            }
            for w in workers.iter() {
                w.wake();
            }
        }
        self.retired.extend(leaving.iter().map(|w| w.stats.clone()));
        log::info!("pool shrunk to {n} workers; {count} connection(s) moved");
    }

    /// Starts the drain: listeners closed (new connects refused), every
    /// client told `shutting down` and served until it leaves or `timeout`.
    pub fn drain(&mut self, timeout: Duration) {
        if self.draining.is_some() {
            return;
        }
        let deadline = Instant::now() + timeout;
        self.draining = Some(deadline);
        self.acceptor.stop();
        self.listeners.clear();
        for w in self.read_workers().iter() {
            w.send(Command::Drain(deadline));
        }
    }

    /// Closes every connection now and stops the workers.
    pub fn stop_now(&mut self) {
        self.acceptor.stop();
        self.listeners.clear();
        for w in self.read_workers().iter() {
            w.send(Command::Stop);
        }
    }

    /// Waits up to `timeout` for every worker to return; true if all did.
    pub fn wait_workers(&mut self, timeout: Duration) -> bool {
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
    /// per-connection guard, a failed poll) and replaces them, so the pool
    /// stays at full size. Their connections are lost; everyone else's are
    /// not. Called periodically by the supervisor.
    pub fn reap(&mut self) {
        while let Ok(id) = self.done_rx.try_recv() {
            self.running -= 1;
            if self.draining.is_some() {
                continue;
            }
            let pos = self
                .read_workers()
                .iter()
                .position(|w| Arc::ptr_eq(&w.stats, &id));
            let Some(pos) = pos else {
                continue; // retired on purpose
            };
            log::error!("worker {pos} stopped unexpectedly; starting a replacement");
            self.retired.push(id);
            match self.spawn_workers(1) {
                Ok(mut fresh) => {
                    if let Some(h) = fresh.pop() {
                        self.write_workers()[pos] = h;
                    }
                }
                Err(e) => log::error!("cannot start a replacement worker: {e}"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
        // The pool's threads end when their worker loops return.
        self.pool.join();
    }
}
