//! bench-report: turns the results `bench/compare.sh` collects into the
//! results section of `docs/PERFORMANCE.md` and the chart `docs/perf.svg`.
//!
//! Input is one JSON object per line, one line per (round, server, client,
//! point): `{"round", "server", "client", "point", "label", "bench": <the
//! client's JSON output>, "server_cpu": {"cpu_secs", "window_secs",
//! "percent", "us_per_round_trip"}, "ready_ms", "rss_before_kb",
//! "rss_holding_kb"}` with the fields that apply (a line without "client"
//! is `echo-labctl bench`'s). Every figure is the median over rounds, with
//! the spread (min-max over rounds) beside it when there was more than one
//! round, so a reader can tell a lead from noise; a cell also says how many
//! round trips or connections failed in all rounds together, so a fast but
//! broken run cannot pass unnoticed.
//!
//! The ping-pong points get one table per client (`echo-labctl bench`,
//! `tcp-echo-benchmark`, `tokio-client`, `thread-client`), because a figure
//! holds only for the client that produced it. In each, echo-lab's columns (its default
//! configuration, and with `busy_poll` on) are compared with the best peer
//! under that client: the ratio is echo-lab / best, so above 1 is better
//! for rates and below 1 is better for times, CPU and memory. The fixed-rate
//! point (every server at the same offered load) has a table of its own.
//!
//! The section between `<!-- results:begin -->` and `<!-- results:end -->`
//! is replaced; the rest of the document is left as written.
//!
//! Usage: `bench-report RESULTS.jsonl MARKDOWN SVG CONTEXT`, where CONTEXT
//! is a line describing the machine and settings, printed above the tables;
//! or `bench-report rate RESULTS.jsonl`, which prints the fixed rate
//! compare.sh uses: half the slowest peer's median round trips/s at the
//! `pp-mid` point under `echo-labctl bench`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::Value;

const SERVERS: [&str; 5] = [
    "echo-lab",
    ECHO_LAB_BUSY_POLL,
    "tokio-echo",
    "thread-echo",
    "uring-echo",
];
/// echo-lab with `busy_poll` set (see `bench/compare.sh`).
const ECHO_LAB_BUSY_POLL: &str = "echo-lab-busy-poll";
/// The columns compared with the best peer.
const OURS: [&str; 2] = ["echo-lab", ECHO_LAB_BUSY_POLL];
/// The clients, in the order of their tables.
const CLIENTS: [&str; 4] = [
    "echo-labctl",
    "tcp-echo-benchmark",
    "tokio-client",
    "thread-client",
];
/// The client of lines that do not name one.
const DEFAULT_CLIENT: &str = "echo-labctl";

/// A server's column heading.
fn heading(server: &str) -> &str {
    if server == ECHO_LAB_BUSY_POLL {
        "echo-lab, busy_poll = 50us"
    } else {
        server
    }
}

/// What a client's table is called.
fn client_title(client: &str) -> &str {
    match client {
        "echo-labctl" => "`echo-labctl bench` (this project's generator: mio, one thread per CPU)",
        "tcp-echo-benchmark" => {
            "`tcp-echo-benchmark` 0.1 from crates.io (tokio, one task per connection; reports counts only, so no latency)"
        }
        "tokio-client" => "`bench/comparison/tokio-client` (tokio, one task per connection, `write_all` then `read_exact`)",
        "thread-client" => "`bench/comparison/thread-client` (blocking std, one OS thread per connection, `write_all` then `read_exact`)",
        other => other,
    }
}

const BEGIN: &str = "<!-- results:begin -->";
const END: &str = "<!-- results:end -->";

/// Whether a bigger figure is better.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

/// One server's figure in a row: median and spread over rounds, failures.
#[derive(Clone, Copy)]
struct Cell {
    median: f64,
    min: f64,
    max: f64,
    rounds: usize,
    failures: u64,
}

