//! What `/metrics` says: the daemon's counters, merged for this scrape,
//! turned into metric families by the `prometheus-client` crate, in the
//! Prometheus text format or OpenMetrics.
//!
//! Nothing is counted here. A scrape takes one [`Status`] from the
//! supervisor (the same merge of per-worker counters `echo-labctl status`
//! shows) and one [`Process`] reading, wraps them in a [`Collector`]
//! registered in a registry made for this scrape, and lets the crate's
//! encoders write names, `# HELP`, `# TYPE`, `# UNIT` and label escaping.
//! The hot path therefore pays nothing for metrics: the workers' counters
//! are the relaxed atomics they always were.
//!
//! Names follow the Prometheus conventions: `echo_lab_` prefix, base
//! units (bytes, seconds), `_total` on counters (the encoder adds it).
//! The refusals of the access rules and the per-source limits are reasons
//! of `echo_lab_connections_refused_total` ([`Export::refusals`]).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::process::Process;
use echo_lab_proto::status::Status;

/// The formats a scrape can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, when `Accept` names it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub(crate) fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// One scrape's values.
#[derive(Debug)]
pub(crate) struct Export {
    pub status: Status,
    /// `None` if /proc could not be read (then no `process_*` metrics).
    pub process: Option<Process>,
}

impl Export {
    /// Encodes the exposition in `format`.
    pub(crate) fn encode(self, format: Format) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(8 * 1024);
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
        }
        Ok(out)
    }

    /// Connection refusals by reason: `busy` (max_connections),
    /// `proxy_untrusted` (a PROXY listener's source not in
    /// `proxy_trusted`), `rule` (an access rule), `source_cap` and
    /// `source_rate` (the per-source limits).
    fn refusals(&self) -> Vec<(&'static str, u64)> {
        let s = &self.status.stats;
        let a = &s.admission;
        vec![
            ("busy", s.refused),
            ("proxy_untrusted", s.proxy_untrusted),
            ("rule", a.refused_rule),
            ("source_cap", a.refused_source_cap),
            ("source_rate", a.refused_source_rate),
        ]
    }
}

/// Writes one unlabelled value.
fn one<M: EncodeMetric>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: M,
) -> Result<(), std::fmt::Error> {
    let m = e.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(m)
}

