//! The bad-network settings of one listener ("faults"): what the keys
//! `delay`, `jitter`, `bandwidth`, `reset_after_bytes`,
//! `stall_after_bytes`, `close_after`, `banner`, `loss` and `fault_seed`
//! say, gathered per listener (the two value types only they use, a rate
//! in bytes per second and a share of datagrams, are kinds of value like
//! the others, in `kinds`).
//!
//! The keys are declared with the others (top level for `host`/`port`,
//! and in each `[[listen]]` table); this module only reads them back as
//! one [`Faults`] value per listener, says which apply to which protocol,
//! and describes them for the log, the status and the metrics. It never
//! acts on them: the daemon does.

use std::time::Duration;

use crate::kinds::format_duration;
pub use crate::kinds::{Bandwidth, Loss};
use crate::{Config, Endpoint, Listen, Protocol};

/// One listener's faults, as configured; `Faults::default()` is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Echo leaves this long after it was read (± `jitter`).
    pub delay: Duration,
    /// Spread of the delay: each chunk's delay is drawn uniformly from
    /// `delay - jitter ..= delay + jitter`.
    pub jitter: Duration,
    /// TCP: the echo to one connection paced to this rate.
    pub bandwidth: Bandwidth,
    /// TCP: reset (RST) once this many bytes were echoed.
    pub reset_after_bytes: Option<u64>,
    /// TCP: neither read nor write once this many bytes were echoed, until
    /// the idle timeout.
    pub stall_after_bytes: Option<u64>,
    /// TCP: close each session (with its notice) after this long.
    pub close_after: Duration,
    /// TCP: sent on connect, before anything is read.
    pub banner: Option<String>,
    /// UDP: share of datagrams not echoed.
    pub loss: Loss,
    /// Seed of the random choices (jitter, loss); `None` = from the OS.
    pub seed: Option<u64>,
}

/// The keys that apply to TCP listeners only.
pub const TCP_ONLY: [&str; 5] = [
    "bandwidth",
    "reset_after_bytes",
    "stall_after_bytes",
    "close_after",
    "banner",
];

/// The keys that apply to UDP listeners only.
pub const UDP_ONLY: [&str; 1] = ["loss"];

impl Faults {
    /// True when no fault is configured.
    pub fn is_none(&self) -> bool {
        self.kinds().is_empty()
    }

    /// The faults in force, each as its key and value as the file would
    /// say it (`delay=20ms`); `fault_seed` is not a fault and is left out.
    pub fn kinds(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.delay.is_zero() {
            out.push(("delay", format_duration(self.delay)));
        }
        if !self.jitter.is_zero() {
            out.push(("jitter", format_duration(self.jitter)));
        }
        if self.bandwidth.is_on() {
            out.push(("bandwidth", self.bandwidth.to_string()));
        }
        if let Some(n) = self.reset_after_bytes {
            out.push(("reset_after_bytes", n.to_string()));
        }
        if let Some(n) = self.stall_after_bytes {
            out.push(("stall_after_bytes", n.to_string()));
        }
        if !self.close_after.is_zero() {
            out.push(("close_after", format_duration(self.close_after)));
        }
        if let Some(b) = &self.banner {
            out.push(("banner", format!("{b:?}")));
        }
        if self.loss.per_million() > 0 {
            out.push(("loss", self.loss.to_string()));
        }
        out
    }

    /// The faults in force as one line (`delay=20ms jitter=5ms`), or
    /// `none`.
    pub fn describe(&self) -> String {
        let kinds = self.kinds();
        if kinds.is_empty() {
            return "none".to_string();
        }
        let words: Vec<String> = kinds.iter().map(|(k, v)| format!("{k}={v}")).collect();
        words.join(" ")
    }
}

impl Listen {
    /// This table's faults.
    pub fn faults(&self) -> Faults {
        Faults {
            delay: self.delay,
            jitter: self.jitter,
            bandwidth: self.bandwidth,
            reset_after_bytes: self.reset_after_bytes,
            stall_after_bytes: self.stall_after_bytes,
            close_after: self.close_after,
            banner: self.banner.clone(),
            loss: self.loss,
            seed: self.fault_seed,
        }
    }
}

