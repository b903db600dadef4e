//! The soak (`email2fa-bench faults --soak-minutes M`): one deployment
//! (two `ingress`es, two `worker`s, the counting SMTP sink, the suite's
//! private PostgreSQL and Redis) under a steady open loop of signed
//! `login.started` webhooks for many minutes, half of the hosts posting to
//! each ingress, with a random fault of the suite every `--fault-every`
//! seconds on average. The first ingress and the first worker live through
//! the whole run, so their resident memory and open file descriptors can
//! be followed from start to end; the second of each is the one a kill
//! takes. At the end every accepted webhook's email must have arrived,
//! duplicates stay within the sends in flight at the faults, the tables
//! agree with the sink, and memory and descriptors must be flat.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;

use super::Fault;
use super::hosts::{self, Tally};
use super::reconcile::Ledger;
use super::scenario::{
    CONNECTIONS, GIVE_UP, SETTINGS, Servers, UNFINISHED, lazy_pool, most_sending,
};
use crate::deployment::{Deployment, Env, Kind};
use crate::process::Service;

/// The faults the soak draws from: the suite's six. A kill takes the
/// second worker or the second ingress.
const FAULTS: [Fault; 6] = Fault::ALL;

/// How long SMTP stays down in the soak's long outage: past the whole
/// retry window of the suite's settings (at most 7.5 s).
const SMTP_OUTAGE: Duration = Duration::from_secs(12);

/// How often the long-lived processes' memory and descriptors are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Resident memory may end at most this factor over the early level, plus
/// [`RSS_SLACK_MB`]; descriptors at most [`FD_SLACK`] over it.
const RSS_GROWTH: f64 = 1.25;
const RSS_SLACK_MB: f64 = 4.0;
const FD_SLACK: f64 = 8.0;

/// One fault of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Strike {
    /// Seconds after the load started.
    pub at_s: f64,
    /// Its name (as `--scenarios` spells it).
    pub fault: &'static str,
    /// The most deliveries in `sending` from just before it until its
    /// repair (the duplicates it may cause).
    pub in_flight: i64,
    /// From its start until it was repaired.
    pub took_s: f64,
}

/// A reading of one long-lived process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds after the load started.
    pub at_s: f64,
    /// `ingress` or `worker`.
    pub role: String,
    /// VmRSS in MB.
    pub rss_mb: f64,
    /// Open file descriptors.
    pub fds: u64,
}

/// The memory and descriptors of one long-lived process: the highest of
/// the early window (after warm-up) against the median of the last.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub role: String,
    pub rss_first_mb: f64,
    pub rss_early_mb: f64,
    pub rss_late_mb: f64,
    pub rss_max_mb: f64,
    pub fds_early: f64,
    pub fds_late: f64,
    pub fds_max: u64,
    pub flat: bool,
}

/// What the soak counted.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub minutes: f64,
    pub rate: f64,
    pub seed: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub in_flight_at_faults: i64,
    pub dead_letters: i64,
    pub tally: Tally,
    pub strikes: Vec<Strike>,
    pub trends: Vec<Trend>,
    pub samples: Vec<Sample>,
    pub wall_s: f64,
    pub problems: Vec<String>,
}