/// Writes a family of counters, one per value of `label`.
fn counters(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut fam = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Export {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.status.stats;
        let mut fam = e.encode_descriptor(
            "echo_lab_build_info",
            "Always 1; the label says echo-lab's version.",
            None,
            MetricType::Gauge,
        )?;
        let version = [("version", self.status.version.as_str())];
        ConstGauge::new(1).encode(fam.encode_family(&version)?)?;
        one(
            &mut e,
            "echo_lab_connections",
            "TCP connections open now.",
            None,
            ConstGauge::new(s.active as i64),
        )?;
        let mut fam = e.encode_descriptor(
            "echo_lab_worker_connections",
            "TCP connections each worker serves now.",
            None,
            MetricType::Gauge,
        )?;
        for (i, w) in s.workers.iter().enumerate() {
            let worker = i.to_string();
            let cpu = w.cpu.map_or_else(|| "none".to_string(), |c| c.to_string());
            let labels = [("worker", worker.as_str()), ("cpu", cpu.as_str())];
            ConstGauge::new(w.connections as i64).encode(fam.encode_family(&labels)?)?;
        }
        let mut fam = e.encode_descriptor(
            "echo_lab_listener_connections",
            "TCP connections open now, by the listener address they reached.",
            None,
            MetricType::Gauge,
        )?;
        for (addr, n) in &s.listeners {
            let labels = [("listener", addr.as_str())];
            ConstGauge::new(*n as i64).encode(fam.encode_family(&labels)?)?;
        }
        one(
            &mut e,
            "echo_lab_connections_accepted",
            "TCP connections accepted, including those refused after accepting.",
            None,
            ConstCounter::new(s.total),
        )?;
        let closed: Vec<(&str, u64)> = s.closed.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        counters(
            &mut e,
            "echo_lab_connections_closed",
            "TCP connections served and closed, by why they ended.",
            "reason",
            &closed,
        )?;
        counters(
            &mut e,
            "echo_lab_connections_refused",
            "TCP connections refused after accepting, by reason.",
            "reason",
            &self.refusals(),
        )?;
        one(
            &mut e,
            "echo_lab_received",
            "Bytes read from TCP clients.",
            Some(&Unit::Bytes),
            ConstCounter::new(s.bytes_echoed),
        )?;
        one(
            &mut e,
            "echo_lab_sent",
            "Bytes written to TCP clients (echo and notices).",
            Some(&Unit::Bytes),
            ConstCounter::new(s.bytes_sent),
        )?;
        one(
            &mut e,
            "echo_lab_panics",
            "Panics caught while serving a connection.",
            None,
            ConstCounter::new(s.panics),
        )?;
        one(
            &mut e,
            "echo_lab_workers",
            "Worker threads.",
            None,
            ConstGauge::new(s.pool_size as i64),
        )?;
        one(
            &mut e,
            "echo_lab_handoffs",
            "Connections handed to the worker on the CPU their packets arrive on.",
            None,
            ConstCounter::new(s.handoffs),
        )?;
        one(
            &mut e,
            "echo_lab_draining",
            "1 while the daemon drains (stop requested).",
            None,
            ConstGauge::new(i64::from(self.status.draining)),
        )?;
        one(
            &mut e,
            "echo_lab_log_lines_dropped",
            "Log lines dropped because the log sink did not keep up.",
            None,
            ConstCounter::new(self.status.log_lines_dropped),
        )?;
        self.encode_instance(&mut e)?;
        let mut fam = e.encode_descriptor(
            "echo_lab_faults_active",
            "1 for each fault in force (delay, bandwidth, ...), by listener and kind.",
            None,
            MetricType::Gauge,
        )?;
        for f in &self.status.faults {
            for a in &f.active {
                let labels = [("listener", f.listener.as_str()), ("kind", a.kind.as_str())];
                ConstGauge::new(1).encode(fam.encode_family(&labels)?)?;
            }
        }
        self.encode_latency(&mut e)?;
        self.encode_udp(&mut e)?;
        self.encode_tls(&mut e)?;
        self.encode_reloads(&mut e)?;
        if let Some(p) = &self.process {
            encode_process(&mut e, p)?;
        }
        Ok(())
    }
}

impl Export {
    /// `echo_lab_info{instance,version} 1`, which names the instance a
    /// series comes from, and `echo_lab_ready` (what `/readyz` says).
    fn encode_instance(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut fam = e.encode_descriptor(
            "echo_lab_info",
            "Always 1; the labels name this instance and its version.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("instance", self.status.instance.as_str()),
            ("version", self.status.version.as_str()),
        ];
        ConstGauge::new(1).encode(fam.encode_family(&labels)?)?;
        one(
            e,
            "echo_lab_ready",
            "1 while new clients are wanted (GET /readyz answers 200), else 0.",
            None,
            ConstGauge::new(i64::from(self.status.ready)),
        )
    }

    fn encode_latency(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.status.stats;
        let bounds = crate::observe::stats::LATENCY_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(s.latency_buckets.iter().copied()).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let m = e.encode_descriptor(
            "echo_lab_echo_latency",
            "Time from the poller reporting a client's input to its echo written in full.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let mut m = m;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            s.latency_sum_ns as f64 / 1e9,
            count,
            &buckets,
            None,
        )
    }

