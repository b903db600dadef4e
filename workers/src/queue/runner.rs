//! [`run_workers`]: one apalis worker per call, restarted when its backend
//! fails, stopped gracefully when the shutdown future resolves.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use apalis::prelude::{AbortError, Monitor, WorkerBuilder, WorkerBuilderExt};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use ulid::Ulid;

use super::{Backend, EmailJob, Queue, QueueError, Wakeups, postgres, sqlite};

/// The first wait before a failed worker is started again; it doubles up to
/// [`RESTART_DELAY_MAX`] while the backend keeps failing.
const RESTART_DELAY_MIN: Duration = Duration::from_secs(1);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);
/// How often a failed worker waiting to start again asks whether its queue
/// answers ([`wait_to_restart`]): one ping each, while the queue is away.
const RESTART_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// The longest a probe waits for its answer.
const RESTART_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A worker that ran this long before failing starts again after
/// [`RESTART_DELAY_MIN`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Most jobs fetched in one round trip. A worker holds fetched jobs until a
/// slot frees up, so the batch is no larger than the concurrency. On the
/// PostgreSQL queue each fetch and each round of acknowledgements is a
/// transaction of its own: fetching 64 instead of 10 drained 20,000 emails
/// at 1,228 instead of 484 emails/s (the same run, a loaded machine).
const MAX_BATCH: usize = 64;

/// How [`run_workers`] runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Most handler calls at once (default 16).
    pub concurrency: usize,
    /// Start of the worker names; each name also holds the host, the pid and
    /// a ULID, so that a restart never collides with the previous worker
    /// (apalis refuses a name seen within the last heartbeats).
    pub name_prefix: String,
    /// How long shutdown waits for running handlers (default 30 s).
    pub shutdown_timeout: Duration,
    /// Fallback polling: the longest an idle worker goes without looking for
    /// due jobs (default 200 ms). Pushes through this process's [`Queue`],
    /// PostgreSQL notifications and Redis wake-ups are seen sooner.
    pub poll_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            name_prefix: "email2fa".to_owned(),
            shutdown_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// Runs workers until `shutdown` resolves: on shutdown stop fetching, let
/// in-flight handler calls finish up to `shutdown_timeout`, then return Ok.
///
/// Each handler call runs in its own tokio task, so calls spread over the
/// runtime's threads; a panic is caught there and the task is recorded as
/// killed (not retried). When the backend fails (the database or Redis went
/// away), the worker is started again under a new name after a delay that
/// doubles up to 5 s, once the handlers it left have finished; if the
/// queue was seen unreachable and answers again meanwhile, at once. Returns
/// [`QueueError::Unavailable`] only when the queue cannot be reached at start.
pub async fn run_workers<H, Fut>(
    queue: Queue,
    config: WorkerConfig,
    handler: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QueueError>
where
    H: Fn(EmailJob) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    queue.ping().await?;
    let shutdown = shutdown.boxed().shared();
    let in_flight = InFlight::default();
    let mut delay = RESTART_DELAY_MIN;
    // Whether the last ping of the previous wait failed: a worker started
    // again while its queue was still away, that fails once the queue is
    // back, starts at once instead of after the whole (grown) delay.
    let mut queue_was_down = false;
    loop {
        let started = Instant::now();
        run_worker(&queue, &config, &handler, &in_flight, shutdown.clone()).await;
        if shutdown.peek().is_some() {
            // The monitor stopped fetching; let the handlers it started
            // finish (up to the timeout) before cutting off what still runs.
            let _ = tokio::time::timeout(config.shutdown_timeout, in_flight.idle()).await;
            in_flight.abort_all();
            return Ok(());
        }
        if started.elapsed() >= HEALTHY_RUN {
            delay = RESTART_DELAY_MIN;
            queue_was_down = false;
        }
        tracing::warn!(restart_in = ?delay, "the queue worker stopped; restarting it");
        let settle = async {
            let _ = tokio::time::timeout(config.shutdown_timeout, in_flight.idle()).await;
            wait_to_restart(&queue, delay, queue_was_down).await
        };
        tokio::select! {
            () = shutdown.clone() => {
                let _ = tokio::time::timeout(config.shutdown_timeout, in_flight.idle()).await;
                in_flight.abort_all();
                return Ok(());
            }
            still_down = settle => queue_was_down = still_down,
        }
        delay = (delay * 2).min(RESTART_DELAY_MAX);
    }
}