impl Config {
    /// The faults of the `host`/`port` listeners (the top-level keys);
    /// `loss` applies to its UDP side only, the TCP-only keys to its TCP
    /// side only.
    pub fn main_faults(&self) -> Faults {
        Faults {
            delay: self.delay,
            jitter: self.jitter,
            bandwidth: self.bandwidth,
            reset_after_bytes: self.reset_after_bytes,
            stall_after_bytes: self.stall_after_bytes,
            close_after: self.close_after,
            banner: self.banner.clone(),
            loss: self.loss,
            seed: self.fault_seed,
        }
    }

    /// Every listener with its faults, in [`Config::endpoints`] order, each
    /// narrowed to the keys that apply to its protocol.
    pub fn faults(&self) -> Vec<(Endpoint, Protocol, Faults)> {
        let main = self.main_faults();
        let own = std::iter::repeat_n(main, 1 + usize::from(self.udp))
            .chain(self.listen.iter().map(Listen::faults));
        self.endpoints()
            .into_iter()
            .zip(own)
            .map(|((e, p), f)| {
                let f = f.for_protocol(p);
                (e, p, f)
            })
            .collect()
    }
}

impl Faults {
    /// The keys that apply to `protocol`, the others off.
    pub fn for_protocol(mut self, protocol: Protocol) -> Faults {
        match protocol {
            Protocol::Tcp => self.loss = Loss::default(),
            Protocol::Udp => {
                self.bandwidth = Bandwidth::default();
                self.reset_after_bytes = None;
                self.stall_after_bytes = None;
                self.close_after = Duration::ZERO;
                self.banner = None;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_units_are_decimal_and_binary() {
        let b = |t: &str| Bandwidth::parse(t).map(|b| b.0);
        assert_eq!(b("1MB/s"), Ok(1_000_000));
        assert_eq!(b("100KB/s"), Ok(100_000));
        assert_eq!(b("100 KB/s"), Ok(100_000));
        assert_eq!(b("64KiB/s"), Ok(65_536));
        assert_eq!(b("2MiB/s"), Ok(2 << 20));
        assert_eq!(b("1GB/s"), Ok(1_000_000_000));
        assert_eq!(b("500B/s"), Ok(500));
        assert_eq!(b("0"), Ok(0));
        assert!(b("1mb/s").unwrap_err().contains("not a unit"));
        assert!(b("1MB").unwrap_err().contains("not a rate"));
        assert!(b("1.5MB/s").unwrap_err().contains("not a unit"));
        assert!(b("MB/s").unwrap_err().contains("no whole number"));
        assert!(b("200GB/s").unwrap_err().contains("more than"));
        for text in ["1MB/s", "64KiB/s", "1500B/s", "3GiB/s", "0"] {
            assert_eq!(Bandwidth::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn loss_is_kept_in_millionths() {
        assert_eq!(Loss::from_share(0.1).map(Loss::per_million), Some(100_000));
        assert_eq!(
            Loss::from_share(1.0).map(Loss::per_million),
            Some(1_000_000)
        );
        assert_eq!(Loss::from_share(1.5), None);
        assert_eq!(Loss::from_share(-0.1), None);
        assert_eq!(Loss::from_share(0.25).unwrap().to_string(), "0.25");
    }

    #[test]
    fn a_listener_has_only_the_faults_of_its_protocol() {
        let c = Config::parse(
            "udp = true\ndelay = \"20ms\"\nloss = 0.5\nbanner = \"hi\"\n",
            "t.toml",
        )
        .unwrap();
        let f = c.faults();
        assert_eq!(f[0].2.describe(), "delay=20ms banner=\"hi\"");
        assert_eq!(f[1].2.describe(), "delay=20ms loss=0.5");
        assert!(Config::default()
            .faults()
            .iter()
            .all(|(_, _, f)| f.is_none()));
    }
}
