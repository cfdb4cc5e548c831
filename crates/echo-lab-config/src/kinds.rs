//! The kinds of value a key can hold: how each is read from the file,
//! range-checked with the range quoted in its message, and rendered back.
//!
//! A kind is a small value written in a key's declaration (`Int(0, 65535)`,
//! `Seconds { max: 3600, note: "" }`); the field's type says what it
//! produces. A new kind of value is a new type here implementing
//! [`Kind`]; a new key of an existing kind needs nothing here.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::section::{Apply, Change, Kind, Reader, Rendered, Section};
use super::Endpoint;
use crate::rate::ConnRate;
use crate::rule::Rule;

/// An integer in `min..=max` (the two fields), of whatever integer type
/// the field has.
pub(super) struct Int(pub i64, pub i64);

impl<T> Kind<T> for Int
where
    T: TryFrom<i64> + Copy + PartialEq,
    i64: TryFrom<T>,
{
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<T> {
        let n: i64 = r.deserialize(value, key)?;
        let Int(min, max) = *self;
        match T::try_from(n) {
            Ok(x) if (min..=max).contains(&n) => Some(x),
            _ => {
                r.fail(
                    value,
                    key,
                    format!("{n} is out of range; allowed: {min} to {max}"),
                );
                None
            }
        }
    }

    fn render(&self, value: &T) -> Rendered {
        // Every value read passed the i64 range check above.
        i64::try_from(*value).map_or(Rendered::Unset, |n| Rendered::Value(n.into()))
    }
}

/// `true` or `false`.
pub(super) struct Flag;

impl Kind<bool> for Flag {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<bool> {
        r.deserialize(value, key)
    }

    fn render(&self, value: &bool) -> Rendered {
        Rendered::Value((*value).into())
    }
}

/// A host name or an IPv4/IPv6 literal (brackets around IPv6 dropped).
pub(super) struct Host;

impl Kind<String> for Host {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<String> {
        let s: String = r.deserialize(value, key)?;
        let s = s.trim();
        if s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch == '/') {
            r.fail(
                value,
                key,
                "must be a host name or an IPv4/IPv6 address".into(),
            );
            return None;
        }
        Some(s.trim_start_matches('[').trim_end_matches(']').to_string())
    }

    fn render(&self, value: &String) -> Rendered {
        Rendered::Value(value.clone().into())
    }
}

/// A listening address, `HOST:PORT`: a host name or IPv4 literal, or an
/// IPv6 literal in brackets (`[::1]:7007`), and a port 0-65535.
pub(super) struct Address;

impl Kind<Endpoint> for Address {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Endpoint> {
        let s: String = r.deserialize(value, key)?;
        match Endpoint::parse(s.trim()) {
            Ok(e) => Some(e),
            Err(why) => {
                r.fail(
                    value,
                    key,
                    format!(
                        "\"{s}\" is not an address: {why}; expected HOST:PORT, IPv6 as [::1]:7007"
                    ),
                );
                None
            }
        }
    }

    fn render(&self, value: &Endpoint) -> Rendered {
        if value.host.is_empty() {
            Rendered::Unset
        } else {
            Rendered::Value(value.to_string().into())
        }
    }
}

/// An ordered list of access rules, each a string (`"allow 192.0.2.0/24"`,
/// `"deny all"`); a bad one is refused at its own place, named as
/// `access[2]`. At most `MAX_RULES`.
pub(super) struct Rules;

/// The most rules one list may hold (each client is checked in order).
const MAX_RULES: usize = 1024;

impl Kind<Vec<Rule>> for Rules {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Vec<Rule>> {
        let DeValue::Array(items) = value.get_ref() else {
            r.with_serde(value, key, |d| {
                serde::Deserializer::deserialize_any(d, Refuse("an array of rule strings"))
            })?;
            return None;
        };
        if items.len() > MAX_RULES {
            r.fail(
                value,
                key,
                format!("{} rules; at most {MAX_RULES}", items.len()),
            );
            return None;
        }
        let mut rules = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let at = format!("{key}[{i}]");
            let Some(text) = r.deserialize::<String>(item, &at) else {
                ok = false;
                continue;
            };
            match Rule::parse(&text) {
                Ok(rule) => rules.push(rule),
                Err(why) => {
                    r.fail(item, &at, why);
                    ok = false;
                }
            }
        }
        ok.then_some(rules)
    }

    fn render(&self, value: &Vec<Rule>) -> Rendered {
        let items = value.iter().map(|r| toml::Value::from(r.to_string()));
        Rendered::Value(toml::Value::Array(items.collect()))
    }
}

