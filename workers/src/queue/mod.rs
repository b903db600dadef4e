//! The email job queue: one [`Queue`] over the three apalis 1.0 backends
//! (SQLite in the same file as the service, PostgreSQL in the same database,
//! or Redis) and [`run_workers`], the worker runner.
//!
//! A job carries only a delivery id ([`EmailJob`]); the engine reads
//! everything else from the deliveries table, records every outcome there and
//! schedules its own retries with [`Queue::push`] and a `run_at`. apalis is
//! only the transport, so the queue is set up to never retry by itself.
//!
//! # How each backend behaves (checked against the apalis 1.0 sources)
//!
//! **Queue name.** Always `"emails"` ([`QUEUE_NAME`]), never the Rust type
//! path that apalis uses by default. The wire payload is JSON; workers decode
//! it into a `serde_json::Value` and then into [`EmailJob`], so a payload that
//! no longer decodes kills that one task instead of the whole worker.
//!
//! **Scheduling.** apalis stores `run_at` in whole Unix seconds on all three
//! backends and compares it with the clock of whoever fetches. [`Queue::push`]
//! rounds a future `run_at` *up* to the next second, so a job never starts
//! before its `run_at`; it starts at most about one second plus one poll
//! interval after it. A `run_at` that is not in the future means "now".
//!
//! **Prompt pickup.** An idle apalis worker only looks for work at its
//! heartbeat unless it is woken. Workers here are woken by one merged stream:
//! - a push through a clone of the same [`Queue`] in this process wakes its
//!   workers at once, on every backend (this replaces SQLite's
//!   `connect_with_callback`, whose update hook only sees inserts made through
//!   its own second pool, which would lack our WAL/busy-timeout settings);
//! - PostgreSQL: LISTEN/NOTIFY on `email2fa_jobs` (payload: the queue's
//!   name), sent by [`Queue::wake_workers`] in the background, coalesced,
//!   outside the pushing transaction; apalis's own per-row trigger is
//!   dropped at setup, because a NOTIFY inside every webhook's transaction
//!   made PostgreSQL commit them one at a time (see `postgres::setup`);
//! - Redis: apalis-redis files every push in its scheduled set and publishes
//!   nothing for it, so [`Queue::wake_workers`] publishes on
//!   `"{queue}:pushed"` (in the background, coalesced) and workers subscribe
//!   (reconnecting after a lost connection);
//! - every backend: a fallback poll every [`WorkerConfig::poll_interval`],
//!   which also picks up scheduled jobs, jobs pushed by another process on
//!   SQLite and orphans put back by the recovery below.
//!
//! **Exactly one run per push, no retry by apalis.** The handler returns
//! `()`, which apalis records as `Done`: SQL rows become `Done` and are never
//! fetched again; on Redis the id goes to the `done` set. A panic is caught in
//! its own tokio task and reported as an `AbortError`, which apalis records as
//! `Killed` (SQL) or moves to the `dead` set (Redis): not retried either.
//! Fetching is atomic on every backend (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, one `UPDATE … RETURNING` on SQLite, one Lua script on Redis),
//! so two workers on the same queue share the work and each job runs once.
//!
//! **Orphans (a worker killed mid-job).** Every worker heartbeats every
//! [`HEARTBEAT_INTERVAL`] (5 s); a worker not seen for
//! [`HEARTBEAT_INTERVAL`] × [`MISSED_HEARTBEATS`] (30 s) counts as dead and
//! the jobs it had fetched or started go back to the queue (SQL: `Queued` or
//! `Running` rows back to `Pending`; Redis: its in-flight set back on the
//! active list). The recovery runs inside the heartbeat of a *live* worker of
//! the same queue (SQLite: other workers only; PostgreSQL and Redis: any
//! worker; PostgreSQL also when a worker registers), so an orphan runs again
//! 30 to 35 s after the dead worker's last heartbeat, i.e. at most 35 s after
//! the kill, provided some worker of the queue runs (a restarted process has
//! a new worker name, so it counts as another worker). Measured (with 15 s before): about 15 s
//! on all three. apalis's defaults would take 60 s on SQLite and 300 s on
//! PostgreSQL and Redis; a shorter heartbeat risks declaring a busy but live
//! worker dead. What `max_attempts` means: the SQL backends compare it only
//! for rows in `Failed`, which this queue never produces; the recovery adds
//! one to `attempts` and puts the row in `Pending`, which is fetched whatever
//! `attempts` is. Redis stores it and ignores it (its retry limit is
//! hard-coded to 25, and its recovery does not count attempts). Pushes still
//! set [`MAX_ATTEMPTS`] = 25, so that an apalis version that does honour it
//! cannot strand an orphan. A job may thus run more than once (at least
//! once): the engine is idempotent, and its outbox sweep re-pushes deliveries
//! that a killed task left unfinished.
//!
//! **Shutdown.** [`run_workers`] stops fetching when its shutdown future
//! resolves, gives buffered but unstarted jobs back to the queue, waits for
//! running handlers up to [`WorkerConfig::shutdown_timeout`], then aborts
//! what still runs; those rows stay `Running` until the orphan recovery.
//!
//! **Migrations.** SQLite: apalis's migrations go into the same
//! `_sqlx_migrations` table as the service's, so each migrator sees the
//! other's versions as "previously applied but missing": [`Queue::setup`]
//! runs apalis's with `ignore_missing`, and **the service's own migrator must
//! set `ignore_missing` too**. PostgreSQL: apalis-postgres 1.0 keeps its
//! versions apart, in `apalis._sqlx_migrations` (its `sqlx.toml`), so the two
//! never meet there; `ignore_missing` is set anyway and harmless. Setup on
//! PostgreSQL also creates the `email2fa` schema and, unless the database
//! already has it, the `hstore` extension that apalis's tables need, which
//! thus lands in `email2fa`: every connection that pushes or fetches needs
//! that schema (or wherever `hstore` lives) on its search path, as
//! `email2fa,public` has.
//!
//! SQLite table names `Jobs` and `Workers` belong to apalis (SQLite table
//! names ignore case): the service must not create `jobs` or `workers`.

