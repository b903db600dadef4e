//! The PostgreSQL backend: apalis-postgres in the service's own database
//! (schema `apalis`), through the service's pool, whose search path is
//! `email2fa,public`.

use apalis::prelude::{BackendExt, PollWith, StreamStrategy, Task, TaskSink};
use apalis_postgres::{Config, PostgresStorage};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use sqlx::Connection;
use sqlx::PgPool;
use sqlx::postgres::{PgConnection, PgListener};
use tokio::sync::mpsc;

use super::{HEARTBEAT_INTERVAL, MISSED_HEARTBEATS, QueueError, Wakeups};
use email2fa_db::{self as db, PG_SCHEMA};

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
    // apalis's trigger NOTIFYs for every due job inserted. PostgreSQL takes
    // one database-wide lock to queue notifications at commit and holds it
    // through the commit's WAL flush, so every transaction that inserts a
    // job (each webhook's, since jobs commit with their deliveries) would
    // commit one at a time: under load most active backends waited on that
    // lock ("Lock:object" at COMMIT). Workers are woken by
    // [`wake_up_notifier`] instead, out of the webhooks' transactions and
    // coalesced.
    sqlx::query("drop trigger if exists notify_workers on apalis.jobs")
        .execute(pool)
        .await?;
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

/// Inserts the tasks with one statement (the caller then asks for a
/// wake-up, [`wake_up_notifier`]).
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

/// The channel of the wake-ups; the payload is the queue's name.
const CHANNEL: &str = "email2fa_jobs";

/// How long a worker waits before listening again after losing PostgreSQL.
const RELISTEN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the wake-up notifier: sends `NOTIFY` for the queue names asked
/// for, coalesced ([`super::coalesced`]), one autocommit statement per round
/// trip, outside any webhook's transaction. It keeps a connection of its
/// own, opened at start and again after an error, so that a wake-up never
/// waits for the pool or a connection setup (either delayed wake-ups by
/// about 90 ms in tests). A lost wake-up only delays jobs to the workers' next
/// poll, so it is logged, not retried.
pub(super) fn wake_up_notifier(pool: &PgPool) -> mpsc::UnboundedSender<String> {
    let (wake_ups, mut requested) = mpsc::unbounded_channel::<String>();
    let options = pool.connect_options();
    tokio::spawn(async move {
        // Connected ahead, so that the first wake-up does not wait for it.
        let mut connection = PgConnection::connect_with(&options).await.ok();
        while let Some(queues) = super::coalesced(&mut requested).await {
            let queues: Vec<String> = queues.into_iter().collect();
            let sent = match connection.as_mut() {
                Some(connection) => notify(connection, &queues).await,
                None => match PgConnection::connect_with(&options).await {
                    Ok(opened) => notify(connection.insert(opened), &queues).await,
                    Err(error) => Err(error),
                },
            };
            if let Err(error) = sent {
                connection = None;
                tracing::warn!(%error, "cannot notify the queue wake-up; workers will poll");
            }
        }
    });
    wake_ups
}

async fn notify(connection: &mut PgConnection, queues: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, queue) from unnest($2::text[]) as queue")
        .bind(CHANNEL)
        .bind(queues)
        .execute(connection)
        .await
        .map(drop)
}

/// The wake-ups of `queue` sent by [`wake_up_notifier`] in any process
/// (LISTEN on a connection of its own). Listens on first poll and again
/// after a lost connection; each (re)start yields one wake-up, for the
/// notifications it may have missed.
pub(super) fn notifications(pool: &PgPool, queue: &str) -> BoxStream<'static, ()> {
    let state = (pool.clone(), queue.to_owned(), None::<PgListener>);
    futures::stream::unfold(state, |(pool, queue, mut listener)| async move {
        loop {
            if let Some(active) = listener.as_mut() {
                match active.try_recv().await {
                    Ok(Some(notification)) if notification.payload() == queue => {
                        return Some(((), (pool, queue, listener)));
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {
                        tracing::warn!("lost the PostgreSQL listener for queue wake-ups");
                        listener = None;
                    }
                }
            }
            match listen(&pool).await {
                Ok(started) => return Some(((), (pool, queue, Some(started)))),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for queue wake-ups; retrying");
                    tokio::time::sleep(RELISTEN_DELAY).await;
                }
            }
        }
    })
    .boxed()
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
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
