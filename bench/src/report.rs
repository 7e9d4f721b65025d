//! What a benchmark run found, and docs/BENCHMARKS.md written from it: the machine, the
//! commands, one table per scenario with both systems side by side and their ratio, the
//! issue's targets checked against Belfry's figures, and the charts.

use crate::plot::{Chart, Series, line_chart};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Better {
    /// Less is better (memory, latency, time).
    Lower,
    /// More is better (rates).
    Higher,
    /// Context, not a score (the load generator's own CPU): no ratio.
    Neither,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// The scenario's command name (`idle`, `connect`, ...).
    pub scenario: String,
    /// What was measured, the same words for every system.
    pub metric: String,
    /// Its unit.
    pub unit: String,
    /// The value.
    pub value: f64,
    /// Which way it improves.
    pub better: Better,
}

/// Everything one system produced in one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The system's name.
    pub system: String,
    /// Its figures, in the order measured.
    pub figures: Vec<Figure>,
    /// Chart lines: `(chart id, points)`.
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
    /// Remarks made while measuring (limits hit, steps skipped).
    pub notes: Vec<String>,
}

impl Outcome {
    /// An empty outcome for `system`.
    pub fn new(system: &str) -> Self {
        Self {
            system: system.to_owned(),
            ..Self::default()
        }
    }

    /// Records a figure and prints it.
    pub fn figure(&mut self, scenario: &str, metric: &str, unit: &str, value: f64, better: Better) {
        println!(
            "{scenario}: {} | {metric}: {} {unit}",
            self.system,
            number(value)
        );
        self.figures.push(Figure {
            scenario: scenario.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            value,
            better,
        });
    }

    /// Records a chart line.
    pub fn line(&mut self, chart: &str, points: Vec<(f64, f64)>) {
        self.lines.push((chart.to_owned(), points));
    }

    /// Records and prints a remark.
    pub fn note(&mut self, scenario: &str, text: String) {
        println!("{scenario}: {} | note: {text}", self.system);
        self.notes.push(format!("{scenario}: {text}"));
    }

    /// The value of a figure, if measured.
    pub fn value(&self, scenario: &str, metric: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.scenario == scenario && f.metric == metric)
            .map(|f| f.value)
    }
}

/// A whole run: where, how and what.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// When it ran (UTC, RFC 3339).
    pub date: String,
    /// The machine, in a few lines.
    pub machine: Vec<String>,
    /// The command that produced it.
    pub command: String,
    /// Quick mode (CI) or the full one.
    pub quick: bool,
    /// One per system, Belfry first.
    pub outcomes: Vec<Outcome>,
}

/// A scenario's place in the report.
#[derive(Debug)]
pub struct Section {
    /// The command name.
    pub scenario: &'static str,
    /// The heading.
    pub title: &'static str,
    /// What it does, in a sentence or two.
    pub about: &'static str,
}

/// A chart in the report.
#[derive(Debug)]
pub struct ChartSpec {
    /// File name (without `.svg`) and line key.
    pub id: &'static str,
    /// Title and axes.
    pub chart: Chart<'static>,
    /// The scenario it belongs under.
    pub scenario: &'static str,
}

/// One of the issue's targets, checked against a figure of Belfry's.
#[derive(Debug)]
pub struct Target {
    /// The target in words.
    pub what: &'static str,
    /// The figure it is checked on.
    pub scenario: &'static str,
    /// The figure's metric.
    pub metric: &'static str,
    /// The limit, if the target has one of its own (the figure's `better` says which
    /// side of it meets the target).
    pub limit: Option<f64>,
    /// The share of the Node peer's figure (from the same run) it must reach: 0.5 for
    /// "at most half the peer's" on a lower-is-better figure, 2.0 for "at least twice"
    /// on a higher-is-better one.
    pub peer: Option<f64>,
    /// The system whose figure is checked (the outcome named so; `None`: the first
    /// system other than the peer that measured it).
    pub system: Option<&'static str>,
}

impl Target {
    /// A target with a limit of its own, on the first system.
    pub const fn limit(
        what: &'static str,
        scenario: &'static str,
        metric: &'static str,
        limit: f64,
    ) -> Target {
        Target {
            what,
            scenario,
            metric,
            limit: Some(limit),
            peer: None,
            system: None,
        }
    }

