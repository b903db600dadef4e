//! The fault suite (issue 12): the real binary on a PostgreSQL + Redis
//! deployment of its own (one `ingress`, two `worker`s, an SMTP sink that
//! counts messages per recipient), one fault per scenario, each bounded in
//! time. It reports accepted / delivered / duplicated / dead-lettered
//! counts, 5xx answers and the recovery time, and fails on any loss, any
//! 5xx but a `503` problem, any hang, and any duplicate beyond the sends
//! in flight at the fault. See bench/README.md.

mod hosts;
mod reconcile;
mod report;
mod scenario;
mod soak;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cleanup::Cleanup;
use crate::deployment::Env;
use email2fa_testkit::servers::{PrivatePostgres, PrivateRedis};
use report::Row;
use scenario::Servers;

/// The faults, in the order the suite runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one of the two workers mid-drain; the harness starts it again.
    WorkerKill,
    /// SIGKILL Redis (no persistence: the queue is gone) mid-drain and
    /// start it again.
    RedisKill,
    /// Restart PostgreSQL (fast shutdown, 2 s down) mid-load.
    PostgresRestart,
    /// The SMTP server down for 2 s, shorter than the retry window.
    SmtpShort,
    /// The SMTP server down until every email used up its attempts, then
    /// `email2fa dlq resend --all`.
    SmtpLong,
    /// SIGKILL the ingress under load; hosts retry with the same
    /// `webhook-id`; the harness starts it again.
    IngressKill,
}

impl Fault {
    pub const ALL: [Self; 6] = [
        Self::WorkerKill,
        Self::RedisKill,
        Self::PostgresRestart,
        Self::SmtpShort,
        Self::SmtpLong,
        Self::IngressKill,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::WorkerKill => "worker-kill",
            Self::RedisKill => "redis-kill",
            Self::PostgresRestart => "postgres-restart",
            Self::SmtpShort => "smtp-short",
            Self::SmtpLong => "smtp-long",
            Self::IngressKill => "ingress-kill",
        }
    }

    /// The scenario as the table names it.
    pub fn title(self) -> &'static str {
        match self {
            Self::WorkerKill => "SIGKILL a worker mid-drain",
            Self::RedisKill => "SIGKILL Redis (no persistence) mid-drain, start it again",
            Self::PostgresRestart => "restart PostgreSQL mid-load",
            Self::SmtpShort => "SMTP down 2 s (shorter than the retry window)",
            Self::SmtpLong => "SMTP down past the retry window, then `dlq resend --all`",
            Self::IngressKill => "SIGKILL the ingress under load, hosts retry",
        }
    }

    /// The longest the scenario may take, set-up included. The two whose
    /// lost jobs only the outbox sweep finds (30 s grace, every 10 s) get
    /// 90 s.
    pub fn bound(self) -> Duration {
        match self {
            Self::WorkerKill | Self::RedisKill => Duration::from_secs(90),
            _ => Duration::from_secs(60),
        }
    }

    /// True when the workers start only after 2 s of load, into a backlog,
    /// and the fault comes once each has sent 3 emails: mid-drain.
    pub fn mid_drain(self) -> bool {
        matches!(self, Self::WorkerKill | Self::RedisKill)
    }

    fn parse(name: &str) -> anyhow::Result<Self> {
        match Self::ALL.into_iter().find(|f| f.name() == name) {
            Some(fault) => Ok(fault),
            None => {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                bail!("unknown scenario {name:?} ({})", names.join(", "))
            }
        }
    }
}

