//! bench-report: turns the results `bench/compare.sh` collects into the
//! results section of `docs/PERFORMANCE.md` and the chart `docs/perf.svg`.
//!
//! Input is one JSON object per line, one line per (round, server, point):
//! `{"round", "server", "point", "label", "bench": <echo-labctl bench
//! --json output>, "server_cpu_secs", "ready_ms", "rss_before_kb",
//! "rss_holding_kb"}` with the fields that apply. Every figure in the table
//! is the median over rounds; a cell also says how many round trips or
//! connections failed in all rounds together, so a fast but broken run
//! cannot pass unnoticed. echo-lab's columns (its default configuration,
//! and with `busy_poll` on) are each compared with the best peer: the ratio
//! is echo-lab / best, so above 1 is better for rates and below 1 is better
//! for times and memory.
//!
//! The section between `<!-- results:begin -->` and `<!-- results:end -->`
//! is replaced; the rest of the document is left as written.
//!
//! Usage: `bench-report RESULTS.jsonl MARKDOWN SVG CONTEXT`, where CONTEXT
//! is a line describing the machine and settings, printed above the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::Value;

const SERVERS: [&str; 4] = ["echo-lab", ECHO_LAB_BUSY_POLL, "tokio-echo", "thread-echo"];
/// echo-lab with `busy_poll` set (see `bench/compare.sh`).
const ECHO_LAB_BUSY_POLL: &str = "echo-lab-busy-poll";
/// The columns compared with the best peer.
const OURS: [&str; 2] = ["echo-lab", ECHO_LAB_BUSY_POLL];

