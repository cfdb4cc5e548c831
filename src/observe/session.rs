//! One TCP session's record: who, on which listener, for how long, how
//! many bytes each way, and why it ended — what the session log line says
//! when the session is over (the fields of nginx's stream `access_log`:
//! `$remote_addr $server_addr $session_time $bytes_received $bytes_sent
//! $status`).
//!
//! A [`Session`] lives inside its connection and is updated by plain
//! field arithmetic on the worker that owns it (no atomics, nothing
//! shared): the only extra cost on the hot path is two additions per read.
//! The worker's byte counters ([`crate::observe::stats::WorkerStats`]) take the
//! session's unreported bytes after each event ([`Session::take_sent`]),
//! so metrics stay exact without a second count per write.
//!
//! The line goes through the `log` facade at `info` under the target
//! [`TARGET`] with its fields as key-values, so the text and JSON formats
//! ([`crate::observe::logging`]) render the same record. Who the session was
//! between comes from the connection's ends (the client there is the one
//! a PROXY header names, when one did).

use std::time::Instant;

use std::net::SocketAddr;

use crate::observe::stats::CloseReason;

/// What the session log says of a TLS session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsSummary {
    /// `TLSv1_3`.
    pub version: String,
    /// `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The server name the client asked for, `-` if none.
    pub sni: String,
    /// The ALPN protocol agreed, `-` if none.
    pub alpn: String,
    /// With mutual TLS: the client certificate's subject, `-` otherwise.
    pub client: String,
}

/// The `log` target of session lines (what JSON calls `"event"`).
pub const TARGET: &str = "session";

/// A listener's address as logged: `-` when unknown.
struct Listener(Option<std::net::SocketAddr>);

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// What is known about a session while it runs.
#[derive(Debug)]
pub(crate) struct Session {
    /// When it was accepted.
    started: Instant,
    /// Bytes read from the client.
    received: u64,
    /// Bytes written to the client (echo and notices).
    sent: u64,
    /// Of `sent`, how many the worker's counters have.
    reported: u64,
    /// Why it ended; the first reason found wins.
    reason: Option<CloseReason>,
}

impl Session {
    /// A session accepted now.
    pub(crate) fn new() -> Self {
        Session {
            started: Instant::now(),
            received: 0,
            sent: 0,
            reported: 0,
            reason: None,
        }
    }

    /// Counts bytes read from the client.
    pub(crate) fn received(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// Counts bytes written to the client.
    pub(crate) fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }

    /// Bytes written since the last call (for the worker's counter).
    pub(crate) fn take_sent(&mut self) -> u64 {
        let n = self.sent - self.reported;
        self.reported = self.sent;
        n
    }

    /// Records why the session ends, unless a reason is known already (a
    /// client that said `disconnect` and then closed ended by `disconnect`).
    pub(crate) fn end(&mut self, reason: CloseReason) {
        self.reason.get_or_insert(reason);
    }

    /// The reason it ended; a session closed without one ended in error.
    pub(crate) fn reason(&self) -> CloseReason {
        self.reason.unwrap_or(CloseReason::Error)
    }

    /// Writes the session line (at `info`) of the session between `ends`;
    /// a TLS session's line also says its version, cipher suite, SNI, ALPN
    /// and client certificate subject.
    pub(crate) fn log(
        &self,
        client: SocketAddr,
        listener: Option<SocketAddr>,
        tls: Option<&TlsSummary>,
    ) {
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(tls) = tls {
            log::info!(
                target: TARGET,
                client:% = client,
                listener:% = Listener(listener),
                protocol = "tls",
                duration_s = (secs * 1e3).round() / 1e3,
                received = self.received,
                sent = self.sent,
                reason = self.reason().as_str(),
                tls_version = tls.version.as_str(),
                tls_cipher = tls.cipher.as_str(),
                tls_sni = tls.sni.as_str(),
                tls_alpn = tls.alpn.as_str(),
                tls_client = tls.client.as_str();
                "session"
            );
            return;
        }
        log::info!(
            target: TARGET,
            client:% = client,
            listener:% = Listener(listener),
            protocol = "tcp",
            duration_s = (secs * 1e3).round() / 1e3,
            received = self.received,
            sent = self.sent,
            reason = self.reason().as_str();
            "session"
        );
    }
}
