//! The daemon's UDP sockets: which addresses the config wants, and
//! changing them on reload with the same prepare-then-commit rule as the
//! TCP side.
//!
//! Each wanted address is a [`UdpSpec`] (a host as written and a port).
//! A change is three steps. [`UdpListeners::prepare`] binds: a spec that
//! was already served keeps its very socket (duplicated, so nothing queued
//! on it is lost); a new one is bound, and so is one with port 0 when the
//! set of addresses changed (each asks for an ephemeral port of its own).
//! It starts no thread, so the daemon calls it before it forks.
//! [`UdpListeners::ready`] does the rest of what can fail: it duplicates
//! the sockets for the UDP thread and, when UDP was not served before,
//! starts that thread on the new sockets (sockets no one else serves). If
//! either step fails, what they made is dropped and nothing in service
//! has changed. [`UdpListeners::commit`] cannot fail: it hands the new set
//! and limits to the running thread, puts the started one in service, or
//! stops the thread (no address left). Sockets that came from the service
//! manager (`ListenDatagram=`) are the unit's to change, so a reload
//! leaves them as they are.
//!
//! The UDP thread is watched ([`crate::watch`]): when it dies,
//! [`UdpListeners::revive`] starts a new one on the same sockets, limits
//! and counters.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use std::sync::Arc;

use super::faults::{FaultBoard, UdpFaults};
use super::{RateLimit, UdpService, UdpSnapshot};
use crate::admission::Gate;
use crate::net;
use crate::watch::Watcher;

/// One UDP address the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSpec {
    /// Host name or address literal, as configured.
    pub host: String,
    /// Port; 0 = an ephemeral one, chosen when first bound.
    pub port: u16,
}

