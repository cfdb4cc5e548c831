//! Every kind of config error, located: `--check-config` prints
//! `FILE:LINE:COL: key 'K': message` on stderr and exits 78 (EX_CONFIG);
//! the daemon refuses to start on the same file with the same message.

mod support;

use std::process::{Command, Output};

use support::*;

/// Runs `echo-lab --check-config --config FILE` on `text`; returns the
/// output and the file's path as the daemon prints it.
fn check(text: &str) -> (Output, String) {
    let f = config_file(text);
    let path = f.path().display().to_string();
    let out = run_with_input(
        Command::new(ECHO_LAB)
            .arg("--check-config")
            .arg("--config")
            .arg(f.path()),
        b"",
        IO_TIMEOUT,
    );
    (out, path)
}

/// Expects exit 78, nothing on stdout, and on stderr one line per entry of
/// `want`: `(line, column, key, fragments of the message)`.
#[track_caller]
fn expect_errors(text: &str, want: &[(usize, usize, &str, &[&str])]) {
    let (out, path) = check(text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(78),
        "exit status for {text:?}; stderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), want.len(), "for {text:?}, stderr: {stderr}");
    for (line, col, key, fragments) in want {
        let prefix = format!("{path}:{line}:{col}: key '{key}': ");
        let found = lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| {
                panic!("no line starting {prefix:?} for {text:?}; stderr: {stderr}")
            });
        for f in *fragments {
            assert!(found.contains(f), "{found:?} lacks {f:?}");
        }
    }
}

#[test]
fn syntax_errors() {
    expect_errors("port = 7007\nhost = \n", &[(2, 8, "host", &[])]);
    expect_errors("port = = 5\n", &[(1, 8, "port", &[])]);
    // A syntax error outside any key: located, without a key.
    let (out, path) = check("pool_size = 2\n[log\nlevel = \"info\"\n");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("{path}:2:")), "{stderr}");
}

#[test]
fn unknown_keys_with_a_suggestion() {
    expect_errors(
        "host = \"127.0.0.1\"\nprot = 5\n",
        &[(
            2,
            1,
            "prot",
            &["unknown key 'prot'", "did you mean 'port'?"],
        )],
    );
    expect_errors(
        "pool_size = 2\n  idle_timout = 5\n",
        &[(2, 3, "idle_timout", &["did you mean 'idle_timeout'?"])],
    );
    expect_errors(
        "[log]\nlevle = \"info\"\n",
        &[(2, 1, "log.levle", &["did you mean 'log.level'?"])],
    );
    // Nothing near enough: refused, without a suggestion.
    let (out, _) = check("colour_scheme = \"blue\"\n");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key 'colour_scheme'"), "{stderr}");
    assert!(!stderr.contains("did you mean"), "{stderr}");
    // Every unknown key is reported, not just the first.
    expect_errors(
        "prot = 1\nbaclog = 2\n",
        &[
            (1, 1, "prot", &["'port'"]),
            (2, 1, "baclog", &["'backlog'"]),
        ],
    );
}

#[test]
fn wrong_types() {
    expect_errors(
        "port = \"abc\"\n",
        &[(1, 8, "port", &["invalid type", "integer"])],
    );
    expect_errors(
        "pool_size = 1.5\n",
        &[(1, 13, "pool_size", &["invalid type", "integer"])],
    );
    expect_errors(
        "max_connections = true\n",
        &[(1, 19, "max_connections", &["invalid type", "integer"])],
    );
    expect_errors(
        "host = 127\n",
        &[(1, 8, "host", &["invalid type", "string"])],
    );
    expect_errors("log = 5\n", &[(1, 7, "log", &["invalid type", "table"])]);
}

