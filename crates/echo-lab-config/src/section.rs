//! The machinery behind "a key is declared once": the [`section!`] macro
//! that turns one line per key into a typed struct and its [`Section`]
//! impl, and the [`Kind`] trait each key's reading and rendering goes
//! through.
//!
//! A section is a table of the file: the top level, `[log]`, or (with the
//! `Tables` kind) each element of an array of tables. Reading a section is
//! one walk over its parsed table: a key the section declares is read by
//! its kind, any other is refused with the nearest declared key suggested,
//! and a nested table or array is read by the kind of the key that holds
//! it, with the key path (`log.level`, `listen[1].port`) passed down so
//! every problem is located and named. Rendering (`--print-config`) and
//! the reload report ([`Change`]) walk the same declarations.

use serde::de::IntoDeserializer;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{serde_message, Diagnostic, Source};

/// Declares a section: its struct (fields `pub`, documented by the doc
/// comments written on each key), its defaults, and its [`Section`] impl,
/// from one line per key:
///
/// ```text
/// /// What the key does.
/// name: Type = default, kind, reload;
/// ```
///
/// `kind` is a value whose type implements [`Kind<Type>`] (how the key is
/// read, range-checked and rendered); `reload` is `Live` or `AtRestart`
/// ([`Apply`]). A key whose kind is a table caps its keys' reload marks:
/// `AtRestart` there makes every key inside it apply at restart.
macro_rules! section {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident: $ty:ty = $default:expr, $kind:expr, $apply:ident;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $crate::section::Section for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn read_key(
                &mut self,
                name: &str,
                value: &serde_spanned::Spanned<toml::de::DeValue<'_>>,
                key: &str,
                r: &mut $crate::section::Reader<'_>,
            ) -> bool {
                use $crate::section::Kind;
                match name {
                    $(stringify!($field) => {
                        if let Some(v) = Kind::<$ty>::read(&$kind, value, key, r) {
                            self.$field = v;
                        }
                    })*
                    _ => return false,
                }
                true
            }

            fn render(&self) -> Vec<(&'static str, $crate::section::Rendered)> {
                use $crate::section::Kind;
                vec![$((stringify!($field), Kind::<$ty>::render(&$kind, &self.$field))),*]
            }

            fn changes(
                old: &Self,
                new: &Self,
                prefix: &str,
                cap: $crate::section::Apply,
                out: &mut Vec<$crate::section::Change>,
            ) {
                use $crate::section::{join_key, Apply, Kind};
                $(Kind::<$ty>::changes(
                    &$kind,
                    &join_key(prefix, stringify!($field)),
                    &old.$field,
                    &new.$field,
                    Apply::$apply.within(cap),
                    out,
                );)*
            }
        }
    };
}

/// A table of keys, declared with [`section!`].
pub(crate) trait Section: Default {
    /// The declared key names, in declaration order.
    const KEYS: &'static [&'static str];

    /// Reads the value of key `name` (full path `key`) into `self`; false
    /// if the section has no such key.
    fn read_key(
        &mut self,
        name: &str,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        r: &mut Reader<'_>,
    ) -> bool;

    /// Every key with its value as the file would say it.
    fn render(&self) -> Vec<(&'static str, Rendered)>;

    /// The keys whose values differ, under `prefix`, marks capped by `cap`.
    fn changes(old: &Self, new: &Self, prefix: &str, cap: Apply, out: &mut Vec<Change>);

    /// Reads `table` over the defaults; problems go to `r`, under `prefix`.
    fn read(table: &DeTable<'_>, prefix: &str, r: &mut Reader<'_>) -> Self {
        let mut section = Self::default();
        for (name, value) in table.iter() {
            let key = join_key(prefix, name.get_ref());
            if !section.read_key(name.get_ref(), value, &key, r) {
                r.unknown(name, prefix, Self::KEYS);
            }
        }
        section
    }
}

/// How one key's value is read from the file and written back.
pub(crate) trait Kind<T: PartialEq> {
    /// Reads and checks `value` for the key at path `key`; on a problem,
    /// reports it to `r` and returns `None` (the default is kept).
    fn read(&self, value: &Spanned<DeValue<'_>>, key: &str, r: &mut Reader<'_>) -> Option<T>;

    /// The value as the file would say it (`--print-config`).
    fn render(&self, value: &T) -> Rendered;

    /// Reports `key` if its value changed (a table reports its keys).
    fn changes(&self, key: &str, old: &T, new: &T, apply: Apply, out: &mut Vec<Change>) {
        if old != new {
            out.push(Change {
                key: key.to_string(),
                from: self.render(old).shown(),
                to: self.render(new).shown(),
                apply,
            });
        }
    }
}

/// When a changed key takes effect on a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// At once, on reload.
    Live,
    /// At the next start; a reload reports it as deferred.
    AtRestart,
}