/// One table row: a cell per server.
struct Row {
    label: String,
    better: Better,
    values: BTreeMap<String, Cell>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, results] if cmd == "rate" => {
            let lines = read(results)?;
            match fixed_rate(&lines) {
                Some(r) => println!("{r:.0}"),
                None => bail!("no peer was measured at pp-mid under echo-labctl bench"),
            }
            Ok(())
        }
        [results, md, svg, context] => {
            let lines = read(results)?;
            let svg_name = Path::new(svg)
                .file_name()
                .map_or("perf.svg".into(), |n| n.to_string_lossy().into_owned());
            let section = render(&lines, context, &svg_name);
            splice(Path::new(md), &section)?;
            chart(Path::new(svg), &throughput(&lines))?;
            Ok(())
        }
        _ => bail!("usage: bench-report RESULTS.jsonl MARKDOWN SVG CONTEXT | bench-report rate RESULTS.jsonl"),
    }
}

fn read(results: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(results).with_context(|| format!("reading {results}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parsing the results")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn client_of(v: &Value) -> &str {
    v.get("client")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_CLIENT)
}

fn num(v: &Value, path: &str) -> Option<f64> {
    v.pointer(path).and_then(Value::as_f64)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// The servers that appear in `names`, in column order.
fn present<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'static str> {
    let seen: Vec<&str> = names.collect();
    SERVERS
        .iter()
        .copied()
        .filter(|s| seen.contains(s))
        .collect()
}

/// Points in order of first appearance, with their labels and modes.
fn points<'a>(lines: impl Iterator<Item = &'a Value>) -> Vec<(String, String, String)> {
    let mut seen: Vec<(String, String, String)> = Vec::new();
    for l in lines {
        let p = str_of(l, "point");
        if !seen.iter().any(|(q, _, _)| q == p) {
            let mode = l
                .pointer("/bench/mode")
                .and_then(Value::as_str)
                .unwrap_or("");
            seen.push((
                p.to_string(),
                str_of(l, "label").to_string(),
                mode.to_string(),
            ));
        }
    }
    seen
}

/// Median, spread and failures of `metric` per server over `lines` of
/// `point`.
fn row(
    lines: &[&Value],
    point: &str,
    label: String,
    better: Better,
    metric: impl Fn(&Value) -> Option<f64>,
) -> Row {
    let mut values = BTreeMap::new();
    for server in SERVERS {
        let mine: Vec<&Value> = lines
            .iter()
            .copied()
            .filter(|l| str_of(l, "point") == point && str_of(l, "server") == server)
            .collect();
        let failures = mine
            .iter()
            .map(|l| num(l, "/bench/errors/total").unwrap_or(0.0) as u64)
            .sum();
        let xs: Vec<f64> = mine.iter().filter_map(|l| metric(l)).collect();
        let (min, max) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        if let Some(m) = median(xs.clone()) {
            values.insert(
                server.to_string(),
                Cell {
                    median: m,
                    min,
                    max,
                    rounds: xs.len(),
                    failures,
                },
            );
        }
    }
    Row {
        label,
        better,
        values,
    }
}

/// The server's CPU per round trip: from the client's own measurement of
/// the window (echo-labctl, tokio-client) or the script's (the others).
fn server_cpu_us(l: &Value) -> Option<f64> {
    num(l, "/server_cpu/us_per_round_trip")
        .or_else(|| num(l, "/bench/server_cpu/us_per_round_trip"))
}

/// The rows of one client's ping-pong table.
fn ping_pong_rows(lines: &[&Value]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (point, label, mode) in points(lines.iter().copied()) {
        if mode != "ping-pong" || point == "reload" {
            continue;
        }
        rows.push(row(
            lines,
            &point,
            format!("{label}: round trips/s"),
            Better::Higher,
            |l| num(l, "/bench/round_trips_per_sec"),
        ));
        let has_latency = lines
            .iter()
            .any(|l| str_of(l, "point") == point && num(l, "/bench/latency_us/p50").is_some());
        if has_latency {
            for (name, path) in [
                ("p50", "/bench/latency_us/p50"),
                ("p99", "/bench/latency_us/p99"),
            ] {
                rows.push(row(
                    lines,
                    &point,
                    format!("{label}: {name} latency (µs)"),
                    Better::Lower,
                    |l| num(l, path),
                ));
            }
        }
        rows.push(row(
            lines,
            &point,
            format!("{label}: server CPU µs per round trip"),
            Better::Lower,
            server_cpu_us,
        ));
    }
    rows
}

/// A figure read from one result line.
type Metric = dyn Fn(&Value) -> Option<f64>;