#[test]
fn out_of_range_values_quote_the_range() {
    expect_errors(
        "port = 70000\n",
        &[(
            1,
            8,
            "port",
            &["70000 is out of range", "allowed: 0 to 65535"],
        )],
    );
    expect_errors(
        "backlog = 0\n",
        &[(1, 11, "backlog", &["allowed: 1 to 65535"])],
    );
    expect_errors(
        "max_connections = 0\n",
        &[(1, 19, "max_connections", &["allowed: 1 to 1000000"])],
    );
    expect_errors(
        "max_pending_bytes = 100\n",
        &[(1, 21, "max_pending_bytes", &["allowed: 1024 to 67108864"])],
    );
    expect_errors(
        "max_pending_bytes = 67108865\n",
        &[(1, 21, "max_pending_bytes", &["allowed: 1024 to 67108864"])],
    );
    // Several at once: all reported.
    expect_errors(
        "pool_size = 0\nbacklog = -1\n",
        &[
            (1, 13, "pool_size", &["allowed: 1 to 1024"]),
            (2, 11, "backlog", &["-1 is out of range"]),
        ],
    );
}

#[test]
fn bad_durations() {
    expect_errors(
        "idle_timeout = \"soon\"\n",
        &[(
            1,
            16,
            "idle_timeout",
            &["\"soon\" is not a duration", "\"90s\""],
        )],
    );
    expect_errors(
        "idle_timeout = -5\n",
        &[(1, 16, "idle_timeout", &["-5 is out of range", "0 = never"])],
    );
    expect_errors(
        "drain_timeout = \"2h\"\n",
        &[(1, 17, "drain_timeout", &["out of range", "3600 seconds"])],
    );
    expect_errors(
        "idle_timeout = \"1.5s\"\n",
        &[(1, 16, "idle_timeout", &["whole number of seconds"])],
    );
    expect_errors(
        "drain_timeout = true\n",
        &[(1, 17, "drain_timeout", &["invalid type"])],
    );
}

#[test]
fn log_table_errors() {
    expect_errors(
        "[log]\nlevel = \"loud\"\n",
        &[(2, 9, "log.level", &["`loud`", "`debug`"])],
    );
    expect_errors(
        "port = 0\n\n[log]\ntarget = \"journal\"\n",
        &[(
            4,
            10,
            "log.target",
            &["`journal`", "`stderr`", "`syslog`", "`file`"],
        )],
    );
    expect_errors(
        "[log]\nformat = \"xml\"\npath = \"log.txt\"\nsessions = \"yes\"\n",
        &[
            (2, 10, "log.format", &["`xml`", "`text`", "`json`"]),
            (3, 8, "log.path", &["absolute path"]),
            (4, 12, "log.sessions", &[]),
        ],
    );
    expect_errors(
        "metrics_listen = \"localhost\"\n",
        &[(1, 18, "metrics_listen", &["127.0.0.1:9707"])],
    );
    expect_errors("[log]\nlevel = 3\n", &[(2, 9, "log.level", &[])]);
}

#[test]
fn other_invalid_values() {
    expect_errors(
        "host = \"a b\"\n",
        &[(1, 8, "host", &["host name or an IPv4/IPv6 address"])],
    );
    expect_errors(
        "control_socket = \"run/echo.sock\"\n",
        &[(1, 18, "control_socket", &["absolute path"])],
    );
}

#[test]
fn missing_explicit_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = run_with_input(
        Command::new(ECHO_LAB)
            .arg("--check-config")
            .arg("--config")
            .arg(&missing),
        b"",
        IO_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the message names the file: {stderr}"
    );
    assert!(stderr.contains("No such file"), "{stderr}");
}

#[test]
fn the_daemon_refuses_to_start_on_a_bad_config() {
    let f = config_file("host = \"127.0.0.1\"\nport = 0\npool_size = 0\n");
    let out = run_with_input(
        Command::new(ECHO_LAB).arg("--config").arg(f.path()),
        b"",
        IO_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("not starting"), "{stderr}");
    let located = format!("{}:3:13: key 'pool_size': ", f.path().display());
    assert!(stderr.contains(&located), "no {located:?} in {stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn the_daemon_refuses_to_start_without_its_explicit_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone.toml");
    let out = run_with_input(
        Command::new(ECHO_LAB).arg("--config").arg(&missing),
        b"",
        IO_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}
