//! The `who` reply: what a `[[listen]]` table with `mode = "who"` answers
//! each TCP client with — one JSON object on one line, then the
//! connection closes — and each UDP datagram with instead of its echo (in
//! the datagram's own buffer, so never larger than it: `udp::batch`), so
//! that someone testing a load balancer sees which instance answered, and
//! for whom.
//!
//! It owns the reply's field names (pinned by a test below and documented
//! in echo-lab.toml(5)) and the instance's identity the reply carries:
//! the name (`instance`, else the host name), the host name and the
//! config generation, which the supervisor sets at start and after each
//! reload ([`set_identity`]). A worker that builds a reply reads that
//! identity under a read lock held only to clone an `Arc` (the supervisor
//! writes it once per reload; never across I/O).
//!
//! Room for what a TLS listener adds: [`Reply::tls`] is an object
//! (version, cipher, SNI, ALPN, client certificate subject), absent on a
//! plain connection, so a reader that ignores unknown fields reads both.
//!
//! Never: blocks, logs, or touches a socket; the connection writes the line.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use serde::Serialize;

/// Who this instance is, as the reply says it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Identity {
    /// `instance`, else the host name.
    pub instance: String,
    /// The host name as the kernel has it.
    pub hostname: String,
    /// Configs in force since start: 1, plus one per applied reload.
    pub config_generation: u64,
}

static IDENTITY: RwLock<Option<Arc<Identity>>> = RwLock::new(None);

/// Sets what replies say from now on (supervisor: at start, after a reload).
pub(crate) fn set_identity(identity: Identity) {
    *IDENTITY.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(identity));
}

fn identity() -> Arc<Identity> {
    IDENTITY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}

/// TLS facts of the connection (filled in by a TLS listener; none yet).
#[cfg_attr(not(test), allow(dead_code))] // built once TLS listeners serve `who`
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Tls {
    pub version: String,
    pub cipher: String,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub client_subject: Option<String>,
}

/// One reply, in field order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Reply {
    /// `instance`, else the host name.
    pub instance: String,
    /// The host name.
    pub hostname: String,
    /// echo-lab's version.
    pub version: &'static str,
    /// The address the client reached (the listener's).
    pub listener: Option<String>,
    /// The address the daemon attributes the session to: the PROXY
    /// header's source when there is one, else the TCP peer.
    pub client: String,
    /// The TCP peer (the proxy, behind one).
    pub peer: String,
    /// The id of the worker that served the connection; `null` over UDP
    /// (the UDP thread answers).
    pub worker: Option<u64>,
    /// Configs in force since start.
    pub config_generation: u64,
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// TLS facts; absent on a plain connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// What a connection knows when it answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    pub listener: Option<SocketAddr>,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub worker: Option<u64>,
}

impl Reply {
    /// The reply now, with this instance's identity.
    pub(crate) fn now(asked: Asked) -> Reply {
        let id = identity();
        Reply {
            instance: id.instance.clone(),
            hostname: id.hostname.clone(),
            version: env!("CARGO_PKG_VERSION"),
            listener: asked.listener.map(|a| a.to_string()),
            client: asked.client.to_string(),
            peer: asked.peer.to_string(),
            worker: asked.worker,
            config_generation: id.config_generation,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            tls: None,
        }
    }

    /// The reply as sent: one JSON object and `\n`.
    pub(crate) fn line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> Asked {
        Asked {
            listener: Some("127.0.0.1:7008".parse().unwrap()),
            client: "192.0.2.7:50112".parse().unwrap(),
            peer: "10.0.0.1:41000".parse().unwrap(),
            worker: Some(3),
        }
    }

    /// The names clients and scripts read, in order. Changing this list is
    /// changing the reply (and the man page).
    #[test]
    fn the_field_names_are_pinned() {
        let line = Reply::now(asked()).line();
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "instance",
            "hostname",
            "version",
            "listener",
            "client",
            "peer",
            "worker",
            "config_generation",
            "time",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["client"], "192.0.2.7:50112");
        assert_eq!(v["peer"], "10.0.0.1:41000");
        assert_eq!(v["worker"], 3);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn tls_slots_in_as_an_object() {
        let mut r = Reply::now(asked());
        r.tls = Some(Tls {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            sni: Some("echo.example".into()),
            alpn: None,
            client_subject: None,
        });
        let v: serde_json::Value = serde_json::from_slice(&r.line()).unwrap();
        assert_eq!(v["tls"]["version"], "TLSv1.3");
        assert_eq!(v["tls"]["sni"], "echo.example");
    }
}
