//! Scenario 2, drain: with no worker running, post N `login.started`
//! webhooks; stop the ingress; start the worker and time the emails into
//! the sink until all N arrived (a timeout fails the run with the count
//! reached), with the worker's CPU and memory.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::Outcome;
use crate::cli::Config;
use crate::deployment::{Deployment, Env, Kind};
use crate::load::{LoadResult, Until, closed_loop};

/// Webhooks signed at once before posting.
const POST_CHUNK: u64 = 20_000;

/// One run on one deployment.
pub async fn run(kind: Kind, env: &Env, config: &Config) -> anyhow::Result<Outcome> {
    let mut deployment = Deployment::create(kind, env).await?;
    let result = drain(&mut deployment, config.drain_count, config).await;
    deployment.close(env).await;
    result
}

/// Posts `count` webhooks, then drains them with one worker process.
pub async fn drain(d: &mut Deployment, count: u64, config: &Config) -> anyhow::Result<Outcome> {
    let ingress = d.start("ingress").await?;
    d.configure().await?;
    // Signed a chunk at a time, so that no timestamp ages past the
    // service's 5-minute tolerance however slowly a large batch goes in.
    let mut posted = LoadResult::empty();
    let mut left = count;
    while left > 0 {
        let chunk = left.min(POST_CHUNK);
        left -= chunk;
        let requests = d.enrolled_logins(chunk).await?;
        let until = Until::AllSent;
        posted.merge(closed_loop(d.listen, requests, config.concurrency, until, false).await?);
    }
    let posted = posted.summary();
    ingress.stop(Duration::from_secs(10)).await;
    let mut out = Outcome::new();
    out.load("post", &posted);
    let expected = posted.requests_ok as usize;

    let started = Instant::now();
    let mut worker = d.start("worker").await?;
    let mark = worker.mark();
    // Every deployment drains at hundreds of emails/s on 2 cores (SQLite
    // about 950/s): a drain slower than 40/s is stuck, not slow.
    let timeout = Duration::from_secs(60).max(Duration::from_secs(count / 40));
    let mut first = None;
    let reached = loop {
        let n = d.sink.count();
        if n > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        if n >= expected || started.elapsed() > timeout {
            break n;
        }
        if let Err(error) = worker.check_alive() {
            bail!("{error:#} (after {n} of {expected} emails)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let total = started.elapsed();
    let figures = worker.figures(mark, None);
    worker.stop(Duration::from_secs(30)).await;
    if reached < expected {
        bail!("timeout after {total:?}: {reached} of {expected} emails arrived");
    }
    let first = first.unwrap_or(total);
    out.set("emails", reached as f64);
    out.set("emails_per_s", reached as f64 / total.as_secs_f64());
    out.set("first_email_s", first.as_secs_f64());
    let steady = (total - first).as_secs_f64();
    if steady > 0.0 {
        out.set("emails_per_s_after_first", (reached - 1) as f64 / steady);
    }
    out.set("drain_s", total.as_secs_f64());
    out.process("worker", &figures, reached as f64);
    Ok(out)
}
