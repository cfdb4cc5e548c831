//! The outcome of a reload, as the supervisor (`crate::supervisor`) reports it
//! to the log, to `STATUS=`, to `echo-labctl reload` and to `status`.
//!
//! A reload is two phases over four parts — the log sink, the metrics
//! endpoint, the UDP side and the TCP side: every part is prepared (which
//! may fail and changes nothing in service), then every part is committed
//! (which cannot fail). [`ReloadError`] therefore has one variant per part
//! that can refuse, plus the config file itself and the drain; whichever
//! it is, the running config is unchanged, and its message says so in the
//! words operators and tests already know. [`Reloaded`] carries what
//! changed.
//!
//! This module holds vocabulary only: it must never act on a reload.

use crate::config::ConfigError;
use crate::observe::logging::OpenError;
use crate::observe::metrics::MetricsError;
use crate::tcp::server::{self, ReloadReport};
use crate::udp::listeners::UdpError;

/// How the message of a failed reload starts (control clients and the log
/// get the whole message; `STATUS=` only the reason).
pub(crate) const NOT_RELOADED: &str = "config not reloaded, the running config is unchanged:";

/// A reload that was refused; nothing in service changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A stop was asked before: the drain is under way.
    #[error("draining; reload ignored")]
    Draining,
    /// The file could not be read or is not a valid config.
    #[error("{}\n{}", NOT_RELOADED, .0)]
    Config(#[source] ConfigError),
    /// The new log file cannot be opened.
    #[error("{} {}", NOT_RELOADED, .0)]
    Log(#[source] OpenError),
    /// The new metrics address cannot be bound or served.
    #[error("{} {}", NOT_RELOADED, .0)]
    Metrics(#[source] MetricsError),
    /// A new UDP address cannot be bound, or the UDP thread not started.
    #[error("{} {}", NOT_RELOADED, .0)]
    Udp(#[source] UdpError),
    /// A TCP address cannot be bound or changed, or workers not started.
    #[error("{} {}", NOT_RELOADED, .0)]
    Tcp(#[source] server::ReloadError),
}

/// A reload put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// What changed, and what waits for a restart.
    pub report: ReloadReport,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.report.summary())
    }
}

/// The reason a reload failed, for `STATUS=`: the message's last line
/// without [`NOT_RELOADED`].
pub(crate) fn reason_of(message: &str) -> &str {
    let last = message.lines().last().unwrap_or("");
    last.strip_prefix(NOT_RELOADED).unwrap_or(last).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reason_drops_the_preamble() {
        let bind = format!("{NOT_RELOADED} cannot listen on 127.0.0.1:7: Address already in use");
        assert_eq!(
            reason_of(&bind),
            "cannot listen on 127.0.0.1:7: Address already in use"
        );
        let located = format!("{NOT_RELOADED}\n/etc/echo-lab.toml:3:1: unknown key `x`");
        assert_eq!(
            reason_of(&located),
            "/etc/echo-lab.toml:3:1: unknown key `x`"
        );
        assert_eq!(
            reason_of(&ReloadError::Draining.to_string()),
            "draining; reload ignored"
        );
    }

    #[test]
    fn each_part_says_the_config_is_unchanged_once() {
        let e = ReloadError::Udp(UdpError::Bind {
            addr: "127.0.0.1:9".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        });
        let text = e.to_string();
        assert!(text.starts_with(NOT_RELOADED), "{text}");
        assert_eq!(text.matches("cannot listen on").count(), 1, "{text}");
    }
}
