//! The per-source table: for each source (an address grouped by prefix),
//! its open connections, its connection-rate bucket, its measured rate
//! and what it was refused — bounded, so a flood of distinct sources
//! cannot grow memory.
//!
//! A source is a client address cut to `source_prefix_v4` or
//! `source_prefix_v6` bits (sshd's `PerSourceNetBlockSize`): with the
//! defaults (32 and 64) an IPv4 host, or an IPv6 /64 (one customer
//! network). Keys are 128-bit, IPv4 as its v4-mapped form, so one table
//! holds both families.
//!
//! Open connections are counted by ownership, like the server's `active`:
//! an admitted connection holds a slot in [`Table::holds`] (its full
//! address) until [`Table::release`]. Because the full addresses of open
//! connections are kept, a reload that changes the prefixes regroups the
//! open connections exactly; what the idle entries had learnt (rates,
//! refusals) starts afresh then.
//!
//! ## Bounded
//!
//! The table holds at most `capacity` entries. A new source when it is
//! full takes the place of an idle one (no open connection), the least
//! recently active first — approximately: idle entries wait in a FIFO,
//! and one found to have been active since it was queued goes to the
//! back once (the CLOCK algorithm), so finding a victim is O(1) amortized.
//! An entry with open connections is never evicted: its count is what the
//! per-source cap relies on. The daemon makes `capacity` at least
//! `max_connections`, so busy entries alone can never fill it; only after
//! a reload that shrinks both below the connections still open can a new
//! source find no place, and it is then admitted untracked (counted).
//! Evicting an idle entry forgets its rate bucket: a source cycling
//! through more addresses than the table holds gets a fresh burst each
//! time round, never more than its burst per eviction.
//!
//! Memory: an entry is a 16-byte key and a 72-byte [`Entry`] in the hash
//! map plus hashbrown's control byte (89 bytes a slot; the map is at most
//! 7/8 full and doubles, so 65 536 entries take 131 072 slots, 11.1 MiB)
//! and at most one 24-byte slot in the idle FIFO (1.5 MiB); an open
//! connection adds a 24-byte hold. About 210 bytes per entry when full;
//! measured: 228 to 263 bytes of RSS per source, with the connections' own churn
//! (RELIABILITY.md).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use slab::Slab;

use super::rate::{Bucket, ConnRate, Freq};
pub use echo_lab_proto::status::SourceView;

/// The limits the table enforces and how it groups addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Open connections per source; 0 = no cap.
    pub cap: usize,
    /// New connections per source.
    pub rate: ConnRate,
    /// Count and log what would be refused, refuse nothing.
    pub dry_run: bool,
    /// Bits of an IPv4 address that make a source.
    pub prefix_v4: u8,
    /// Bits of an IPv6 address that make a source.
    pub prefix_v6: u8,
    /// Most entries kept.
    pub capacity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cap: 0,
            rate: ConnRate::OFF,
            dry_run: false,
            prefix_v4: 32,
            prefix_v6: 64,
            capacity: 65_536,
        }
    }
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// An access rule denied it.
    Rule,
    /// It had `cap` connections open.
    Cap,
    /// It was over its connection rate.
    Rate,
}

impl Reason {
    fn index(self) -> usize {
        self as usize
    }
}

/// A source's place in the table: 128-bit grouped address, split so the
/// key needs only 8-byte alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u64, u64);

impl Key {
    fn of(ip: IpAddr, l: &Limits) -> Key {
        let grouped = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = mask(32, l.prefix_v4) as u32;
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask(128, l.prefix_v6))),
        };
        let v6 = match grouped {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let n = u128::from(v6);
        Key((n >> 64) as u64, n as u64)
    }

    /// The source as an operator reads it: the address, or the network
    /// when addresses are grouped.
    fn describe(self, l: &Limits) -> String {
        let v6 = Ipv6Addr::from((u128::from(self.0) << 64) | u128::from(self.1));
        match IpAddr::V6(v6).to_canonical() {
            IpAddr::V4(v4) if l.prefix_v4 < 32 => format!("{v4}/{}", l.prefix_v4),
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) if l.prefix_v6 < 128 => format!("{v6}/{}", l.prefix_v6),
            IpAddr::V6(v6) => v6.to_string(),
        }
    }
}

