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

/// Runs apalis's migrations, and only them (`SqliteStorage::setup` would also
/// switch one connection of the service's pool to `synchronous=OFF`), then
/// gives the planner its statistics of the `Jobs` table
/// ([`JOBS_STATISTICS`]).
pub(super) async fn setup(pool: &SqlitePool) -> Result<(), QueueError> {
    let mut migrator = SqliteStorage::migrations();
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    let mut conn = pool.acquire().await?;
    pin_jobs_statistics(&mut conn).await?;
    Ok(())
}

/// Planner statistics (`sqlite_stat1` rows) of apalis's `Jobs` table: those
/// of a queue of a million rows, a quarter in each status and each worker.
///
/// Without statistics SQLite guesses that every index narrows a search to a
/// handful of rows, and runs apalis-sqlite's per-job statements through the
/// wrong one: `lock` (`where id in (…) and status in (…)`) through the
/// `status` index, reading every waiting job, and `ack` (`… where id = … and
/// lock_by = ?`) through the `lock_by` index, reading every job the worker
/// ever finished. A drain then costs O(n²): 5 ms of CPU per email at 10,000.
/// With these rows both use the primary key, whatever the table holds. A
/// real `ANALYZE` replaces them; they are written again at the next start
/// when one removed them (an `ANALYZE` of an empty table does).
const JOBS_STATISTICS: &str = "insert into sqlite_stat1 (tbl, idx, stat) \
    select 'Jobs', idx, stat from (select 'sqlite_autoindex_Jobs_1' as idx, '1000000 1' as stat \
        union all select 'LIdx', '1000000 250000' \
        union all select 'idx_jobs_status_run_at', '1000000 250000 1' \
        union all select 'idx_jobs_job_type_status_run_at', '1000000 500000 125000 1' \
        union all select 'idx_jobs_idempotency_key', '1000000 500000 1' \
        union all select 'idx_jobs_pending', '100000 100000 100000 1 1' \
        union all select 'idx_jobs_claimable', '100000 50000 50000') \
    where not exists (select 1 from sqlite_stat1 where tbl = 'Jobs')";

/// Writes [`JOBS_STATISTICS`] when the file has none for `Jobs`, and makes
/// this connection load them. Connections that loaded the schema before keep
/// their estimates until the pool replaces them (sqlx retires a connection
/// after 30 minutes): that happens only at the start that writes them, the
/// first of a new database or the first of this version on an existing one.
async fn pin_jobs_statistics(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    // Creates `sqlite_stat1` when it is missing (nothing else can), and
    // analyses only the schema table, which has no index: no statistics of
    // another table change.
    sqlx::query("analyze sqlite_schema")
        .execute(&mut *conn)
        .await?;
    let written = sqlx::query(JOBS_STATISTICS)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if written > 0 {
        // Reloads the statistics on this connection.
        sqlx::query("analyze sqlite_schema")
            .execute(&mut *conn)
            .await?;
    }
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
