//! The command line, and the [`Config`] a run derives from it (`smoke`
//! swaps in tiny counts).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::deployment::Kind;

/// Benchmarks the real `email2fa` binary: ingress, drain, end-to-end,
/// linearity and baselines, written to bench/results/<name>.{json,md}.
#[derive(Debug, Parser)]
#[command(name = "email2fa-bench")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every selected scenario on every selected deployment (default: all).
    All(Options),
    /// A few seconds, SQLite only, tiny counts; exits non-zero on any
    /// failure or non-2xx answer. Uses target/debug/email2fa.
    Smoke(Options),
    /// The fault suite: kills and outages on a PostgreSQL + Redis
    /// deployment of its own; exits non-zero on any loss, 5xx other than
    /// 503, hang or unexplained duplicate. Uses target/debug/email2fa.
    Faults(crate::faults::Options),
    /// Internal: the ingress ceiling server (signature check, 200, no storage).
    #[command(hide = true)]
    CeilingServer {
        #[arg(long)]
        listen: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Repetitions of each scenario; the report gives the median and each run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Comma-separated: ingress,drain,e2e,linear,baselines.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingress,drain,e2e,linear,baselines"
    )]
    pub scenarios: Vec<String>,
    /// Comma-separated: sqlite,postgres,redis. `linear` runs on redis, or
    /// on the deployments this flag names.
    #[arg(long, value_delimiter = ',')]
    pub deployments: Option<Vec<String>>,
    /// Measured seconds of the ingress closed loop and open loop (and of the
    /// ceiling and pgbench baselines).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Webhooks posted before the workers start (drain scenario).
    #[arg(long)]
    pub drain_count: Option<u64>,
    /// Rate of the end-to-end open loop, webhooks per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of the end-to-end open loop.
    #[arg(long)]
    pub e2e_duration_secs: Option<u64>,
    /// Rate of the ingress open loop, webhooks per second.
    #[arg(long)]
    pub open_rate: Option<f64>,
    /// The two batch sizes of the linear scenario.
    #[arg(long, value_delimiter = ',')]
    pub linear_counts: Option<Vec<u64>>,
    /// Connections of the closed loops (and of the open loops).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The binary (default target/release/email2fa, target/debug in smoke).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// PostgreSQL admin URL (databases are created next to it).
    #[arg(
        long,
        env = "EMAIL2FA_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "EMAIL2FA_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Result file name (bench/results/<name>.json and .md); default a timestamp.
    #[arg(long)]
    pub name: Option<String>,
}

/// Everything a run needs to know, after defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub smoke: bool,
    pub runs: usize,
    pub scenarios: Vec<String>,
    pub deployments: Vec<Kind>,
    pub linear_deployments: Vec<Kind>,
    pub warmup: Duration,
    pub duration: Duration,
    pub concurrency: usize,
    pub open_rate: f64,
    /// Prepared requests per second of closed-loop window: the pool size.
    pub pool_rate: f64,
    pub drain_count: u64,
    pub e2e_rate: f64,
    pub e2e_duration: Duration,
    pub linear_counts: [u64; 2],
    pub smtp_source_count: u64,
    pub bin: PathBuf,
    pub name: String,
}

impl Config {
    /// Applies the defaults of `all` or `smoke`.
    pub fn new(o: &Options, smoke: bool) -> anyhow::Result<Self> {
        let explicit: Option<Vec<Kind>> = o
            .deployments
            .as_ref()
            .map(|names| names.iter().map(|n| Kind::parse(n)).collect())
            .transpose()?;
        let deployments = match (&explicit, smoke) {
            (Some(kinds), _) => kinds.clone(),
            (None, true) => vec![Kind::Sqlite],
            (None, false) => vec![Kind::Sqlite, Kind::Postgres, Kind::Redis],
        };
        let linear_deployments = match &explicit {
            Some(kinds) => kinds.clone(),
            None => vec![Kind::Redis],
        };
        let secs = |v: Option<u64>, full: u64, tiny: u64| {
            Duration::from_secs(v.unwrap_or(if smoke { tiny } else { full }))
        };
        let profile = if smoke { "debug" } else { "release" };
        Ok(Self {
            smoke,
            runs: if smoke { 1 } else { o.runs.max(1) },
            scenarios: o.scenarios.clone(),
            linear_deployments: linear_deployments
                .into_iter()
                .filter(|k| !smoke || *k == Kind::Sqlite)
                .collect(),
            deployments,
            warmup: Duration::from_secs(if smoke { 1 } else { 3 }),
            duration: secs(o.duration_secs, 15, 1),
            concurrency: o.concurrency.unwrap_or(if smoke { 8 } else { 32 }),
            open_rate: o.open_rate.unwrap_or(if smoke { 100.0 } else { 2000.0 }),
            pool_rate: if smoke { 3000.0 } else { 14000.0 },
            drain_count: o.drain_count.unwrap_or(if smoke { 200 } else { 20_000 }),
            e2e_rate: o.rate.unwrap_or(if smoke { 50.0 } else { 450.0 }),
            e2e_duration: secs(o.e2e_duration_secs, 60, 2),
            linear_counts: match o.linear_counts.as_deref() {
                Some([small, large]) => [*small, *large],
                Some(_) => anyhow::bail!("--linear-counts takes two numbers, e.g. 10000,100000"),
                None if smoke => [100, 1000],
                None => [10_000, 100_000],
            },
            smtp_source_count: if smoke { 500 } else { 20_000 },
            bin: o.bin.clone().unwrap_or_else(|| default_bin(profile)),
            name: o.name.clone().unwrap_or_else(|| {
                let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
                format!("{}-{stamp}", if smoke { "smoke" } else { "bench" })
            }),
        })
    }

    /// True when `scenario` was asked for.
    pub fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

/// `<profile>/email2fa` under `$CARGO_TARGET_DIR` when that is set, else
/// `target/<profile>/email2fa` under the current directory, else under the
/// workspace this crate was built in.
pub fn default_bin(profile: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let bin = PathBuf::from(dir).join(profile).join("email2fa");
        if bin.exists() {
            return bin;
        }
    }
    let relative = PathBuf::from(format!("target/{profile}/email2fa"));
    if relative.exists() {
        return relative;
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let beside = workspace.join(&relative);
    if beside.exists() { beside } else { relative }
}