/// The top `prefix` bits of a `bits`-bit number set.
fn mask(bits: u32, prefix: u8) -> u128 {
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (128 - prefix)) >> (128 - bits)
    }
}

/// What the table knows of one source.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Connections open now.
    open: u32,
    /// Bumped on every visit; the idle FIFO compares it (CLOCK).
    touch: u32,
    /// In the idle FIFO.
    queued: bool,
    bucket: Bucket,
    freq: Freq,
    /// Refused, by [`Reason`].
    refused: [u32; 3],
    /// Would have been refused by the cap and the rate (dry run).
    would: [u32; 2],
    /// Connections admitted.
    admitted: u32,
    /// When a refusal was last logged (seconds since the epoch, +1; 0 =
    /// never), and refusals since.
    logged_s: u32,
    unlogged: u32,
}

impl Entry {
    fn new(limits: &Limits, now_ms: u64) -> Entry {
        Entry {
            open: 0,
            touch: 0,
            queued: false,
            bucket: Bucket::full(&limits.rate, now_ms),
            freq: Freq::default(),
            refused: [0; 3],
            would: [0; 2],
            admitted: 0,
            logged_s: 0,
            unlogged: 0,
        }
    }
}

/// A refusal (or, in a dry run, a refusal that would have been) worth a
/// log line: at most one per source per [`LOG_INTERVAL_S`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogNote {
    pub source: String,
    pub reason: Reason,
    /// Refusals of this source since its last line (this one included).
    pub count: u32,
    pub dry_run: bool,
}

/// At most one refusal log line per source per this many seconds.
pub(crate) const LOG_INTERVAL_S: u32 = 10;

/// At most this many refusal log lines per second, whatever the sources.
const LOG_LINES_PER_SEC: f64 = 20.0;

/// What [`Table::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Admitted, holding `slot` (`None`: the table was full of busy
    /// entries and the connection is not tracked); in a dry run, `would`
    /// says what would have refused it.
    Admit {
        slot: Option<usize>,
        would: Option<Reason>,
    },
    /// Refused: the source is at its cap or over its rate.
    Refuse(Reason),
}

/// One source's figures as [`Table::rows`] copied them.
#[derive(Debug, Clone, Copy)]
struct Row {
    key: Key,
    open: u32,
    rate: u64,
    admitted: u32,
    refused: [u32; 3],
    would: [u32; 2],
}

impl Row {
    /// The ranking: open connections, then refusals (dry run included),
    /// then the rate.
    fn score(&self) -> (u32, u64, u64) {
        let refused = self
            .refused
            .iter()
            .chain(&self.would)
            .map(|&r| u64::from(r));
        (self.open, refused.sum(), self.rate)
    }

    fn view(&self, limits: &Limits) -> SourceView {
        SourceView {
            source: self.key.describe(limits),
            open: u64::from(self.open),
            rate_10s: self.rate,
            admitted: u64::from(self.admitted),
            refused_rule: u64::from(self.refused[Reason::Rule.index()]),
            refused_cap: u64::from(self.refused[Reason::Cap.index()]),
            refused_rate: u64::from(self.refused[Reason::Rate.index()]),
            would_refuse_cap: u64::from(self.would[0]),
            would_refuse_rate: u64::from(self.would[1]),
        }
    }
}

/// The table's sources copied out, with how it groups addresses.
pub(crate) struct Rows {
    rows: Vec<Row>,
    limits: Limits,
}

/// The `n` busiest of `rows`, busiest first (all of them if `n` is 0).
pub(crate) fn rank(rows: Rows, n: usize) -> Vec<SourceView> {
    let Rows { mut rows, limits } = rows;
    let by = |a: &Row, b: &Row| b.score().cmp(&a.score());
    if rows.len() > n && n > 0 {
        rows.select_nth_unstable_by(n - 1, by);
        rows.truncate(n);
    }
    rows.sort_by(by);
    rows.iter().map(|r| r.view(&limits)).collect()
}