/// The rows of the fixed-rate table.
fn fixed_rate_rows(lines: &[&Value]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (point, label, mode) in points(lines.iter().copied()) {
        if mode != "fixed-rate" {
            continue;
        }
        let figures: [(&str, Better, &Metric); 7] = [
            ("achieved round trips/s", Better::Higher, &|l| {
                num(l, "/bench/round_trips_per_sec")
            }),
            ("p50 latency (µs)", Better::Lower, &|l| {
                num(l, "/bench/latency_us/p50")
            }),
            ("p99 latency (µs)", Better::Lower, &|l| {
                num(l, "/bench/latency_us/p99")
            }),
            ("p99.9 latency (µs)", Better::Lower, &|l| {
                num(l, "/bench/latency_us/p999")
            }),
            ("max latency (µs)", Better::Lower, &|l| {
                num(l, "/bench/latency_us/max")
            }),
            ("server CPU (% of one CPU)", Better::Lower, &|l| {
                num(l, "/server_cpu/percent").or_else(|| num(l, "/bench/server_cpu/percent"))
            }),
            (
                "server CPU µs per round trip",
                Better::Lower,
                &server_cpu_us,
            ),
        ];
        for (name, better, metric) in figures {
            rows.push(row(
                lines,
                &point,
                format!("{label}: {name}"),
                better,
                metric,
            ));
        }
    }
    rows
}

/// Start to ready and the held-connections point (echo-labctl bench).
fn server_rows(lines: &[&Value]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (point, label, mode) in points(lines.iter().copied()) {
        if point == "ready" {
            rows.push(row(
                lines,
                &point,
                "start to ready (ms)".into(),
                Better::Lower,
                |l| num(l, "/ready_ms"),
            ));
        } else if mode == "hold" {
            rows.push(row(
                lines,
                &point,
                format!("{label}: time to connect all (ms)"),
                Better::Lower,
                |l| num(l, "/bench/connect_ms"),
            ));
            rows.push(row(
                lines,
                &point,
                format!("{label}: time until all echoed (ms)"),
                Better::Lower,
                |l| num(l, "/bench/all_echoed_ms"),
            ));
            rows.push(row(
                lines,
                &point,
                format!("{label}: RSS per held connection (KiB)"),
                Better::Lower,
                |l| {
                    let held = num(l, "/bench/connected")?;
                    let grown = num(l, "/rss_holding_kb")? - num(l, "/rss_before_kb")?;
                    (held > 0.0).then(|| grown / held)
                },
            ));
        }
    }
    rows
}

/// What echo-labctl bench itself cost, against the server.
fn cost_rows(lines: &[&Value]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (point, label, mode) in points(lines.iter().copied()) {
        if mode != "ping-pong" || point == "reload" {
            continue;
        }
        rows.push(row(
            lines,
            &point,
            format!("{label}: client CPU / server CPU"),
            Better::Lower,
            |l| {
                let server = num(l, "/bench/server_cpu/cpu_secs")?;
                let client = num(l, "/bench/client_cpu_secs")?;
                let run = num(l, "/bench/elapsed_secs")? + num(l, "/bench/warmup_secs")?;
                let window = num(l, "/bench/server_cpu/window_secs")?;
                // The client's CPU covers the whole run, the server's the
                // measured window: scale the server's to the run.
                (server > 0.0 && window > 0.0).then(|| client / (server * run / window))
            },
        ));
        rows.push(row(
            lines,
            &point,
            format!("{label}: client CPU µs per round trip"),
            Better::Lower,
            |l| num(l, "/bench/client_cpu_us_per_round_trip"),
        ));
    }
    rows
}

/// Half the slowest peer's median rate at pp-mid under echo-labctl bench.
fn fixed_rate(lines: &[Value]) -> Option<f64> {
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| client_of(l) == DEFAULT_CLIENT)
        .collect();
    let r = row(&mine, "pp-mid", String::new(), Better::Higher, |l| {
        num(l, "/bench/round_trips_per_sec")
    });
    r.values
        .iter()
        .filter(|(s, _)| !OURS.contains(&s.as_str()))
        .map(|(_, c)| c.median)
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))))
        .map(|slowest| slowest / 2.0)
}

