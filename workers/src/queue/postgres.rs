//! The PostgreSQL backend: apalis-postgres in the service's own database
//! (schema `apalis`), through the service's pool, whose search path is
//! `email2fa,public`.

use apalis::prelude::{BackendExt, PollWith, StreamStrategy, Task, TaskSink};
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use sqlx::PgPool;

use super::{HEARTBEAT_INTERVAL, MISSED_HEARTBEATS, QueueError, Wakeups};
use crate::db::{self, PG_SCHEMA};

/// What a worker polls: the storage, woken by [`Wakeups`].
pub(super) type WorkerBackend = PollWith<PostgresStorage<Value>, StreamStrategy<Wakeups>>;

impl From<apalis_postgres::Error> for QueueError {
    fn from(error: apalis_postgres::Error) -> Self {
        match error {
            apalis_postgres::Error::Database(error) => error.into(),
            other => Self::Other(other.into()),
        }
    }
}

/// Creates `hstore` (needed by apalis's tables; a trusted extension since
/// PostgreSQL 13, so a database owner may create it) in the service's schema,
/// which it creates first so that the extension lands in a schema we own
/// whichever of the queue and the store is set up first, then runs apalis's
/// migrations (which keep their versions in `apalis._sqlx_migrations`).
pub(super) async fn setup(pool: &PgPool) -> Result<(), QueueError> {
    let create_schema = format!("create schema if not exists {PG_SCHEMA}");
    tolerate_race(
        sqlx::query(sqlx::AssertSqlSafe(create_schema))
            .execute(pool)
            .await,
    )?;
    tolerate_race(
        sqlx::query("create extension if not exists hstore")
            .execute(pool)
            .await,
    )?;
    let mut migrator = PostgresStorage::migrations();
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// `if not exists` is not atomic: two processes starting at once may both
/// try to create, and the loser gets a unique violation.
fn tolerate_race<T>(result: Result<T, sqlx::Error>) -> Result<(), sqlx::Error> {
    match result {
        Err(error) if db::is_unique_violation(&error) => Ok(()),
        other => other.map(drop),
    }
}

/// Inserts the tasks with one statement; apalis's trigger notifies the
/// listening workers of those that are due.
pub(super) async fn push(
    pool: &PgPool,
    queue: &str,
    tasks: Vec<Task<Value>>,
) -> Result<(), QueueError> {
    storage(pool, queue, 1)
        .push_all(futures::stream::iter(tasks))
        .await
        .map_err(QueueError::from_sink)
}

/// The backend of one worker, fetching up to `batch_size` jobs at a time.
pub(super) fn worker_backend(
    pool: &PgPool,
    queue: &str,
    batch_size: usize,
    wakeups: Wakeups,
) -> WorkerBackend {
    storage(pool, queue, batch_size).poll_with_stream(wakeups)
}

/// LISTEN/NOTIFY wake-ups, as `PostgresStorage::with_pubsub()` sets them up,
/// for pushes from any process.
pub(super) fn notifications(pool: &PgPool, queue: &str) -> BoxStream<'static, ()> {
    Pubsub::new(pool.clone(), queue.to_owned())
        .map(drop)
        .boxed()
}

fn storage(pool: &PgPool, queue: &str, batch_size: usize) -> PostgresStorage<Value> {
    let config = Config::default()
        .queue(queue)
        .batch_size(batch_size)
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS);
    PostgresStorage::new(pool).with_config(config)
}

/// See [`super::Queue::oldest_waiting_job`].
pub(super) async fn oldest_waiting(
    pool: &PgPool,
    queue: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, QueueError> {
    let (oldest,): (Option<chrono::DateTime<chrono::Utc>>,) = sqlx::query_as(
        "select min(run_at) from apalis.jobs where job_type = $1 and status in ('Pending', 'Queued')",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
    .map_err(|error| QueueError::Other(error.into()))?;
    Ok(oldest)
}