/// The table's own counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TableCounts {
    pub entries: usize,
    pub capacity: usize,
    pub evicted: u64,
    pub untracked: u64,
}

/// The bounded table of sources.
#[derive(Debug)]
pub(crate) struct Table {
    limits: Limits,
    entries: HashMap<Key, Entry>,
    /// Idle entries, oldest first, each with its `touch` when queued.
    idle: VecDeque<(Key, u32)>,
    /// The full address of every tracked open connection.
    holds: Slab<IpAddr>,
    /// The global log-line bucket.
    log_tokens: f64,
    log_at_ms: u64,
    evicted: u64,
    untracked: u64,
}

impl Table {
    pub(crate) fn new(limits: Limits) -> Table {
        Table {
            limits,
            entries: HashMap::new(),
            idle: VecDeque::new(),
            holds: Slab::new(),
            log_tokens: LOG_LINES_PER_SEC,
            log_at_ms: 0,
            evicted: 0,
            untracked: 0,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn counts(&self) -> TableCounts {
        TableCounts {
            entries: self.entries.len(),
            capacity: self.limits.capacity,
            evicted: self.evicted,
            untracked: self.untracked,
        }
    }

    /// Decides about a new connection from `ip` that the rules allowed:
    /// the rate first (every attempt counts), then the cap. In a dry run a
    /// refusal is only counted (and noted), and the connection admitted.
    pub(crate) fn admit(&mut self, ip: IpAddr, now_ms: u64) -> (Outcome, Option<LogNote>) {
        let limits = self.limits;
        let key = Key::of(ip, &limits);
        let Some(entry) = self.entry(key, now_ms) else {
            self.untracked += 1;
            return (
                Outcome::Admit {
                    slot: None,
                    would: None,
                },
                None,
            );
        };
        entry.freq.add(now_ms);
        let refusal = if limits.rate.is_on() && !entry.bucket.would_take(&limits.rate, now_ms) {
            Some(Reason::Rate)
        } else if limits.cap > 0 && entry.open as usize >= limits.cap {
            Some(Reason::Cap)
        } else {
            None
        };
        if let Some(reason) = refusal {
            let slot = if reason == Reason::Rate { 1 } else { 0 };
            if limits.dry_run {
                entry.would[slot] = entry.would[slot].saturating_add(1);
            } else {
                entry.refused[reason.index()] = entry.refused[reason.index()].saturating_add(1);
                let note = self.note(key, reason, now_ms);
                return (Outcome::Refuse(reason), note);
            }
        }
        let entry = self.entries.get_mut(&key).expect("entry made above");
        if limits.rate.is_on() {
            entry.bucket.take(&limits.rate, now_ms);
        }
        entry.open += 1;
        entry.admitted = entry.admitted.saturating_add(1);
        let slot = self.holds.insert(ip.to_canonical());
        let note = match refusal {
            Some(reason) => self.note(key, reason, now_ms),
            None => None,
        };
        let admitted = Outcome::Admit {
            slot: Some(slot),
            would: refusal,
        };
        (admitted, note)
    }

    /// Counts a connection an access rule refused.
    pub(crate) fn refused_by_rule(&mut self, ip: IpAddr, now_ms: u64) -> Option<LogNote> {
        let key = Key::of(ip, &self.limits);
        let entry = self.entry(key, now_ms)?;
        entry.freq.add(now_ms);
        entry.refused[Reason::Rule.index()] = entry.refused[Reason::Rule.index()].saturating_add(1);
        self.note(key, Reason::Rule, now_ms)
    }

    /// A connection admitted with `slot` has closed.
    pub(crate) fn release(&mut self, slot: usize) {
        let Some(ip) = self.holds.try_remove(slot) else {
            return;
        };
        let key = Key::of(ip, &self.limits);
        if let Some(e) = self.entries.get_mut(&key) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && !e.queued {
                e.queued = true;
                self.idle.push_back((key, e.touch));
            }
        }
    }

    /// Puts new limits in force. A change of prefix regroups the open
    /// connections (and forgets idle entries); a smaller capacity evicts
    /// idle entries down to it.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        let regroup =
            (limits.prefix_v4, limits.prefix_v6) != (self.limits.prefix_v4, self.limits.prefix_v6);
        self.limits = limits;
        if regroup {
            self.entries.clear();
            self.idle.clear();
            for (_, ip) in &self.holds {
                let key = Key::of(*ip, &limits);
                let e = self
                    .entries
                    .entry(key)
                    .or_insert_with(|| Entry::new(&limits, 0));
                e.open += 1;
                e.admitted += 1;
            }
        }
        while self.entries.len() > limits.capacity && self.evict_one() {}
        self.entries.shrink_to(limits.capacity);
        self.idle.shrink_to(limits.capacity);
    }