/// The chart's data: (point label, server, round trips/s) under
/// echo-labctl bench.
fn throughput(lines: &[Value]) -> Vec<(String, Vec<(String, f64)>)> {
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| client_of(l) == DEFAULT_CLIENT)
        .collect();
    points(mine.iter().copied())
        .into_iter()
        .filter(|(p, _, mode)| mode == "ping-pong" && p != "reload")
        .map(|(point, label, _)| {
            let r = row(&mine, &point, String::new(), Better::Higher, |l| {
                num(l, "/bench/round_trips_per_sec")
            });
            (
                label,
                r.values
                    .iter()
                    .map(|(s, c)| (s.clone(), c.median))
                    .collect(),
            )
        })
        .collect()
}

fn fmt_value(v: f64) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    // Thin grouping of thousands for readability.
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let neg = int.starts_with('-');
    let int = int.trim_start_matches('-');
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    format!(
        "{}{}{}",
        if neg { "-" } else { "" },
        grouped,
        frac.map(|f| format!(".{f}")).unwrap_or_default()
    )
}

fn fmt_cell(c: &Cell) -> String {
    let mut s = fmt_value(c.median);
    if c.rounds > 1 {
        let _ = write!(s, " ({}–{})", fmt_value(c.min), fmt_value(c.max));
    }
    if c.failures > 0 {
        let _ = write!(s, " ({} failed)", c.failures);
    }
    s
}

fn table(out: &mut String, rows: &[Row], with_ratio: bool) {
    let servers = present(
        rows.iter()
            .flat_map(|r| r.values.keys().map(String::as_str)),
    );
    let ours: Vec<&str> = OURS
        .iter()
        .copied()
        .filter(|o| servers.contains(o))
        .collect();
    let headings: Vec<&str> = servers.iter().map(|s| heading(s)).collect();
    let _ = write!(out, "| | {} |", headings.join(" | "));
    if with_ratio {
        for o in &ours {
            let _ = write!(out, " {} / best peer |", heading(o));
        }
    }
    out.push('\n');
    let _ = write!(out, "|---|{}", "---:|".repeat(servers.len()));
    if with_ratio {
        out.push_str(&"---:|".repeat(ours.len()));
    }
    out.push('\n');
    for r in rows {
        let _ = write!(
            out,
            "| {} ({}) |",
            r.label,
            if r.better == Better::Higher {
                "higher is better"
            } else {
                "lower is better"
            }
        );
        for s in &servers {
            match r.values.get(*s) {
                Some(c) => {
                    let _ = write!(out, " {} |", fmt_cell(c));
                }
                None => out.push_str(" — |"),
            }
        }
        if with_ratio {
            let peers = r
                .values
                .iter()
                .filter(|(s, _)| !OURS.contains(&s.as_str()))
                .map(|(_, c)| c.median);
            let best = match r.better {
                Better::Higher => {
                    peers.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
                }
                Better::Lower => {
                    peers.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))))
                }
            };
            for o in &ours {
                match (r.values.get(*o), best) {
                    (Some(c), Some(b)) if b > 0.0 => {
                        let _ = write!(out, " {:.2} |", c.median / b);
                    }
                    _ => out.push_str(" — |"),
                }
            }
        }
        out.push('\n');
    }
}

