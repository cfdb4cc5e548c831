//! The status document: what `echo-labctl status --json` prints and what
//! the control socket's `status` and `sources` answers carry.
//!
//! Operators' scripts read these field names, so they are declared here,
//! apart from the daemon's counters (which are atomics laid out for the
//! threads that write them, and change as the daemon does): the daemon
//! fills a [`Status`] from its counters when asked, and nothing else. A
//! field is added with `#[serde(default)]` so an older document still
//! reads; renaming or removing one is a new [`SCHEMA`], and the test at
//! the bottom of this file pins every name, so neither happens by
//! accident.

use serde::{Deserialize, Serialize};

/// The version of the document's shape, carried in [`Status::schema`].
pub const SCHEMA: u32 = 1;

fn schema_default() -> u32 {
    SCHEMA
}

/// Upper bounds of the echo latency buckets, in microseconds (a `+Inf`
/// bucket follows): 5 µs to 1 s, about three per decade.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// What `echo-labctl status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The document's shape ([`SCHEMA`]).
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// Daemon version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Config file path, or "embedded defaults".
    pub config: String,
    /// Addresses listened on.
    pub listen: Vec<String>,
    /// Sockets came from the service manager.
    pub socket_activated: bool,
    /// Draining (SIGTERM received).
    pub draining: bool,
    /// Counters.
    pub stats: Snapshot,
    /// Addresses UDP echo is served on.
    #[serde(default)]
    pub udp_listen: Vec<String>,
    /// UDP counters, when UDP is served.
    #[serde(default)]
    pub udp: Option<UdpSnapshot>,
    /// The last reload, if any.
    pub last_reload: Option<LastReload>,
    /// Reloads applied and refused.
    #[serde(default)]
    pub reloads: Reloads,
    /// The metrics endpoint's address, if on.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Log lines dropped because the log sink did not keep up (the log
    /// writer's queue was full).
    #[serde(default)]
    pub log_lines_dropped: u64,
    /// The name this instance answers with (`instance`, else the host name).
    #[serde(default)]
    pub instance: String,
    /// New clients are wanted: what `GET /readyz` answers 200 to.
    #[serde(default = "ready_default")]
    pub ready: bool,
    /// Why not, while not ready (`echo-labctl ready off`, a stop request).
    #[serde(default)]
    pub ready_reason: Option<String>,
    /// Each TLS listener: its certificate and its handshakes.
    #[serde(default)]
    pub tls: Vec<TlsListener>,
    /// The faults in force (`delay`, `bandwidth`, ...), per listener that
    /// has any; empty when none is.
    #[serde(default)]
    pub faults: Vec<ListenerFaults>,
}

fn ready_default() -> bool {
    true
}

/// One TLS listener as status shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsListener {
    /// The `[[listen]]` address as configured.
    pub listener: String,
    /// The certificate's subject (`CN=echo.example`).
    pub subject: String,
    /// Its subject alternative names (`DNS:echo.example`, `IP:127.0.0.1`).
    pub sans: Vec<String>,
    /// Its serial number, upper-case hex.
    pub serial: String,
    /// Valid from, Unix seconds.
    pub not_before_unix: i64,
    /// Valid until, Unix seconds.
    pub not_after_unix: i64,
    /// Expired or not yet valid now (served all the same).
    pub expired: bool,
    /// Handshakes by outcome (`ok`, `timeout`, `closed`, `no_client_cert`,
    /// `bad_client_cert`, `protocol_error`).
    pub handshakes: Vec<(String, u64)>,
}

/// One listener's faults in force.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenerFaults {
    /// The listener: `tcp://HOST:PORT` or `udp://HOST:PORT`, as configured.
    pub listener: String,
    /// Each fault, as its config key and value (`delay`, `20ms`).
    pub active: Vec<FaultSetting>,
}

/// One fault in force.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FaultSetting {
    /// The config key (`delay`, `jitter`, `bandwidth`, `reset_after_bytes`,
    /// `stall_after_bytes`, `close_after`, `banner`, `loss`).
    pub kind: String,
    /// Its value as the config file says it.
    pub value: String,
}

/// Reload counts, for status and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reloads {
    /// Reloads applied.
    pub ok: u64,
    /// Reloads refused (bad file, address in use...).
    pub failed: u64,
    /// Configs in force since start: 1, plus one per applied reload.
    pub generation: u64,
}

