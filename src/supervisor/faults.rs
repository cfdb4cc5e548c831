//! Making the faults in force seen: a fault left on by mistake is the
//! classic accident, so the start and every reload log them per listener
//! at `warn`, and the status document (hence `echo-labctl status` and the
//! metrics' `echo_lab_faults_active`) lists them.
//!
//! This module only describes the config in force; it never changes a
//! listener or a connection.

use std::net::SocketAddr;

use echo_lab_config::{Config, Protocol};
use echo_lab_proto::status::{FaultSetting, ListenerFaults};

use crate::udp::faults::UdpFaults;
use crate::udp::listeners::UdpSpec;

/// Every listener with faults, and its faults (none: empty).
pub(crate) fn in_force(config: &Config) -> Vec<ListenerFaults> {
    config
        .faults()
        .into_iter()
        .filter(|(_, _, f)| !f.is_none())
        .map(|(endpoint, protocol, f)| ListenerFaults {
            listener: format!("{}://{endpoint}", scheme(protocol)),
            active: f
                .kinds()
                .into_iter()
                .map(|(kind, value)| FaultSetting {
                    kind: kind.to_string(),
                    value,
                })
                .collect(),
        })
        .collect()
}

fn scheme(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Logs the faults in force, one `warn` line per listener that has any;
/// `was_on`: faults were in force before (a reload that turned the last
/// one off says so).
pub(crate) fn log(config: &Config, was_on: bool) {
    let listeners = in_force(config);
    if listeners.is_empty() && was_on {
        log::warn!("faults: none in force any more");
    }
    for l in listeners {
        let words: Vec<String> = l
            .active
            .iter()
            .map(|a| format!("{}={}", a.kind, a.value))
            .collect();
        log::warn!("faults in force on {}: {}", l.listener, words.join(" "));
    }
}

/// Each UDP socket's faults by its local address: `addresses` is each UDP
/// address served, in `udp_plan` order (host/port with `udp = true`
/// first, then the UDP `[[listen]]` tables), with its sockets' addresses.
pub(crate) fn udp_faults(
    config: &Config,
    addresses: &[(UdpSpec, Vec<SocketAddr>)],
) -> Vec<(SocketAddr, UdpFaults)> {
    let main = config.udp.then(|| config.main_faults());
    let tables = config
        .listen
        .iter()
        .filter(|l| l.protocol == Protocol::Udp)
        .map(|l| l.faults());
    let mut out = Vec::new();
    for (faults, (_, addrs)) in main.into_iter().chain(tables).zip(addresses) {
        if let Some(f) = UdpFaults::of(&faults) {
            out.extend(addrs.iter().map(|a| (*a, f.clone())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listeners_with_faults_are_listed() {
        let c = Config::parse(
            "port = 7\ndelay = 5\n[[listen]]\naddress = \"127.0.0.1:8\"\nprotocol = \"udp\"\nloss = 0.5\n\
             [[listen]]\naddress = \"127.0.0.1:9\"\n",
            "t",
        )
        .unwrap();
        let got: Vec<(String, Vec<(String, String)>)> = in_force(&c)
            .into_iter()
            .map(|l| {
                let a = l.active.into_iter().map(|a| (a.kind, a.value)).collect();
                (l.listener, a)
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "tcp://127.0.0.1:7".to_string(),
                    vec![("delay".to_string(), "5ms".to_string())]
                ),
                (
                    "udp://127.0.0.1:8".to_string(),
                    vec![("loss".to_string(), "0.5".to_string())]
                ),
            ]
        );
        assert!(in_force(&Config::default()).is_empty());
    }
}