/// A server's column heading.
fn heading(server: &str) -> &str {
    if server == ECHO_LAB_BUSY_POLL {
        "echo-lab, busy_poll = 50us"
    } else {
        server
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

/// One table row: a figure per server (median) and failures per server.
struct Row {
    label: String,
    better: Better,
    values: BTreeMap<String, (f64, u64)>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [results, md, svg, context] = args.as_slice() else {
        bail!("usage: bench-report RESULTS.jsonl MARKDOWN SVG CONTEXT");
    };
    let text = std::fs::read_to_string(results).with_context(|| format!("reading {results}"))?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parsing the results")?;
    let (rows, cost, throughput) = tabulate(&lines);
    let svg_name = Path::new(svg)
        .file_name()
        .map_or("perf.svg".into(), |n| n.to_string_lossy().into_owned());
    let section = render(&rows, &cost, &lines, context, &svg_name);
    splice(Path::new(md), &section)?;
    chart(Path::new(svg), &throughput)?;
    Ok(())
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
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

/// Points in order of first appearance, with their labels.
fn points(lines: &[Value]) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for l in lines {
        let p = str_of(l, "point");
        if !seen.iter().any(|(q, _)| q == p) {
            seen.push((p.to_string(), str_of(l, "label").to_string()));
        }
    }
    seen
}

/// Median of `metric` per server over the lines of `point`, with failures.
fn row(
    lines: &[Value],
    point: &str,
    label: String,
    better: Better,
    metric: impl Fn(&Value) -> Option<f64>,
) -> Row {
    let mut values = BTreeMap::new();
    for server in SERVERS {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| str_of(l, "point") == point && str_of(l, "server") == server)
            .collect();
        let failures = mine
            .iter()
            .map(|l| num(l, "/bench/errors/total").unwrap_or(0.0) as u64)
            .sum();
        if let Some(m) = median(mine.iter().filter_map(|l| metric(l)).collect()) {
            values.insert(server.to_string(), (m, failures));
        }
    }
    Row {
        label,
        better,
        values,
    }
}

/// Builds the main rows, the generator-cost rows and the chart's data
/// (point label, server, round trips/s).
#[allow(clippy::type_complexity)]
fn tabulate(lines: &[Value]) -> (Vec<Row>, Vec<Row>, Vec<(String, Vec<(String, f64)>)>) {
    let mut rows = Vec::new();
    let mut cost = Vec::new();
    let mut throughput = Vec::new();
    for (point, label) in points(lines) {
        let mode = lines
            .iter()
            .find(|l| str_of(l, "point") == point)
            .and_then(|l| l.pointer("/bench/mode"))
            .and_then(Value::as_str)
            .unwrap_or("");
        match (point.as_str(), mode) {
            ("ready", _) => rows.push(row(
                lines,
                &point,
                "start to ready (ms)".into(),
                Better::Lower,
                |l| num(l, "/ready_ms"),
            )),
            ("reload", _) => {}
            (_, "ping-pong") => {
                let r = row(
                    lines,
                    &point,
                    format!("{label}: round trips/s"),
                    Better::Higher,
                    |l| num(l, "/bench/round_trips_per_sec"),
                );
                throughput.push((
                    label.clone(),
                    r.values.iter().map(|(s, (v, _))| (s.clone(), *v)).collect(),
                ));
                rows.push(r);
                rows.push(row(
                    lines,
                    &point,
                    format!("{label}: p50 latency (µs)"),
                    Better::Lower,
                    |l| num(l, "/bench/latency_us/p50"),
                ));
                rows.push(row(
                    lines,
                    &point,
                    format!("{label}: p99 latency (µs)"),
                    Better::Lower,
                    |l| num(l, "/bench/latency_us/p99"),
                ));
                cost.push(row(
                    lines,
                    &point,
                    format!("{label}: client CPU / server CPU"),
                    Better::Lower,
                    |l| {
                        let server = num(l, "/server_cpu_secs")?;
                        (server > 0.0)
                            .then(|| num(l, "/bench/client_cpu_secs").unwrap_or(0.0) / server)
                    },
                ));
                cost.push(row(
                    lines,
                    &point,
                    format!("{label}: client CPU µs per round trip"),
                    Better::Lower,
                    |l| num(l, "/bench/client_cpu_us_per_round_trip"),
                ));
            }
            (_, "hold") => {
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
            _ => {}
        }
    }
    (rows, cost, throughput)
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

fn table(out: &mut String, rows: &[Row], with_ratio: bool) {
    let headings: Vec<&str> = SERVERS.iter().map(|s| heading(s)).collect();
    let _ = write!(out, "| | {} |", headings.join(" | "));
    if with_ratio {
        for ours in OURS {
            let _ = write!(out, " {} / best peer |", heading(ours));
        }
    }
    out.push('\n');
    let _ = write!(out, "|---|{}", "---:|".repeat(SERVERS.len()));
    if with_ratio {
        out.push_str(&"---:|".repeat(OURS.len()));
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
        for s in SERVERS {
            match r.values.get(s) {
                Some((v, 0)) => {
                    let _ = write!(out, " {} |", fmt_value(*v));
                }
                Some((v, f)) => {
                    let _ = write!(out, " {} ({f} failed) |", fmt_value(*v));
                }
                None => out.push_str(" — |"),
            }
        }
        if with_ratio {
            let peers = r
                .values
                .iter()
                .filter(|(s, _)| !OURS.contains(&s.as_str()))
                .map(|(_, (v, _))| *v);
            let best = match r.better {
                Better::Higher => {
                    peers.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
                }
                Better::Lower => {
                    peers.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))))
                }
            };
            for ours in OURS {
                match (r.values.get(ours), best) {
                    (Some((e, _)), Some(b)) if b > 0.0 => {
                        let _ = write!(out, " {:.2} |", e / b);
                    }
                    _ => out.push_str(" — |"),
                }
            }
        }
        out.push('\n');
    }
}

fn render(rows: &[Row], cost: &[Row], lines: &[Value], context: &str, svg: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}\n");
    let _ = writeln!(out, "{context}\n");
    if !lines.iter().any(|l| str_of(l, "server") == "echo-lab") {
        out.push_str("echo-lab was not measured in this run (no `target/release/echo-lab`, or it did not start); its column is empty.\n\n");
    }
    table(&mut out, rows, true);
    out.push_str("\nCells are medians over rounds; \"(N failed)\" counts failed round trips or connections over all rounds.\n\n");
    let reload: Vec<&Value> = lines
        .iter()
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
            "**Reload under load** (echo-lab, 64 B ping-pong at 50 connections, SIGHUP every 100 ms): {} SIGHUPs, {} round trips, {} failed, p99 {} µs (median over rounds).\n",
            fmt_value(signals), fmt_value(rt), failed, fmt_value(p99)
        );
    }
    out.push_str("**Cost of the load generator** (`echo-labctl bench` itself; CPU time over the whole run including warmup, so an upper bound):\n\n");
    table(&mut out, cost, false);
    let _ = writeln!(
        out,
        "\n![Round trips per second by point and server]({svg})\n\n{END}"
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
            "Round trips per second (median over rounds)",
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
    ];
    let width = 0.8 / SERVERS.len() as f64;
    for (j, server) in SERVERS.iter().enumerate() {
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
