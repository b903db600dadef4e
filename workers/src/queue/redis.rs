//! The Redis backend: apalis-redis, with keys `{queue}:*` (`emails:*`).
//!
//! apalis-redis files every push in its scheduled set (even one due now) and
//! publishes nothing for it, so a worker would only see a new job when it next
//! polls. [`RedisQueue::push`] therefore publishes on `{queue}:pushed`, and
//! workers subscribe to that channel ([`RedisQueue::notifications`]).

use std::time::Duration;

use apalis::prelude::{BackendExt, PollWith, StreamStrategy, Task, TaskSink};
use apalis_redis::{Config, RedisStorage};
use futures::StreamExt;
use futures::stream::BoxStream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubStream};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{HEARTBEAT_INTERVAL, MISSED_HEARTBEATS, QueueError, Wakeups};

/// How long a command or a connection attempt may take before Redis counts
/// as unavailable (the same budget as the database pools' acquire timeout).
const TIMEOUT: Duration = Duration::from_secs(3);

/// Connection attempts per (re)connect before a command fails; the redis
/// default (6, backing off from 100 ms) makes an unreachable server take
/// about 10 s to report, too long for a readiness probe or a 503.
const CONNECTION_RETRIES: usize = 2;

/// How long a worker waits before subscribing again after losing Redis.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// What a worker polls: the storage, woken by [`Wakeups`].
pub(super) type WorkerBackend = PollWith<RedisStorage<Value>, StreamStrategy<Wakeups>>;

impl From<apalis_redis::Error> for QueueError {
    fn from(error: apalis_redis::Error) -> Self {
        match error {
            apalis_redis::Error::Database(error) => error.into(),
            other => Self::Other(other.into()),
        }
    }
}

/// A Redis client (for subscriptions) and a multiplexed, self-reconnecting
/// connection (for everything else).
#[derive(Clone)]
pub(super) struct RedisQueue {
    pub(super) client: redis::Client,
    pub(super) conn: ConnectionManager,
}

