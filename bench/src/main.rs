//! `email2fa-bench`: the benchmark of issue 6, run against the real
//! `email2fa` binary. See bench/README.md.

mod baselines;
mod cleanup;
mod cli;
mod client;
mod deployment;
mod faults;
mod load;
mod machine;
mod process;
mod report;
mod scenarios;
mod webhooks;

use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;

use crate::cli::{Cli, Command, Config};
use crate::deployment::{Env, Kind, redact};
use crate::report::Row;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::CeilingServer { listen } => {
                baselines::ceiling_server(&listen).await.map(|()| true)
            }
            Command::All(options) => bench(Config::new(&options, false)?, &options).await,
            Command::Smoke(options) => bench(Config::new(&options, true)?, &options).await,
            Command::Faults(options) => tokio::select! {
                result = faults::run(options) => result,
                signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
            },
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("email2fa-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark; `Ok(false)` when a run failed or saw a non-2xx.
async fn bench(config: Config, options: &cli::Options) -> anyhow::Result<bool> {
    if !config.bin.exists() {
        let build = if config.smoke {
            "cargo build --bin email2fa"
        } else {
            "cargo build --release"
        };
        bail!(
            "{} does not exist: run `{build}` first, or pass --bin",
            config.bin.display()
        );
    }
    let env = Env {
        bin: config.bin.canonicalize()?,
        database_url: options.database_url.clone(),
        redis_url: options.redis_url.clone(),
        cleanup: cleanup::Cleanup::default(),
    };
    let mut machine = machine::info();
    machine["config"] = serde_json::to_value(&config)?;
    println!(
        "email2fa-bench {}: {} · PostgreSQL {} · Redis {}",
        if config.smoke { "smoke" } else { "all" },
        config.bin.display(),
        redact(&env.database_url),
        redact(&env.redis_url)
    );
    let mut rows = Vec::new();
    let outcome = tokio::select! {
        result = run_all(&config, &env, &mut rows) => result,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    env.cleanup.run_all().await;
    machine["loadavg_after"] = machine::loadavg().into();
    write_reports(&config, &machine, &rows)?;
    outcome?;
    let problems: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.problems()
                .into_iter()
                .map(move |p| format!("{} {}: {p}", r.scenario, r.deployment))
        })
        .collect();
    for problem in &problems {
        eprintln!("FAILED {problem}");
    }
    Ok(problems.is_empty())
}

async fn run_all(config: &Config, env: &Env, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    type Scenario = for<'a> fn(
        Kind,
        &'a Env,
        &'a Config,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = anyhow::Result<scenarios::Outcome>> + Send + 'a>,
    >;
    let table: [(&str, Scenario); 3] = [
        ("ingress", |k, e, c| {
            Box::pin(scenarios::ingress::run(k, e, c))
        }),
        ("drain", |k, e, c| Box::pin(scenarios::drain::run(k, e, c))),
        ("e2e", |k, e, c| Box::pin(scenarios::e2e::run(k, e, c))),
    ];
    for (name, scenario) in table {
        if !config.wants(name) {
            continue;
        }
        for kind in &config.deployments {
            let mut row = Row::new(name, kind.name());
            for run in 1..=config.runs {
                println!("{name} on {} (run {run}/{}) …", kind.name(), config.runs);
                let result = scenario(*kind, env, config).await;
                report_progress(&result);
                row.push(result);
            }
            rows.push(row);
        }
    }
    if config.wants("linear") {
        if config.linear_deployments.is_empty() {
            println!(
                "skipped: linear has no deployment (a smoke run drains only SQLite, and only when --deployments names it)"
            );
        }
        for kind in &config.linear_deployments {
            let mut row = Row::new("linear", kind.name());
            for run in 1..=config.runs {
                println!("linear on {} (run {run}/{}) …", kind.name(), config.runs);
                let result = scenarios::linear::run(*kind, env, config).await;
                report_progress(&result);
                row.push(result);
            }
            rows.push(row);
        }
    }
    if config.wants("baselines") {
        baselines(config, env, rows).await;
    }
    Ok(())
}

async fn baselines(config: &Config, env: &Env, rows: &mut Vec<Row>) {
    let mut ceiling = Row::new("baselines", "ceiling");
    let mut pgbench = Row::new("baselines", "pgbench");
    let mut smtp = Row::new("baselines", "smtp-source");
    let wants_pg = !config.smoke && config.deployments.iter().any(|k| *k != Kind::Sqlite);
    for run in 1..=config.runs {
        println!("baseline: ingress ceiling (run {run}/{}) …", config.runs);
        let result = baselines::ceiling(config).await;
        report_progress(&result);
        ceiling.push(result);
        if wants_pg {
            println!("baseline: pgbench (run {run}/{}) …", config.runs);
            if let Some(result) = baselines::pgbench(env, config).await.transpose() {
                report_progress(&result);
                pgbench.push(result);
            }
        }
        println!("baseline: smtp-source (run {run}/{}) …", config.runs);
        if let Some(result) = baselines::smtp_source(config).await.transpose() {
            report_progress(&result);
            smtp.push(result);
        }
    }
    rows.extend(
        [ceiling, pgbench, smtp]
            .into_iter()
            .filter(|r| !r.runs.is_empty()),
    );
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn report_progress(result: &anyhow::Result<scenarios::Outcome>) {
    match result {
        Ok(outcome) => {
            let some: Vec<String> = outcome
                .figures
                .iter()
                .filter(|(k, _)| {
                    k.contains("throughput")
                        || k.contains("per_s")
                        || k.ends_with("p99_ms")
                        || k == &"tps"
                })
                .map(|(k, v)| format!("{k}={}", report::fmt(*v)))
                .collect();
            println!("  {}", some.join(" "));
        }
        Err(error) => println!("  FAILED: {error:#}"),
    }
}

fn write_reports(config: &Config, machine: &serde_json::Value, rows: &[Row]) -> anyhow::Result<()> {
    let json = serde_json::json!({"machine": machine, "results": rows});
    let title = format!("email2fa benchmark — {}", config.name);
    let md = report::markdown(&title, machine, rows);
    report::save(&config.name, &json, &md)
}
