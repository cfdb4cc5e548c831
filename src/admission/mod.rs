//! Who may connect: the access rules, the per-source limits, and what they
//! refused — the one place a client address is judged.
//!
//! A client passes two checks, both functions of its address and the
//! listener it reached:
//!
//! 1. `Gate::allows`: the access rules ([`rules`]) of that listener (its
//!    `[[listen]]` table's `access`, else the top-level one). A refused TCP
//!    client is closed at once, without a word; a refused UDP datagram is
//!    dropped. Counted per rule and per reason.
//! 2. `Gate::admit` (TCP): the per-source limits in the bounded
//!    `table` — the connection rate ([`rate`]) and the cap on open
//!    connections. A refused client gets the busy notice naming the limit
//!    and is closed. An admitted one carries a `SourceHold`, which
//!    counts it out of its source when dropped, wherever that happens (as
//!    `stats::Open` does for the server's count).
//!
//! The accept loop calls `allows`, then checks `max_connections`, then
//! `admit`, for every connection (`listener::Acceptor::admit`). On a
//! listener that takes a PROXY header the peer is the proxy (judged by
//! `proxy_trusted` alone) and the client is known only once the header is
//! read, in the worker: there the same two calls, with the header's
//! source address and the listener's local address, decide before any
//! byte is echoed (`Connection::admit_client`). The UDP thread calls
//! `Gate::rules` once per batch and [`RuleList::check`] per datagram.
//!
//! The limits are enforced by one mutex-guarded table: the accept loop
//! takes the lock once per connection that passed the rules, and a worker
//! once when an admitted connection closes — never on the echo path. The
//! rules are read-mostly: an `Arc` swapped on reload, its counters
//! relaxed atomics. Reload puts new rules and limits in force for the next
//! client at once; open connections stay.
//!
//! Refusals are logged at most once per source per 10 s, and at most 20
//! lines a second in all; every refusal is counted ([`AdmissionCounts`],
//! in `status`) and each source's are shown by `echo-labctl sources`.

pub mod rate;
pub mod rules;
pub(crate) mod table;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use crate::protocol::Notice;
use rules::{Rule, RuleList};
use table::{LogNote, Outcome, Reason, Table};

pub use echo_lab_proto::status::{AdmissionCounts, RuleCount};
pub(crate) use table::Limits;
pub use table::SourceView;

/// A listening socket, by protocol and local address: what a
/// `[[listen]]` table's `access` applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listener::Tcp(a) => write!(f, "tcp {a}"),
            Listener::Udp(a) => write!(f, "udp {a}"),
        }
    }
}

/// The rules in force: the top-level list and the listeners' own.
#[derive(Debug)]
struct Policy {
    default: Arc<RuleList>,
    overrides: HashMap<Listener, Arc<RuleList>>,
}

/// What a TCP client that passed the rules is told.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Serve it; the hold counts it in its source while it lives.
    Admit(SourceHold),
    /// Send this notice and close.
    Refuse(Notice),
}

/// Counts in its source one connection admitted by `Gate::admit`, for
/// as long as it lives.
#[derive(Debug)]
pub(crate) struct SourceHold {
    table: Arc<Mutex<Table>>,
    slot: Option<usize>,
}

impl Drop for SourceHold {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            lock(&self.table).release(slot);
        }
    }
}

/// Refusals since start, by reason, for `status` and the metrics.
#[derive(Debug, Default)]
struct Refusals {
    rule: AtomicU64,
    cap: AtomicU64,
    rate: AtomicU64,
    would_cap: AtomicU64,
    would_rate: AtomicU64,
}

/// The rules, the limits, the per-source table and the counts.
#[derive(Debug)]
pub struct Gate {
    policy: RwLock<Arc<Policy>>,
    /// Bumped whenever the rules change, so a reader can cache them.
    generation: AtomicU64,
    table: Arc<Mutex<Table>>,
    refusals: Refusals,
    epoch: Instant,
}