/// Waits `delay` before a failed worker starts again, or less: as soon as
/// the queue answers a ping after failing one during this wait (Redis or
/// the database came back), it returns, probing every
/// [`RESTART_PROBE_INTERVAL`]; new jobs are then picked up within about
/// that long of the queue's return instead of after the rest of a delay
/// that grew while it was away. A worker that failed while its queue
/// answered (some other fault) waits the whole delay, so that a fault that
/// repeats does not restart it in a loop.
///
/// `was_down` says the previous wait ended on a failed ping (its delay ran
/// out while the queue was still away): the worker started since then
/// failed on that outage, so a first ping that answers ends this wait too.
/// Returns whether the last ping failed, for the next wait.
async fn wait_to_restart(queue: &Queue, delay: Duration, mut was_down: bool) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        let answered = matches!(
            tokio::time::timeout(RESTART_PROBE_TIMEOUT, queue.ping()).await,
            Ok(Ok(()))
        );
        if answered && was_down {
            return false;
        }
        was_down |= !answered;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return !answered;
        }
        tokio::time::sleep(left.min(RESTART_PROBE_INTERVAL)).await;
    }
}

/// Builds one worker for the queue's backend.
macro_rules! worker {
    ($name:expr, $backend:expr, $concurrency:expr, $service:expr) => {
        WorkerBuilder::new($name)
            .backend($backend)
            .enable_tracing()
            .concurrency($concurrency)
            .build($service)
    };
}

/// Runs one apalis worker under a monitor until it stops: after a graceful
/// shutdown (or its timeout), or when its backend failed.
async fn run_worker<H, Fut>(
    queue: &Queue,
    config: &WorkerConfig,
    handler: &H,
    in_flight: &InFlight,
    shutdown: Shared<BoxFuture<'static, ()>>,
) where
    H: Fn(EmailJob) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = worker_name(&config.name_prefix);
    let concurrency = config.concurrency.max(1);
    let batch_size = concurrency.min(MAX_BATCH);
    let poll_interval = config.poll_interval;
    let service = {
        let (handler, in_flight, stopping) = (handler.clone(), in_flight.clone(), shutdown.clone());
        move |payload: Value| {
            run_job(
                handler.clone(),
                in_flight.clone(),
                stopping.clone(),
                payload,
            )
        }
    };
    let monitor = Monitor::new()
        .should_restart(|worker, error| {
            tracing::error!(worker.name = worker.name(), %error, "the queue worker failed");
            false
        })
        .shutdown_timeout(config.shutdown_timeout);
    let queue = queue.clone();
    // On SQLite the apalis worker gets connections of its own, closed when
    // it stops: apalis drops its last acknowledgement transaction half-way
    // at shutdown, and the connection that held it kept the database's
    // write lock, so the handlers still finishing could not record their
    // sends ("database is locked"). Closing the pool rolls it back.
    let mut own_pool = None;
    let monitor = match queue.backend.clone() {
        Backend::Sqlite(shared) => {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(SQLITE_WORKER_CONNECTIONS)
                .acquire_timeout(shared.options().get_acquire_timeout())
                .connect_lazy_with((*shared.connect_options()).clone());
            own_pool = Some(pool.clone());
            monitor.register(move |_| {
                let wakeups = Wakeups::new(vec![queue.local_wakeups()], poll_interval);
                let backend = sqlite::worker_backend(&pool, &queue.name, batch_size, wakeups);
                worker!(name.clone(), backend, concurrency, service.clone())
            })
        }
        Backend::Postgres(pool) => monitor.register(move |_| {
            let sources = vec![
                queue.local_wakeups(),
                postgres::notifications(&pool, &queue.name),
            ];
            let wakeups = Wakeups::new(sources, poll_interval);
            let backend = postgres::worker_backend(&pool, &queue.name, batch_size, wakeups);
            worker!(name.clone(), backend, concurrency, service.clone())
        }),
        Backend::Redis(redis) => monitor.register(move |_| {
            let sources = vec![queue.local_wakeups(), redis.notifications(&queue.name)];
            let wakeups = Wakeups::new(sources, poll_interval);
            let backend = redis.worker_backend(&queue.name, batch_size, wakeups);
            worker!(name.clone(), backend, concurrency, service.clone())
        }),
    };
    if let Err(error) = monitor
        .run_with_signal(shutdown.map(Ok::<(), std::io::Error>))
        .await
    {
        tracing::error!(%error, "the queue worker monitor failed");
    }
    if let Some(pool) = own_pool
        && tokio::time::timeout(Duration::from_secs(5), pool.close())
            .await
            .is_err()
    {
        tracing::warn!("the queue worker's SQLite connections did not close within 5 s");
    }
}

