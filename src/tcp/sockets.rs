//! The TCP listening sockets: which addresses the config asks for
//! (`host`/`port`, then every `[[listen]]` table with `protocol = "tcp"`),
//! binding them, keeping their very sockets across a reload, and the
//! options the accept loop applies per listener (the PROXY protocol, the
//! listener's own access rules).
//!
//! Each wanted address is a [`Want`]. [`TcpSockets::open`] makes the set at
//! start from the sockets the daemon stored in the fd store (a stored
//! socket serves the address it is bound to, and is closed if none wants
//! it), binding the rest. [`TcpSockets::from_unit`] takes a `.socket`
//! unit's sockets instead, each matched to its listener by
//! `FileDescriptorName=` or address ([`activation::assign`]); one with the
//! unit's default name serves as `host`/`port`, whose address the unit
//! then decides, and one with a name no table claims is an error.
//! [`TcpSockets::prepare`] does everything a reload can fail at — binding
//! new addresses, listen(2) again with a new backlog — and keeps a
//! duplicate of each socket whose address did not change, so nothing
//! queued on it is lost; if anything fails nothing has changed. Under
//! socket activation the addresses are the unit's: a reload changes only
//! the per-listener options.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use ipnet::IpNet;

use crate::admission::Listener;
use crate::config::{Config, Endpoint, ListenMode, Protocol, Rule};
use crate::net;
use crate::systemd::activation::{self, Candidate, Role};
use crate::tcp::faults::TcpFaults;
use crate::tcp::listener::Listening;
use crate::tcp::tls::TlsSet;

/// One TCP address the config asks for, and what its connections get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    /// As configured (a host name may stand for several addresses).
    pub endpoint: Endpoint,
    /// With the PROXY protocol on: the proxies trusted to send a header.
    pub proxy: Option<Arc<Vec<IpNet>>>,
    /// The table's own access rules, replacing the top-level ones.
    pub access: Option<Vec<Rule>>,
    /// `mode = "who"`.
    pub who: bool,
    /// A TLS listener: its `[[listen]]` table's index (its certificate
    /// slot's key: two tables on port 0 share an endpoint).
    pub tls: Option<usize>,
    /// Its faults (none: `None`).
    pub faults: Option<Arc<TcpFaults>>,
}

/// The TCP addresses `config` asks for, `host`/`port` first.
pub(crate) fn wanted(config: &Config) -> Vec<Want> {
    let main = Want {
        endpoint: Endpoint {
            host: config.host.clone(),
            port: config.port,
        },
        proxy: None,
        access: None,
        who: false,
        tls: None,
        faults: TcpFaults::of(&config.main_faults()),
    };
    let extra = config
        .listen
        .iter()
        .enumerate()
        .filter(|(_, l)| l.protocol == Protocol::Tcp)
        .map(|(i, l)| Want {
            endpoint: l.address.clone(),
            proxy: l.proxy_protocol.then(|| Arc::new(l.proxy_trusted.clone())),
            access: l.access.clone(),
            who: l.mode == ListenMode::Who,
            tls: l.tls().then_some(i),
            faults: TcpFaults::of(&l.faults()),
        });
    std::iter::once(main).chain(extra).collect()
}