fn lock(t: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // A panic elsewhere cannot leave the table half-changed in a way that
    // matters more than refusing every client would.
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gate {
    /// A gate with these top-level rules and limits, no listener's own.
    pub(crate) fn new(default: Vec<Rule>, limits: Limits) -> Gate {
        Gate {
            policy: RwLock::new(Arc::new(Policy {
                default: Arc::new(RuleList::new(default)),
                overrides: HashMap::new(),
            })),
            generation: AtomicU64::new(0),
            table: Arc::new(Mutex::new(Table::new(limits))),
            refusals: Refusals::default(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A list in force equal to `rules`, kept (with its counts), or new.
    fn reuse(p: &Policy, rules: Vec<Rule>) -> Arc<RuleList> {
        std::iter::once(&p.default)
            .chain(p.overrides.values())
            .find(|l| l.rules() == rules.as_slice())
            .cloned()
            .unwrap_or_else(|| Arc::new(RuleList::new(rules)))
    }

    fn swap(&self, build: impl FnOnce(&Policy) -> Policy) {
        let mut guard = self.policy.write().unwrap_or_else(PoisonError::into_inner);
        let next = build(&guard);
        *guard = Arc::new(next);
        self.generation.fetch_add(1, Relaxed);
    }

    /// New top-level rules and limits, for the next client on.
    pub(crate) fn set_default(&self, default: Vec<Rule>, limits: Limits) {
        self.swap(|p| Policy {
            default: Gate::reuse(p, default),
            overrides: p.overrides.clone(),
        });
        lock(&self.table).set_limits(limits);
    }

    /// The listeners of one protocol (`udp` or TCP) that have rules of
    /// their own, replacing those of that protocol before.
    pub fn set_overrides(&self, udp: bool, overrides: Vec<(Listener, Vec<Rule>)>) {
        let other = |l: &Listener| matches!(l, Listener::Udp(_)) != udp;
        self.swap(|p| {
            let kept = p.overrides.iter().filter(|(l, _)| other(l));
            let mut map: HashMap<Listener, Arc<RuleList>> =
                kept.map(|(l, r)| (*l, r.clone())).collect();
            for (l, rules) in overrides.into_iter().filter(|(l, _)| !other(l)) {
                map.insert(l, Gate::reuse(p, rules));
            }
            Policy {
                default: p.default.clone(),
                overrides: map,
            }
        });
    }

    /// Changes whenever the rules do.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The rules for clients of `listener` (`None`: the top-level ones).
    pub(crate) fn rules(&self, listener: Option<Listener>) -> Arc<RuleList> {
        let p = self.policy();
        listener
            .and_then(|l| p.overrides.get(&l))
            .unwrap_or(&p.default)
            .clone()
    }

    /// May a TCP client at `ip` connect to `listener`? A refusal is
    /// counted, for the rule and for the source, and logged within limits.
    pub(crate) fn allows(&self, ip: IpAddr, listener: Option<Listener>) -> bool {
        let rules = self.rules(listener);
        if rules.is_empty() {
            return true;
        }
        let d = rules.check(ip);
        if d.allowed {
            return true;
        }
        self.refusals.rule.fetch_add(1, Relaxed);
        let note = lock(&self.table).refused_by_rule(ip, self.now_ms());
        if let Some(note) = note {
            let rule = d.rule.and_then(|i| rules.rules().get(i));
            let why = rule.map_or("access rules".to_string(), |r| format!("access rule '{r}'"));
            log_note(&note, &why);
        }
        false
    }

    /// The per-source limits for a TCP client at `ip` that the rules
    /// allowed: admitted with a hold, or refused with the notice to send.
    pub(crate) fn admit(&self, ip: IpAddr) -> Admission {
        let (outcome, note, limits) = {
            let mut t = lock(&self.table);
            let (outcome, note) = t.admit(ip, self.now_ms());
            (outcome, note, t.limits())
        };
        if let Some(note) = &note {
            let why = match note.reason {
                Reason::Cap => format!("max_connections_per_source ({}) reached", limits.cap),
                _ => format!("over connection_rate_per_source ({})", limits.rate),
            };
            log_note(note, &why);
        }
        match outcome {
            Outcome::Admit { slot, would } => {
                match would {
                    Some(Reason::Cap) => self.refusals.would_cap.fetch_add(1, Relaxed),
                    Some(_) => self.refusals.would_rate.fetch_add(1, Relaxed),
                    None => 0,
                };
                Admission::Admit(SourceHold {
                    table: self.table.clone(),
                    slot,
                })
            }
            Outcome::Refuse(Reason::Cap) => {
                self.refusals.cap.fetch_add(1, Relaxed);
                Admission::Refuse(Notice::SourceBusy(limits.cap))
            }
            Outcome::Refuse(_) => {
                self.refusals.rate.fetch_add(1, Relaxed);
                Admission::Refuse(Notice::SourceRate {
                    count: limits.rate.count,
                    per_secs: limits.rate.per_secs,
                })
            }
        }
    }

    /// The `n` busiest sources now, ranked after the table's lock is
    /// released (the accept loop waits on it).
    pub(crate) fn top(&self, n: usize) -> Vec<SourceView> {
        let rows = lock(&self.table).rows(self.now_ms());
        table::rank(rows, n)
    }

    /// What was refused and what the rules matched.
    pub(crate) fn counts(&self) -> AdmissionCounts {
        let t = lock(&self.table).counts();
        let p = self.policy();
        let mut rules = Vec::new();
        let mut add = |scope: String, list: &RuleList| {
            let (each, unmatched) = list.counts();
            for (rule, matches) in each {
                rules.push(RuleCount {
                    scope: scope.clone(),
                    rule: rule.to_string(),
                    matches,
                });
            }
            if !list.is_empty() {
                rules.push(RuleCount {
                    scope,
                    rule: "(no rule matched: allowed)".into(),
                    matches: unmatched,
                });
            }
        };
        add("default".into(), &p.default);
        let mut listeners: Vec<_> = p.overrides.iter().collect();
        listeners.sort_by_key(|(l, _)| l.to_string());
        for (l, list) in listeners {
            add(l.to_string(), list);
        }
        let r = &self.refusals;
        AdmissionCounts {
            refused_rule: r.rule.load(Relaxed),
            refused_source_cap: r.cap.load(Relaxed),
            refused_source_rate: r.rate.load(Relaxed),
            dry_run_source_cap: r.would_cap.load(Relaxed),
            dry_run_source_rate: r.would_rate.load(Relaxed),
            sources: t.entries as u64,
            source_table_size: t.capacity as u64,
            sources_evicted: t.evicted,
            untracked: t.untracked,
            rules,
        }
    }
}

/// One log line for a refusal (or a dry run's "would refuse").
fn log_note(note: &LogNote, why: &str) {
    let n = note.count;
    let more = if n > 1 {
        format!(" ({n} since the last line about it)")
    } else {
        String::new()
    };
    if note.dry_run {
        log::info!(
            "dry run: would refuse {}: {why}{more}; limits_dry_run is on, admitted",
            note.source
        );
    } else {
        log::warn!("refused {}: {why}{more}", note.source);
    }
}
