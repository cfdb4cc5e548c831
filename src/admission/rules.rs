//! Access rules: `allow` and `deny` lines, checked in order, the first
//! that matches deciding (nginx's `allow`/`deny`, first match wins).
//!
//! A rule is `allow TARGET` or `deny TARGET`, where the target is `all`,
//! an IPv4 or IPv6 address, or a network in CIDR form (`192.0.2.0/24`,
//! `2001:db8::/32`). Networks are `ipnet`'s; nothing here does bit
//! arithmetic on addresses. A network written with host bits set
//! (`192.0.2.7/24`) is refused rather than silently widened, since it is
//! almost always a typo for one of the two. An address that matches no
//! rule is allowed, so a list meant as an allow-list ends with `deny all`.
//!
//! IPv4 clients of a dual-stack (`::`) socket arrive as v4-mapped IPv6
//! addresses (`::ffff:192.0.2.7`); they are matched as the IPv4 address
//! they are, so one rule covers a host however it connects.
//!
//! [`RuleList`] is a list in force: the rules and, for each, how many
//! clients it matched (like iptables' counters), written with relaxed
//! atomics by the accept loop and the UDP thread.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use echo_lab_config::rule::{canonical, Action, Rule};

/// A rule list in force, with a match counter per rule.
#[derive(Debug)]
pub struct RuleList {
    rules: Vec<Rule>,
    hits: Vec<AtomicU64>,
    /// Clients no rule matched (allowed).
    unmatched: AtomicU64,
}

/// Which rule decided, for logs and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The client may connect (or its datagram be echoed).
    pub allowed: bool,
    /// The index of the rule that matched; `None` when none did.
    pub rule: Option<usize>,
}

impl RuleList {
    /// A list in force, its counters at zero.
    pub fn new(rules: Vec<Rule>) -> RuleList {
        let hits = rules.iter().map(|_| AtomicU64::new(0)).collect();
        RuleList {
            rules,
            hits,
            unmatched: AtomicU64::new(0),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True when there is no rule (everyone is allowed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides about `ip` (first match wins; no match allows) and counts
    /// the decision on the rule that made it.
    pub fn check(&self, ip: IpAddr) -> Decision {
        let ip = canonical(ip);
        match self.rules.iter().position(|r| r.matches(ip)) {
            Some(i) => {
                self.hits[i].fetch_add(1, Relaxed);
                Decision {
                    allowed: self.rules[i].action == Action::Allow,
                    rule: Some(i),
                }
            }
            None => {
                if !self.rules.is_empty() {
                    self.unmatched.fetch_add(1, Relaxed);
                }
                Decision {
                    allowed: true,
                    rule: None,
                }
            }
        }
    }

    /// Each rule with the clients it matched, then the unmatched count.
    pub fn counts(&self) -> (Vec<(Rule, u64)>, u64) {
        let each = self
            .rules
            .iter()
            .zip(&self.hits)
            .map(|(r, h)| (*r, h.load(Relaxed)))
            .collect();
        (each, self.unmatched.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> RuleList {
        RuleList::new(rules.iter().map(|r| Rule::parse(r).unwrap()).collect())
    }

    fn allowed(l: &RuleList, ip: &str) -> bool {
        l.check(ip.parse().unwrap()).allowed
    }

    #[test]
    fn first_match_wins_and_no_match_allows() {
        let l = list(&["allow 192.0.2.0/24", "deny 192.0.2.7", "deny all"]);
        // 192.0.2.7 is in the /24, which comes first: allowed (nginx).
        assert!(allowed(&l, "192.0.2.7"));
        assert!(allowed(&l, "192.0.2.200"));
        assert!(!allowed(&l, "198.51.100.1"));
        assert!(!allowed(&l, "::1"));
        let l = list(&["deny 192.0.2.7", "allow 192.0.2.0/24", "deny all"]);
        assert!(!allowed(&l, "192.0.2.7"));
        assert!(allowed(&l, "192.0.2.8"));
        let l = list(&["deny 10.0.0.0/8"]);
        assert!(allowed(&l, "11.0.0.1"));
        assert!(
            RuleList::new(Vec::new())
                .check("10.0.0.1".parse().unwrap())
                .allowed
        );
    }

    #[test]
    fn v4_mapped_clients_match_ipv4_rules_and_families_stay_apart() {
        let l = list(&["deny 127.0.0.0/8", "allow all"]);
        assert!(!allowed(&l, "::ffff:127.0.0.5"));
        assert!(allowed(&l, "::1"));
        let l = list(&["deny ::/0"]);
        assert!(allowed(&l, "10.0.0.1"));
        assert!(!allowed(&l, "2001:db8::1"));
    }

    #[test]
    fn counts_go_to_the_rule_that_decided() {
        let l = list(&["allow 10.0.0.1", "deny 10.0.0.0/8"]);
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "11.0.0.1"] {
            l.check(ip.parse().unwrap());
        }
        let (each, unmatched) = l.counts();
        let got: Vec<(String, u64)> = each.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        assert_eq!(
            got,
            [("allow 10.0.0.1".into(), 1), ("deny 10.0.0.0/8".into(), 2)]
        );
        assert_eq!(unmatched, 1);
    }
}