impl UdpSpec {
    /// `host:port`, with brackets around an IPv6 literal.
    pub fn describe(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The UDP side could not be changed (or started); nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// An address could not be bound.
    #[error("cannot listen on {addr}/udp: {source}")]
    Bind {
        /// The address that failed (as resolved, or as configured when it
        /// did not resolve).
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The sockets could not be duplicated for the UDP thread, or the
    /// thread not started.
    #[error("cannot start the UDP echo service: {0}")]
    Start(#[source] io::Error),
}

/// Sockets bound for a reload (or passed by the service manager), not yet
/// in service.
pub struct Prepared {
    bound: Vec<(UdpSpec, Vec<UdpSocket>)>,
    limit: RateLimit,
    activated: bool,
}

impl Prepared {
    /// Each address served and the local addresses of its sockets (what
    /// a `[[listen]]` table's access rules are keyed by).
    pub fn addresses(&self) -> Vec<(UdpSpec, Vec<SocketAddr>)> {
        self.bound
            .iter()
            .map(|(spec, socks)| {
                let addrs = socks.iter().filter_map(|s| s.local_addr().ok()).collect();
                (spec.clone(), addrs)
            })
            .collect()
    }
}

/// What [`UdpListeners::commit`] does to the UDP thread.
enum Change {
    /// No UDP before, none now.
    Idle,
    /// Stop the thread: no address left.
    Stop,
    /// Give the running thread these sockets (ours, and its duplicates).
    Swap(Vec<UdpSocket>, Vec<UdpSocket>),
    /// Put this service, started on the new sockets, in service.
    Start(UdpService),
}

/// A prepared change with everything that could fail done: committing it
/// cannot fail.
pub struct Ready {
    bound: Vec<(UdpSpec, Vec<UdpSocket>)>,
    limit: RateLimit,
    activated: bool,
    change: Change,
}

/// The UDP side of the daemon.
pub struct UdpListeners {
    service: Option<UdpService>,
    /// The sockets of each spec in service (our duplicates).
    bound: Vec<(UdpSpec, Vec<UdpSocket>)>,
    limit: RateLimit,
    /// The sockets came from the service manager.
    activated: bool,
    /// The access rules the UDP thread applies.
    gate: Option<Arc<Gate>>,
    /// Where the UDP thread reports its death.
    watcher: Watcher,
    /// Each socket's faults, read by the UDP thread.
    faults: Arc<FaultBoard>,
}

impl UdpListeners {
    /// Sources are judged by `gate`'s access rules (from the next start of
    /// the UDP thread: call before [`UdpListeners::apply`]).
    pub fn use_gate(&mut self, gate: Arc<Gate>) {
        self.gate = Some(gate);
    }

    /// The UDP thread reports its death to `watcher` (from its next start:
    /// call before [`UdpListeners::apply`]).
    pub fn watch(&mut self, watcher: Watcher) {
        self.watcher = watcher;
    }

    /// Nothing served yet; no thread. [`UdpListeners::prepare`] (or
    /// [`UdpListeners::adopt`]) and [`UdpListeners::apply`] start it, so
    /// sockets can be bound before the daemon forks and the thread started
    /// after.
    pub fn new(limit: RateLimit) -> UdpListeners {
        UdpListeners {
            service: None,
            bound: Vec::new(),
            limit,
            activated: false,
            gate: None,
            watcher: Watcher::none(),
            faults: Arc::new(FaultBoard::default()),
        }
    }

    /// Sockets passed by the service manager (`ListenDatagram=`), to be put
    /// in service by [`UdpListeners::apply`]; from then on reloads leave
    /// the UDP sockets alone.
    pub fn adopt(sockets: Vec<UdpSocket>, limit: RateLimit) -> Prepared {
        let bound = sockets
            .into_iter()
            .map(|s| {
                let addr = s.local_addr().ok();
                let spec = UdpSpec {
                    host: addr.map_or_else(|| "?".into(), |a| a.ip().to_string()),
                    port: addr.map_or(0, |a| a.port()),
                };
                (spec, vec![s])
            })
            .collect();
        Prepared {
            bound,
            limit,
            activated: true,
        }
    }

    /// True if the sockets came from the service manager.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Binds what `wanted` adds and duplicates what it keeps; starts no
    /// thread and changes nothing. Under socket activation the sockets
    /// stay as they are.
    pub fn prepare(&self, wanted: &[UdpSpec], limit: RateLimit) -> Result<Prepared, UdpError> {
        let keep_all: Vec<UdpSpec>;
        let wanted = if self.activated {
            keep_all = self.bound.iter().map(|(s, _)| s.clone()).collect();
            &keep_all[..]
        } else {
            wanted
        };
        let mut bound = Vec::with_capacity(wanted.len());
        // Port 0 asks for a new ephemeral port each time it is bound, which
        // happens only when the set of addresses changed.
        let same = self.bound.iter().map(|(s, _)| s).eq(wanted.iter());
        for (i, spec) in wanted.iter().enumerate() {
            let kept = if same {
                self.bound.get(i)
            } else {
                self.bound.iter().find(|(s, _)| s == spec && s.port != 0)
            };
            let sockets = match kept {
                Some((_, socks)) => duplicate(socks).map_err(|source| UdpError::Bind {
                    addr: spec.describe(),
                    source,
                })?,
                None => net::bind_all_udp(&spec.host, spec.port)
                    .map_err(|(addr, source)| UdpError::Bind { addr, source })?,
            };
            bound.push((spec.clone(), sockets));
        }
        Ok(Prepared {
            bound,
            limit,
            activated: self.activated,
        })
    }

    /// Does what can still fail of putting `p` in service: duplicates the
    /// sockets for the UDP thread and, if none runs yet, starts one on
    /// them. Changes nothing in service.
    pub fn ready(&self, p: Prepared) -> Result<Ready, UdpError> {
        let sockets = p
            .bound
            .iter()
            .map(|(_, socks)| duplicate(socks))
            .collect::<io::Result<Vec<_>>>()
            .map_err(UdpError::Start)?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let change = match (&self.service, sockets.is_empty()) {
            (Some(_), true) => Change::Stop,
            (Some(_), false) => {
                let theirs = duplicate(&sockets).map_err(UdpError::Start)?;
                Change::Swap(sockets, theirs)
            }
            (None, false) => Change::Start(
                UdpService::start_with(
                    sockets,
                    p.limit,
                    self.gate.clone(),
                    self.watcher.clone(),
                    self.faults.clone(),
                )
                .map_err(UdpError::Start)?,
            ),
            (None, true) => Change::Idle,
        };
        Ok(Ready {
            bound: p.bound,
            limit: p.limit,
            activated: p.activated,
            change,
        })
    }

    /// Puts a ready change in service; cannot fail.
    pub fn commit(&mut self, r: Ready) {
        self.activated |= r.activated;
        match r.change {
            Change::Idle => {}
            Change::Stop => {
                if let Some(mut s) = self.service.take() {
                    s.stop();
                }
            }
            Change::Swap(ours, theirs) => {
                if let Some(s) = &mut self.service {
                    s.swap_sockets(ours, theirs);
                    s.set_limit(r.limit);
                }
            }
            Change::Start(service) => self.service = Some(service),
        }
        self.bound = r.bound;
        self.limit = r.limit;
    }

    /// [`UdpListeners::ready`] then [`UdpListeners::commit`] (at start,
    /// after the fork). On error the old state is kept.
    pub fn apply(&mut self, p: Prepared) -> Result<(), UdpError> {
        let ready = self.ready(p)?;
        self.commit(ready);
        Ok(())
    }

    /// Which local addresses answer `who` (after [`UdpListeners::commit`]
    /// or [`UdpListeners::apply`]: the thread in service now).
    pub(crate) fn set_who(&mut self, who: Vec<SocketAddr>) {
        if let Some(s) = &mut self.service {
            s.set_who(who);
        }
    }

    /// Puts each socket's faults (by local address) in force; sockets not
    /// named have none.
    pub fn post_faults(&self, faults: Vec<(SocketAddr, UdpFaults)>) {
        self.faults.post(faults);
    }

    /// Restarts the UDP thread if `id` is the one in service (it died);
    /// true if it was. The sockets, limits and counters are kept.
    pub fn revive(&mut self, id: u64) -> io::Result<bool> {
        match &mut self.service {
            Some(s) if s.thread_id() == Some(id) => s.restart().map(|()| true),
            _ => Ok(false),
        }
    }

    /// Closes every UDP socket at once (datagrams have no session to
    /// drain).
    pub fn stop(&mut self) {
        if let Some(mut s) = self.service.take() {
            s.stop();
        }
        self.bound.clear();
    }

    /// Addresses served.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.service
            .as_ref()
            .map(|s| s.local_addrs())
            .unwrap_or_default()
    }

    /// The counters, if UDP is served.
    pub fn snapshot(&self) -> Option<UdpSnapshot> {
        self.service.as_ref().map(|s| s.snapshot())
    }

    /// The UDP thread's loop counter, if it runs (for the watchdog).
    pub fn heartbeat(&self) -> Option<u64> {
        self.service.as_ref().map(|s| s.heartbeat())
    }

    /// The rate limits in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }
}

fn duplicate(sockets: &[UdpSocket]) -> io::Result<Vec<UdpSocket>> {
    sockets.iter().map(|s| s.try_clone()).collect()
}

/// `100 datagrams/s, 65536 bytes/s per source (16384 sources)` or `off`.
pub fn describe_limit(l: &RateLimit) -> String {
    if l.unlimited() {
        return "off".into();
    }
    let part = |n: u32, what: &str| {
        if n == 0 {
            format!("unlimited {what}")
        } else {
            format!("{n} {what}/s")
        }
    };
    format!(
        "{}, {} per source ({} sources)",
        part(l.packets, "datagrams"),
        part(l.bytes, "bytes"),
        l.max_sources
    )
}