    /// The `n` sources with the most open connections, then the most
    /// refusals, then the highest rate (all of them if `n` is 0).
    #[cfg(test)]
    pub(crate) fn top(&self, n: usize, now_ms: u64) -> Vec<SourceView> {
        rank(self.rows(now_ms), n)
    }

    /// Every tracked source's figures, copied out (one pass, no
    /// allocation per source) so that the `sources` request ranks and
    /// formats them after the table's lock is released: the accept loop
    /// takes that lock for every connection.
    pub(crate) fn rows(&self, now_ms: u64) -> Rows {
        let rows = self
            .entries
            .iter()
            .map(|(k, e)| Row {
                key: *k,
                open: e.open,
                rate: e.freq.per_period(now_ms),
                admitted: e.admitted,
                refused: e.refused,
                would: e.would,
            })
            .collect();
        Rows {
            rows,
            limits: self.limits,
        }
    }

    /// The entry of `key`, made (evicting an idle one if the table is
    /// full) if need be and marked visited; `None` if the table is full
    /// of busy entries.
    fn entry(&mut self, key: Key, now_ms: u64) -> Option<&mut Entry> {
        if self.entries.contains_key(&key) {
            let e = self.entries.get_mut(&key)?;
            e.touch = e.touch.wrapping_add(1);
            return Some(e);
        }
        if self.entries.len() >= self.limits.capacity && !self.evict_one() {
            return None;
        }
        let mut e = Entry::new(&self.limits, now_ms);
        e.queued = true;
        self.idle.push_back((key, e.touch));
        Some(self.entries.entry(key).or_insert(e))
    }

    /// Evicts the least recently active idle entry; false if none is idle.
    fn evict_one(&mut self) -> bool {
        while let Some((key, touch)) = self.idle.pop_front() {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.open > 0 {
                e.queued = false;
            } else if e.touch != touch {
                // Active since it was queued: a second chance.
                self.idle.push_back((key, e.touch));
            } else {
                self.entries.remove(&key);
                self.evicted += 1;
                return true;
            }
        }
        false
    }