impl RedisQueue {
    /// See [`super::Queue::oldest_waiting_job`]. apalis-redis files every
    /// push in its scheduled set scored by `run_at` (seconds), and a fetch
    /// moves due ones to the active list, whose ids are ULIDs (their time
    /// is the push).
    pub(super) async fn oldest_waiting(
        &self,
        queue: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, QueueError> {
        let config = Config::default().queue(queue);
        let mut conn = self.conn.clone();
        let first_scheduled: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(config.scheduled_jobs_set())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let head: Option<String> = redis::cmd("LINDEX")
            .arg(config.active_jobs_list())
            .arg(0)
            .query_async(&mut conn)
            .await?;
        let now = chrono::Utc::now();
        #[allow(clippy::cast_possible_truncation)]
        let scheduled = first_scheduled
            .first()
            .and_then(|(_, score)| chrono::DateTime::from_timestamp(*score as i64, 0))
            .filter(|due| *due <= now);
        let active = head
            .and_then(|id| ulid::Ulid::from_string(&id).ok())
            .and_then(|id| i64::try_from(id.timestamp_ms()).ok())
            .and_then(chrono::DateTime::from_timestamp_millis);
        Ok(match (scheduled, active) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// See [`super::Queue::take_loss`]: writes the sentinel key if it is
    /// missing, and says whether it was.
    pub(super) async fn take_loss(&self, queue: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let written: Option<String> = redis::cmd("SET")
            .arg(sentinel(queue))
            .arg(chrono::Utc::now().to_rfc3339())
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        Ok(written.is_some())
    }

    /// See [`super::Queue::give_back_loss`]: deletes the sentinel key.
    pub(super) async fn give_back_loss(&self, queue: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(sentinel(queue))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Connects now, so that an unreachable server is reported at once.
    pub(super) async fn connect(url: &str) -> Result<Self, QueueError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(CONNECTION_RETRIES);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self { client, conn })
    }

    /// Starts the wake-up publisher of this connection.
    pub(super) fn wake_up_publisher(&self) -> mpsc::UnboundedSender<String> {
        let (wake_ups, requested) = mpsc::unbounded_channel();
        tokio::spawn(publish_wake_ups(self.conn.clone(), requested));
        wake_ups
    }

    /// `PING`.
    pub(super) async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Pushes the tasks with one call of apalis's Lua script (the caller
    /// then asks for a wake-up, [`publish_wake_ups`]).
    pub(super) async fn push(
        &self,
        queue: &str,
        tasks: Vec<Task<Value>>,
    ) -> Result<(), QueueError> {
        storage(self.conn.clone(), queue, 1)
            .push_all(futures::stream::iter(tasks))
            .await
            .map_err(QueueError::from_sink)
    }

    /// The backend of one worker, fetching up to `batch_size` jobs at a time.
    pub(super) fn worker_backend(
        &self,
        queue: &str,
        batch_size: usize,
        wakeups: Wakeups,
    ) -> WorkerBackend {
        storage(self.conn.clone(), queue, batch_size).poll_with_stream(wakeups)
    }

    /// The wake-ups published by [`Self::push`] in any process. Subscribes
    /// on first poll and again after a lost connection; each (re)subscription
    /// yields one wake-up, for the pushes it may have missed.
    pub(super) fn notifications(&self, queue: &str) -> BoxStream<'static, ()> {
        let state = (self.client.clone(), channel(queue), None::<PubSubStream>);
        futures::stream::unfold(state, |(client, channel, mut messages)| async move {
            loop {
                if let Some(stream) = messages.as_mut() {
                    if stream.next().await.is_some() {
                        return Some(((), (client, channel, messages)));
                    }
                    tracing::warn!("lost the Redis subscription for queue wake-ups");
                    messages = None;
                }
                match subscribe(&client, &channel).await {
                    Ok(stream) => return Some(((), (client, channel, Some(stream)))),
                    Err(error) => {
                        tracing::warn!(%error, "cannot subscribe to queue wake-ups; retrying");
                        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                    }
                }
            }
        })
        .boxed()
    }
}

/// Publishes the wake-ups asked for (queue names), coalesced
/// ([`super::coalesced`]): one message per queue per round trip, in one
/// pipeline. A lost wake-up only delays jobs to the workers' next poll, so
/// it is logged, not retried. Ends when every sender is dropped.
async fn publish_wake_ups(
    mut conn: ConnectionManager,
    mut requested: mpsc::UnboundedReceiver<String>,
) {
    while let Some(queues) = super::coalesced(&mut requested).await {
        let mut pipeline = redis::pipe();
        for queue in &queues {
            pipeline.cmd("PUBLISH").arg(channel(queue)).arg(1).ignore();
        }
        if let Err(error) = pipeline.query_async::<()>(&mut conn).await {
            tracing::warn!(%error, "cannot publish the queue wake-up; workers will poll");
        }
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSubStream> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.into_on_message())
}

/// The wake-up channel of a queue (channels and keys are separate
/// namespaces in Redis; the prefix keeps queues apart).
fn channel(queue: &str) -> String {
    format!("{queue}:pushed")
}

/// The key whose absence tells that the server lost the queue's keys
/// (see [`super::Queue::take_loss`]); its value, the time it was written,
/// is for people looking.
fn sentinel(queue: &str) -> String {
    format!("{queue}:sentinel")
}

fn storage(conn: ConnectionManager, queue: &str, batch_size: usize) -> RedisStorage<Value> {
    let config = Config::default()
        .queue(queue)
        .batch_size(batch_size)
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        // Nobody listens to apalis's per-task events; they cost a PUBLISH each.
        .emit_events(false)
        // No apalis lease per task: the engine leases the delivery row
        // itself, and a worker that dies is found by its missed heartbeats
        // either way. apalis-redis 1.0's lease also `LREM`s the job from the
        // waiting list, which the fetch already took it out of, so each one
        // scanned the whole backlog: a drain cost O(n²) in Redis.
        .lock_tasks(false);
    RedisStorage::new(conn).with_config(config)
}
