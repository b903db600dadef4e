//! The fault suite's result: one [`Row`] per scenario, printed and written
//! as a Markdown table and as JSON.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::hosts::Tally;

/// What one scenario counted.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The scenario's name on the command line.
    pub scenario: &'static str,
    /// What the fault is.
    pub title: &'static str,
    /// Webhooks answered 2xx (after retries with the same `webhook-id`).
    pub accepted: u64,
    /// Accepted webhooks whose email arrived at least once.
    pub delivered: u64,
    /// Accepted webhooks whose email never arrived.
    pub lost: u64,
    /// Messages beyond the first per recipient.
    pub duplicates: u64,
    /// Deliveries in `sending` just before the fault (the bound on
    /// duplicates).
    pub in_flight_at_fault: i64,
    /// Rows written to `dead_letters` (resolved or not).
    pub dead_letters: i64,
    /// What the hosts saw.
    pub tally: Tally,
    /// From the repair until the service works again (see the README).
    pub recovery_s: f64,
    /// The whole scenario, set-up included.
    pub wall_s: f64,
    /// Broken expectations; empty when the scenario passed.
    pub problems: Vec<String>,
}

impl Row {
    /// A scenario the harness could not run.
    pub fn failed(scenario: &'static str, title: &'static str, error: &anyhow::Error) -> Self {
        Self {
            scenario,
            title,
            accepted: 0,
            delivered: 0,
            lost: 0,
            duplicates: 0,
            in_flight_at_fault: 0,
            dead_letters: 0,
            tally: Tally::default(),
            recovery_s: 0.0,
            wall_s: 0.0,
            problems: vec![format!("did not run to its end: {error:#}")],
        }
    }
}

/// The Markdown report: the machine, the table, then every problem.
pub fn markdown(title: &str, machine: &Value, rows: &[Row], wall_s: f64) -> String {
    let mut md = format!(
        "# {title}\n\n{} · {wall_s:.0} s in all\n\n",
        crate::report::machine_line(machine)
    );
    md.push_str(&table(rows));
    for row in rows {
        for problem in &row.problems {
            let _ = writeln!(md, "\n- **{}**: {problem}", row.scenario);
        }
    }
    md
}

/// The table the README quotes.
pub fn table(rows: &[Row]) -> String {
    let mut md = String::from(
        "| scenario | accepted | delivered | duplicates (in flight at the fault) | dead letters | 5xx | slowest answer | recovery | wall | verdict |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        let other: u64 = row.tally.other_5xx.values().sum();
        let five = match (row.tally.unavailable, other) {
            (0, 0) => "0".to_string(),
            (n, 0) => format!("{n} (all 503 problem+json)"),
            (n, m) => format!("{} ({n} × 503, **{m} other**)", n + m),
        };
        let verdict = if row.problems.is_empty() {
            "pass"
        } else {
            "**FAIL**"
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({}) | {} | {five} | {:.2} s | {:.1} s | {:.0} s | {verdict} |",
            row.title,
            row.accepted,
            row.delivered,
            row.duplicates,
            row.in_flight_at_fault,
            row.dead_letters,
            row.tally.slowest_answer_ms / 1000.0,
            row.recovery_s,
            row.wall_s,
        );
    }
    md
}
