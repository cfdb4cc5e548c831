//! Valid configs: `--check-config` says OK and exits 0; `--print-config`
//! prints the effective config, defaults filled in, as TOML that reads
//! back to the same config.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn run(args: &[&str], config: &Path) -> Output {
    run_with_input(
        Command::new(ECHO_LAB)
            .args(args)
            .arg("--config")
            .arg(config),
        b"",
        IO_TIMEOUT,
    )
}

#[track_caller]
fn expect_ok(text: &str) {
    let f = config_file(text);
    for flag in ["--check-config", "-t"] {
        let out = run(&[flag], f.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{text:?}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("OK ({})\n", f.path().display())
        );
        assert!(stderr.is_empty(), "{stderr}");
    }
}

fn print_config(text: &str) -> toml::Table {
    let f = config_file(text);
    let out = run(&["--print-config"], f.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("UTF-8 config");
    printed
        .parse()
        .unwrap_or_else(|e| panic!("--print-config output does not parse: {e}\n{printed}"))
}

#[test]
fn valid_configs_are_ok() {
    expect_ok("");
    expect_ok("# only a comment\n");
    expect_ok("port = 0\n");
    expect_ok(
        "host = \"127.0.0.1\"\nport = 7007\nbacklog = 16\npool_size = 2\n\
         idle_timeout = \"90s\"\nmax_connections = 5\ndrain_timeout = 3\n\
         max_pending_bytes = 1024\ncontrol_socket = \"/run/echo-lab/control.sock\"\n\
         control_group = \"adm\"\n\n[log]\nlevel = \"debug\"\ntarget = \"syslog\"\n",
    );
    // The edges of the ranges are allowed.
    expect_ok("port = 65535\nbacklog = 1\npool_size = 1024\nmax_connections = 1\n");
    expect_ok("max_pending_bytes = 67108864\nidle_timeout = 0\ndrain_timeout = \"1h\"\n");
    expect_ok("idle_timeout = \"168h\"\ndrain_timeout = 0\n");
}

#[test]
fn print_config_shows_the_defaults() {
    let t = print_config("");
    assert_eq!(t["host"].as_str(), Some("127.0.0.1"));
    assert_eq!(t["port"].as_integer(), Some(7007));
    assert_eq!(t["backlog"].as_integer(), Some(1024));
    assert!(t["pool_size"].as_integer().is_some_and(|n| n >= 1));
    assert_eq!(t["idle_timeout"].as_str(), Some("5m"));
    assert_eq!(t["max_connections"].as_integer(), Some(10_000));
    assert_eq!(t["drain_timeout"].as_str(), Some("10s"));
    assert_eq!(t["max_pending_bytes"].as_integer(), Some(65536));
    assert_eq!(t["log"]["level"].as_str(), Some("info"));
    assert_eq!(t["log"]["target"].as_str(), Some("stderr"));
}

#[test]
fn print_config_shows_what_the_file_sets() {
    let t = print_config(
        "port = 0\npool_size = 3\nidle_timeout = 90\ndrain_timeout = \"2m\"\n\
         max_pending_bytes = 4096\n[log]\nlevel = \"warn\"\n",
    );
    assert_eq!(t["port"].as_integer(), Some(0));
    assert_eq!(t["pool_size"].as_integer(), Some(3));
    assert_eq!(t["idle_timeout"].as_str(), Some("90s"));
    assert_eq!(t["drain_timeout"].as_str(), Some("2m"));
    assert_eq!(t["max_pending_bytes"].as_integer(), Some(4096));
    assert_eq!(t["log"]["level"].as_str(), Some("warn"));
    // Unset keys keep their defaults.
    assert_eq!(t["backlog"].as_integer(), Some(1024));
}

#[test]
fn print_config_reads_back_to_the_same_config() {
    for text in [
        "",
        "port = 0\npool_size = 2\nidle_timeout = 0\nmax_connections = 3\n",
        "host = \"::1\"\nidle_timeout = \"1h 30m\"\ncontrol_socket = \"/tmp/x.sock\"\n\
         control_group = \"adm\"\n[log]\ntarget = \"syslog\"\n",
    ] {
        let first = config_file(text);
        let out = run(&["--print-config"], first.path());
        assert!(out.status.success());
        let printed = String::from_utf8(out.stdout).unwrap();
        // The printed config is itself a valid config file ...
        expect_ok(&printed);
        // ... and printing it again gives the same text.
        let second = config_file(&printed);
        let again = run(&["--print-config"], second.path());
        assert!(again.status.success());
        assert_eq!(
            String::from_utf8(again.stdout).unwrap(),
            printed,
            "for {text:?}"
        );
    }
}
