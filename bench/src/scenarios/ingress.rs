//! Scenario 1, ingress: `login.started` against the ingress process alone
//! (no workers), a closed loop after a warm-up, then an open loop at a
//! fixed rate. Every request is signed before the clock starts and is
//! about a user and an address of its own.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::Outcome;
use crate::cli::Config;
use crate::deployment::{Deployment, Env, Kind};
use crate::load::{Until, closed_loop, open_loop};

/// One run on one deployment.
pub async fn run(kind: Kind, env: &Env, config: &Config) -> anyhow::Result<Outcome> {
    let mut deployment = Deployment::create(kind, env).await?;
    let result = measure(&mut deployment, config).await;
    deployment.close(env).await;
    result
}

async fn measure(d: &mut Deployment, config: &Config) -> anyhow::Result<Outcome> {
    let service = d.start("ingress").await?;
    d.configure().await?;
    let warm_n = (config.warmup.as_secs_f64() * config.pool_rate) as u64;
    let closed_n = (config.duration.as_secs_f64() * config.pool_rate) as u64;
    let open_n = (config.duration.as_secs_f64() * config.open_rate) as u64;
    let warm = d.enrolled_logins(warm_n).await?;
    let closed = d.enrolled_logins(closed_n).await?;
    let open = d.enrolled_logins(open_n).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = service.rss_mb();
    let mut out = Outcome::new();

    let until = Until::Duration {
        warmup: Duration::ZERO,
        measure: config.warmup,
    };
    let warmup = closed_loop(d.listen, warm, config.concurrency, until, false).await?;
    out.non_2xx += warmup.summary().non_2xx.values().sum::<u64>();

    let mark = service.mark();
    let until = Until::Duration {
        warmup: Duration::ZERO,
        measure: config.duration,
    };
    let result = closed_loop(d.listen, closed, config.concurrency, until, false).await?;
    let summary = result.summary();
    out.load("closed", &summary);
    out.process(
        "closed.ingress",
        &service.figures(mark, Some(idle)),
        summary.requests_ok as f64,
    );

    let mark = service.mark();
    let progress = Arc::new(AtomicU64::new(0));
    let result = open_loop(
        d.listen,
        open,
        config.concurrency,
        config.open_rate,
        false,
        progress,
    )
    .await?;
    let summary = result.summary();
    out.load("open", &summary);
    out.process(
        "open.ingress",
        &service.figures(mark, None),
        summary.requests_ok as f64,
    );
    out.set("open.rate_target", config.open_rate);
    service.stop(Duration::from_secs(10)).await;
    Ok(out)
}