/// A TCP address that could not be served; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The host names no address.
    #[error("cannot listen on {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// An address could not be bound (the error names it).
    #[error("{0}")]
    Bind(#[source] io::Error),
    /// The new backlog could not be applied.
    #[error("cannot change the backlog: {0}")]
    Backlog(#[source] io::Error),
}

/// The TCP listening sockets, by the address each serves.
pub struct TcpSockets {
    bound: Vec<(Want, Vec<TcpListener>)>,
    /// The sockets came from the service manager's `.socket` unit.
    activated: bool,
}

impl TcpSockets {
    /// The sockets for `config` at start, not activated: those stored in
    /// the fd store where they match a wanted address, the rest bound now.
    pub fn open(config: &Config, stored: Vec<TcpListener>) -> Result<TcpSockets, SocketError> {
        let mut spare = stored;
        let mut bound = Vec::new();
        for want in wanted(config) {
            let mine = take_matching(&mut spare, &want.endpoint);
            let sockets = if mine.is_empty() {
                bind(&want.endpoint, config.backlog)?
            } else {
                log::info!(
                    "reusing the listening socket kept by the service manager for {}",
                    want.endpoint
                );
                mine
            };
            bound.push((want, sockets));
        }
        if !spare.is_empty() {
            log::info!(
                "closing {} stored listening socket(s) the config no longer names",
                spare.len()
            );
        }
        Ok(TcpSockets {
            bound,
            activated: false,
        })
    }

    /// The sockets a `.socket` unit passed, each serving the listener
    /// [`activation::assign`] matches it to (its name, else its address,
    /// else `host`/`port`); an error names a socket nothing claims.
    pub fn from_unit(
        config: &Config,
        passed: Vec<(String, TcpListener)>,
    ) -> Result<TcpSockets, String> {
        let wants = wanted(config);
        let tables = candidates(config, Protocol::Tcp);
        // wants[0] is host/port; wants[1..] the TCP tables in file order.
        let tcp_index: Vec<usize> = config
            .listen
            .iter()
            .enumerate()
            .filter(|(_, l)| l.protocol == Protocol::Tcp)
            .map(|(i, _)| i)
            .collect();
        let mut per_want: Vec<Vec<TcpListener>> = wants.iter().map(|_| Vec::new()).collect();
        for (name, socket) in passed {
            let role = activation::assign(&name, socket.local_addr().ok(), &tables)?;
            let slot = match role {
                Role::Main => 0,
                Role::Table(t) => 1 + tcp_index.iter().position(|&i| i == t).unwrap_or(0),
            };
            per_want[slot].push(socket);
        }
        let bound = wants
            .into_iter()
            .zip(per_want)
            .enumerate()
            .filter(|(i, (_, sockets))| *i == 0 || !sockets.is_empty())
            .map(|(_, pair)| pair)
            .collect();
        Ok(TcpSockets {
            bound,
            activated: true,
        })
    }

    /// True if the sockets came from socket activation.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Closes them all (the drain: new connects are refused).
    pub(crate) fn close_all(&mut self) {
        self.bound.clear();
    }

    /// Every socket, for local addresses and the fd store.
    pub fn all(&self) -> impl Iterator<Item = &TcpListener> {
        self.bound.iter().flat_map(|(_, s)| s.iter())
    }

    /// True if `config` asks for other addresses than these serve.
    pub(crate) fn addresses_differ(&self, config: &Config) -> bool {
        let now: Vec<&Endpoint> = self.bound.iter().map(|(w, _)| &w.endpoint).collect();
        let then = wanted(config);
        now.len() != then.len() || now.iter().zip(&then).any(|(a, b)| **a != b.endpoint)
    }

    /// The set `config` asks for, built without touching the sockets in
    /// service except for a new backlog: unchanged addresses keep their
    /// socket (duplicated), new ones are bound.
    pub(crate) fn prepare(
        &self,
        config: &Config,
        old_backlog: u32,
    ) -> Result<TcpSockets, SocketError> {
        if self.activated {
            return self.with_options_of(config);
        }
        let mut bound = Vec::new();
        // Each socket serves one wanted address at most (two tables may
        // both say port 0).
        let mut used = vec![false; self.bound.len()];
        for want in wanted(config) {
            let kept = (0..self.bound.len())
                .find(|&i| !used[i] && serves(&self.bound[i].0, &self.bound[i].1, &want.endpoint))
                .map(|i| {
                    used[i] = true;
                    &self.bound[i]
                });
            let sockets = match kept {
                Some((_, sockets)) => {
                    if config.backlog != old_backlog {
                        for s in sockets {
                            net::relisten(s, config.backlog).map_err(SocketError::Backlog)?;
                        }
                    }
                    duplicate(sockets)?
                }
                None => bind(&want.endpoint, config.backlog)?,
            };
            bound.push((want, sockets));
        }
        Ok(TcpSockets {
            bound,
            activated: false,
        })
    }

    /// Activated sockets stay as they are; only the options follow the
    /// config (by address).
    fn with_options_of(&self, config: &Config) -> Result<TcpSockets, SocketError> {
        let wants = wanted(config);
        let mut bound = Vec::with_capacity(self.bound.len());
        for (i, (old, sockets)) in self.bound.iter().enumerate() {
            let want = match i {
                0 => Want {
                    faults: wants[0].faults.clone(),
                    ..old.clone()
                },
                _ => wants[1..]
                    .iter()
                    .find(|w| w.endpoint == old.endpoint)
                    .cloned()
                    .unwrap_or_else(|| old.clone()),
            };
            bound.push((want, duplicate(sockets)?));
        }
        Ok(TcpSockets {
            bound,
            activated: true,
        })
    }

    /// The listeners with access rules of their own (their `[[listen]]`
    /// table's `access`), by the local addresses of their sockets.
    pub(crate) fn access_rules(&self) -> Vec<(Listener, Vec<Rule>)> {
        let mut out = Vec::new();
        for (want, sockets) in &self.bound {
            let Some(rules) = &want.access else { continue };
            let addrs = sockets.iter().filter_map(|s| s.local_addr().ok());
            out.extend(addrs.map(|a| (Listener::Tcp(a), rules.clone())));
        }
        out
    }

    /// Duplicates of every socket with its options, for the accept loop;
    /// a TLS listener's certificate slot comes from `tls`.
    pub(crate) fn listening(&self, tls: &TlsSet) -> io::Result<Vec<Listening>> {
        let mut out = Vec::new();
        for (want, sockets) in &self.bound {
            for s in sockets {
                out.push(Listening {
                    socket: s.try_clone()?,
                    proxy: want.proxy.clone(),
                    who: want.who,
                    tls: want.tls.and_then(|i| tls.slot(i)),
                    faults: want.faults.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// True if sockets bound for `had` serve `want`: the same address as
/// configured, or the same host with the port an ephemeral one was given.
fn serves(had: &Want, sockets: &[TcpListener], want: &Endpoint) -> bool {
    if had.endpoint == *want {
        return true;
    }
    let actual = sockets.first().and_then(|s| s.local_addr().ok());
    had.endpoint.host == want.host
        && had.endpoint.port == 0
        && actual.is_some_and(|a| a.port() == want.port)
}

fn bind(endpoint: &Endpoint, backlog: u32) -> Result<Vec<TcpListener>, SocketError> {
    net::resolve(&endpoint.host, endpoint.port).map_err(|source| SocketError::Resolve {
        addr: endpoint.to_string(),
        source,
    })?;
    // Each bind error names the address it was for.
    net::bind_all(&endpoint.host, endpoint.port, backlog).map_err(SocketError::Bind)
}

fn duplicate(sockets: &[TcpListener]) -> Result<Vec<TcpListener>, SocketError> {
    sockets
        .iter()
        .map(|s| s.try_clone())
        .collect::<io::Result<_>>()
        .map_err(SocketError::Backlog)
}

/// The `[[listen]]` tables as activation matching sees them; `protocol`
/// is the passed socket's.
pub fn candidates(config: &Config, protocol: Protocol) -> Vec<Candidate<'_>> {
    config
        .listen
        .iter()
        .map(|l| Candidate {
            name: l.name.as_deref(),
            addrs: net::resolve(&l.address.host, l.address.port).unwrap_or_default(),
            same_protocol: l.protocol == protocol,
        })
        .collect()
}

/// Takes from `spare` the sockets bound to what `endpoint` resolves to
/// (never for port 0: an ephemeral port matches nothing stored).
fn take_matching(spare: &mut Vec<TcpListener>, endpoint: &Endpoint) -> Vec<TcpListener> {
    if endpoint.port == 0 || spare.is_empty() {
        return Vec::new();
    }
    let Ok(addrs) = net::resolve(&endpoint.host, endpoint.port) else {
        return Vec::new();
    };
    let local = |l: &TcpListener| l.local_addr().ok();
    let (mine, rest): (Vec<TcpListener>, Vec<TcpListener>) = std::mem::take(spare)
        .into_iter()
        .partition(|l| local(l).is_some_and(|a: SocketAddr| addrs.contains(&a)));
    *spare = rest;
    mine
}