/// The outcome of the last reload, for status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastReload {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// What changed, or empty on error.
    pub applied: Option<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// A merged, point-in-time view of all counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections accepted since start.
    pub total: u64,
    /// Connections refused (busy).
    pub refused: u64,
    /// Bytes echoed since start (read from clients).
    pub bytes_echoed: u64,
    /// Bytes written to clients since start (echo and notices).
    #[serde(default)]
    pub bytes_sent: u64,
    /// Connections closed since start, by reason (`client`, `disconnect`,
    /// `idle`, `error`, `drain`, `proxy`, `who`), in the daemon's order of reasons.
    #[serde(default)]
    pub closed: Vec<(String, u64)>,
    /// Connections closed for idleness.
    pub idle_closes: u64,
    /// Sessions ended with `disconnect`.
    pub disconnects: u64,
    /// Panics caught while serving connections.
    pub panics: u64,
    /// PROXY listeners: connections closed because their source may not
    /// send a header.
    #[serde(default)]
    pub proxy_untrusted: u64,
    /// PROXY listeners: connections closed for a bad or missing header.
    #[serde(default)]
    pub proxy_refused: u64,
    /// Worker threads.
    pub pool_size: u64,
    /// Connections handed from one worker to another since start.
    #[serde(default)]
    pub handoffs: u64,
    /// Each worker's CPU and connections, in pool order.
    #[serde(default)]
    pub workers: Vec<WorkerLoad>,
    /// Echo latency: count per bucket of [`LATENCY_BOUNDS_US`] (the last is
    /// `+Inf`), not cumulative; all zero while metrics are off.
    #[serde(default)]
    pub latency_buckets: Vec<u64>,
    /// Sum of the echo latencies, nanoseconds.
    #[serde(default)]
    pub latency_sum_ns: u64,
    /// Who was refused and why: access rules, per-source limits.
    #[serde(default)]
    pub admission: AdmissionCounts,
    /// Connections open per listener address.
    #[serde(default)]
    pub listeners: Vec<(String, u64)>,
}

/// One worker in a [`Snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// Connections it serves now.
    pub connections: u64,
    /// Connections it handed to the worker on the CPU their packets
    /// arrive on.
    pub moved_out: u64,
}

/// The UDP counters in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpSnapshot {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams echoed.
    pub echoed: u64,
    /// Bytes echoed.
    pub bytes_echoed: u64,
    /// Dropped for their source (port below 1024 or 2049, broadcast,
    /// multicast, unspecified, mapped).
    pub dropped_bad_source: u64,
    /// Dropped because their source was over its rate.
    pub dropped_rate: u64,
    /// Dropped because an access rule refuses their source.
    #[serde(default)]
    pub dropped_access: u64,
    /// Dropped for being larger than 65 507 bytes.
    pub dropped_too_large: u64,
    /// Echoes the kernel refused to send.
    pub send_errors: u64,
    /// `recvmmsg` calls that returned datagrams.
    pub recv_calls: u64,
    /// `sendmmsg` calls.
    pub send_calls: u64,
    /// Sources tracked by the rate limit now.
    pub sources: u64,
    /// On a `mode = "who"` address: dropped for being smaller than the
    /// reply (a reply is never larger than the datagram that asked).
    #[serde(default)]
    pub dropped_who_too_small: u64,
    /// Not echoed by the `loss` fault.
    #[serde(default)]
    pub dropped_loss: u64,
    /// Dropped because the queue of delayed echoes (`delay` fault) was full.
    #[serde(default)]
    pub dropped_delay_queue: u64,
}

/// Refusals by reason and the source table's state, in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionCounts {
    /// TCP connections refused by an access rule.
    pub refused_rule: u64,
    /// Refused at `max_connections_per_source`.
    pub refused_source_cap: u64,
    /// Refused over `connection_rate_per_source`.
    pub refused_source_rate: u64,
    /// Dry run: admitted, would have been refused at the cap.
    pub dry_run_source_cap: u64,
    /// Dry run: admitted, would have been refused over the rate.
    pub dry_run_source_rate: u64,
    /// Sources in the table now.
    pub sources: u64,
    /// The table's bound.
    pub source_table_size: u64,
    /// Idle sources evicted to make room.
    pub sources_evicted: u64,
    /// Connections admitted untracked (table full of busy sources).
    pub untracked: u64,
    /// Each rule in force and what it matched.
    pub rules: Vec<RuleCount>,
}

/// One access rule and the clients it matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCount {
    /// `default` (the top-level list) or the listener (`udp 127.0.0.1:7008`).
    pub scope: String,
    /// The rule as written canonically (`deny 192.0.2.0/24`).
    pub rule: String,
    /// Clients (connections, datagrams) it decided.
    pub matches: u64,
}

