//! The results: every run's figures, the medians, the targets beside them,
//! the baselines as ratios; written as JSON and as a Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::scenarios::Outcome;

/// One run of one scenario on one deployment.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub run: usize,
    pub error: Option<String>,
    pub outcome: Option<Outcome>,
}

/// Every run of one scenario on one deployment, with the medians.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub deployment: String,
    pub runs: Vec<Run>,
    pub medians: BTreeMap<String, f64>,
}

impl Row {
    pub fn new(scenario: &str, deployment: &str) -> Self {
        Self {
            scenario: scenario.into(),
            deployment: deployment.into(),
            runs: Vec::new(),
            medians: BTreeMap::new(),
        }
    }

    /// Adds a run and recomputes the medians.
    pub fn push(&mut self, result: anyhow::Result<Outcome>) {
        let run = self.runs.len() + 1;
        self.runs.push(match result {
            Ok(outcome) => Run {
                run,
                error: None,
                outcome: Some(outcome),
            },
            Err(error) => Run {
                run,
                error: Some(format!("{error:#}")),
                outcome: None,
            },
        });
        let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for outcome in self.runs.iter().filter_map(|r| r.outcome.as_ref()) {
            for (name, value) in &outcome.figures {
                all.entry(name.clone()).or_default().push(*value);
            }
        }
        self.medians = all.into_iter().map(|(k, v)| (k, median(v))).collect();
    }

    fn values(&self, name: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.outcome.as_ref()?.figures.get(name).copied())
            .collect()
    }

    /// Failed runs, and runs with non-2xx answers.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for run in &self.runs {
            match (&run.error, &run.outcome) {
                (Some(error), _) => out.push(format!("run {}: {error}", run.run)),
                (None, Some(o)) if o.non_2xx > 0 => {
                    out.push(format!("run {}: {} non-2xx answers", run.run, o.non_2xx));
                }
                (None, Some(o)) if o.figures.is_empty() => {
                    out.push(format!("run {}: no figures", run.run));
                }
                _ => {}
            }
        }
        out
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A goal from issue 6 printed beside a figure.
struct Target {
    scenario: &'static str,
    deployment: Option<&'static str>,
    figure: &'static str,
    check: Check,
}

#[derive(Clone, Copy)]
enum Check {
    AtLeast(f64),
    AtMost(f64),
    Within(f64, f64),
}

impl Check {
    fn passes(self, v: f64) -> bool {
        match self {
            Self::AtLeast(t) => v >= t,
            Self::AtMost(t) => v <= t,
            Self::Within(lo, hi) => (lo..=hi).contains(&v),
        }
    }

    fn label(self) -> String {
        match self {
            Self::AtLeast(t) => format!("≥ {}", fmt(t)),
            Self::AtMost(t) => format!("≤ {}", fmt(t)),
            Self::Within(lo, hi) => format!("{}–{}", fmt(lo), fmt(hi)),
        }
    }
}

const TARGETS: &[Target] = &[
    Target {
        scenario: "ingress",
        deployment: Some("redis"),
        figure: "closed.throughput_rps",
        check: Check::AtLeast(9000.0),
    },
    Target {
        scenario: "ingress",
        deployment: Some("redis"),
        figure: "closed.p99_ms",
        check: Check::AtMost(10.0),
    },
    Target {
        scenario: "ingress",
        deployment: Some("sqlite"),
        figure: "closed.throughput_rps",
        check: Check::AtLeast(3000.0),
    },
    Target {
        scenario: "ingress",
        deployment: Some("sqlite"),
        figure: "closed.p99_ms",
        check: Check::AtMost(15.0),
    },
    Target {
        scenario: "drain",
        deployment: Some("redis"),
        figure: "emails_per_s",
        check: Check::AtLeast(3800.0),
    },
    Target {
        scenario: "e2e",
        deployment: None,
        figure: "delivery.p99_ms",
        check: Check::AtMost(50.0),
    },
    Target {
        scenario: "e2e",
        deployment: None,
        figure: "backlog.grows",
        check: Check::AtMost(0.0),
    },
    Target {
        scenario: "linear",
        deployment: None,
        figure: "cpu_ratio_large_small",
        check: Check::Within(0.9, 1.1),
    },
    Target {
        scenario: "linear",
        deployment: None,
        figure: "rss_ratio_large_small",
        check: Check::AtMost(1.1),
    },
];

fn target_for(scenario: &str, deployment: &str, figure: &str) -> Option<Check> {
    let listed = TARGETS.iter().find(|t| {
        t.scenario == scenario && t.deployment.is_none_or(|d| d == deployment) && t.figure == figure
    });
    if let Some(t) = listed {
        return Some(t.check);
    }
    if scenario == "baselines" {
        return None;
    }
    if figure.ends_with("rss_peak_mb") {
        Some(Check::AtMost(60.0))
    } else if figure.ends_with("rss_idle_mb") {
        Some(Check::AtMost(25.0))
    } else {
        None
    }
}