/// `email2fa-bench faults …`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Comma-separated subset of worker-kill, redis-kill, postgres-restart,
    /// smtp-short, smtp-long, ingress-kill.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "worker-kill,redis-kill,postgres-restart,smtp-short,smtp-long,ingress-kill"
    )]
    pub scenarios: Vec<String>,
    /// Webhooks (one email each) per scenario.
    #[arg(long, default_value_t = 240)]
    pub webhooks: u64,
    /// Webhooks per second of the hosts' open loop.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// The binary under test (default: target/debug/email2fa, or
    /// target/release/email2fa when the bench itself is a release build).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Print the end of every process's log after each scenario (they are
    /// printed for a failed scenario anyway).
    #[arg(long)]
    pub logs: bool,
    /// Instead of the scenarios: a soak of this many minutes, one
    /// deployment under a steady load at `--rate` with a random fault
    /// every `--fault-every` seconds on average (see bench/README.md).
    #[arg(long)]
    pub soak_minutes: Option<f64>,
    /// The soak's mean pause between two faults, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub fault_every: f64,
    /// The soak's random seed (default: from the clock; the report prints
    /// it, so a failing soak can be run again as it was).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Result file name (bench/results/<name>.{md,json}); default
    /// faults-<UTC time> (soak-<UTC time> for a soak).
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs the suite; `Ok(false)` when a scenario broke an expectation.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let faults: Vec<Fault> = options
        .scenarios
        .iter()
        .map(|n| Fault::parse(n))
        .collect::<anyhow::Result<_>>()?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = options
        .bin
        .clone()
        .unwrap_or_else(|| crate::cli::default_bin(profile));
    if !bin.exists() {
        bail!(
            "{} does not exist: run `cargo build{} --bin email2fa` first, or pass --bin",
            bin.display(),
            if profile == "release" {
                " --release"
            } else {
                ""
            }
        );
    }
    let name = options.name.clone().unwrap_or_else(|| {
        let kind = if options.soak_minutes.is_some() {
            "soak"
        } else {
            "faults"
        };
        format!("{kind}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"))
    });
    let started = Instant::now();
    let mut machine = crate::machine::info();
    println!("email2fa-bench faults: {}", bin.display());
    let mut servers = Servers {
        postgres: PrivatePostgres::start()
            .await
            .context("failed to start a private PostgreSQL")?,
        redis: PrivateRedis::start()
            .await
            .context("failed to start a private Redis")?,
    };
    println!(
        "private servers: {} · {}",
        servers.postgres.url(),
        servers.redis.url()
    );
    let env = Env {
        bin: bin.canonicalize()?,
        database_url: servers.postgres.url(),
        redis_url: servers.redis.url(),
        cleanup: Cleanup::default(),
    };
    if let Some(minutes) = options.soak_minutes {
        let report = soak::run(&mut servers, &env, &options, minutes).await;
        env.cleanup.run_all().await;
        drop(servers);
        let report = report?;
        machine["loadavg_after"] = crate::machine::loadavg().into();
        machine["settings"] = serde_json::json!(scenario::SETTINGS);
        let title = format!("email2fa soak — {name}");
        let md = soak::markdown(&title, &machine, &report);
        let json = serde_json::json!({"machine": machine, "soak": report});
        crate::report::save(&name, &json, &md)?;
        return Ok(report.problems.is_empty());
    }
    let mut rows = Vec::new();
    for fault in faults {
        println!("{} …", fault.title());
        let row = match scenario::run(fault, &mut servers, &env, &options).await {
            Ok(row) => row,
            Err(error) => Row::failed(fault.name(), fault.title(), &error),
        };
        println!(
            "  accepted {} · delivered {} · duplicates {} · dead letters {} · 5xx {} · recovery {:.1} s · {:.0} s{}",
            row.accepted,
            row.delivered,
            row.duplicates,
            row.dead_letters,
            row.tally.all_5xx(),
            row.recovery_s,
            row.wall_s,
            if row.problems.is_empty() {
                ""
            } else {
                " · FAILED"
            }
        );
        for problem in &row.problems {
            println!("  FAILED: {problem}");
        }
        rows.push(row);
    }
    env.cleanup.run_all().await;
    drop(servers);
    machine["loadavg_after"] = crate::machine::loadavg().into();
    machine["settings"] = serde_json::json!(scenario::SETTINGS);
    let wall_s = started.elapsed().as_secs_f64();
    write(&name, &machine, &rows, wall_s)?;
    Ok(rows.iter().all(|r| r.problems.is_empty()))
}

fn write(name: &str, machine: &serde_json::Value, rows: &[Row], wall_s: f64) -> anyhow::Result<()> {
    let json = serde_json::json!({"machine": machine, "wall_s": wall_s, "results": rows});
    let title = format!("email2fa fault suite — {name}");
    let md = report::markdown(&title, machine, rows, wall_s);
    crate::report::save(name, &json, &md)
}