mod postgres;
mod redis;
mod runner;
mod sqlite;
#[cfg(test)]
mod tests;
mod wakeups;

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{Task, TaskBuilder, TaskId, TaskSinkError};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::{mpsc, watch};
use ulid::Ulid;

use email2fa_db::{self as db, Db, Tx};

pub use runner::{WorkerConfig, run_workers};
use wakeups::Wakeups;

/// The name of the apalis queue on every backend. Fixed so that queued jobs
/// survive a rename of the Rust types (apalis's default is the type path).
pub const QUEUE_NAME: &str = "emails";

/// How often a worker tells the backend it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How many heartbeats a worker may miss before its jobs count as orphaned
/// and are put back in the queue (30 s with [`HEARTBEAT_INTERVAL`]). Generous
/// on purpose: a live worker on a loaded machine whose heartbeat runs late
/// must not be declared dead (on Redis that also drops its registration, and
/// its fetches fail until it restarts). The engine's outbox sweep re-pushes
/// a killed worker's unfinished deliveries too, once their lease (no longer
/// renewed) has run out.
pub const MISSED_HEARTBEATS: usize = 6;

/// `max_attempts` of every pushed task (apalis's default, set explicitly).
pub const MAX_ATTEMPTS: usize = 25;

/// The job: only a delivery id — never a code, a rendered body or a password.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EmailJob {
    /// The delivery to attempt; the engine reads everything else from it.
    pub delivery_id: String,
}

/// Where the queue lives.
pub enum QueueTarget {
    /// The SQLite file or the PostgreSQL database itself (apalis's tables sit
    /// beside the service's: SQLite `Jobs`/`Workers`, PostgreSQL schema
    /// `apalis`).
    Database(Db),
    /// A Redis server, as a `redis://` or `rediss://` URL.
    Redis(String),
}