/// Runs the soak for `minutes` on the suite's private servers.
pub async fn run(
    servers: &mut Servers,
    env: &Env,
    options: &super::Options,
    minutes: f64,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng(seed | 1);
    let mut d = Deployment::create(Kind::Redis, env).await?;
    for (name, value) in SETTINGS {
        d.set_var(name, value);
    }
    d.set_var("EMAIL2FA_LOG", "warn");
    let mut ingress = d.start("ingress").await?;
    d.configure().await?;
    let n = (options.rate * minutes * 60.0).ceil() as u64;
    println!(
        "soak: {minutes} min at {}/s ({n} webhooks), seed {seed}",
        options.rate
    );
    let requests = d.enrolled_logins(n).await?;
    let second = crate::deployment::free_port()?;
    let mut victims = Victims {
        ingress: Some(d.start_on("ingress", second).await?),
        second,
        worker: Some(d.start("worker").await?),
    };
    let mut steady = d.start("worker").await?;
    let load_started = Instant::now();
    // Half of the hosts post to each ingress (every other webhook).
    let half = |k: usize| -> Arc<Vec<_>> {
        Arc::new(requests.iter().skip(k).step_by(2).cloned().collect())
    };
    let (first_half, second_half) = (half(0), half(1));
    let (first, rate) = (d.listen, options.rate / 2.0);
    // Signed afresh at each try: the run outlasts the timestamp tolerance.
    let key = Some(Arc::new(d.key.clone()));
    let load = tokio::spawn(async move {
        let accepted = Arc::new(AtomicU64::new(0));
        let (mut tally, other) = tokio::join!(
            hosts::post_all(
                first,
                first_half,
                CONNECTIONS / 2,
                rate,
                GIVE_UP,
                Arc::clone(&accepted),
                key.clone(),
            ),
            hosts::post_all(
                second,
                second_half,
                CONNECTIONS / 2,
                rate,
                GIVE_UP,
                accepted,
                key,
            ),
        );
        tally.merge(other);
        tally
    });
    let (stop_sampling, sampling) = watch::channel(false);
    let sampler = tokio::spawn(sample(
        vec![
            ("ingress".to_string(), ingress.pid),
            ("worker".to_string(), steady.pid),
        ],
        load_started,
        sampling,
    ));
    let url = d
        .var("EMAIL2FA_DATABASE_URL")
        .unwrap_or_default()
        .to_string();
    let mut strikes = Vec::new();
    let mut problems = Vec::new();
    loop {
        let pause = options.fault_every * (0.5 + rng.unit());
        let until = Instant::now() + Duration::from_secs_f64(pause);
        while Instant::now() < until && !load.is_finished() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if load.is_finished() {
            break;
        }
        let fault = FAULTS[rng.below(FAULTS.len())];
        let at = load_started.elapsed();
        let (stop, stopped) = watch::channel(None);
        let in_flight = tokio::spawn(most_sending(lazy_pool(&url)?, stopped));
        strike(fault, &mut d, &mut victims, servers).await?;
        let took = load_started.elapsed() - at;
        let _ = stop.send(Some(Instant::now()));
        let in_flight = in_flight.await.context("the sampler failed")?;
        println!(
            "  {:>6.0} s  {:<16} in flight {in_flight:>3} · {:.1} s",
            at.as_secs_f64(),
            fault.name(),
            took.as_secs_f64()
        );
        strikes.push(Strike {
            at_s: at.as_secs_f64(),
            fault: fault.name(),
            in_flight,
            took_s: took.as_secs_f64(),
        });
        for service in [&mut ingress, &mut steady] {
            if let Err(error) = service.check_alive() {
                problems.push(format!("{error:#}"));
            }
        }
        if !problems.is_empty() {
            load.abort();
            break;
        }
    }
    let tally = load.await.unwrap_or_default();
    let _ = stop_sampling.send(true);
    let samples = sampler.await.context("the process sampler failed")?;
    let resends = drain(&d, tally.accepted.len() as u64).await?;
    if resends > 0 {
        println!("  after the load: `dlq resend --all` for {resends} dead letters");
    }
    // A send re-made after a crash arrives moments after its row says so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let duration = load_started.elapsed().as_secs_f64();
    let mut report = reconcile(&d, tally, strikes, samples, duration, problems).await?;
    report.minutes = minutes;
    report.rate = options.rate;
    report.seed = seed;
    let all = [Some(ingress), Some(steady), victims.ingress, victims.worker];
    for service in all.into_iter().flatten() {
        service.stop(Duration::from_secs(10)).await;
    }
    d.close(env).await;
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The processes a kill takes: the second ingress (on its own address)
/// and the second worker.
struct Victims {
    ingress: Option<Service>,
    second: std::net::SocketAddr,
    worker: Option<Service>,
}

/// Injects one fault and repairs it.
async fn strike(
    fault: Fault,
    d: &mut Deployment,
    victims: &mut Victims,
    servers: &mut Servers,
) -> anyhow::Result<()> {
    match fault {
        Fault::WorkerKill => {
            if let Some(worker) = victims.worker.take() {
                worker.kill().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            victims.worker = Some(d.start("worker").await?);
        }
        Fault::IngressKill => {
            if let Some(ingress) = victims.ingress.take() {
                ingress.kill().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            victims.ingress = Some(d.start_on("ingress", victims.second).await?);
        }
        Fault::RedisKill => {
            servers.redis.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            servers.redis.restart().await?;
        }
        Fault::PostgresRestart => {
            servers.postgres.stop().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            servers.postgres.start_server().await?;
        }
        Fault::SmtpShort => {
            d.sink.stop().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            d.sink.restart().await?;
        }
        Fault::SmtpLong => {
            // Past the retry window, then the operator's one action once
            // the emails caught in retries have gone out or died.
            d.sink.stop().await;
            tokio::time::sleep(SMTP_OUTAGE).await;
            d.sink.restart().await?;
            settle(d, Duration::from_secs(20)).await?;
            d.command(&["dlq", "resend", "--all"]).await?;
        }
    }
    Ok(())
}

/// Waits (at most `bound`) until no delivery is retrying.
async fn settle(d: &Deployment, bound: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + bound;
    let sql = "select count(*) from email2fa.deliveries where status = 'retrying'";
    while Instant::now() < until && d.count(sql).await? > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// After the load: waits until every accepted webhook's email could have
/// arrived and nothing is left to do. Dead letters left behind by a long
/// outage that ended with the load are resent once, as an operator would;
/// returns how many.
async fn drain(d: &Deployment, accepted: u64) -> anyhow::Result<i64> {
    let unresolved = "select count(*) from email2fa.dead_letters where resolved_at is null";
    let unfinished = format!("select count(*) from email2fa.deliveries where {UNFINISHED}");
    let mut resent = 0;
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if d.count(&unfinished).await? == 0 {
            let dead = d.count(unresolved).await?;
            if dead > 0 && resent == 0 {
                d.command(&["dlq", "resend", "--all"]).await?;
                resent = dead;
                continue;
            }
            if d.sink.count() as u64 >= accepted {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(resent)
}

/// Reads the long-lived processes every [`SAMPLE_EVERY`] until told to
/// stop.
async fn sample(
    processes: Vec<(String, u32)>,
    since: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    loop {
        for (role, pid) in &processes {
            let rss_kb = crate::process::status_kb(*pid, "VmRSS:").unwrap_or(0);
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            samples.push(Sample {
                at_s: since.elapsed().as_secs_f64(),
                role: role.clone(),
                rss_mb: rss_kb as f64 / 1024.0,
                fds: fds as u64,
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.changed() => return samples,
        }
    }
}

/// The early and late levels of each process: the highest reading of
/// the sixth of the run after the first sixth (warm-up: pools and caches
/// filling) against the median of the last sixth.
fn trends(samples: &[Sample], duration: f64) -> Vec<Trend> {
    let sixth = duration / 6.0;
    let mut roles: Vec<&str> = samples.iter().map(|s| s.role.as_str()).collect();
    roles.sort_unstable();
    roles.dedup();
    roles
        .into_iter()
        .map(|role| {
            let of: Vec<&Sample> = samples.iter().filter(|s| s.role == role).collect();
            let window = |from: f64, to: f64| -> Vec<&Sample> {
                of.iter()
                    .copied()
                    .filter(|s| s.at_s >= from && s.at_s <= to)
                    .collect()
            };
            let early = window(sixth, 2.0 * sixth);
            let late = window(duration - sixth, f64::MAX);
            let rss_early = early.iter().map(|s| s.rss_mb).fold(0.0, f64::max);
            let fds_early = early.iter().map(|s| s.fds as f64).fold(0.0, f64::max);
            let rss_late = median(late.iter().map(|s| s.rss_mb).collect());
            let fds_late = median(late.iter().map(|s| s.fds as f64).collect());
            Trend {
                role: role.to_string(),
                rss_first_mb: of.first().map_or(0.0, |s| s.rss_mb),
                rss_early_mb: rss_early,
                rss_late_mb: rss_late,
                rss_max_mb: of.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
                fds_early,
                fds_late,
                fds_max: of.iter().map(|s| s.fds).max().unwrap_or(0),
                flat: rss_late <= rss_early * RSS_GROWTH + RSS_SLACK_MB
                    && fds_late <= fds_early + FD_SLACK,
            }
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What the hosts saw against what the sink received and the tables say.
async fn reconcile(
    d: &Deployment,
    tally: Tally,
    strikes: Vec<Strike>,
    samples: Vec<Sample>,
    duration: f64,
    mut problems: Vec<String>,
) -> anyhow::Result<Report> {
    let accepted: HashMap<u64, SystemTime> = tally.accepted.iter().copied().collect();
    let ledger = Ledger::read(d, &accepted).await?;
    let in_flight: i64 = strikes.iter().map(|s| s.in_flight).sum();
    let trends = trends(&samples, duration);
    let n = accepted.len() as u64;
    problems.extend(ledger.problems(&tally, n, in_flight));
    let mut problem = |broken: bool, text: String| {
        if broken {
            problems.push(text);
        }
    };
    for trend in &trends {
        problem(
            !trend.flat,
            format!(
                "{} grew: RSS {:.1} → {:.1} MB, descriptors {:.0} → {:.0}",
                trend.role, trend.rss_early_mb, trend.rss_late_mb, trend.fds_early, trend.fds_late
            ),
        );
    }
    Ok(Report {
        minutes: 0.0,
        rate: 0.0,
        seed: 0,
        accepted: n,
        delivered: ledger.delivered,
        lost: n - ledger.delivered.min(n),
        duplicates: ledger.duplicates,
        in_flight_at_faults: in_flight,
        dead_letters: ledger.dead_letters,
        tally,
        strikes,
        trends,
        samples,
        wall_s: 0.0,
        problems,
    })
}

/// The Markdown report.
pub fn markdown(title: &str, machine: &serde_json::Value, r: &Report) -> String {
    use std::fmt::Write as _;
    let mut md = format!(
        "# {title}\n\n{} · {:.0} s in all · seed {}\n\n",
        crate::report::machine_line(machine),
        r.wall_s,
        r.seed
    );
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for strike in &r.strikes {
        match counts.iter_mut().find(|(name, _)| *name == strike.fault) {
            Some((_, n)) => *n += 1,
            None => counts.push((strike.fault, 1)),
        }
    }
    let faults: Vec<String> = counts.iter().map(|(f, n)| format!("{f} ×{n}")).collect();
    let verdict = if r.problems.is_empty() {
        "pass"
    } else {
        "**FAIL**"
    };
    md.push_str(
        "| minutes | webhooks/s | accepted | delivered | duplicates (in flight at the faults) | dead letters | 503 answers | slowest answer | faults | verdict |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let _ = writeln!(
        md,
        "| {:.0} | {} | {} | {} | {} ({}) | {} | {} | {:.2} s | {} | {verdict} |",
        r.minutes,
        r.rate,
        r.accepted,
        r.delivered,
        r.duplicates,
        r.in_flight_at_faults,
        r.dead_letters,
        r.tally.unavailable,
        r.tally.slowest_answer_ms / 1000.0,
        faults.join(", "),
    );
    md.push_str(
        "\n| process | RSS at start | RSS early (highest) → late (median) | RSS max | descriptors early (highest) → late (median) | descriptors max | flat |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for t in &r.trends {
        let _ = writeln!(
            md,
            "| {} | {:.1} MB | {:.1} → {:.1} MB | {:.1} MB | {:.0} → {:.0} | {} | {} |",
            t.role,
            t.rss_first_mb,
            t.rss_early_mb,
            t.rss_late_mb,
            t.rss_max_mb,
            t.fds_early,
            t.fds_late,
            t.fds_max,
            if t.flat { "yes" } else { "**no**" }
        );
    }
    md.push_str("\n| at | fault | in flight | took |\n| --- | --- | --- | --- |\n");
    for s in &r.strikes {
        let _ = writeln!(
            md,
            "| {:.0} s | {} | {} | {:.1} s |",
            s.at_s, s.fault, s.in_flight, s.took_s
        );
    }
    for problem in &r.problems {
        let _ = writeln!(md, "\n- **FAILED**: {problem}");
    }
    md
}

/// A small xorshift generator: the faults and their times are drawn from
/// a seed the report prints, so a failing soak can be run again as it was.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
