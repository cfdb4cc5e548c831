//! The server: the accept loop, the worker pool, and the operations that
//! change them while clients are connected — reload and drain.
//!
//! [`Server::start`] takes listening sockets that are already bound (by
//! [`crate::net`], by systemd socket activation, or by a test on port 0)
//! and a valid [`Config`]. It owns:
//!
//! * the worker pool ([`crate::tcp::pool`]), `pool_size` event loops each owning
//!   its connections;
//! * the accept loop thread ([`crate::tcp::listener`]), which hands new
//!   connections to the pool's dealer.
//!
//! [`Server::reload`] applies a new config without dropping a connection:
//! everything that can fail (building new workers from the new settings,
//! binding a new address, re-listening with a new backlog, duplicating
//! the sockets for the accept loop) happens first, and only then is
//! anything changed, so a failed reload leaves the running server as it
//! was. It reads as two steps, which the supervisor also calls apart so
//! that the TCP side is prepared with the rest of the daemon before any
//! part is committed: [`Server::prepare`], which returns a
//! [`PreparedReload`] (with the report of what differs), and
//! [`Server::commit`], which cannot fail. The listening socket is kept
//! when its address is unchanged — closing and re-binding it would drop
//! whatever sits in the accept queue. One step of a prepare touches a
//! socket in service: a new backlog is applied to a kept socket in place
//! (listen(2) again), and stays if a later step of the same prepare fails.
//!
//! The accept loop is watched ([`crate::watch`]); [`Server::revive`]
//! replaces it when it died.
//!
//! [`Server::drain`] closes the listeners (new connects are refused) and
//! asks every worker to say `shutting down` and serve its clients until
//! they leave or the deadline; [`Server::stop_now`] ends it early.
//! Dropping the server stops everything (the pool's own Drop joins).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::{Gate, Limits};
use crate::config::{self, Apply, Config};
use crate::observe::stats::{ServerStats, Snapshot};
use crate::tcp::listener::{self, AcceptCommand, AcceptorHandle, Listening};
use crate::tcp::pool::{Pool, Prepared};
use crate::tcp::sockets::{SocketError, TcpSockets};
use crate::tcp::tls::{PreparedTls, TlsSet};
use crate::tcp::worker::Settings;
use crate::watch::Watcher;