/// A connection rate: `"N/s"` or `"N/m"`, optionally `burst B`; 0 (or
/// `"0"`) = off.
pub(super) struct Rate;

impl Kind<ConnRate> for Rate {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<ConnRate> {
        let text = match value.get_ref() {
            DeValue::Integer(_) => {
                let n: i64 = r.deserialize(value, key)?;
                if n == 0 {
                    return Some(ConnRate::OFF);
                }
                format!("{n}")
            }
            _ => r.deserialize::<String>(value, key)?,
        };
        match ConnRate::parse(text.trim()) {
            Ok(rate) => Some(rate),
            Err(why) => {
                r.fail(value, key, why);
                None
            }
        }
    }

    fn render(&self, value: &ConnRate) -> Rendered {
        if value.is_on() {
            Rendered::Value(value.to_string().into())
        } else {
            Rendered::Value(0.into())
        }
    }
}

/// An absolute path that fits in a Unix socket address.
pub(super) struct SocketPath;

impl Kind<PathBuf> for SocketPath {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<PathBuf> {
        let s: String = r.deserialize(value, key)?;
        let problem = if s.is_empty() || !s.starts_with('/') {
            "must be an absolute path"
        } else if s.len() > 107 {
            "must be at most 107 bytes long (a Unix socket address)"
        } else {
            return Some(PathBuf::from(s));
        };
        r.fail(value, key, problem.into());
        None
    }

    fn render(&self, value: &PathBuf) -> Rendered {
        Rendered::Value(value.display().to_string().into())
    }
}

/// An absolute file path (a log file).
pub(super) struct AbsPath;

impl Kind<PathBuf> for AbsPath {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<PathBuf> {
        let s: String = r.deserialize(value, key)?;
        if s.is_empty() || !s.starts_with('/') || s.ends_with('/') {
            r.fail(value, key, "must be an absolute path to a file".into());
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn render(&self, value: &PathBuf) -> Rendered {
        Rendered::Value(value.display().to_string().into())
    }
}

/// An IP address and port to listen on: `"127.0.0.1:9707"`, `"[::1]:9707"`.
pub(super) struct ListenAddr;

impl Kind<SocketAddr> for ListenAddr {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<SocketAddr> {
        let s: String = r.deserialize(value, key)?;
        match s.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                r.fail(
                    value,
                    key,
                    format!("\"{s}\" is not an address and port like \"127.0.0.1:9707\" or \"[::1]:9707\""),
                );
                None
            }
        }
    }

    fn render(&self, value: &SocketAddr) -> Rendered {
        Rendered::Value(value.to_string().into())
    }
}