/// What went wrong with the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database or Redis cannot be reached or is overloaded: the ingress
    /// answers 503.
    #[error("the queue is unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else (a bad URL, a schema mismatch, a bug).
    #[error("queue error")]
    Other(#[source] BoxError),
}

/// A boxed error, the source of a [`QueueError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl From<sqlx::Error> for QueueError {
    fn from(error: sqlx::Error) -> Self {
        if db::is_unavailable(&error) {
            Self::Unavailable(error.into())
        } else {
            Self::Other(error.into())
        }
    }
}

impl From<::redis::RedisError> for QueueError {
    fn from(error: ::redis::RedisError) -> Self {
        if error.is_io_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_timeout()
        {
            Self::Unavailable(error.into())
        } else {
            Self::Other(error.into())
        }
    }
}

impl From<sqlx::migrate::MigrateError> for QueueError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        match error {
            sqlx::migrate::MigrateError::Execute(error) => error.into(),
            other => Self::Other(other.into()),
        }
    }
}

impl From<serde_json::Error> for QueueError {
    fn from(error: serde_json::Error) -> Self {
        Self::Other(error.into())
    }
}

impl QueueError {
    /// Maps the error of an apalis push, classifying the backend's own error.
    fn from_sink<E: Into<QueueError> + std::fmt::Display>(error: TaskSinkError<E>) -> Self {
        match error {
            TaskSinkError::PushError(error) => error.into(),
            other => Self::Other(other.to_string().into()),
        }
    }
}

/// The queue: a handle on one of the three backends. Cheap to clone; connect
/// once per process and clone it, so that pushes wake this process's workers
/// at once.
#[derive(Clone)]
pub struct Queue {
    backend: Backend,
    name: Arc<str>,
    pushed: Arc<watch::Sender<()>>,
    /// Wake-ups for other processes' workers (PostgreSQL NOTIFY, Redis
    /// PUBLISH), sent in the background and coalesced; none on SQLite.
    remote_wake_ups: Option<mpsc::UnboundedSender<String>>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Redis(redis::RedisQueue),
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the Redis URL: it may hold a password.
        f.debug_struct("Queue")
            .field("backend", &self.backend_name())
            .field("name", &self.name)
            .finish()
    }
}

