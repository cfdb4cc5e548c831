//! An access rule as written in the config: `allow TARGET` or `deny
//! TARGET`, where the target is `all`, an IPv4 or IPv6 address, or a
//! network in CIDR form (`192.0.2.0/24`, `2001:db8::/32`). Networks are
//! `ipnet`'s; nothing here does bit arithmetic on addresses. A network
//! written with host bits set (`192.0.2.7/24`) is refused rather than
//! silently widened, since it is almost always a typo for one of the two.
//!
//! The daemon's rule list in force, with its counters and first-match
//! order, is the daemon's own (its `admission` module); this is only the
//! value a config key holds.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// What a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every address.
    All,
    /// The addresses of one network (a single address is a /32 or /128).
    Net(IpNet),
}

/// One access rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub target: Target,
}

impl Rule {
    /// Parses `allow 192.0.2.0/24`, `deny all`, `deny 2001:db8::1`...;
    /// the error says what is wrong.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let mut words = text.split_whitespace();
        let (Some(verb), Some(what), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "\"{text}\" is not a rule; expected \"allow ADDRESS\", \"deny ADDRESS\" \
                 (an address, a CIDR network such as 192.0.2.0/24, or all)"
            ));
        };
        let action = match verb.to_ascii_lowercase().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            _ => return Err(format!("\"{verb}\" is not allow or deny")),
        };
        let target = if what.eq_ignore_ascii_case("all") {
            Target::All
        } else if what.contains('/') {
            let net: IpNet = what
                .parse()
                .map_err(|_| format!("\"{what}\" is not a CIDR network (like 192.0.2.0/24)"))?;
            if net.trunc() != net {
                return Err(format!(
                    "\"{what}\" has bits set past its prefix; did you mean {} or the single address {}?",
                    net.trunc(),
                    net.addr()
                ));
            }
            Target::Net(net)
        } else {
            let ip: IpAddr = what.parse().map_err(|_| {
                format!("\"{what}\" is not an IPv4 or IPv6 address, a CIDR network or all")
            })?;
            Target::Net(IpNet::from(ip))
        };
        Ok(Rule { action, target })
    }

    /// True if the rule's target holds `ip` (already canonical).
    pub fn matches(&self, ip: IpAddr) -> bool {
        match self.target {
            Target::All => true,
            Target::Net(net) => net.contains(&ip),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        match self.target {
            Target::All => write!(f, "{verb} all"),
            Target::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{verb} {}", net.addr())
            }
            Target::Net(net) => write!(f, "{verb} {net}"),
        }
    }
}

/// An address as the rules and the source table see it: a v4-mapped IPv6
/// address is the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_prints_back() {
        for text in [
            "allow all",
            "deny all",
            "allow 192.0.2.7",
            "deny 192.0.2.0/24",
            "allow 0.0.0.0/0",
            "deny ::1",
            "allow 2001:db8::/32",
            "deny ::/0",
        ] {
            assert_eq!(Rule::parse(text).unwrap().to_string(), text);
        }
        // Spelling is free; printing is canonical.
        assert_eq!(
            Rule::parse("  DENY   192.0.2.7/32 ").unwrap().to_string(),
            "deny 192.0.2.7"
        );
        assert_eq!(Rule::parse("Allow ALL").unwrap().to_string(), "allow all");
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let e = |t: &str| Rule::parse(t).unwrap_err();
        assert!(e("permit 10.0.0.1").contains("not allow or deny"));
        assert!(e("allow").contains("not a rule"));
        assert!(e("allow 10.0.0.1 10.0.0.2").contains("not a rule"));
        assert!(e("allow 10.0.0.300").contains("not an IPv4 or IPv6 address"));
        assert!(e("deny 10.0.0.0/33").contains("not a CIDR network"));
        assert!(e("deny 192.0.2.7/24").contains("did you mean 192.0.2.0/24"));
        assert!(e("deny 2001:db8::1/32").contains("did you mean 2001:db8::/32"));
        assert!(e("allow localhost").contains("not an IPv4"));
    }
}