/// One source as `echo-labctl sources` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceView {
    /// The address, or the network (`2001:db8::/64`) when grouped.
    pub source: String,
    /// Connections open now.
    pub open: u64,
    /// New connections (admitted or refused) over the last 10 s, as
    /// HAProxy's `conn_rate(10s)`.
    pub rate_10s: u64,
    /// Connections admitted while tracked.
    pub admitted: u64,
    /// Refused by an access rule.
    pub refused_rule: u64,
    /// Refused at the per-source cap.
    pub refused_cap: u64,
    /// Refused over the per-source rate.
    pub refused_rate: u64,
    /// Dry run: would have been refused at the cap.
    pub would_refuse_cap: u64,
    /// Dry run: would have been refused over the rate.
    pub would_refuse_rate: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document with every optional part present and every list holding
    /// one element, so that every field name shows.
    fn full() -> Status {
        Status {
            schema: SCHEMA,
            version: "0.1.0".into(),
            pid: 1,
            config: "embedded defaults".into(),
            listen: vec!["127.0.0.1:7007".into()],
            socket_activated: false,
            draining: false,
            stats: Snapshot {
                closed: vec![("client".into(), 1)],
                workers: vec![WorkerLoad::default()],
                latency_buckets: vec![0; LATENCY_BOUNDS_US.len() + 1],
                admission: AdmissionCounts {
                    rules: vec![RuleCount::default()],
                    ..AdmissionCounts::default()
                },
                listeners: vec![("127.0.0.1:7007".into(), 0)],
                ..Snapshot::default()
            },
            udp_listen: vec!["127.0.0.1:7007".into()],
            udp: Some(UdpSnapshot::default()),
            last_reload: Some(LastReload {
                at_unix: 0,
                applied: Some(String::new()),
                error: None,
            }),
            reloads: Reloads::default(),
            metrics: Some("127.0.0.1:9107".into()),
            log_lines_dropped: 0,
            instance: "edge-1".into(),
            ready: false,
            ready_reason: Some("taken out of rotation".into()),
            tls: vec![TlsListener::default()],
            faults: vec![ListenerFaults {
                listener: "tcp://127.0.0.1:7007".into(),
                active: vec![FaultSetting::default()],
            }],
        }
    }

    /// Every object key of `v`, as a dotted path (`[]` for an array).
    fn paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(p.clone());
                    paths(v, &p, out);
                }
            }
            serde_json::Value::Array(items) => {
                if let Some(first) = items.first() {
                    paths(first, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }

    /// The names operators' scripts read. Changing this list is changing
    /// the document: a new field is added here; a renamed or removed one
    /// needs a new [`SCHEMA`].
    #[test]
    fn the_field_names_are_pinned() {
        let mut got = Vec::new();
        paths(&serde_json::to_value(full()).unwrap(), "", &mut got);
        got.sort();
        let want = [
            "config",
            "draining",
            "faults",
            "faults[].active",
            "faults[].active[].kind",
            "faults[].active[].value",
            "faults[].listener",
            "instance",
            "last_reload",
            "last_reload.applied",
            "last_reload.at_unix",
            "last_reload.error",
            "listen",
            "log_lines_dropped",
            "metrics",
            "pid",
            "ready",
            "ready_reason",
            "reloads",
            "reloads.failed",
            "reloads.generation",
            "reloads.ok",
            "schema",
            "socket_activated",
            "stats",
            "stats.active",
            "stats.admission",
            "stats.admission.dry_run_source_cap",
            "stats.admission.dry_run_source_rate",
            "stats.admission.refused_rule",
            "stats.admission.refused_source_cap",
            "stats.admission.refused_source_rate",
            "stats.admission.rules",
            "stats.admission.rules[].matches",
            "stats.admission.rules[].rule",
            "stats.admission.rules[].scope",
            "stats.admission.source_table_size",
            "stats.admission.sources",
            "stats.admission.sources_evicted",
            "stats.admission.untracked",
            "stats.bytes_echoed",
            "stats.bytes_sent",
            "stats.closed",
            "stats.disconnects",
            "stats.handoffs",
            "stats.idle_closes",
            "stats.latency_buckets",
            "stats.latency_sum_ns",
            "stats.listeners",
            "stats.panics",
            "stats.pool_size",
            "stats.proxy_refused",
            "stats.proxy_untrusted",
            "stats.refused",
            "stats.total",
            "stats.uptime_secs",
            "stats.workers",
            "stats.workers[].connections",
            "stats.workers[].cpu",
            "stats.workers[].moved_out",
            "tls",
            "tls[].expired",
            "tls[].handshakes",
            "tls[].listener",
            "tls[].not_after_unix",
            "tls[].not_before_unix",
            "tls[].sans",
            "tls[].serial",
            "tls[].subject",
            "udp",
            "udp.bytes_echoed",
            "udp.dropped_access",
            "udp.dropped_bad_source",
            "udp.dropped_delay_queue",
            "udp.dropped_loss",
            "udp.dropped_rate",
            "udp.dropped_too_large",
            "udp.dropped_who_too_small",
            "udp.echoed",
            "udp.received",
            "udp.recv_calls",
            "udp.send_calls",
            "udp.send_errors",
            "udp.sources",
            "udp_listen",
            "version",
        ];
        assert_eq!(got, want, "the status document's field names changed");
    }

    #[test]
    fn a_document_reads_back_as_written() {
        let doc = full();
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), doc);
    }

    #[test]
    fn a_document_without_schema_reads_as_the_first() {
        let mut v = serde_json::to_value(full()).unwrap();
        v.as_object_mut().unwrap().remove("schema");
        assert_eq!(serde_json::from_value::<Status>(v).unwrap().schema, 1);
    }
}