/// A reload that could not be applied; the server is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A listening socket could not be bound or changed.
    #[error(transparent)]
    Sockets(#[from] SocketError),
    /// New workers could not be created.
    #[error("cannot start workers: {0}")]
    Workers(#[source] io::Error),
    /// The new sockets could not be duplicated for the accept loop.
    #[error("cannot duplicate the listening sockets: {0}")]
    Duplicate(#[source] io::Error),
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

impl ReloadReport {
    /// What differs between the config in force and the new one.
    fn between(old: &Config, new: &Config) -> ReloadReport {
        let mut report = ReloadReport::default();
        for change in config::changes(old, new) {
            match change.apply {
                Apply::Live => report.changes.push(change.to_string()),
                Apply::AtRestart => report.deferred.push(change.key),
            }
        }
        report
    }
}

/// A running echo server.
pub struct Server {
    /// The config in force.
    config: Config,
    /// Our handles on the listening sockets (the accept loop owns
    /// duplicates): for local addresses, the backlog and the fd store.
    sockets: TcpSockets,
    /// The accept loop.
    acceptor: AcceptorHandle,
    /// The workers.
    pool: Pool,
    /// Counters shared with the accept loop and the connections.
    stats: Arc<ServerStats>,
    /// Access rules and per-source limits (shared with the accept loop,
    /// the UDP side and every admitted connection).
    gate: Arc<Gate>,
    /// Set once draining.
    draining: Option<Instant>,
    /// Where the accept loop reports its death.
    watcher: Watcher,
    /// The TLS listeners' certificates in force.
    tls: TlsSet,
}

/// Everything a reload needs that could fail, done and not yet applied
/// ([`Server::prepare`]); [`Server::commit`] puts it in force. Dropping
/// it changes nothing.
pub struct PreparedReload {
    /// The listening sockets the new config asks for, when they differ
    /// from those in service (addresses or options), and the accept
    /// loop's duplicates of them.
    sockets: Option<(TcpSockets, Vec<Listening>)>,
    /// The pool's new size and settings, its new workers built.
    pool: Prepared,
    /// The new config.
    config: Config,
    /// What differs.
    report: ReloadReport,
    /// The TLS listeners' slots after the reload and their certificates,
    /// loaded.
    tls: (TlsSet, PreparedTls),
}

impl PreparedReload {
    /// What the reload changes.
    pub fn report_mut(&mut self) -> &mut ReloadReport {
        &mut self.report
    }
}

/// The per-source limits a config asks for. The table holds at least
/// `max_connections` sources, so sources with open connections alone
/// can never fill it.
fn limits_of(config: &Config) -> Limits {
    Limits {
        cap: config.max_connections_per_source,
        rate: config.connection_rate_per_source,
        dry_run: config.limits_dry_run,
        prefix_v4: config.source_prefix_v4,
        prefix_v6: config.source_prefix_v6,
        capacity: config.source_table_size.max(config.max_connections),
    }
}

fn settings_of(config: &Config) -> Settings {
    Settings {
        idle_timeout: config.idle_timeout,
        max_pending_bytes: config.max_pending_bytes,
        busy_poll: config.busy_poll,
        spin_when_busy: config.spin_when_busy,
        sessions: config.log.sessions,
        latency: config.metrics_listen.is_some(),
    }
}

impl Server {
    /// Starts workers and the accept loop on already-bound listeners, the
    /// TLS ones with the certificates in `tls` (loaded from `config`); the
    /// accept loop reports its death to `watcher`.
    pub fn start(
        config: Config,
        sockets: TcpSockets,
        tls: PreparedTls,
        watcher: Watcher,
    ) -> io::Result<Server> {
        let tls = TlsSet::start(tls);
        let stats = Arc::new(ServerStats::default());
        let gate = Arc::new(Gate::new(config.access.clone(), limits_of(&config)));
        gate.set_overrides(false, sockets.access_rules());
        let pool = Pool::start(config.pool_size, settings_of(&config), config.cpu_affinity)?;
        // The workers exist before the accept loop gets its sockets, so
        // connections already queued on inherited sockets (socket
        // activation) have somewhere to go at once.
        let acceptor = listener::spawn(
            sockets.listening(&tls)?,
            pool.dealer(),
            stats.clone(),
            gate.clone(),
            config.max_connections,
            &watcher,
        )?;
        Ok(Server {
            config,
            sockets,
            acceptor,
            pool,
            stats,
            gate,
            draining: None,
            watcher,
            tls,
        })
    }

    /// Starts a new accept loop on the same sockets if `id` is the one in
    /// service (it died) and the server is not draining; true if so.
    pub fn revive(&mut self, id: u64) -> io::Result<bool> {
        if self.draining.is_some() || self.acceptor.thread_id() != Some(id) {
            return Ok(false);
        }
        let acceptor = listener::spawn(
            self.sockets.listening(&self.tls)?,
            self.pool.dealer(),
            self.stats.clone(),
            self.gate.clone(),
            self.config.max_connections,
            &self.watcher,
        )?;
        // Dropping the old handle joins the dead thread.
        self.acceptor = acceptor;
        Ok(true)
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True if the listening sockets came from socket activation.
    pub fn activated(&self) -> bool {
        self.sockets.activated()
    }

    /// Addresses the server listens on (empty once draining).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .all()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The listening sockets (for handing to the service manager's fd store).
    pub fn listeners(&self) -> Vec<&TcpListener> {
        self.sockets.all().collect()
    }

    /// The TLS listeners: address, certificate, handshakes by outcome.
    pub(crate) fn tls(&self) -> &TlsSet {
        &self.tls
    }

    /// Merged counters.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.pool.snapshot(&self.stats);
        s.admission = self.gate.counts();
        s
    }

    /// Who may connect: the rules, the per-source limits and the table
    /// (the UDP side and `echo-labctl sources` use it too).
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The counters that prove progress: the accept loop's and each
    /// worker's heartbeat (for the systemd watchdog).
    pub fn heartbeats(&self) -> Vec<u64> {
        let mut beats = vec![self.stats.accept_heartbeat.load(Relaxed)];
        beats.extend(self.pool.heartbeats());
        beats
    }

    /// Does everything of a reload that can fail, changing nothing that
    /// serves clients (but a new backlog, see the module docs): builds the
    /// new workers from the new settings, binds new addresses, re-listens
    /// with a new backlog, duplicates the sockets for the accept loop. The
    /// TLS listeners' files were loaded already (`tls`, from `new`).
    pub fn prepare(
        &mut self,
        new: Config,
        tls: PreparedTls,
    ) -> Result<PreparedReload, ReloadError> {
        let staged = self.tls.stage(&tls);
        let mut report = ReloadReport::between(&self.config, &new);
        if self.activated() && self.sockets.addresses_differ(&new) {
            report
                .deferred
                .push("TCP addresses (sockets come from the service manager)".into());
        }
        let pool = self
            .pool
            .prepare(new.pool_size, Arc::new(settings_of(&new)))
            .map_err(ReloadError::Workers)?;
        let old = &self.config;
        let same = (&old.host, old.port, old.backlog, &old.listen)
            == (&new.host, new.port, new.backlog, &new.listen)
            && old.main_faults() == new.main_faults();
        let sockets = if same {
            None
        } else {
            let sockets = self.sockets.prepare(&new, old.backlog)?;
            let theirs = sockets.listening(&staged).map_err(ReloadError::Duplicate)?;
            Some((sockets, theirs))
        };
        Ok(PreparedReload {
            sockets,
            pool,
            config: new,
            report,
            tls: (staged, tls),
        })
    }

    /// Puts a prepared reload in force; cannot fail. Returns what changed.
    pub fn commit(&mut self, prepared: PreparedReload) -> ReloadReport {
        let PreparedReload {
            sockets,
            pool,
            config: new,
            mut report,
            tls: (staged, tls),
        } = prepared;
        // New handshakes get the new certificates from here on (the
        // accept loop reads the slot per connection); sessions keep theirs.
        for swap in self.tls.commit(staged, tls) {
            report.changes.push(swap.describe());
        }
        // The new rules are in force before new sockets are served.
        self.gate.set_default(new.access.clone(), limits_of(&new));
        let rules = match &sockets {
            Some((s, _)) => s.access_rules(),
            None => self.sockets.access_rules(),
        };
        self.gate.set_overrides(false, rules);
        if let Some((sockets, theirs)) = sockets {
            self.acceptor.send(AcceptCommand::SetListeners(theirs));
            self.sockets = sockets;
        }
        if self.config.max_connections != new.max_connections {
            self.acceptor
                .send(AcceptCommand::SetMaxConnections(new.max_connections));
        }
        self.pool.apply(pool);
        self.config = new;
        report
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
        self.sockets.close_all();
        self.pool.drain(deadline);
    }

    /// Closes every connection now and stops the workers.
    pub fn stop_now(&mut self) {
        self.acceptor.stop();
        self.sockets.close_all();
        self.pool.stop();
    }

    /// Waits up to `timeout` for every worker to return; true if all did.
    pub fn wait_workers(&mut self, timeout: Duration) -> bool {
        self.pool.wait(timeout)
    }

    /// Notices workers whose loop ended on its own and replaces them (see
    /// [`Pool::reap`]). Called periodically by the supervisor.
    pub fn reap(&mut self) {
        self.pool.reap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.acceptor.stop();
        // The pool's own Drop stops the workers and joins their threads.
    }
}