/// A non-empty string; the field is what an empty one is told.
pub(super) struct NonEmpty(pub &'static str);

impl Kind<String> for NonEmpty {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<String> {
        let s: String = r.deserialize(value, key)?;
        if s.is_empty() {
            r.fail(value, key, self.0.into());
            return None;
        }
        Some(s)
    }

    fn render(&self, value: &String) -> Rendered {
        Rendered::Value(value.clone().into())
    }
}

/// One of a fixed set of words: an enum with serde's derives (its refusal
/// lists the words: "unknown variant `loud`, expected one of ...").
pub(super) struct Word;

impl<T> Kind<T> for Word
where
    T: for<'de> Deserialize<'de> + Serialize + PartialEq,
{
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<T> {
        r.deserialize(value, key)
    }

    fn render(&self, value: &T) -> Rendered {
        // A unit variant always serializes, to its name.
        toml::Value::try_from(value).map_or(Rendered::Unset, Rendered::Value)
    }
}

/// A key that may be left out (`None`); the field is the kind when set.
pub(super) struct Optional<K>(pub K);

impl<T: PartialEq, K: Kind<T>> Kind<Option<T>> for Optional<K> {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Option<T>> {
        self.0.read(value, key, r).map(Some)
    }

    fn render(&self, value: &Option<T>) -> Rendered {
        value.as_ref().map_or(Rendered::Unset, |v| self.0.render(v))
    }
}

/// A list of networks, each an address or a CIDR (`"10.0.0.0/8"`,
/// `"::1"`), IPv4 or IPv6; a bare address is its own /32 or /128.
/// Element `i` is named `key[i]` in diagnostics.
pub(super) struct Cidrs;

impl Kind<Vec<ipnet::IpNet>> for Cidrs {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Vec<ipnet::IpNet>> {
        read_array(
            value,
            key,
            r,
            "an array of addresses or CIDRs",
            |item, at, r| {
                let text = r.deserialize::<String>(item, at)?;
                let net = parse_net(text.trim());
                if net.is_none() {
                    r.fail(
                    item,
                    at,
                    format!("\"{text}\" is not an address or CIDR (like \"192.0.2.0/24\" or \"::1\")"),
                );
                }
                net
            },
        )
    }

    fn render(&self, value: &Vec<ipnet::IpNet>) -> Rendered {
        let list: Vec<toml::Value> = value.iter().map(|n| n.to_string().into()).collect();
        Rendered::Value(toml::Value::Array(list))
    }
}

/// ALPN protocol names (`["echo", "h2"]`): each 1 to 255 bytes, no
/// repeats. Element `i` is named `key[i]` in diagnostics.
pub(super) struct Protocols;

impl Kind<Vec<String>> for Protocols {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Vec<String>> {
        let mut seen: Vec<String> = Vec::new();
        read_array(
            value,
            key,
            r,
            "an array of protocol names",
            |item, at, r| {
                let name = r.deserialize::<String>(item, at)?;
                if name.is_empty() || name.len() > 255 {
                    r.fail(item, at, "a protocol name is 1 to 255 bytes".into());
                    return None;
                }
                if seen.contains(&name) {
                    r.fail(item, at, format!("\"{name}\" is listed twice"));
                    return None;
                }
                seen.push(name.clone());
                Some(name)
            },
        )
    }

    fn render(&self, value: &Vec<String>) -> Rendered {
        let list: Vec<toml::Value> = value.iter().map(|n| n.clone().into()).collect();
        Rendered::Value(toml::Value::Array(list))
    }
}

/// An address or CIDR; a bare address is a single-address network.
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// A table (`[log]`) whose keys a [`Section`] declares.
pub(super) struct Table;

impl<S: Section + PartialEq> Kind<S> for Table {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<S> {
        let table = expect_table(value, key, r)?;
        Some(S::read(table, key, r))
    }

    fn render(&self, value: &S) -> Rendered {
        Rendered::Table(value.render())
    }

    fn changes(&self, key: &str, old: &S, new: &S, apply: Apply, out: &mut Vec<Change>) {
        S::changes(old, new, key, apply, out);
    }
}

/// An array of tables (`[[listen]]`), each element a [`Section`]; element
/// `i`'s keys are named `key[i].name` in diagnostics. A change anywhere in
/// the array is reported as the whole array's.
pub(super) struct Tables;

impl<S: Section + PartialEq> Kind<Vec<S>> for Tables {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<Vec<S>> {
        read_array(value, key, r, "an array of tables", |item, at, r| {
            let table = expect_table(item, at, r)?;
            Some(S::read(table, at, r))
        })
    }

    fn render(&self, value: &Vec<S>) -> Rendered {
        Rendered::Tables(value.iter().map(|s| Rendered::Table(s.render())).collect())
    }
}

/// Reads an array element by element (element `i` named `key[i]`), every
/// element's problems reported; `None` if it is not an array (`what` says
/// what it should be) or any element was refused.
fn read_array<T>(
    value: &Spanned<DeValue<'_>>,
    key: &str,
    r: &mut Reader<'_>,
    what: &'static str,
    mut item: impl FnMut(&Spanned<DeValue<'_>>, &str, &mut Reader<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    let DeValue::Array(items) = value.get_ref() else {
        r.with_serde(value, key, |d| {
            serde::Deserializer::deserialize_any(d, Refuse(what))
        })?;
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, it) in items.iter().enumerate() {
        match item(it, &format!("{key}[{i}]"), r) {
            Some(x) => out.push(x),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// `value` as a table, or a refusal in serde's words ("invalid type:
/// integer `5`, expected a table").
fn expect_table<'a, 'de>(
    value: &'a Spanned<DeValue<'de>>,
    key: &str,
    r: &mut Reader<'_>,
) -> Option<&'a DeTable<'de>> {
    if let DeValue::Table(t) = value.get_ref() {
        return Some(t);
    }
    r.with_serde(value, key, |d| {
        serde::Deserializer::deserialize_any(d, Refuse("a table"))
    })?;
    None
}

/// A serde visitor that accepts nothing: deserializing with it yields
/// serde's "invalid type: X, expected <the field>" for any value.
struct Refuse(&'static str);

impl serde::de::Visitor<'_> for Refuse {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A duration in whole seconds, at most `max` of them; `note` (if not
/// empty) ends the quoted range.
pub(super) struct Seconds {
    pub max: u64,
    pub note: &'static str,
}

impl Kind<Duration> for Seconds {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Duration> {
        let range = format!(
            "allowed: 0 to {} seconds ({}), as an integer number of seconds or a string like \"90s\", \"5m\"{}",
            self.max,
            format_duration(Duration::from_secs(self.max)),
            if self.note.is_empty() { String::new() } else { format!("; {}", self.note) }
        );
        read_duration(value, key, r, Unit::Seconds, self.max, &range)
    }

    fn render(&self, value: &Duration) -> Rendered {
        Rendered::Value(format_duration(*value).into())
    }
}

/// A short duration in whole microseconds, at most `max` of them; 0 = off.
pub(super) struct Micros {
    pub max: u64,
}

impl Kind<Duration> for Micros {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Duration> {
        let range = format!(
            "allowed: 0 (off) to {} microseconds, as an integer number of microseconds or a string like \"50us\", \"1ms\"",
            self.max
        );
        read_duration(value, key, r, Unit::Micros, self.max, &range)
    }

    fn render(&self, value: &Duration) -> Rendered {
        Rendered::Value(format_duration(*value).into())
    }
}

/// A duration written as a bare number of `unit`s or a string like "90s";
/// refused unless a whole number of `unit`s, at most `max` of them.
/// `range` ends every message.
fn read_duration(
    value: &Spanned<DeValue<'_>>,
    key: &str,
    r: &mut Reader<'_>,
    unit: Unit,
    max: u64,
    range: &str,
) -> Option<Duration> {
    let raw = r.with_serde(value, key, |d| {
        serde::Deserializer::deserialize_any(d, RawDurationVisitor(unit))
    })?;
    let parsed = match raw {
        RawDuration::Count(n) if n >= 0 => Ok(unit.times(n as u64)),
        RawDuration::Count(n) => Err(format!("{n} is out of range; {range}")),
        RawDuration::Text(t) => match t.trim().parse::<u64>() {
            Ok(n) => Ok(unit.times(n)),
            Err(_) => humantime::parse_duration(t.trim())
                .map_err(|e| format!("\"{t}\" is not a duration ({e}); {range}")),
        },
    };
    let message = match parsed {
        Ok(d) if d.as_nanos() % unit.nanos() != 0 => {
            format!("must be a whole number of {}; {range}", unit.name())
        }
        Ok(d) if d <= unit.times(max) => return Some(d),
        Ok(d) => format!("{} is out of range; {range}", format_duration(d)),
        Err(m) => m,
    };
    r.fail(value, key, message);
    None
}

/// A duration as written: a bare number of the key's unit, or a string
/// like "90s", "5m" or "50us".
enum RawDuration {
    Count(i64),
    Text(String),
}

struct RawDurationVisitor(Unit);

impl serde::de::Visitor<'_> for RawDurationVisitor {
    type Value = RawDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unit::Seconds => {
                f.write_str("integer seconds or a duration string like \"90s\" or \"5m\"")
            }
            Unit::Micros => {
                f.write_str("integer microseconds or a duration string like \"50us\" or \"1ms\"")
            }
            Unit::Millis => {
                f.write_str("integer milliseconds or a duration string like \"20ms\" or \"1.5s\"")
            }
        }
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawDuration, E> {
        Ok(RawDuration::Count(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawDuration, E> {
        i64::try_from(v)
            .map(RawDuration::Count)
            .map_err(|_| E::custom("duration out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawDuration, E> {
        Ok(RawDuration::Text(v.to_string()))
    }
}

/// The unit a bare number in a duration setting counts.
#[derive(Clone, Copy)]
enum Unit {
    Seconds,
    Micros,
    Millis,
}

impl Unit {
    fn times(self, n: u64) -> Duration {
        match self {
            Unit::Seconds => Duration::from_secs(n),
            Unit::Micros => Duration::from_micros(n),
            Unit::Millis => Duration::from_millis(n),
        }
    }

    fn nanos(self) -> u128 {
        self.times(1).as_nanos()
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "seconds",
            Unit::Micros => "microseconds",
            Unit::Millis => "milliseconds",
        }
    }
}

/// Formats a duration the way the config accepts it ("0s", "90s", "5m",
/// and below a second "50us", "2ms").
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        let us = d.as_micros();
        if us.is_multiple_of(1000) {
            format!("{}ms", us / 1000)
        } else {
            format!("{us}us")
        }
    } else if secs == 0 {
        "0s".to_string()
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A duration with sub-second precision, for the fault keys: a bare
/// number counts milliseconds, a string has a unit (`"20ms"`, `"1.5s"`,
/// `"250us"`); whole microseconds, at most `max_secs` seconds; 0 = off.
pub(super) struct Span {
    pub max_secs: u64,
}

impl Kind<Duration> for Span {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Duration> {
        let max = Duration::from_secs(self.max_secs);
        let range = format!(
            "allowed: 0 (off) to {}, as an integer number of milliseconds or a string like \"20ms\", \"1.5s\", \"250us\"",
            format_duration(max)
        );
        let raw = r.with_serde(value, key, |d| {
            serde::Deserializer::deserialize_any(d, RawDurationVisitor(Unit::Millis))
        })?;
        let parsed = match raw {
            RawDuration::Count(n) if n >= 0 => Ok(Duration::from_millis(n as u64)),
            RawDuration::Count(n) => Err(format!("{n} is out of range; {range}")),
            RawDuration::Text(t) => match t.trim().parse::<u64>() {
                Ok(n) => Ok(Duration::from_millis(n)),
                Err(_) => humantime::parse_duration(t.trim())
                    .map_err(|e| format!("\"{t}\" is not a duration ({e}); {range}")),
            },
        };
        let message = match parsed {
            Ok(d) if !d.subsec_nanos().is_multiple_of(1000) => {
                format!("must be a whole number of microseconds; {range}")
            }
            Ok(d) if d <= max => return Some(d),
            Ok(d) => format!("{} is out of range; {range}", format_duration(d)),
            Err(m) => m,
        };
        r.fail(value, key, message);
        None
    }

    /// Off (zero) is left out: `--print-config` shows the faults in force.
    fn render(&self, value: &Duration) -> Rendered {
        if value.is_zero() {
            Rendered::Unset
        } else {
            Rendered::Value(format_duration(*value).into())
        }
    }
}

/// A rate in bytes per second (`"1MB/s"`, `"64KiB/s"`; 0 = off): see
/// [`Bandwidth::parse`] for the units.
pub(super) struct ByteRate;

impl Kind<Bandwidth> for ByteRate {
    fn read(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> Option<Bandwidth> {
        let text = match value.get_ref() {
            DeValue::Integer(_) => r.deserialize::<i64>(value, key)?.to_string(),
            _ => r.deserialize::<String>(value, key)?,
        };
        match Bandwidth::parse(&text) {
            Ok(b) => Some(b),
            Err(why) => {
                r.fail(value, key, why);
                None
            }
        }
    }

    fn render(&self, value: &Bandwidth) -> Rendered {
        if value.is_on() {
            Rendered::Value(value.to_string().into())
        } else {
            Rendered::Unset
        }
    }
}

/// A share from 0.0 to 1.0 (`0.1` = one in ten); an integer 0 or 1 too.
pub(super) struct Share;

impl Kind<Loss> for Share {
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<Loss> {
        let share: f64 = match value.get_ref() {
            DeValue::Integer(_) => r.deserialize::<i64>(value, key)? as f64,
            _ => r.deserialize::<f64>(value, key)?,
        };
        let loss = Loss::from_share(share);
        if loss.is_none() {
            r.fail(
                value,
                key,
                format!("{share} is out of range; allowed: 0.0 (off) to 1.0 (every datagram)"),
            );
        }
        loss
    }

    fn render(&self, value: &Loss) -> Rendered {
        if value.per_million() == 0 {
            return Rendered::Unset;
        }
        Rendered::Value(value.share().into())
    }
}

/// A rate in bytes per second; 0 = no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

/// The units a bandwidth may be written in, with their bytes: decimal
/// (`KB` = 1000) and binary (`KiB` = 1024) multiples of a byte.
const UNITS: [(&str, u64); 7] = [
    ("B", 1),
    ("KB", 1000),
    ("MB", 1000 * 1000),
    ("GB", 1000 * 1000 * 1000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

impl Bandwidth {
    /// Parses `"1MB/s"`, `"100 KiB/s"`, `"500B/s"` or `"0"` (off); the
    /// error says what is wrong.
    pub fn parse(text: &str) -> Result<Bandwidth, String> {
        let expected = "expected a number and a unit per second, like \"1MB/s\" or \"64KiB/s\" \
                        (units B, KB, MB, GB = 1000^n bytes; KiB, MiB, GiB = 1024^n), or 0 (off)";
        let text = text.trim();
        if text == "0" {
            return Ok(Bandwidth(0));
        }
        let Some(amount) = text.strip_suffix("/s") else {
            return Err(format!("\"{text}\" is not a rate; {expected}"));
        };
        let split = amount
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(amount.len());
        let (number, unit) = amount.split_at(split);
        let unit = unit.trim();
        let Ok(n) = number.parse::<u64>() else {
            return Err(format!("\"{text}\" has no whole number; {expected}"));
        };
        let Some(&(_, bytes)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!("\"{unit}\" is not a unit; {expected}"));
        };
        n.checked_mul(bytes)
            .filter(|b| *b <= 100 * 1000 * 1000 * 1000)
            .map(Bandwidth)
            .ok_or_else(|| format!("\"{text}\" is more than 100GB/s"))
    }

    /// True when the rate caps anything.
    pub fn is_on(self) -> bool {
        self.0 > 0
    }
}

impl fmt::Display for Bandwidth {
    /// The largest unit that says it exactly (`1MB/s`, `64KiB/s`, `1500B/s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let (unit, bytes) = UNITS
            .iter()
            .filter(|(_, b)| self.0.is_multiple_of(*b))
            .max_by_key(|(_, b)| *b)
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}/s", self.0 / bytes)
    }
}

/// A share of datagrams, 0.0 to 1.0, kept in millionths so that a config
/// compares exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss(u32);

impl Loss {
    /// One, in the unit kept.
    pub const WHOLE: u32 = 1_000_000;

    /// From a share 0.0..=1.0 (rounded to the millionth); `None` outside.
    pub fn from_share(share: f64) -> Option<Loss> {
        (0.0..=1.0)
            .contains(&share)
            .then(|| Loss((share * f64::from(Self::WHOLE)).round() as u32))
    }

    /// The share as a float.
    pub fn share(self) -> f64 {
        f64::from(self.0) / f64::from(Self::WHOLE)
    }

    /// Millionths of the datagrams dropped.
    pub fn per_million(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.share())
    }
}