fn render(lines: &[Value], context: &str, svg: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}\n");
    let _ = writeln!(out, "{context}\n");
    if !lines.iter().any(|l| str_of(l, "server") == "echo-lab") {
        out.push_str("echo-lab was not measured in this run (no `target/release/echo-lab`, or it did not start); its column is empty.\n\n");
    }
    out.push_str("Cells are medians over rounds, with the spread over rounds (min–max) in brackets; \"(N failed)\" counts failed round trips or connections over all rounds. Server CPU is the user + system time of the server process (`/proc/PID/stat`, 10 ms ticks) over the measured window, divided by the round trips in it.\n\n");
    let mut skipped = Vec::new();
    for client in CLIENTS {
        let mine: Vec<&Value> = lines.iter().filter(|l| client_of(l) == client).collect();
        let rows = ping_pong_rows(&mine);
        if rows.is_empty() {
            skipped.push(client);
            continue;
        }
        let _ = writeln!(out, "### Ping-pong under {}\n", client_title(client));
        table(&mut out, &rows, true);
        out.push('\n');
    }
    for client in skipped {
        let _ = writeln!(
            out,
            "`{client}` was not run (see the script's output for why).\n"
        );
    }
    let all: Vec<&Value> = lines.iter().collect();
    let rate = fixed_rate_rows(&all);
    if !rate.is_empty() {
        out.push_str("### Fixed rate: every server at the same offered load (`echo-labctl bench --rate`, latency from the scheduled send time)\n\n");
        table(&mut out, &rate, true);
        out.push('\n');
    }
    let labctl: Vec<&Value> = lines
        .iter()
        .filter(|l| client_of(l) == DEFAULT_CLIENT)
        .collect();
    let server = server_rows(&labctl);
    if !server.is_empty() {
        out.push_str("### Start, held connections (`echo-labctl bench --mode hold`)\n\n");
        table(&mut out, &server, true);
        out.push('\n');
    }
    let reload: Vec<&Value> = labctl
        .iter()
        .copied()
        .filter(|l| str_of(l, "point") == "reload")
        .collect();
    if !reload.is_empty() {
        let failed: f64 = reload
            .iter()
            .map(|l| num(l, "/bench/errors/total").unwrap_or(0.0))
            .sum();
        let p99 = median(
            reload
                .iter()
                .filter_map(|l| num(l, "/bench/latency_us/p99"))
                .collect(),
        )
        .unwrap_or(0.0);
        let signals: f64 = reload
            .iter()
            .map(|l| num(l, "/signals").unwrap_or(0.0))
            .sum();
        let rt: f64 = reload
            .iter()
            .map(|l| num(l, "/bench/round_trips").unwrap_or(0.0))
            .sum();
        let _ = writeln!(
            out,
            "**Reload under load** (echo-lab, 64 B ping-pong under `echo-labctl bench`, SIGHUP every 100 ms): {} SIGHUPs, {} round trips, {} failed, p99 {} µs (median over rounds).\n",
            fmt_value(signals), fmt_value(rt), failed, fmt_value(p99)
        );
    }
    let cost = cost_rows(&labctl);
    if !cost.is_empty() {
        out.push_str("**Cost of the load generator** (`echo-labctl bench` itself; its CPU time over the whole run including warmup, so an upper bound):\n\n");
        table(&mut out, &cost, false);
    }
    let _ = writeln!(
        out,
        "\n![Round trips per second under echo-labctl bench, by point and server]({svg})\n\n{END}"
    );
    out
}

/// Replaces the results section of `md`, or creates the file around it.
fn splice(md: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(md).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{}{}",
            &old[..b],
            section.trim_end(),
            &old[e + END.len()..]
        ),
        _ => format!(
            "{old}{}## Results\n\n{section}",
            if old.is_empty() { "" } else { "\n" }
        ),
    };
    std::fs::write(md, new).with_context(|| format!("writing {}", md.display()))
}

/// Grouped bars: round trips per second for each ping-pong point and server.
fn chart(svg: &Path, data: &[(String, Vec<(String, f64)>)]) -> Result<()> {
    let root = SVGBackend::new(svg, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = data
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, x)| *x))
        .fold(1.0, f64::max)
        * 1.15;
    let n = data.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Round trips per second under echo-labctl bench (median over rounds)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)?;
    let labels: Vec<String> = data.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| fmt_value(*y))
        .draw()?;
    let colours = [
        RGBColor(0xd9, 0x5f, 0x02),
        RGBColor(0xe6, 0xab, 0x02),
        RGBColor(0x1b, 0x9e, 0x77),
        RGBColor(0x75, 0x70, 0xb3),
        RGBColor(0x66, 0x66, 0x66),
    ];
    let servers = present(
        data.iter()
            .flat_map(|(_, v)| v.iter().map(|(s, _)| s.as_str())),
    );
    let width = 0.8 / servers.len().max(1) as f64;
    for (j, server) in servers.iter().enumerate() {
        let colour = colours[j % colours.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = data
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v))| {
                let value = v.iter().find(|(s, _)| s == server)?.1;
                let x0 = i as f64 - 0.4 + j as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.92, value)],
                    colour.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(heading(server))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