/// Figures left out of the table (they stay in the JSON).
fn headline(figure: &str) -> bool {
    !(figure.ends_with(".p90_ms")
        || figure.ends_with(".cpu_s")
        || figure.ends_with("rate_target")
        || figure.starts_with("post.p")
        || figure.starts_with("post.max"))
}

/// Formats a number for the table.
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() >= 1000.0 {
        let whole = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return if v < 0.0 { format!("-{out}") } else { out };
    }
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The line under a report's title: CPU, cores, load before and after,
/// commit, command.
pub fn machine_line(machine: &Value) -> String {
    format!(
        "{} · {} cores · load {} → {} · commit {} · `{}`",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["nproc"],
        machine["loadavg_before"].as_str().unwrap_or("?"),
        machine["loadavg_after"].as_str().unwrap_or("?"),
        machine["git_commit"].as_str().unwrap_or("?"),
        machine["command"].as_str().unwrap_or("?"),
    )
}

/// Writes `bench/results/<name>.json` and `<name>.md` and prints the
/// Markdown with where both went.
pub fn save(name: &str, json: &Value, md: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir).context("failed to create bench/results")?;
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(json)?)?;
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&md_path, md)?;
    println!(
        "\n{md}\nwritten: {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}

/// The Markdown report: one row per scenario × deployment, then ratios.
pub fn markdown(title: &str, machine: &Value, rows: &[Row]) -> String {
    let mut md = format!("# {title}\n\n{}\n\n", machine_line(machine));
    md.push_str("| scenario | deployment | runs ok | figures: median [each run] (target) |\n");
    md.push_str("| --- | --- | --- | --- |\n");
    for row in rows {
        let ok = row.runs.iter().filter(|r| r.outcome.is_some()).count();
        let mut cells = Vec::new();
        for (name, median) in row.medians.iter().filter(|(n, _)| headline(n)) {
            let mut cell = format!("{name} **{}**", fmt(*median));
            let values = row.values(name);
            if values.len() > 1 {
                let each: Vec<String> = values.iter().map(|v| fmt(*v)).collect();
                let _ = write!(cell, " [{}]", each.join(" / "));
            }
            if let Some(check) = target_for(&row.scenario, &row.deployment, name) {
                let mark = if check.passes(*median) { "✓" } else { "✗" };
                let _ = write!(cell, " ({} {mark})", check.label());
            }
            cells.push(cell);
        }
        for problem in row.problems() {
            cells.push(format!(
                "**{}**",
                problem.replace('\n', " ").replace('|', "/")
            ));
        }
        let _ = writeln!(
            md,
            "| {} | {} | {ok}/{} | {} |",
            row.scenario,
            row.deployment,
            row.runs.len(),
            cells.join("<br>")
        );
    }
    md.push_str(&ratios(rows));
    md
}

fn median_of(rows: &[Row], scenario: &str, deployment: &str, figure: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.scenario == scenario && r.deployment == deployment)
        .and_then(|r| r.medians.get(figure).copied())
        .filter(|v| v.is_finite())
}

fn ratios(rows: &[Row]) -> String {
    let mut lines = Vec::new();
    let ceiling = median_of(rows, "baselines", "ceiling", "closed.throughput_rps");
    let pgbench = median_of(rows, "baselines", "pgbench", "tps");
    let smtp = median_of(rows, "baselines", "smtp-source", "messages_per_s");
    for deployment in ["sqlite", "postgres", "redis"] {
        let ingress = median_of(rows, "ingress", deployment, "closed.throughput_rps");
        if let (Some(i), Some(c)) = (ingress, ceiling) {
            lines.push(format!(
                "| ingress {deployment} ÷ ceiling | {} ÷ {} | {:.2} | – |",
                fmt(i),
                fmt(c),
                i / c
            ));
        }
        if let (Some(i), Some(p)) = (ingress, pgbench)
            && deployment != "sqlite"
        {
            let target = if deployment == "redis" {
                verdict(i / p, 1.5)
            } else {
                "–".into()
            };
            lines.push(format!(
                "| ingress {deployment} ÷ pgbench tps | {} ÷ {} | {:.2} | {target} |",
                fmt(i),
                fmt(p),
                i / p
            ));
        }
        let drain = median_of(rows, "drain", deployment, "emails_per_s");
        if let (Some(d), Some(s)) = (drain, smtp) {
            let target = if deployment == "redis" {
                verdict(d / s, 0.5)
            } else {
                "–".into()
            };
            lines.push(format!(
                "| delivery {deployment} ÷ smtp-source | {} ÷ {} | {:.2} | {target} |",
                fmt(d),
                fmt(s),
                d / s
            ));
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\n| baseline ratio | figures | ratio | target |\n| --- | --- | --- | --- |\n{}\n",
        lines.join("\n")
    )
}

fn verdict(ratio: f64, at_least: f64) -> String {
    let mark = if ratio >= at_least { "✓" } else { "✗" };
    format!("≥ {at_least} {mark}")
}
