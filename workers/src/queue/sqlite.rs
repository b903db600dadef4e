//! The SQLite backend: apalis-sqlite in the service's own file (tables
//! `Jobs` and `Workers`), through the service's pool and its pragmas.

use apalis::prelude::{BackendExt, PollWith, StreamStrategy, Task, TaskSink};
use apalis_sqlite::{Config, SqliteStorage};
use serde_json::Value;
use sqlx::SqlitePool;

use super::{HEARTBEAT_INTERVAL, MISSED_HEARTBEATS, QueueError, Wakeups};

/// What a worker polls: the storage, woken by [`Wakeups`].
pub(super) type WorkerBackend = PollWith<SqliteStorage<Value>, StreamStrategy<Wakeups>>;

impl From<apalis_sqlite::Error> for QueueError {
    fn from(error: apalis_sqlite::Error) -> Self {
        match error {
            apalis_sqlite::Error::Database(error) => error.into(),
            other => Self::Other(other.into()),
        }
    }
}

/// Runs apalis's migrations, and only them: `SqliteStorage::setup` would also
/// switch one connection of the service's pool to `synchronous=OFF`.
pub(super) async fn setup(pool: &SqlitePool) -> Result<(), QueueError> {
    let mut migrator = SqliteStorage::migrations();
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// Inserts the tasks in one transaction.
pub(super) async fn push(
    pool: &SqlitePool,
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
    pool: &SqlitePool,
    queue: &str,
    batch_size: usize,
    wakeups: Wakeups,
) -> WorkerBackend {
    storage(pool, queue, batch_size).poll_with_stream(wakeups)
}

fn storage(pool: &SqlitePool, queue: &str, batch_size: usize) -> SqliteStorage<Value> {
    let config = Config::default()
        .queue(queue)
        .batch_size(batch_size)
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS);
    SqliteStorage::new(pool).with_config(config)
}

/// See [`super::Queue::oldest_waiting_job`]: apalis keeps `run_at` in Unix
/// seconds.
pub(super) async fn oldest_waiting(
    pool: &SqlitePool,
    queue: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, QueueError> {
    let (oldest,): (Option<i64>,) = sqlx::query_as(
        "select min(run_at) from Jobs where job_type = $1 and status in ('Pending', 'Queued')",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
    .map_err(|error| QueueError::Other(error.into()))?;
    Ok(oldest.and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0)))
}
