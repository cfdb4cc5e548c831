//! The daemon's UDP sockets: which addresses the config wants, and
//! changing them on reload with the same prepare-then-apply rule as the
//! TCP side.
//!
//! Each wanted address is a [`UdpSpec`] (a host as written and a port). On
//! reload, [`UdpListeners::prepare`] does everything that can fail: a spec
//! that was already served keeps its very socket (duplicated, so nothing
//! queued on it is lost); a new one is bound, and so is one with port 0
//! when the set of addresses changed (each asks for an ephemeral port of
//! its own). If any bind fails the
//! prepared sockets are dropped and nothing has changed. Only then does
//! [`UdpListeners::apply`] hand the new set to the UDP thread, start the
//! thread (first UDP address) or stop it (none left). Sockets that came
//! from the service manager (`ListenDatagram=`) are the unit's to change,
//! so a reload leaves them as they are.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use std::sync::Arc;

use super::{RateLimit, UdpService, UdpSnapshot};
use crate::admission::Gate;
use crate::net;

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

/// A UDP address that could not be bound; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}/udp: {source}")]
pub struct UdpBindError {
    /// The address, as configured.
    pub addr: String,
    #[source]
    pub source: io::Error,
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
}

impl UdpListeners {
    /// Sources are judged by `gate`'s access rules (from the next start of
    /// the UDP thread: call before [`UdpListeners::apply`]).
    pub fn use_gate(&mut self, gate: Arc<Gate>) {
        self.gate = Some(gate);
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

    /// Binds what `wanted` adds and duplicates what it keeps; changes
    /// nothing. Under socket activation the sockets stay as they are.
    pub fn prepare(&self, wanted: &[UdpSpec], limit: RateLimit) -> Result<Prepared, UdpBindError> {
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
                Some((_, socks)) => socks
                    .iter()
                    .map(|s| s.try_clone())
                    .collect::<io::Result<Vec<_>>>(),
                None => net::bind_all_udp(&spec.host, spec.port),
            }
            .map_err(|source| UdpBindError {
                addr: spec.describe(),
                source,
            })?;
            bound.push((spec.clone(), sockets));
        }
        Ok(Prepared {
            bound,
            limit,
            activated: self.activated,
        })
    }

    /// Puts prepared sockets in service. Fails only if the UDP thread
    /// cannot be started or given the sockets (the old state is then kept).
    pub fn apply(&mut self, p: Prepared) -> io::Result<()> {
        self.activated |= p.activated;
        let mut sockets = Vec::new();
        for (_, socks) in &p.bound {
            for s in socks {
                sockets.push(s.try_clone()?);
            }
        }
        match (&mut self.service, sockets.is_empty()) {
            (Some(s), true) => {
                s.stop();
                self.service = None;
            }
            (Some(s), false) => {
                s.set_limit(p.limit);
                s.set_sockets(sockets)?;
            }
            (None, false) => {
                let service = UdpService::start_with(sockets, p.limit, self.gate.clone())?;
                self.service = Some(service);
            }
            (None, true) => {}
        }
        self.bound = p.bound;
        self.limit = p.limit;
        Ok(())
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