impl Queue {
    /// Opens the queue. A database pool is used as it is (no round trip); a
    /// Redis URL is connected to at once, so an unreachable server is
    /// reported here as [`QueueError::Unavailable`].
    pub async fn connect(target: QueueTarget) -> Result<Self, QueueError> {
        let backend = match target {
            QueueTarget::Database(Db::Sqlite(pool, _)) => Backend::Sqlite(pool),
            QueueTarget::Database(Db::Postgres(pool)) => Backend::Postgres(pool),
            QueueTarget::Redis(url) => Backend::Redis(redis::RedisQueue::connect(&url).await?),
        };
        let remote_wake_ups = match &backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pool) => Some(postgres::wake_up_notifier(pool)),
            Backend::Redis(redis) => Some(redis.wake_up_publisher()),
        };
        Ok(Self {
            backend,
            name: Arc::from(QUEUE_NAME),
            pushed: Arc::new(watch::Sender::new(())),
            remote_wake_ups,
        })
    }

    /// Creates or updates apalis's own tables: SQLite, in the same file;
    /// PostgreSQL, `create extension if not exists hstore` and the `apalis`
    /// schema; Redis, nothing. apalis's migrator runs with `ignore_missing`
    /// because on SQLite it shares `_sqlx_migrations` with the service's
    /// migrations (whose migrator must set `ignore_missing` as well).
    /// Idempotent, and safe to run before or after the service's migrations.
    pub async fn setup(&self) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Sqlite(pool) => sqlite::setup(pool).await,
            Backend::Postgres(pool) => postgres::setup(pool).await,
            Backend::Redis(_) => Ok(()),
        }
    }

    /// When the oldest job still waiting in the queue (due, not yet taken
    /// by a worker) became due, or `None` when none waits. Jobs are taken
    /// oldest first, so a delivery that fell due well before this cannot
    /// still be waiting behind them: its job was lost (see the outbox sweep).
    pub async fn oldest_waiting_job(&self) -> Result<Option<DateTime<Utc>>, QueueError> {
        match &self.backend {
            Backend::Sqlite(pool) => sqlite::oldest_waiting(pool, &self.name).await,
            Backend::Postgres(pool) => postgres::oldest_waiting(pool, &self.name).await,
            Backend::Redis(redis) => redis.oldest_waiting(&self.name).await,
        }
    }

    /// Pushes a job to run now, or not before `run_at`. Returns the apalis
    /// task id (a ULID string).
    #[tracing::instrument(skip_all, fields(delivery.id = %job.delivery_id, queue.backend = self.backend_name()))]
    pub async fn push(
        &self,
        job: EmailJob,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<String, QueueError> {
        let run_at = run_at.and_then(due_second);
        let (task, id) = task_for(&job, run_at)?;
        self.push_tasks(vec![task], run_at.is_none()).await?;
        Ok(id)
    }

    /// Pushes several jobs to run now, in one round trip where the backend
    /// allows it: one SQL transaction, one Lua script call on Redis (plus the
    /// wake-up message).
    #[tracing::instrument(skip_all, fields(jobs = jobs.len(), queue.backend = self.backend_name()))]
    pub async fn push_many(&self, jobs: Vec<EmailJob>) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.push_tasks(due_tasks(&jobs)?, true).await
    }

    /// Pushes jobs, each to run not before its `run_at` (now when it is
    /// `None` or past), in one round trip where the backend allows it.
    #[tracing::instrument(skip_all, fields(jobs = jobs.len(), queue.backend = self.backend_name()))]
    pub async fn push_many_at(
        &self,
        jobs: Vec<(EmailJob, Option<DateTime<Utc>>)>,
    ) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let tasks = jobs
            .iter()
            .map(|(job, run_at)| task_for(job, run_at.and_then(due_second)).map(|(task, _)| task))
            .collect::<Result<Vec<_>, _>>()?;
        self.push_tasks(tasks, true).await
    }

    /// Whether the queue can lose jobs apart from the deliveries table, and
    /// thus needs [`Queue::take_loss`] watched: only Redis. A job in the
    /// SQLite or PostgreSQL queue is a row of the same database as its
    /// delivery, committed in the same transaction, so it is lost only with
    /// the delivery itself (a restored backup rolls both back together).
    pub fn can_lose_jobs(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Whether the queue lost its jobs since someone last took the loss:
    /// true once per loss, to the one process (of all sharing the queue)
    /// that sees it first, which then pushes every pending delivery again.
    ///
    /// On Redis the queue keeps a sentinel key, `{queue}:sentinel`; a
    /// server restarted without its data (no persistence, or a lost disk),
    /// flushed, or replaced by an empty one has none. `SET … NX` both
    /// detects that and writes the key again, atomically, so two processes
    /// never both take the same loss. The sentinel rather than the server's
    /// `run_id` (`INFO server`): a restart that kept its data changes the
    /// `run_id` but loses nothing, and a `FLUSHALL` loses everything but
    /// keeps the `run_id`. The first check against a server that never had
    /// the key (a new installation, or one upgraded to this version) counts
    /// as a loss too: harmless, a job pushed twice is claimed once. What
    /// no sentinel sees (a failover to a replica that lagged behind) is
    /// left to the outbox sweep. The database backends never lose a job
    /// apart from its delivery ([`Queue::can_lose_jobs`]): always false.
    pub async fn take_loss(&self) -> Result<bool, QueueError> {
        match &self.backend {
            Backend::Redis(redis) => redis.take_loss(&self.name).await,
            Backend::Sqlite(_) | Backend::Postgres(_) => Ok(false),
        }
    }

    /// Gives a loss taken with [`Queue::take_loss`] back (its re-push
    /// failed half-way), so that the next check takes it again.
    pub async fn give_back_loss(&self) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Redis(redis) => redis.give_back_loss(&self.name).await,
            Backend::Sqlite(_) | Backend::Postgres(_) => Ok(()),
        }
    }

    /// Whether jobs live apart from the database (Redis): then
    /// [`Queue::push_apart`] may run beside the statements of the
    /// transaction that calls for them instead of inside it.
    pub fn pushes_apart(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// [`Queue::push_with`] for a queue apart from the database (see
    /// [`Queue::pushes_apart`]), without the transaction: pushed now, nobody
    /// woken. The caller pushes before it commits and wakes the workers
    /// after, as with [`Queue::push_with`]. With the database as the queue
    /// this refuses: the jobs must go through the transaction.
    #[tracing::instrument(skip_all, fields(jobs = jobs.len(), queue.backend = self.backend_name()))]
    pub async fn push_apart(&self, jobs: Vec<EmailJob>) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        if !self.pushes_apart() {
            return Err(QueueError::Other(
                "jobs in the database go through the transaction".into(),
            ));
        }
        self.push_tasks(due_tasks(&jobs)?, false).await
    }

    /// Pushes jobs to run now as part of the caller's transaction `tx`.
    ///
    /// With the database as the queue the jobs are inserted through `tx`
    /// (apalis's own insert, `queries::push_tasks`), so they commit or roll
    /// back with the rows that call for them: no job without its delivery,
    /// no delivery without its job, and one commit instead of two. With
    /// Redis they are pushed at once, before the caller commits, so that a
    /// Redis outage refuses the call with nothing written, but nobody is
    /// woken yet (a worker that polls the job before its row is visible
    /// waits for it).
    ///
    /// After the commit, call [`Queue::wake_workers`] (this process's
    /// workers and other processes').
    #[tracing::instrument(skip_all, fields(jobs = jobs.len(), queue.backend = self.backend_name()))]
    pub async fn push_with(&self, tx: &mut Tx, jobs: Vec<EmailJob>) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        if let Backend::Redis(_) = &self.backend {
            // No wake-up yet: a worker woken now would find no row and wait
            // for it; the caller wakes the workers after its commit.
            return self.push_tasks(due_tasks(&jobs)?, false).await;
        }
        let tasks = jobs
            .iter()
            .map(encoded_task)
            .collect::<Result<Vec<_>, _>>()?;
        match (&self.backend, tx) {
            (Backend::Sqlite(_), Tx::Sqlite(tx, _)) => {
                apalis_sqlite::queries::push_tasks(&mut **tx, &self.name, &tasks).await?;
            }
            (Backend::Postgres(_), Tx::Postgres(tx)) => {
                apalis_postgres::queries::push_tasks(&mut **tx, &self.name, tasks).await?;
            }
            _ => {
                return Err(QueueError::Other(
                    "the transaction is not in the queue's database".into(),
                ));
            }
        }
        Ok(())
    }

    /// Wakes the workers after a commit that carried jobs pushed with
    /// [`Queue::push_with`]: this process's at once, other processes'
    /// through a PostgreSQL notification or a Redis message, sent in the
    /// background (the caller does not wait) and coalesced.
    pub fn wake_workers(&self) {
        self.pushed.send_replace(());
        if let Some(remote) = &self.remote_wake_ups
            && remote.send(self.name.to_string()).is_err()
        {
            tracing::warn!("the queue wake-up sender stopped; workers will poll");
        }
    }

    async fn push_tasks(
        &self,
        tasks: Vec<Task<serde_json::Value>>,
        due: bool,
    ) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Sqlite(pool) => sqlite::push(pool, &self.name, tasks).await?,
            Backend::Postgres(pool) => postgres::push(pool, &self.name, tasks).await?,
            Backend::Redis(redis) => redis.push(&self.name, tasks).await?,
        }
        if due {
            self.wake_workers();
        }
        Ok(())
    }

    /// One cheap round trip (readiness).
    pub async fn ping(&self) -> Result<(), QueueError> {
        match &self.backend {
            Backend::Sqlite(pool) => sqlx::query("select 1").execute(pool).await.map(drop)?,
            Backend::Postgres(pool) => sqlx::query("select 1").execute(pool).await.map(drop)?,
            Backend::Redis(redis) => redis.ping().await?,
        }
        Ok(())
    }

    /// `"sqlite"`, `"postgres"` or `"redis"`, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
            Backend::Redis(_) => "redis",
        }
    }

    /// The same queue under another apalis queue name, so that several
    /// installations (or tests) sharing one Redis server or database do not
    /// see each other's jobs.
    pub fn renamed(mut self, name: &str) -> Self {
        self.name = Arc::from(name);
        self
    }

    /// Wake-ups for this process's workers after a push through this queue.
    fn local_wakeups(&self) -> BoxStream<'static, ()> {
        let mut pushed = self.pushed.subscribe();
        pushed.mark_unchanged();
        futures::stream::unfold(pushed, |mut pushed| async move {
            pushed.changed().await.ok()?;
            Some(((), pushed))
        })
        .boxed()
    }
}