    /// Each TLS listener's handshakes by outcome and its certificate's
    /// validity (the alert on expiry reads `not_after`).
    fn encode_tls(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let listeners = &self.status.tls;
        if listeners.is_empty() {
            return Ok(());
        }
        let mut fam = e.encode_descriptor(
            "echo_lab_tls_handshakes",
            "TLS handshakes ended, by listener and outcome (ok, timeout, closed, no_client_cert, bad_client_cert, protocol_error).",
            None,
            MetricType::Counter,
        )?;
        for l in listeners {
            for (outcome, n) in &l.handshakes {
                let labels = [
                    ("listener", l.listener.as_str()),
                    ("outcome", outcome.as_str()),
                ];
                ConstCounter::new(*n).encode(fam.encode_family(&labels)?)?;
            }
        }
        let mut fam = e.encode_descriptor(
            "echo_lab_tls_cert_not_after",
            "When each TLS listener's certificate expires (Unix time).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for l in listeners {
            let labels = [
                ("listener", l.listener.as_str()),
                ("subject", l.subject.as_str()),
            ];
            ConstGauge::new(l.not_after_unix).encode(fam.encode_family(&labels)?)?;
        }
        let mut fam = e.encode_descriptor(
            "echo_lab_tls_cert_expired",
            "1 if a TLS listener's certificate is expired or not yet valid (it is served all the same).",
            None,
            MetricType::Gauge,
        )?;
        for l in listeners {
            let labels = [("listener", l.listener.as_str())];
            ConstGauge::new(i64::from(l.expired)).encode(fam.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// The UDP service's counters, when it runs.
    fn encode_udp(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(u) = &self.status.udp else {
            return Ok(());
        };
        one(
            e,
            "echo_lab_udp_received_datagrams",
            "UDP datagrams received.",
            None,
            ConstCounter::new(u.received),
        )?;
        counters(
            e,
            "echo_lab_udp_datagrams",
            "UDP datagrams by outcome: echoed (or answered, on a who address), or dropped (bad source, an access rule, over its rate, too large, smaller than a who reply, the loss fault, the delay fault's full queue), or an echo the kernel refused.",
            "outcome",
            &[
                ("echoed", u.echoed),
                ("bad_source", u.dropped_bad_source),
                ("access", u.dropped_access),
                ("rate_limited", u.dropped_rate),
                ("too_large", u.dropped_too_large),
                ("who_too_small", u.dropped_who_too_small),
                ("fault_loss", u.dropped_loss),
                ("fault_delay_queue", u.dropped_delay_queue),
                ("send_error", u.send_errors),
            ],
        )?;
        one(
            e,
            "echo_lab_udp_echoed",
            "Bytes echoed over UDP.",
            Some(&Unit::Bytes),
            ConstCounter::new(u.bytes_echoed),
        )?;
        one(
            e,
            "echo_lab_udp_sources",
            "Sources tracked by the UDP rate limit now.",
            None,
            ConstGauge::new(u.sources as i64),
        )
    }

    fn encode_reloads(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let r = &self.status.reloads;
        counters(
            e,
            "echo_lab_reloads",
            "Config reloads (SIGHUP or echo-labctl reload), by result.",
            "result",
            &[("ok", r.ok), ("failed", r.failed)],
        )?;
        one(
            e,
            "echo_lab_config_generation",
            "How many configs have been in force: 1 at start, +1 per successful reload.",
            None,
            ConstGauge::new(r.generation as i64),
        )?;
        if let Some(last) = &self.status.last_reload {
            one(
                e,
                "echo_lab_last_reload_timestamp",
                "When the last reload was tried, seconds since the Unix epoch.",
                Some(&Unit::Seconds),
                ConstGauge::new(last.at_unix as i64),
            )?;
            one(
                e,
                "echo_lab_last_reload_successful",
                "1 if the last reload was applied, 0 if it was refused.",
                None,
                ConstGauge::new(i64::from(last.error.is_none())),
            )?;
        }
        Ok(())
    }
}

fn encode_process(e: &mut DescriptorEncoder<'_>, p: &Process) -> Result<(), std::fmt::Error> {
    one(
        e,
        "process_cpu",
        "Total user and system CPU time spent.",
        Some(&Unit::Seconds),
        ConstCounter::new(p.cpu_seconds),
    )?;
    one(
        e,
        "process_resident_memory",
        "Resident memory size.",
        Some(&Unit::Bytes),
        ConstGauge::new(p.resident_bytes as i64),
    )?;
    one(
        e,
        "process_virtual_memory",
        "Virtual memory size.",
        Some(&Unit::Bytes),
        ConstGauge::new(p.virtual_bytes as i64),
    )?;
    one(
        e,
        "process_open_fds",
        "Open file descriptors.",
        None,
        ConstGauge::new(p.open_fds as i64),
    )?;
    one(
        e,
        "process_max_fds",
        "The limit on open file descriptors.",
        None,
        ConstGauge::new(p.max_fds as i64),
    )?;
    one(
        e,
        "process_start_time",
        "Start time of the process since the Unix epoch.",
        Some(&Unit::Seconds),
        ConstGauge::new(p.start_time_seconds),
    )?;
    one(
        e,
        "process_threads",
        "Threads.",
        None,
        ConstGauge::new(p.threads as i64),
    )?;
    Ok(())
}
