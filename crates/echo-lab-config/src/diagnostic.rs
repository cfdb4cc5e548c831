//! Located config errors: turning byte offsets in the file into
//! `FILE:LINE:COL: key 'K': message`, the form every rejection takes.
//!
//! Kept apart from the keys so that reading a key (in `section` and
//! `kinds`) only ever says *what* is wrong and *where* (an offset); how a
//! location is counted and printed lives here once.

use std::fmt;
use std::path::PathBuf;

/// A config error: the file could not be read, or its content is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One or more problems in the content, each with its location.
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The individual problems (an I/O error has none).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(d) => d,
        }
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// One problem in a config file, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given by the operator.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path (`log.level`), when the problem belongs to a key.
    pub key: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "key '{key}': ")?;
        }
        f.write_str(&self.message)
    }
}

/// The text being parsed and its name, to turn byte offsets into locations.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl Source<'_> {
    /// A diagnostic at byte `offset` of the text.
    pub(super) fn diag(&self, offset: usize, key: Option<String>, message: String) -> Diagnostic {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            key,
            message,
        }
    }

    /// A TOML syntax error, with the key of its line when there is one.
    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map_or(0, |s| s.start);
        let key = self.key_on_line(offset);
        ConfigError::Invalid(vec![self.diag(offset, key, serde_message(e))])
    }

    /// For syntax errors (no parsed table to consult): the bare key that
    /// starts the line holding `offset`, if the line looks like `key = ...`.
    fn key_on_line(&self, offset: usize) -> Option<String> {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        let bare = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        bare.then(|| key.to_string())
    }
}

/// The message of a toml/serde error, in the words of the config file
/// (Rust type names replaced by what the operator wrote).
pub(super) fn serde_message(e: &toml::de::Error) -> String {
    e.message()
        .trim()
        .replace("expected i64", "expected an integer")
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
