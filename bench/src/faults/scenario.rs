//! One fault scenario: a fresh deployment on the private servers (one
//! `ingress`, two `worker`s, the in-process SMTP sink), hosts posting
//! signed `login.started` webhooks for enrolled users, the fault injected
//! mid-load and repaired, then the reconciliation of what the hosts saw,
//! what the sink received per recipient and what the tables say.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::reconcile;
use super::report::Row;
use super::{Fault, Options};
use crate::deployment::{Deployment, Env, Kind};
use crate::faults::hosts::{self, Tally};
use crate::process::Service;
use crate::webhooks::user_of;
use email2fa_testkit::servers::{PrivatePostgres, PrivateRedis};

/// The settings every process of the suite runs with (README,
/// Configuration), chosen so that each recovery path finishes within
/// seconds: a crashed send's lease runs out after 3 s; a transient SMTP
/// failure is retried after 0.25, 0.5, 1, 1, 1 s (each with up to as much
/// again of jitter), so the retry window of 6 attempts is 3.75–7.5 s; a
/// request waits at most 1 s for a database connection before its 503.
/// Four sends at once per worker: the two workers hold at most 32 jobs
/// between them (four per send), so mid-drain most of a backlog still
/// waits in the queue.
pub const SETTINGS: [(&str, &str); 8] = [
    ("EMAIL2FA_DELIVERY__CONCURRENCY", "4"),
    ("EMAIL2FA_DELIVERY__LEASE_SECONDS", "3"),
    ("EMAIL2FA_DELIVERY__BACKOFF_BASE_MS", "250"),
    ("EMAIL2FA_DELIVERY__BACKOFF_CAP_MS", "1000"),
    ("EMAIL2FA_DELIVERY__SMTP_TIMEOUT_SECONDS", "5"),
    ("EMAIL2FA_DELIVERY__SHUTDOWN_TIMEOUT_SECONDS", "5"),
    ("EMAIL2FA_DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
    ("EMAIL2FA_HTTP__SHUTDOWN_TIMEOUT_MS", "2000"),
];

/// Connections of the hosts' open loop.
pub(super) const CONNECTIONS: usize = 8;

/// When the fault comes, after the load started (or, mid-drain, when the
/// workers start).
const FAULT_AT: Duration = Duration::from_secs(2);

/// The ingress is killed at this many times the rate, a third of the way
/// through the webhooks.
const INGRESS_KILL_RATE_FACTOR: f64 = 10.0;

/// A host gives a webhook up this long after its first try.
pub(super) const GIVE_UP: Duration = Duration::from_secs(45);

/// The statuses of a delivery that is not finished.
pub(super) const UNFINISHED: &str = "status in ('queued', 'sending', 'retrying')";

/// The suite's private servers.
pub struct Servers {
    pub postgres: PrivatePostgres,
    pub redis: PrivateRedis,
}

/// The running processes of one deployment.
struct Processes {
    ingress: Option<Service>,
    workers: Vec<Service>,
}

impl Processes {
    async fn stop(self) {
        let all = self.ingress.into_iter().chain(self.workers);
        for service in all {
            service.stop(Duration::from_secs(10)).await;
        }
    }

    fn log_tails(&self) -> String {
        let all = self.ingress.iter().chain(self.workers.iter());
        all.map(|s| format!("--- {} (pid {}):\n{}", s.role, s.pid, s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the fault step reports.
pub(super) struct Injected {
    /// When the fault was over: the process started again, the server
    /// back.
    pub repaired_at: SystemTime,
    /// The most deliveries in `sending` from just before the fault until
    /// the repair: the sends that may arrive twice (a send whose outcome
    /// could not be recorded stays `sending` until its lease runs out,
    /// then it is sent again).
    pub in_flight: i64,
}

/// Runs one scenario; an error means the harness itself could not run it.
pub async fn run(
    fault: Fault,
    servers: &mut Servers,
    env: &Env,
    options: &Options,
) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut d = Deployment::create(Kind::Redis, env).await?;
    for (name, value) in SETTINGS {
        d.set_var(name, value);
    }
    d.set_var("EMAIL2FA_LOG", "email2fa=info,email2fa_workers=info,warn");
    let mut procs = Processes {
        ingress: Some(d.start("ingress").await?),
        workers: Vec::new(),
    };
    let result = scenario(fault, &mut d, &mut procs, servers, options, started).await;
    if options.logs || !result.as_ref().is_ok_and(|row| row.problems.is_empty()) {
        eprintln!("{} — process logs:\n{}", fault.name(), procs.log_tails());
    }
    procs.stop().await;
    d.close(env).await;
    result
}

async fn scenario(
    fault: Fault,
    d: &mut Deployment,
    procs: &mut Processes,
    servers: &mut Servers,
    options: &Options,
    started: Instant,
) -> anyhow::Result<Row> {
    d.configure().await?;
    let requests = d.enrolled_logins(options.webhooks).await?;
    if !fault.mid_drain() {
        procs.workers = vec![d.start("worker").await?, d.start("worker").await?];
    }
    // The ingress is killed under a load that keeps every connection busy,
    // so that webhooks are cut off mid-request (one cut off after its
    // commit gets the remembered answer on its retry; the JSON counts
    // such replays).
    let rate = match fault {
        Fault::IngressKill => options.rate * INGRESS_KILL_RATE_FACTOR,
        _ => options.rate,
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(hosts::post_all(
        d.listen,
        requests,
        CONNECTIONS,
        rate,
        GIVE_UP,
        Arc::clone(&accepted),
        None,
    ));
    let injected = inject(fault, d, procs, servers, &load, &accepted, options).await;
    let tally = load.await.context("the hosts' task failed")?;
    let injected = injected?;
    let deadline = started + fault.bound();
    let accepted: HashSet<u64> = tally.accepted.iter().map(|(u, _)| *u).collect();
    wait_for_every_email(d, &accepted, deadline).await?;
    wait_until_finished(d, deadline).await?;
    // A send re-made after a crash arrives moments after its row says so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reconcile::reconcile(fault, d, &tally, &injected, started).await
}

/// Waits for the moment of the fault.
async fn approach(
    fault: Fault,
    d: &mut Deployment,
    procs: &mut Processes,
    accepted: &AtomicU64,
    options: &Options,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    if fault != Fault::IngressKill {
        tokio::time::sleep(FAULT_AT).await;
    }
    if fault.mid_drain() {
        // The workers start into the backlog; the fault comes once both
        // are sending.
        procs.workers = vec![d.start("worker").await?, d.start("worker").await?];
        let sending = |w: &Service| w.log_count("email sent") >= 3;
        while !procs.workers.iter().all(sending) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    } else if fault == Fault::IngressKill {
        while accepted.load(Ordering::Relaxed) < options.webhooks / 3 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// Injects the fault and repairs it.
async fn inject(
    fault: Fault,
    d: &mut Deployment,
    procs: &mut Processes,
    servers: &mut Servers,
    load: &JoinHandle<Tally>,
    accepted: &AtomicU64,
    options: &Options,
) -> anyhow::Result<Injected> {
    approach(fault, d, procs, accepted, options).await?;
    let (stop_sampling, stop) = watch::channel(None);
    let url = d.var("EMAIL2FA_DATABASE_URL").unwrap_or_default();
    let sampler = tokio::spawn(most_sending(lazy_pool(url)?, stop));
    let repaired_at = match fault {
        Fault::WorkerKill => {
            procs.workers.remove(0).kill().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            procs.workers.push(d.start("worker").await?);
            SystemTime::now()
        }
        Fault::RedisKill => {
            servers.redis.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            servers.redis.restart().await?;
            SystemTime::now()
        }
        Fault::PostgresRestart => {
            servers.postgres.stop().await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            servers.postgres.start_server().await?;
            SystemTime::now()
        }
        Fault::SmtpShort => {
            d.sink.stop().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            d.sink.restart().await?;
            SystemTime::now()
        }
        Fault::SmtpLong => smtp_long_outage(d, load).await?,
        Fault::IngressKill => {
            if let Some(ingress) = procs.ingress.take() {
                ingress.kill().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let repaired_at = SystemTime::now();
            procs.ingress = Some(d.start("ingress").await?);
            repaired_at
        }
    };
    let _ = stop_sampling.send(Some(Instant::now()));
    Ok(Injected {
        repaired_at,
        in_flight: sampler.await.context("the sampler failed")?,
    })
}

/// The most deliveries in `sending` seen every 100 ms until the time
/// `stop` gives (or until it is dropped without one); reads that fail
/// while the database is away are skipped.
pub(super) async fn most_sending(
    pool: sqlx::PgPool,
    mut stop: watch::Receiver<Option<Instant>>,
) -> i64 {
    let sql = "select count(*) from email2fa.deliveries where status = 'sending'";
    let mut most = 0;
    loop {
        if let Ok(n) = sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await {
            most = most.max(n);
        }
        let end = *stop.borrow_and_update();
        let done = match end {
            Some(end) => Instant::now() >= end,
            // The fault step failed before the repair.
            None => stop.has_changed().is_err(),
        };
        if done {
            pool.close().await;
            return most;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A one-connection pool that gives up on a connection after 500 ms.
pub(super) fn lazy_pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(url)?)
}

/// The SMTP server stays down until every email the hosts posted has
/// used up its attempts (the load over, nothing left to try), then comes
/// back; the operator's one action is `email2fa dlq resend --all`.
async fn smtp_long_outage(
    d: &mut Deployment,
    load: &JoinHandle<Tally>,
) -> anyhow::Result<SystemTime> {
    d.sink.stop().await;
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if load.is_finished() && unfinished(d).await? == 0 {
            break;
        }
        if Instant::now() > until {
            bail!("40 s into the SMTP outage, deliveries are still being tried");
        }
    }
    d.sink.restart().await?;
    let repaired_at = SystemTime::now();
    d.command(&["dlq", "resend", "--all"]).await?;
    Ok(repaired_at)
}

async fn unfinished(d: &Deployment) -> anyhow::Result<i64> {
    d.count(&format!(
        "select count(*) from email2fa.deliveries where {UNFINISHED}"
    ))
    .await
}

/// Waits until every accepted user's email arrived, or the deadline.
async fn wait_for_every_email(
    d: &Deployment,
    accepted: &HashSet<u64>,
    deadline: Instant,
) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        let arrived: HashSet<u64> = d
            .sink
            .messages()
            .iter()
            .filter_map(|m| m.rcpt_to.first().and_then(|r| user_of(r)))
            .collect();
        if accepted.is_subset(&arrived) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until no delivery is queued, sending or retrying (a send re-made
/// after a crash comes after its first copy arrived), or the deadline.
async fn wait_until_finished(d: &Deployment, deadline: Instant) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        if unfinished(d).await? == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
