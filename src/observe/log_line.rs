//! A log line: a `log` record rendered once, on the thread that logged
//! it, in the format in force (`text`: the message and its key-values as
//! `key=value`; `json`: one object with stable field names `ts`, `level`,
//! `event`, `instance`, `msg`, then the key-values), and how the writer
//! puts it on stderr or in a file (the journal's `<N>` priority prefix, or
//! a timestamp and the level).
//!
//! It sits below both the logger (`logging`, which renders) and the
//! writer thread (`log_writer`, which writes), so neither needs the
//! other for it. It never writes to a sink except stderr in
//! [`Line::write_to_stderr`], which only startup and a dead writer's
//! fallback use.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use log::kv::{Key, Value, VisitSource};
use log::{Level, Record};

/// One record, rendered on the thread that logged it.
pub(crate) struct Line {
    pub level: Level,
    /// A session line (batched; the first dropped when the queue is full).
    pub session: bool,
    /// When it was logged (the text format's timestamp).
    pub at: SystemTime,
    /// The record as the format renders it: the message and key-values
    /// (text), or the whole JSON object; no newline.
    pub body: String,
    /// `body` is JSON (no timestamp or level is put before it).
    pub json: bool,
}

impl Line {
    /// Appends the line as written to stderr or a file: `<N>` priority
    /// prefix for the journal, else (text) an RFC 3339 timestamp and the
    /// level; then the body and a newline.
    pub(crate) fn write_into(&self, out: &mut String, journal: bool) {
        if journal {
            let _ = write!(out, "<{}>", priority(self.level));
        } else if !self.json {
            let _ = write!(
                out,
                "{} {:<5} ",
                humantime::format_rfc3339_seconds(self.at),
                self.level
            );
        }
        out.push_str(&self.body);
        out.push('\n');
    }

    /// Writes the line to stderr at once, on the calling thread.
    pub(crate) fn write_to_stderr(&self, journal: bool) {
        let mut out = String::with_capacity(self.body.len() + 48);
        self.write_into(&mut out, journal);
        // One write per line keeps lines whole across threads.
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
}

/// The instance's name on JSON lines; `None` until the supervisor sets it.
static INSTANCE: RwLock<Option<Arc<str>>> = RwLock::new(None);

/// Names the instance on every JSON line from now on (at start and on
/// reload, by the supervisor).
pub(crate) fn set_instance(name: &str) {
    let mut slot = INSTANCE.write().unwrap_or_else(PoisonError::into_inner);
    if slot.as_deref() != Some(name) {
        *slot = Some(Arc::from(name));
    }
}

fn instance() -> Option<Arc<str>> {
    INSTANCE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// sd-daemon priority of a level (syslog numbering).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Renders a record's key-values as ` key=value` (text).
struct TextPairs<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextPairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// Collects a record's key-values into a JSON object.
struct JsonPairs<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonPairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(f) = value.to_f64() {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.to_string(), v);
        Ok(())
    }
}

/// The record as text: message, then ` key=value` pairs.
fn text_body(record: &Record<'_>) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(s, "{}", record.args());
    let _ = record.key_values().visit(&mut TextPairs(&mut s));
    s
}

/// The record as one JSON object (no newline).
fn json_body(record: &Record<'_>, at: SystemTime) -> String {
    let mut map = serde_json::Map::new();
    map.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(at).to_string().into(),
    );
    map.insert(
        "level".into(),
        record.level().as_str().to_ascii_lowercase().into(),
    );
    let event = if record.target() == crate::observe::session::TARGET {
        "session"
    } else {
        "daemon"
    };
    map.insert("event".into(), event.into());
    if let Some(name) = instance() {
        map.insert("instance".into(), (*name).into());
    }
    map.insert("msg".into(), record.args().to_string().into());
    let _ = record.key_values().visit(&mut JsonPairs(&mut map));
    serde_json::Value::Object(map).to_string()
}

/// Renders a record for the writer: as JSON if `json`, else as text.
pub(crate) fn render(record: &Record<'_>, json: bool) -> Line {
    let at = SystemTime::now();
    Line {
        level: record.level(),
        session: record.target() == crate::observe::session::TARGET,
        at,
        body: if json {
            json_body(record, at)
        } else {
            text_body(record)
        },
        json,
    }
}