/// Connections of the apalis worker on SQLite (fetch, acknowledgements,
/// heartbeat).
const SQLITE_WORKER_CONNECTIONS: u32 = 4;

/// One job: decode it, run the handler in its own task, and turn a panic into
/// an [`AbortError`], which apalis records as killed rather than retrying.
///
/// Once `stopping` resolves the job is answered at once and its handler task
/// runs on by itself ([`run_workers`] waits for it after the monitor stops).
/// A stopping apalis worker polls its backend again only when no job is
/// running, and its last fetch may sit there half-way, inside a transaction
/// that holds SQLite's write lock; a handler that waited for that lock to
/// record its send would wait for the worker that waits for the handler
/// (found by the SIGTERM test under load: sends left in `sending`). The job
/// counts as done; the delivery row stays the truth, and a handler that
/// cannot record its outcome leaves the row to the lease and the outbox
/// sweep.
async fn run_job<H, Fut>(
    handler: H,
    in_flight: InFlight,
    stopping: Shared<BoxFuture<'static, ()>>,
    payload: Value,
) -> Result<(), AbortError>
where
    H: Fn(EmailJob) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let job: EmailJob = serde_json::from_value(payload).map_err(|error| {
        tracing::error!(%error, "an email job does not decode; killing the task");
        AbortError::new(error)
    })?;
    let delivery_id = job.delivery_id.clone();
    let task = in_flight.spawn(handler(job));
    let finished = tokio::select! {
        biased;
        finished = task => finished,
        () = stopping => {
            tracing::debug!(
                delivery.id = %delivery_id,
                "stopping: the job is answered, its handler finishes on its own"
            );
            return Ok(());
        }
    };
    finished.map_err(|error| {
        let reason = if error.is_panic() {
            panic_message(error.into_panic())
        } else {
            "cancelled".to_owned()
        };
        tracing::error!(
            delivery.id = %delivery_id,
            %reason,
            "the email job handler panicked; the task is killed, not retried"
        );
        AbortError::new(format!("the handler panicked: {reason}"))
    })
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "a non-string panic".to_owned(), |s| (*s).to_owned()),
    }
}

/// `{prefix}-{host}-{pid}-{ulid}`: unique across hosts, processes and
/// restarts.
fn worker_name(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!(
        "{prefix}-{host}-{}-{}",
        std::process::id(),
        Ulid::generate().to_string().to_lowercase()
    )
}

/// The handler tasks of one [`run_workers`] call: counted, so that a restart
/// can wait for the tasks of a failed worker, and abortable, for the
/// shutdown timeout.
#[derive(Clone, Default)]
struct InFlight(Arc<InFlightState>);

#[derive(Default)]
struct InFlightState {
    running: AtomicUsize,
    idle: Notify,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// Counts one running handler task until dropped.
struct Running(Arc<InFlightState>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.0.clone());
        let handle = tokio::spawn(async move {
            let _running = running;
            future.await
        });
        let mut tasks = self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle.abort_handle());
        handle
    }

    /// Resolves when no handler task runs.
    async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn abort_all(&self) {
        let tasks =
            std::mem::take(&mut *self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.abort();
        }
    }
}
