//! Fuzzes the config parser and validator, `Config::parse`, on any bytes.
//!
//! Invariants: it never panics; every rejection carries at least one
//! diagnostic, each naming the file and a line and column inside the text
//! (1-based, the column at most one past the line's last character) with a
//! message; every accepted config prints (`to_toml`) to text that parses
//! back to the same config.
//!
//! Bytes that are not UTF-8 are read lossily (U+FFFD), so the parser sees
//! every input as some text.

#![no_main]

use echo_lab::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, FILE) {
        Ok(config) => round_trips(&config),
        Err(e) => located(&text, &e),
    }
});

/// The printed form of an accepted config is accepted and equal to it.
fn round_trips(config: &Config) {
    let printed = config.to_toml();
    match Config::parse(&printed, FILE) {
        Ok(again) => assert_eq!(&again, config, "round trip changed the config:\n{printed}"),
        Err(e) => panic!("printed config rejected: {e}\n{printed}"),
    }
}

/// Every diagnostic points inside `text`.
fn located(text: &str, e: &ConfigError) {
    let diags = e.diagnostics();
    assert!(!diags.is_empty(), "rejection without a location: {e}");
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diags {
        assert_eq!(d.file, FILE, "{d}");
        assert!(
            (1..=lines.len()).contains(&d.line),
            "line {} of {}: {d}",
            d.line,
            lines.len()
        );
        let width = lines[d.line - 1].chars().count();
        assert!(
            (1..=width + 1).contains(&d.column),
            "column {} of a {width}-character line: {d}",
            d.column
        );
        assert!(!d.message.trim().is_empty(), "empty message: {d}");
    }
    assert!(!e.to_string().is_empty());
}