    /// A target relative to the Node peer's figure only, on the first system.
    pub const fn versus_peer(
        what: &'static str,
        scenario: &'static str,
        metric: &'static str,
        share: f64,
    ) -> Target {
        Target {
            what,
            scenario,
            metric,
            limit: None,
            peer: Some(share),
            system: None,
        }
    }

    /// A figure the report shows beside the targets, with no bound of its own.
    pub const fn shown(what: &'static str, scenario: &'static str, metric: &'static str) -> Target {
        Target {
            what,
            scenario,
            metric,
            limit: None,
            peer: None,
            system: None,
        }
    }

    /// The same target with a bound relative to the Node peer's figure as well.
    pub const fn and_peer(mut self, share: f64) -> Target {
        self.peer = Some(share);
        self
    }

    /// The same target checked on another system's figure.
    pub const fn on(mut self, system: &'static str) -> Target {
        self.system = Some(system);
        self
    }
}

/// The name the Node peer's outcome has.
pub const PEER: &str = "Node socket.io";

/// The report's text, with the charts written as SVG files into `charts_dir` (linked
/// as `charts_link/<id>.svg`).
pub fn markdown(
    results: &Results,
    sections: &[Section],
    charts: &[ChartSpec],
    targets: &[Target],
    notes: &str,
    charts_dir: &Path,
    charts_link: &str,
) -> std::io::Result<String> {
    std::fs::create_dir_all(charts_dir)?;
    let mut md = String::new();
    let _ = writeln!(md, "# Belfry benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `{}` on {}{}. Every figure below is from that run on this machine; \
         nothing is typed in by hand except the notes at the end.\n",
        results.command,
        results.date,
        if results.quick {
            " in **quick mode** (CI sizes: the figures only show the suite works)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## Machine\n");
    for line in &results.machine {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "\nThe hub under test, the Node peer and the load generator share this machine: \
         every figure includes the load generator's own CPU cost, reported beside it.\n"
    );
    let _ = writeln!(md, "## How to run it\n");
    let _ = writeln!(
        md,
        "```sh\nmake bench        # the full suite (about 20 minutes here), rewrites this page\n\
         make bench-quick  # every scenario at CI sizes (in make test)\n\
         target/release/belfry-bench report  # this page again from docs/bench/results.json (after editing bench/NOTES.md)\n\
         target/release/belfry-bench <scenario> [--against belfry,node,belfry-pg,belfry-x3] [--target http://host:port] [--quick]\n```\n"
    );
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| Target | Belfry measured | Met |\n|---|---|---|");
    for t in targets {
        let _ = writeln!(md, "| {} | {} |", t.what, check(results, t));
    }
    let _ = writeln!(md);
    for s in sections {
        let figures: Vec<&Figure> = results
            .outcomes
            .iter()
            .flat_map(|o| o.figures.iter())
            .filter(|f| f.scenario == s.scenario)
            .collect();
        if figures.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {}\n\n{}\n", s.title, s.about);
        let _ = writeln!(md, "`belfry-bench {}`\n", s.scenario);
        md.push_str(&table(results, s.scenario));
        for c in charts.iter().filter(|c| c.scenario == s.scenario) {
            let series: Vec<Series> = results
                .outcomes
                .iter()
                .flat_map(|o| {
                    o.lines
                        .iter()
                        .filter(|(id, _)| id == c.id)
                        .map(|(_, points)| Series {
                            name: o.system.clone(),
                            points: points.clone(),
                        })
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            std::fs::write(
                charts_dir.join(format!("{}.svg", c.id)),
                line_chart(&c.chart, &series),
            )?;
            let _ = writeln!(md, "![{}]({charts_link}/{}.svg)\n", c.chart.title, c.id);
        }
        let remarks: Vec<String> = results
            .outcomes
            .iter()
            .flat_map(|o| {
                o.notes
                    .iter()
                    .filter(|n| n.starts_with(&format!("{}: ", s.scenario)))
                    .map(|n| format!("- {}: {}", o.system, &n[s.scenario.len() + 2..]))
            })
            .collect();
        if !remarks.is_empty() {
            let _ = writeln!(md, "{}\n", remarks.join("\n"));
        }
    }
    if !notes.trim().is_empty() {
        let _ = writeln!(md, "{}", notes.trim_end());
    }
    Ok(md)
}

/// The table of one scenario: a row per metric, a column per system that measured it,
/// and the ratio of the first of them to the Node peer (how many times better Belfry
/// is), when the peer measured it too.
pub fn table(results: &Results, scenario: &str) -> String {
    let mut metrics: Vec<(&str, &str, Better)> = Vec::new();
    for f in results
        .outcomes
        .iter()
        .flat_map(|o| o.figures.iter())
        .filter(|f| f.scenario == scenario)
    {
        if !metrics.iter().any(|(m, _, _)| *m == f.metric) {
            metrics.push((&f.metric, &f.unit, f.better));
        }
    }
    // The systems that measured this scenario; Belfry against the peer when both did.
    let columns: Vec<&Outcome> = results
        .outcomes
        .iter()
        .filter(|o| o.figures.iter().any(|f| f.scenario == scenario))
        .collect();
    let versus = match (columns.first(), columns.iter().find(|o| o.system == PEER)) {
        (Some(first), Some(peer)) if first.system != PEER => Some((*first, *peer)),
        _ => None,
    };
    let mut t = String::from("| Metric |");
    for o in &columns {
        let _ = write!(t, " {} |", o.system);
    }
    if versus.is_some() {
        t.push_str(" Belfry vs the peer |");
    }
    t.push_str("\n|---|");
    for _ in &columns {
        t.push_str("---:|");
    }
    if versus.is_some() {
        t.push_str("---:|");
    }
    t.push('\n');
    for (metric, unit, better) in metrics {
        let _ = write!(t, "| {metric} ({unit}) |");
        for o in &columns {
            let _ = write!(
                t,
                " {} |",
                o.value(scenario, metric).map_or("-".into(), number)
            );
        }
        if let Some((first, peer)) = versus {
            let _ = write!(
                t,
                " {} |",
                ratio(
                    first.value(scenario, metric),
                    peer.value(scenario, metric),
                    better
                )
            );
        }
        t.push('\n');
    }
    t.push('\n');
    t
}

/// The measured figure of a target and whether it is met, as the two cells of its row.
fn check(results: &Results, t: &Target) -> String {
    // On the system named, else on the first Belfry system that measured it (named in
    // the row when it is not the first system of the run).
    let Some((on, f)) = results
        .outcomes
        .iter()
        .filter(|o| t.system.map_or(o.system != PEER, |name| o.system == name))
        .find_map(|o| {
            o.figures
                .iter()
                .find(|f| f.scenario == t.scenario && f.metric == t.metric)
                .map(|f| (o, f))
        })
    else {
        return "not measured in this run | **no**".to_owned();
    };
    let within = |limit: f64| match f.better {
        Better::Lower => f.value <= limit,
        Better::Higher | Better::Neither => f.value >= limit,
    };
    let mut measured = format!("{} {}", number(f.value), f.unit);
    if t.system.is_none()
        && results
            .outcomes
            .first()
            .is_some_and(|o| o.system != on.system)
    {
        let _ = write!(measured, " on {}", on.system);
    }
    let mut met = t.limit.is_none_or(within);
    if let Some(share) = t.peer {
        let peer = results
            .outcomes
            .iter()
            .find(|o| o.system == PEER)
            .and_then(|o| o.value(t.scenario, t.metric));
        match peer {
            Some(p) => {
                let _ = write!(measured, " (the peer {} {})", number(p), f.unit);
                met &= within(p * share);
            }
            None => {
                measured.push_str(" (the peer not measured)");
                met = false;
            }
        }
    }
    let verdict = match (t.limit, t.peer, met) {
        (None, None, _) => "shown",
        (.., true) => "yes",
        (.., false) => "**no**",
    };
    format!("{measured} | {verdict}")
}

/// How many times better `belfry` is than `peer` ("2.4x better", "1.6x worse").
pub fn ratio(belfry: Option<f64>, peer: Option<f64>, better: Better) -> String {
    let (Some(b), Some(p)) = (belfry, peer) else {
        return "-".into();
    };
    if b <= 0.0 || p <= 0.0 {
        return "-".into();
    }
    let times = match better {
        Better::Lower => p / b,
        Better::Higher => b / p,
        Better::Neither => return "-".into(),
    };
    if times >= 1.0 {
        format!("{times:.1}x better")
    } else {
        format!("{:.1}x worse", 1.0 / times)
    }
}

/// A figure as the report shows it: thousands separated, sensible decimals.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let decimals = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ratios_read_well() {
        assert_eq!(number(1_234_567.8), "1,234,568");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.456), "0.46");
        assert_eq!(number(-4200.0), "-4,200");
        assert_eq!(ratio(Some(10.0), Some(25.0), Better::Lower), "2.5x better");
        assert_eq!(ratio(Some(10.0), Some(25.0), Better::Higher), "2.5x worse");
        assert_eq!(ratio(None, Some(1.0), Better::Higher), "-");
    }

    #[test]
    fn the_report_holds_both_systems_targets_and_charts() {
        let mut belfry = Outcome::new("Belfry");
        belfry.figure(
            "connect",
            "connects per second",
            "1/s",
            8000.0,
            Better::Higher,
        );
        belfry.line("storm", vec![(0.0, 0.0), (1.0, 10.0)]);
        belfry.note("connect", "a remark".into());
        let mut node = Outcome::new("Node socket.io");
        node.figure(
            "connect",
            "connects per second",
            "1/s",
            2000.0,
            Better::Higher,
        );
        node.figure("connect", "peer only", "1/s", 1.0, Better::Higher);
        let mut nodes = Outcome::new("Belfry, 6 nodes");
        nodes.figure(
            "held",
            "connections held",
            "connections",
            1e5,
            Better::Higher,
        );
        let results = Results {
            date: "2026-11-22T00:00:00Z".into(),
            machine: vec!["2 cores".into()],
            command: "belfry-bench all".into(),
            quick: false,
            outcomes: vec![belfry, node, nodes],
        };
        let dir = std::env::temp_dir().join(format!("belfry-report-{}", std::process::id()));
        let md = markdown(
            &results,
            &[Section {
                scenario: "connect",
                title: "Connect rate",
                about: "Connects.",
            }],
            &[ChartSpec {
                id: "storm",
                chart: Chart {
                    title: "Storm",
                    x_label: "s",
                    y_label: "clients",
                },
                scenario: "connect",
            }],
            &[
                Target::limit("5,000 connects/s", "connect", "connects per second", 5000.0),
                Target::limit("catch-up under 1 s", "catchup", "time to hold all", 1000.0),
                Target::versus_peer("3x the peer", "connect", "connects per second", 3.0),
                Target::limit(
                    "6,000 and 5x the peer",
                    "connect",
                    "connects per second",
                    6e3,
                )
                .and_peer(5.0),
                Target::limit("on PostgreSQL", "connect", "connects per second", 1.0)
                    .on("Belfry on PostgreSQL"),
                Target::shown("held over nodes", "held", "connections held"),
                Target::shown("the peer's only", "connect", "peer only"),
            ],
            "## Notes\n\nHand-written.",
            &dir,
            "bench",
        )
        .expect("report written");
        assert!(
            md.contains("| connects per second (1/s) | 8,000 | 2,000 | 4.0x better |"),
            "{md}"
        );
        assert!(
            md.contains("| 5,000 connects/s | 8,000 1/s | yes |"),
            "{md}"
        );
        assert!(md.contains("| catch-up under 1 s | not measured in this run | **no** |"));
        assert!(
            md.contains("| 3x the peer | 8,000 1/s (the peer 2,000 1/s) | yes |"),
            "{md}"
        );
        assert!(md.contains("| 6,000 and 5x the peer | 8,000 1/s (the peer 2,000 1/s) | **no** |"));
        assert!(md.contains("| on PostgreSQL | not measured in this run | **no** |"));
        // Found on the first Belfry system that measured it; never on the peer.
        assert!(
            md.contains("| held over nodes | 100,000 connections on Belfry, 6 nodes | shown |"),
            "{md}"
        );
        assert!(md.contains("| the peer's only | not measured in this run | **no** |"));
        assert!(md.contains("![Storm](bench/storm.svg)"));
        assert!(md.contains("- Belfry: a remark"));
        assert!(md.ends_with("Hand-written.\n"));
        assert!(dir.join("storm.svg").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