    /// A log note for a refusal of `key`, if its interval has passed and
    /// the global line budget allows.
    fn note(&mut self, key: Key, reason: Reason, now_ms: u64) -> Option<LogNote> {
        let now_s = (now_ms / 1000) as u32 + 1;
        let dry_run = self.limits.dry_run && reason != Reason::Rule;
        let e = self.entries.get_mut(&key)?;
        e.unlogged = e.unlogged.saturating_add(1);
        if e.logged_s != 0 && now_s < e.logged_s.saturating_add(LOG_INTERVAL_S) {
            return None;
        }
        let dt = now_ms.saturating_sub(self.log_at_ms) as f64 / 1000.0;
        self.log_at_ms = self.log_at_ms.max(now_ms);
        self.log_tokens = (self.log_tokens + dt * LOG_LINES_PER_SEC).min(LOG_LINES_PER_SEC);
        if self.log_tokens < 1.0 {
            return None;
        }
        self.log_tokens -= 1.0;
        let count = std::mem::take(&mut e.unlogged);
        e.logged_s = now_s;
        Some(LogNote {
            source: key.describe(&self.limits),
            reason,
            count,
            dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cap: usize, rate: &str, capacity: usize) -> Limits {
        Limits {
            cap,
            rate: ConnRate::parse(rate).unwrap(),
            capacity,
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn open(t: &mut Table, a: &str, now: u64) -> Option<usize> {
        match t.admit(ip(a), now).0 {
            Outcome::Admit { slot, .. } => Some(slot.expect("tracked")),
            Outcome::Refuse(_) => None,
        }
    }

    #[test]
    fn the_cap_counts_open_connections_per_source() {
        let mut t = Table::new(limits(3, "0", 100));
        let held: Vec<usize> = (0..3).filter_map(|_| open(&mut t, "10.0.0.1", 0)).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(t.admit(ip("10.0.0.1"), 0).0, Outcome::Refuse(Reason::Cap));
        // Another source is not affected; the mapped form is the same host.
        assert!(open(&mut t, "10.0.0.2", 0).is_some());
        assert_eq!(
            t.admit(ip("::ffff:10.0.0.1"), 0).0,
            Outcome::Refuse(Reason::Cap)
        );
        t.release(held[0]);
        assert!(open(&mut t, "10.0.0.1", 0).is_some());
        let v = t.top(1, 0);
        assert_eq!(v[0].source, "10.0.0.1");
        assert_eq!((v[0].open, v[0].refused_cap), (3, 2));
    }

    #[test]
    fn addresses_group_by_prefix() {
        let mut t = Table::new(Limits {
            prefix_v4: 24,
            prefix_v6: 64,
            ..limits(2, "0", 100)
        });
        assert!(open(&mut t, "192.0.2.1", 0).is_some());
        assert!(open(&mut t, "192.0.2.200", 0).is_some());
        assert!(open(&mut t, "192.0.2.9", 0).is_none());
        assert!(open(&mut t, "192.0.3.1", 0).is_some());
        assert!(open(&mut t, "2001:db8:0:1::1", 0).is_some());
        assert!(open(&mut t, "2001:db8:0:1:ffff::2", 0).is_some());
        assert!(open(&mut t, "2001:db8:0:1::3", 0).is_none());
        let names: Vec<String> = t.top(10, 0).into_iter().map(|v| v.source).collect();
        assert!(names.contains(&"192.0.2.0/24".to_string()), "{names:?}");
        assert!(
            names.contains(&"2001:db8:0:1::/64".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn the_rate_refuses_past_the_burst_and_a_refusal_takes_nothing() {
        let mut t = Table::new(limits(0, "5/s", 100));
        let got = (0..20)
            .filter(|_| open(&mut t, "10.0.0.1", 0).is_some())
            .count();
        assert_eq!(got, 5);
        assert_eq!(t.admit(ip("10.0.0.1"), 0).0, Outcome::Refuse(Reason::Rate));
        // 200 ms: one more token, whatever was refused meanwhile.
        assert!(open(&mut t, "10.0.0.1", 200).is_some());
        assert!(open(&mut t, "10.0.0.2", 200).is_some());
    }

    #[test]
    fn a_dry_run_admits_everything_and_counts_what_it_would_refuse() {
        let mut t = Table::new(Limits {
            dry_run: true,
            ..limits(2, "3/s", 100)
        });
        let got = (0..10)
            .filter(|_| open(&mut t, "10.0.0.1", 0).is_some())
            .count();
        assert_eq!(got, 10);
        let v = &t.top(1, 0)[0];
        assert_eq!((v.refused_cap, v.refused_rate), (0, 0));
        // The rate is checked first: three pass it, seven would not; of
        // the three, the third is past the cap of two.
        assert_eq!((v.would_refuse_rate, v.would_refuse_cap), (7, 1));
    }

    #[test]
    fn refusals_are_noted_once_per_interval_per_source() {
        let mut t = Table::new(limits(1, "0", 100));
        assert!(open(&mut t, "10.0.0.1", 0).is_some());
        let notes: Vec<LogNote> = (0..50)
            .filter_map(|i| t.admit(ip("10.0.0.1"), i * 100).1)
            .collect();
        // 0..5 s: one line at the first refusal only.
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].count, 1);
        // After the interval, the next refusal says how many there were.
        let later = t.admit(ip("10.0.0.1"), 11_000).1.unwrap();
        assert_eq!(later.count, 50);
        assert_eq!(later.reason, Reason::Cap);
    }

    #[test]
    fn many_refused_sources_cannot_flood_the_log() {
        let mut t = Table::new(limits(0, "0", 100_000));
        let lines = (0..10_000u32)
            .filter_map(|i| t.refused_by_rule(IpAddr::from(Ipv4Addr::from(i)), 0))
            .count();
        assert_eq!(lines, LOG_LINES_PER_SEC as usize);
    }

    #[test]
    fn the_table_is_bounded_and_never_evicts_a_busy_source() {
        let mut t = Table::new(limits(0, "0", 8));
        let busy = open(&mut t, "10.0.0.1", 0).unwrap();
        for i in 0..10_000u32 {
            t.refused_by_rule(IpAddr::from(Ipv4Addr::from(0x0b00_0000 + i)), 0);
            assert!(t.counts().entries <= 8);
        }
        assert!(t
            .top(8, 0)
            .iter()
            .any(|v| v.source == "10.0.0.1" && v.open == 1));
        t.release(busy);
        assert_eq!(t.counts().evicted, 10_000 - 7);
        // Once idle it can go like any other.
        for i in 0..8u32 {
            t.refused_by_rule(IpAddr::from(Ipv4Addr::from(0x0c00_0000 + i)), 1);
        }
        assert!(!t.top(8, 1).iter().any(|v| v.source == "10.0.0.1"));
    }

    #[test]
    fn the_least_recently_active_idle_entry_goes_first() {
        let mut t = Table::new(limits(0, "0", 3));
        for a in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            t.refused_by_rule(ip(a), 0);
        }
        // 10.0.0.1 is visited again: 10.0.0.2 is now the least recent.
        t.refused_by_rule(ip("10.0.0.1"), 1);
        t.refused_by_rule(ip("10.0.0.4"), 2);
        let names: Vec<String> = t.top(3, 2).into_iter().map(|v| v.source).collect();
        assert!(!names.contains(&"10.0.0.2".to_string()), "{names:?}");
        assert!(names.contains(&"10.0.0.1".to_string()), "{names:?}");
    }

    #[test]
    fn a_full_table_of_busy_sources_admits_untracked() {
        let mut t = Table::new(limits(5, "0", 2));
        assert!(open(&mut t, "10.0.0.1", 0).is_some());
        assert!(open(&mut t, "10.0.0.2", 0).is_some());
        assert_eq!(
            t.admit(ip("10.0.0.3"), 0).0,
            Outcome::Admit {
                slot: None,
                would: None
            }
        );
        assert_eq!(t.counts().untracked, 1);
    }

    #[test]
    fn a_prefix_change_regroups_open_connections() {
        let mut t = Table::new(limits(2, "0", 100));
        assert!(open(&mut t, "192.0.2.1", 0).is_some());
        let second = open(&mut t, "192.0.2.2", 0).unwrap();
        // As /24, the two are one source at its cap of two.
        t.set_limits(Limits {
            prefix_v4: 24,
            ..t.limits()
        });
        assert_eq!(t.admit(ip("192.0.2.3"), 0).0, Outcome::Refuse(Reason::Cap));
        t.release(second);
        assert!(open(&mut t, "192.0.2.3", 0).is_some());
        assert_eq!(t.top(1, 0)[0].open, 2);
    }

    #[test]
    fn a_smaller_capacity_evicts_idle_entries_down_to_it() {
        let mut t = Table::new(limits(0, "0", 100));
        for i in 0..100u32 {
            t.refused_by_rule(IpAddr::from(Ipv4Addr::from(i)), 0);
        }
        t.set_limits(Limits {
            capacity: 10,
            ..t.limits()
        });
        assert_eq!(t.counts().entries, 10);
    }

    #[test]
    fn masks() {
        assert_eq!(mask(32, 32), 0xffff_ffff);
        assert_eq!(mask(32, 24), 0xffff_ff00);
        assert_eq!(mask(32, 0), 0);
        assert_eq!(mask(128, 64), u128::MAX << 64);
        assert_eq!(mask(128, 128), u128::MAX);
    }

    #[test]
    fn entry_is_as_small_as_stated() {
        assert_eq!(std::mem::size_of::<Entry>(), 72);
        assert_eq!(std::mem::size_of::<(Key, Entry)>(), 88);
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 24);
    }
}