/// The next round of wake-ups: waits for one queue name, then takes every
/// name already waiting, so that all the pushes made while the previous
/// round's round trip ran go out as one message per queue. A wake-up
/// carries no job: one wakes the workers for every push before it. `None`
/// once every sender is dropped.
async fn coalesced(
    requested: &mut mpsc::UnboundedReceiver<String>,
) -> Option<std::collections::BTreeSet<String>> {
    let first = requested.recv().await?;
    let mut queues = std::collections::BTreeSet::from([first]);
    while let Ok(more) = requested.try_recv() {
        queues.insert(more);
    }
    Some(queues)
}

/// The Unix second from which a job may run: `run_at` rounded up, or `None`
/// when `run_at` is not in the future.
fn due_second(run_at: DateTime<Utc>) -> Option<u64> {
    if run_at <= Utc::now() {
        return None;
    }
    let whole = run_at.timestamp();
    let second = if run_at.timestamp_subsec_nanos() > 0 {
        whole + 1
    } else {
        whole
    };
    u64::try_from(second).ok()
}

/// A task due now for `job`, its arguments already in apalis's wire format
/// (the JSON codec's bytes), for the database backends' own insert.
fn encoded_task(job: &EmailJob) -> Result<Task<Vec<u8>>, QueueError> {
    Ok(TaskBuilder::new(serde_json::to_vec(job)?)
        .task_id(TaskId::from_ulid(Ulid::generate()))
        .max_attempts(MAX_ATTEMPTS)
        .build())
}

/// Tasks due now for `jobs`.
fn due_tasks(jobs: &[EmailJob]) -> Result<Vec<Task<serde_json::Value>>, QueueError> {
    jobs.iter()
        .map(|job| task_for(job, None).map(|(task, _)| task))
        .collect()
}

/// An apalis task for `job` with a fresh ULID as its id.
fn task_for(
    job: &EmailJob,
    run_at: Option<u64>,
) -> Result<(Task<serde_json::Value>, String), QueueError> {
    let id = Ulid::generate();
    let mut builder = TaskBuilder::new(serde_json::to_value(job)?)
        .task_id(TaskId::from_ulid(id))
        .max_attempts(MAX_ATTEMPTS);
    if let Some(second) = run_at {
        builder = builder.run_at_timestamp(second);
    }
    Ok((builder.build(), id.to_string()))
}
