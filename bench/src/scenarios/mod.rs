//! The scenarios. Each run gets a fresh deployment and returns its
//! [`Outcome`]: named figures (medians are taken per name), the raw data,
//! and its count of non-2xx answers.

pub mod drain;
pub mod e2e;
pub mod ingress;
pub mod linear;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::load::LoadSummary;
use crate::process::ProcessFigures;

/// What one run of one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Named numbers, e.g. `closed.throughput_rps`.
    pub figures: BTreeMap<String, f64>,
    /// Everything else worth keeping.
    pub raw: Value,
    /// Answers that were not 2xx (transport errors included).
    pub non_2xx: u64,
}

impl Outcome {
    pub fn new() -> Self {
        Self {
            figures: BTreeMap::new(),
            raw: Value::Object(Default::default()),
            non_2xx: 0,
        }
    }

    /// Sets a figure.
    pub fn set(&mut self, name: &str, value: f64) {
        self.figures.insert(name.to_string(), value);
    }

    /// Keeps a raw value.
    pub fn keep(&mut self, name: &str, value: impl Serialize) {
        if let Value::Object(map) = &mut self.raw {
            map.insert(
                name.to_string(),
                serde_json::to_value(value).unwrap_or(Value::Null),
            );
        }
    }

    /// Throughput, latencies and errors of a load run under `prefix`.
    pub fn load(&mut self, prefix: &str, summary: &LoadSummary) {
        self.set(&format!("{prefix}.throughput_rps"), summary.throughput_rps);
        self.set(&format!("{prefix}.p50_ms"), summary.p50_ms);
        self.set(&format!("{prefix}.p90_ms"), summary.p90_ms);
        self.set(&format!("{prefix}.p99_ms"), summary.p99_ms);
        self.set(&format!("{prefix}.p999_ms"), summary.p999_ms);
        self.set(&format!("{prefix}.max_ms"), summary.max_ms);
        self.non_2xx += summary.non_2xx.values().sum::<u64>();
        self.keep(prefix, summary);
    }

    /// A process's CPU and memory under `prefix`; `units` is how many
    /// requests or messages the window handled.
    pub fn process(&mut self, prefix: &str, p: &ProcessFigures, units: f64) {
        self.set(&format!("{prefix}.cpu_s"), p.cpu_seconds);
        if units > 0.0 {
            self.set(
                &format!("{prefix}.cpu_us_per_unit"),
                p.cpu_seconds / units * 1e6,
            );
        }
        if let Some(idle) = p.rss_idle_mb {
            self.set(&format!("{prefix}.rss_idle_mb"), idle);
        }
        self.set(
            &format!("{prefix}.rss_peak_mb"),
            p.rss_peak_mb.max(p.vm_hwm_mb),
        );
        self.keep(&format!("{prefix}.process"), p);
    }
}

impl Default for Outcome {
    fn default() -> Self {
        Self::new()
    }
}
