//! Scenario 3, end to end: ingress and workers together under an open loop
//! at a fixed rate. Latency runs from the webhook's 2xx at the client to
//! the message's end of `DATA` at the sink (matched by the unique
//! recipient); the backlog (accepted webhooks − delivered messages) is
//! sampled every second and its trend reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::Outcome;
use crate::cli::Config;
use crate::deployment::{Deployment, Env, Kind};
use crate::load::open_loop;
use crate::process::Service;
use crate::webhooks::user_of;

/// One run on one deployment.
pub async fn run(kind: Kind, env: &Env, config: &Config) -> anyhow::Result<Outcome> {
    let mut deployment = Deployment::create(kind, env).await?;
    let result = measure(&mut deployment, config).await;
    deployment.close(env).await;
    result
}

async fn measure(d: &mut Deployment, config: &Config) -> anyhow::Result<Outcome> {
    let mut services: Vec<Service> = if d.kind == Kind::Sqlite {
        vec![d.start("serve").await?]
    } else {
        vec![d.start("ingress").await?, d.start("worker").await?]
    };
    d.configure().await?;
    let n = (config.e2e_rate * config.e2e_duration.as_secs_f64()) as u64;
    let requests = d.enrolled_logins(n).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle: Vec<f64> = services.iter().map(Service::rss_mb).collect();
    let marks: Vec<_> = services.iter().map(Service::mark).collect();

    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_backlog(
        Arc::clone(&progress),
        d.sink.clone(),
        Arc::clone(&stop),
    ));
    let conns = config.concurrency;
    let load = open_loop(d.listen, requests, conns, config.e2e_rate, true, progress).await?;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    let accepted = load.ok as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.sink.count() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = Outcome::new();
    out.load("webhook", &load.summary());
    for (service, (mark, idle)) in services.iter_mut().zip(marks.into_iter().zip(idle)) {
        service.check_alive()?;
        let prefix = service.role.clone();
        out.process(&prefix, &service.figures(mark, Some(idle)), accepted as f64);
    }
    delivery_latency(&mut out, &load.accepted, d);
    backlog_trend(&mut out, &samples, config.e2e_rate);
    for service in services {
        service.stop(Duration::from_secs(30)).await;
    }
    Ok(out)
}

fn delivery_latency(out: &mut Outcome, accepted: &[(u64, std::time::SystemTime)], d: &Deployment) {
    let at: HashMap<u64, std::time::SystemTime> = accepted.iter().copied().collect();
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    let messages = d.sink.messages();
    for message in &messages {
        let Some(user) = message.rcpt_to.first().and_then(|r| user_of(r)) else {
            continue;
        };
        if let Some(sent) = at.get(&user) {
            // The email may reach the sink before the client reads the 2xx.
            let latency = message
                .received_at
                .duration_since(*sent)
                .unwrap_or_default();
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            histogram.saturating_record(micros.max(1));
        }
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    out.set("delivered", messages.len() as f64);
    out.set(
        "undelivered",
        accepted.len().saturating_sub(messages.len()) as f64,
    );
    out.set("delivery.p50_ms", ms(0.5));
    out.set("delivery.p99_ms", ms(0.99));
    out.set("delivery.max_ms", histogram.max() as f64 / 1000.0);
}

/// (seconds since start, accepted − delivered), once a second.
async fn sample_backlog(
    progress: Arc<AtomicU64>,
    sink: email2fa_testkit::sink::SmtpSink,
    stop: Arc<AtomicBool>,
) -> Vec<(f64, f64)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let backlog = progress.load(Ordering::Relaxed) as f64 - sink.count() as f64;
        samples.push((start.elapsed().as_secs_f64(), backlog.max(0.0)));
        if stop.load(Ordering::Relaxed) {
            return samples;
        }
    }
}

/// The least-squares slope of the backlog (messages per second); it
/// "grows" when the slope exceeds 1 % of the rate.
fn backlog_trend(out: &mut Outcome, samples: &[(f64, f64)], rate: f64) {
    let n = samples.len() as f64;
    if n < 2.0 {
        return;
    }
    let (mx, my) = samples
        .iter()
        .fold((0.0, 0.0), |(x, y), (sx, sy)| (x + sx / n, y + sy / n));
    let (num, den) = samples.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    let slope = if den > 0.0 { num / den } else { 0.0 };
    out.set("backlog.slope_per_s", slope);
    out.set(
        "backlog.max",
        samples.iter().map(|s| s.1).fold(0.0, f64::max),
    );
    out.set("backlog.grows", f64::from(u8::from(slope > rate * 0.01)));
    out.keep("backlog.samples", samples);
}