impl Apply {
    /// This mark for a key inside a table marked `cap`.
    pub(crate) fn within(self, cap: Apply) -> Apply {
        if cap == Apply::AtRestart {
            Apply::AtRestart
        } else {
            self
        }
    }
}

/// One key whose value differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key path (`log.level`).
    pub key: String,
    /// The old value as the file would say it, unquoted (`5m`, `unset`).
    pub from: String,
    /// The new value, likewise.
    pub to: String,
    /// When the new value takes effect.
    pub apply: Apply,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.from, self.to)
    }
}

/// A value as the file says it, in declaration order (a `toml::Table`
/// would sort the keys).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rendered {
    /// An optional key left out.
    Unset,
    /// A plain value.
    Value(toml::Value),
    /// A table, its keys in declaration order.
    Table(Vec<(&'static str, Rendered)>),
    /// An array of tables.
    Tables(Vec<Rendered>),
}

impl Rendered {
    /// For reports: strings unquoted, everything else as TOML inline.
    pub(crate) fn shown(&self) -> String {
        match self {
            Rendered::Unset => "unset".to_string(),
            Rendered::Value(toml::Value::String(s)) => s.clone(),
            other => other.inline(),
        }
    }

    /// TOML inline syntax (`"5m"`, `{ level = "info" }`).
    fn inline(&self) -> String {
        match self {
            Rendered::Unset => String::new(),
            Rendered::Value(v) => v.to_string(),
            Rendered::Table(items) => {
                let body: Vec<String> = items
                    .iter()
                    .filter(|(_, v)| *v != Rendered::Unset)
                    .map(|(k, v)| format!("{k} = {}", v.inline()))
                    .collect();
                format!("{{ {} }}", body.join(", "))
            }
            Rendered::Tables(items) => {
                let body: Vec<String> = items.iter().map(Rendered::inline).collect();
                format!("[{}]", body.join(", "))
            }
        }
    }

    fn is_table(&self) -> bool {
        matches!(self, Rendered::Table(_) | Rendered::Tables(_))
    }
}

impl Serialize for Rendered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rendered::Unset => s.serialize_none(),
            Rendered::Value(v) => v.serialize(s),
            Rendered::Tables(items) => s.collect_seq(items),
            Rendered::Table(items) => {
                let mut map = s.serialize_map(None)?;
                // Plain values first: TOML puts a table's keys before its
                // sub-tables.
                let set = items.iter().filter(|(_, v)| *v != Rendered::Unset);
                for (k, v) in set.clone().filter(|(_, v)| !v.is_table()) {
                    map.serialize_entry(k, v)?;
                }
                for (k, v) in set.filter(|(_, v)| v.is_table()) {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Collects the problems found while reading, each located in the source.
pub(crate) struct Reader<'a> {
    src: &'a Source<'a>,
    diags: Vec<Diagnostic>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(src: &'a Source<'a>) -> Self {
        Reader {
            src,
            diags: Vec::new(),
        }
    }

    /// The problems found, in file order.
    pub(super) fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by_key(|d| (d.line, d.column));
        self.diags
    }

    /// Refuses `value` of key `key` with `message`.
    pub(crate) fn fail(&mut self, value: &Spanned<DeValue<'_>>, key: &str, message: String) {
        self.fail_at(value.span().start, key, message);
    }

    fn fail_at(&mut self, offset: usize, key: &str, message: String) {
        let d = self.src.diag(offset, Some(key.to_string()), message);
        self.diags.push(d);
    }

    /// Deserializes `value` with serde (the type errors then read as
    /// serde's: "invalid type: string \"abc\", expected an integer").
    pub(crate) fn deserialize<'de, T: Deserialize<'de>>(
        &mut self,
        value: &Spanned<DeValue<'de>>,
        key: &str,
    ) -> Option<T> {
        self.with_serde(value, key, |d| T::deserialize(d))
    }

    /// Runs `f` on a serde deserializer for `value`; an error is refused.
    pub(crate) fn with_serde<'de, T>(
        &mut self,
        value: &Spanned<DeValue<'de>>,
        key: &str,
        f: impl FnOnce(toml::de::ValueDeserializer<'de>) -> Result<T, toml::de::Error>,
    ) -> Option<T> {
        match f(value.clone().into_deserializer()) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = e.span().map_or(value.span().start, |s| s.start);
                self.fail_at(at, key, serde_message(&e));
                None
            }
        }
    }

    /// Refuses a key the section does not declare, suggesting the nearest.
    fn unknown(&mut self, name: &Spanned<std::borrow::Cow<'_, str>>, prefix: &str, known: &[&str]) {
        let path = join_key(prefix, name.get_ref());
        let mut message = format!("unknown key '{path}'");
        if let Some(near) = nearest(name.get_ref(), known) {
            message.push_str(&format!("; did you mean '{}'?", join_key(prefix, near)));
        }
        self.fail_at(name.span().start, &path, message);
    }
}

/// The known key closest to `name`, if it is close enough to be a typo.
fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `prefix.key`, or `key` at the top level.
pub(crate) fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}
