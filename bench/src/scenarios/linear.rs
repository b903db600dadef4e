//! Scenario 4, linear: drain a small and a large batch (10,000 and 100,000
//! by default) and compare the worker's CPU time per message and its peak
//! memory: the cost of one email should not grow with the backlog.

use super::Outcome;
use crate::cli::Config;
use crate::deployment::{Deployment, Env, Kind};

/// One run on one deployment.
pub async fn run(kind: Kind, env: &Env, config: &Config) -> anyhow::Result<Outcome> {
    let mut out = Outcome::new();
    let mut per_message = Vec::new();
    for count in config.linear_counts {
        let mut deployment = Deployment::create(kind, env).await?;
        let result = super::drain::drain(&mut deployment, count, config).await;
        deployment.close(env).await;
        let drained = result?;
        let cpu_us = drained
            .figures
            .get("worker.cpu_us_per_unit")
            .copied()
            .unwrap_or(0.0);
        let rss = drained
            .figures
            .get("worker.rss_peak_mb")
            .copied()
            .unwrap_or(0.0);
        let rate = drained.figures.get("emails_per_s").copied().unwrap_or(0.0);
        out.set(&format!("n{count}.cpu_us_per_msg"), cpu_us);
        out.set(&format!("n{count}.rss_peak_mb"), rss);
        out.set(&format!("n{count}.emails_per_s"), rate);
        out.non_2xx += drained.non_2xx;
        out.keep(&format!("n{count}"), &drained);
        per_message.push((cpu_us, rss));
    }
    if let [(small_cpu, small_rss), (large_cpu, large_rss)] = per_message[..]
        && small_cpu > 0.0
        && small_rss > 0.0
    {
        out.set("cpu_ratio_large_small", large_cpu / small_cpu);
        out.set("rss_ratio_large_small", large_rss / small_rss);
    }
    Ok(out)
}
