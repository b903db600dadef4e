//! The queue on every backend: SQLite always, PostgreSQL when
//! `EMAIL2FA_TEST_DATABASE_URL` is set (a fresh database per test, dropped
//! afterwards), Redis when `EMAIL2FA_TEST_REDIS_URL` is set (a fresh queue
//! name per test, its keys deleted afterwards).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{Connection, PgConnection, SqlSafeStr};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use email2fa_db::PoolConfig;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
    Redis,
}

/// A fresh queue on one backend, set up, and how to reach it again.
#[derive(Clone)]
struct Harness {
    kind: Kind,
    queue: Queue,
    place: Place,
}

#[derive(Clone)]
enum Place {
    Sqlite {
        url: String,
        _dir: Arc<TempDir>,
    },
    Postgres {
        admin_url: String,
        url: String,
        database: String,
    },
    Redis {
        url: String,
        name: String,
    },
}

impl Harness {
    /// `None` when the backend's server is not configured (the test is
    /// skipped); panics when it is configured but unreachable.
    async fn start(kind: Kind) -> Option<Self> {
        let place = match kind {
            Kind::Sqlite => {
                let dir = TempDir::new().expect("a temporary directory");
                let url = format!("sqlite://{}/q.db", dir.path().display());
                Place::Sqlite {
                    url,
                    _dir: Arc::new(dir),
                }
            }
            Kind::Postgres => {
                let admin_url = configured("EMAIL2FA_TEST_DATABASE_URL")?;
                let database = format!("e2fa_q_{}", Ulid::generate().to_string().to_lowercase());
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .expect("EMAIL2FA_TEST_DATABASE_URL is set but unreachable");
                sqlx::query(sqlx::AssertSqlSafe(format!("create database {database}")))
                    .execute(&mut admin)
                    .await
                    .expect("create the test database");
                let url = email2fa_db::with_database_name(&admin_url, &database);
                Place::Postgres {
                    admin_url,
                    url,
                    database,
                }
            }
            Kind::Redis => {
                let url = configured("EMAIL2FA_TEST_REDIS_URL")?;
                let name = format!("e2fa-test-{}", Ulid::generate().to_string().to_lowercase());
                Place::Redis { url, name }
            }
        };
        let queue = place.connect().await;
        queue.setup().await.expect("queue setup");
        Some(Self { kind, queue, place })
    }

    /// Another connection to the same queue, as another process would have.
    async fn connect_again(&self) -> Queue {
        self.place.connect().await
    }

    async fn clean_up(self) {
        drop(self.queue);
        match self.place {
            Place::Sqlite { .. } => {}
            Place::Postgres {
                admin_url,
                database,
                ..
            } => {
                let mut admin = PgConnection::connect(&admin_url).await.expect("reconnect");
                let drop_database = format!("drop database if exists {database} with (force)");
                sqlx::query(sqlx::AssertSqlSafe(drop_database))
                    .execute(&mut admin)
                    .await
                    .expect("drop the test database");
            }
            Place::Redis { url, name } => delete_redis_queue(&url, &name).await,
        }
    }
}

impl Place {
    async fn connect(&self) -> Queue {
        match self {
            Place::Sqlite { url, .. } | Place::Postgres { url, .. } => {
                let db = Db::connect(url, &PoolConfig::default())
                    .await
                    .expect("connect the database");
                Queue::connect(QueueTarget::Database(db))
                    .await
                    .expect("connect the queue")
            }
            Place::Redis { url, name } => Queue::connect(QueueTarget::Redis(url.clone()))
                .await
                .expect("EMAIL2FA_TEST_REDIS_URL is set but unreachable")
                .renamed(name),
        }
    }
}

fn configured(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            println!("skipped: {variable} is not set");
            None
        }
    }
}

/// Deletes this test's keys only (never FLUSHALL: the server is shared).
async fn redis_connection(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn delete_redis_queue(url: &str, name: &str) {
    let mut conn = redis_connection(url).await;
    let keys: Vec<_> = {
        let mut scan = conn.clone();
        let iter: ::redis::AsyncIter<'_, String> =
            ::redis::AsyncCommands::scan_match(&mut scan, format!("{name}:*"))
                .await
                .expect("scan");
        iter.collect::<Vec<_>>().await
    };
    let keys = keys
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("scan");
    for key in keys {
        ::redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut conn)
            .await
            .expect("del");
    }
    ::redis::cmd("ZREM")
        .arg("core:apalis:queues:list")
        .arg(format!("{name}:workers"))
        .query_async::<()>(&mut conn)
        .await
        .expect("zrem");
}

/// Runs `case` on a fresh harness and cleans up, even when `case` panics.
async fn on_backend<F, Fut>(kind: Kind, case: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(harness) = Harness::start(kind).await else {
        return;
    };
    let outcome = AssertUnwindSafe(case(harness.clone())).catch_unwind().await;
    harness.clean_up().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// What the handlers saw.
#[derive(Clone, Default)]
struct Recorder(Arc<RecorderState>);

/// When a handler call started, on the monotonic and on the wall clock.
type Start = (Instant, DateTime<Utc>);

#[derive(Default)]
struct RecorderState {
    starts: Mutex<HashMap<String, Vec<Start>>>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    finished: AtomicUsize,
}

type Handler = Arc<dyn Fn(EmailJob) -> BoxFuture<'static, ()> + Send + Sync>;

impl Recorder {
    /// A handler that records each call and works for `work`; it panics for
    /// delivery ids that start with "panic".
    fn handler(
        &self,
        work: Duration,
    ) -> impl Fn(EmailJob) -> BoxFuture<'static, ()> + Clone + Send + Sync + 'static {
        let recorder = self.clone();
        let handler: Handler = Arc::new(move |job: EmailJob| {
            let recorder = recorder.clone();
            async move {
                recorder.start(&job);
                tokio::time::sleep(work).await;
                recorder.finish();
                assert!(
                    !job.delivery_id.starts_with("panic"),
                    "boom: {}",
                    job.delivery_id
                );
            }
            .boxed()
        });
        move |job| handler(job)
    }

    fn start(&self, job: &EmailJob) {
        let mut starts = self.0.starts.lock().expect("lock");
        starts
            .entry(job.delivery_id.clone())
            .or_default()
            .push((Instant::now(), Utc::now()));
        let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.most_at_once.fetch_max(now, Ordering::SeqCst);
    }

    fn finish(&self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.fetch_add(1, Ordering::SeqCst);
    }

    fn runs(&self, id: &str) -> usize {
        self.0
            .starts
            .lock()
            .expect("lock")
            .get(id)
            .map_or(0, Vec::len)
    }

    fn distinct(&self) -> usize {
        self.0.starts.lock().expect("lock").len()
    }

    fn first_start(&self, id: &str) -> Start {
        self.0.starts.lock().expect("lock")[id][0]
    }

    fn most_at_once(&self) -> usize {
        self.0.most_at_once.load(Ordering::SeqCst)
    }

    fn finished(&self) -> usize {
        self.0.finished.load(Ordering::SeqCst)
    }
}

/// A running [`run_workers`]; dropping it shuts it down.
struct Runner {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), QueueError>>,
}

fn start_runner<H, Fut>(queue: Queue, concurrency: usize, handler: H) -> Runner
where
    H: Fn(EmailJob) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let config = WorkerConfig {
        concurrency,
        name_prefix: "test".to_owned(),
        shutdown_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(200),
    };
    let task = tokio::spawn(run_workers(queue, config, handler, async move {
        let _ = stopped.await;
    }));
    Runner { stop, task }
}

impl Runner {
    async fn stop(self) -> Result<(), QueueError> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("run_workers returns after shutdown")
            .expect("run_workers does not panic")
    }

    /// Like SIGKILL for the worker: no graceful shutdown, no more heartbeats.
    fn kill(self) {
        self.task.abort();
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn job(id: impl Into<String>) -> EmailJob {
    EmailJob {
        delivery_id: id.into(),
    }
}

fn jobs(prefix: &str, count: usize) -> Vec<EmailJob> {
    (0..count).map(|i| job(format!("{prefix}-{i}"))).collect()
}

/// Pushes `id` and measures how long until the handler starts it.
async fn pickup_latency(queue: &Queue, recorder: &Recorder, id: &str) -> Duration {
    let pushed = Instant::now();
    queue.push(job(id), None).await.expect("push");
    wait_until(id, Duration::from_secs(10), || recorder.runs(id) == 1).await;
    recorder.first_start(id).0 - pushed
}

async fn a_pushed_job_reaches_the_handler_promptly(h: Harness) {
    let recorder = Recorder::default();
    let runner = start_runner(h.queue.clone(), 4, recorder.handler(Duration::ZERO));
    h.queue.push(job("warm-up"), None).await.expect("push");
    wait_until("the warm-up job", Duration::from_secs(10), || {
        recorder.runs("warm-up") == 1
    })
    .await;
    // Idle now: past its last fetch and its poll tick.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let same_queue = pickup_latency(&h.queue, &recorder, "same-queue").await;
    let elsewhere = h.connect_again().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other_connection = pickup_latency(&elsewhere, &recorder, "other-connection").await;
    println!(
        "{:?}: pickup latency {same_queue:?} when pushed through the workers' queue, \
         {other_connection:?} through another connection",
        h.kind
    );
    assert!(same_queue < Duration::from_secs(2), "{same_queue:?}");
    assert!(
        other_connection < Duration::from_secs(2),
        "{other_connection:?}"
    );
    runner.stop().await.expect("a clean stop");
}

async fn a_job_scheduled_ahead_does_not_run_early(h: Harness) {
    let recorder = Recorder::default();
    let runner = start_runner(h.queue.clone(), 4, recorder.handler(Duration::ZERO));
    let run_at = Utc::now() + chrono::Duration::milliseconds(1500);
    h.queue
        .push(job("later"), Some(run_at))
        .await
        .expect("push");
    wait_until("the scheduled job", Duration::from_secs(10), || {
        recorder.runs("later") == 1
    })
    .await;
    let started = recorder.first_start("later").1;
    let late = (started - run_at).to_std();
    println!(
        "{:?}: a job due at {run_at} started at {started} ({late:?} late)",
        h.kind
    );
    assert!(started >= run_at, "started {started} before {run_at}");
    assert!(
        late.is_ok_and(|late| late < Duration::from_secs(2)),
        "{late:?}"
    );
    runner.stop().await.expect("a clean stop");
}

async fn two_hundred_jobs_run_exactly_once_and_never_more_than_four_at_once(h: Harness) {
    let recorder = Recorder::default();
    let runner = start_runner(
        h.queue.clone(),
        4,
        recorder.handler(Duration::from_millis(10)),
    );
    for job in jobs("job", 200) {
        h.queue.push(job, None).await.expect("push");
    }
    wait_until("200 jobs", Duration::from_secs(60), || {
        recorder.finished() >= 200
    })
    .await;
    // Give a second run, if there were one, the time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("{:?}: at most {} at once", h.kind, recorder.most_at_once());
    assert_eq!(recorder.distinct(), 200);
    for job in jobs("job", 200) {
        assert_eq!(recorder.runs(&job.delivery_id), 1, "{}", job.delivery_id);
    }
    assert!(recorder.most_at_once() <= 4, "{}", recorder.most_at_once());
    runner.stop().await.expect("a clean stop");
}

async fn push_many_runs_every_job_once(h: Harness) {
    let recorder = Recorder::default();
    let runner = start_runner(h.queue.clone(), 8, recorder.handler(Duration::ZERO));
    h.queue.push_many(Vec::new()).await.expect("an empty push");
    h.queue
        .push_many(jobs("bulk", 50))
        .await
        .expect("push_many");
    wait_until("50 jobs", Duration::from_secs(30), || {
        recorder.finished() >= 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.distinct(), 50);
    for job in jobs("bulk", 50) {
        assert_eq!(recorder.runs(&job.delivery_id), 1, "{}", job.delivery_id);
    }
    runner.stop().await.expect("a clean stop");
}

/// A backlog larger than Redis's Lua `unpack` limit (8000) drains: the
/// workers were down while the jobs arrived, so all of them are due at once
/// (apalis-redis 1.0.0 wedged here; see vendor/README.md).
async fn a_backlog_of_nine_thousand_due_jobs_drains(h: Harness) {
    const BACKLOG: usize = 9_000;
    let all = jobs("backlog", BACKLOG);
    for chunk in all.chunks(1_000) {
        h.queue.push_many(chunk.to_vec()).await.expect("push_many");
    }
    let recorder = Recorder::default();
    let runner = start_runner(h.queue.clone(), 16, recorder.handler(Duration::ZERO));
    wait_until("the backlog", Duration::from_secs(120), || {
        recorder.finished() >= BACKLOG
    })
    .await;
    assert_eq!(recorder.distinct(), BACKLOG);
    runner.stop().await.expect("a clean stop");
}

/// A job pushed with a transaction belongs to it: with the database as the
/// queue it runs only if the transaction commits; with Redis it is out
/// before the commit (so that a Redis outage refuses the call with nothing
/// written), and the engine waits for, or gives up on, its missing row.
async fn a_job_pushed_with_a_transaction_commits_or_rolls_back_with_it(h: Harness) {
    let scratch = TempDir::new().expect("a temporary directory");
    let url = match &h.place {
        Place::Sqlite { url, .. } | Place::Postgres { url, .. } => url.clone(),
        Place::Redis { .. } => format!("sqlite://{}/tx.db", scratch.path().display()),
    };
    let db = Db::connect(&url, &PoolConfig::default()).await.expect("db");
    let in_database = !matches!(h.kind, Kind::Redis);
    let recorder = Recorder::default();
    let runner = start_runner(h.queue.clone(), 4, recorder.handler(Duration::ZERO));
    let mut tx = db.begin().await.expect("begin");
    h.queue
        .push_with(&mut tx, vec![job("rolled-back")])
        .await
        .expect("push_with");
    tx.rollback().await.expect("rollback");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tx = db.begin().await.expect("begin");
    h.queue
        .push_with(&mut tx, vec![job("committed")])
        .await
        .expect("push_with");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        recorder.runs("committed"),
        usize::from(!in_database),
        "{:?}: a job in the database ran before its transaction committed",
        h.kind
    );
    let committed = Instant::now();
    tx.commit().await.expect("commit");
    h.queue.wake_workers();
    wait_until("the committed job", Duration::from_secs(10), || {
        recorder.runs("committed") == 1
    })
    .await;
    let pickup = committed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        recorder.runs("rolled-back"),
        usize::from(!in_database),
        "{:?}",
        h.kind
    );
    println!("{:?}: picked up {pickup:?} after the commit", h.kind);
    assert!(pickup < Duration::from_secs(2), "{pickup:?}");
    runner.stop().await.expect("a clean stop");
}

/// PostgreSQL commits transactions that NOTIFY one at a time (a
/// database-wide lock held through the WAL flush), so no trigger may notify
/// from inside the transactions that push jobs: apalis's is dropped at
/// setup, and wake-ups go out after the commit instead (the pickup tests
/// above show they still arrive, from this and from another connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trigger_notifies_from_inside_a_pushing_transaction() {
    on_backend(Kind::Postgres, |h| async move {
        let Place::Postgres { url, .. } = &h.place else {
            unreachable!("a PostgreSQL harness");
        };
        assert_no_trigger_on_jobs(url).await;
    })
    .await;
}

/// apalis-sqlite's per-job `lock` and `ack` (their text in apalis-sqlite
/// 1.0) find the job by its id, not by reading every waiting job or every job
/// the worker ever finished, which made a drain cost O(n²); the planner
/// statistics written at setup see to it, on a new connection as another
/// process would open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_finds_each_job_it_locks_or_acks_by_its_id() {
    const LOCK: &str = "update Jobs set status = 'Running', lock_at = strftime('%s', 'now'), \
        lock_by = ?2 where id in (select value from json_each(?1)) and (status = 'Queued' \
        or status = 'Pending' or (status = 'Failed' and attempts < max_attempts))";
    const ACK: &str = "with j as (select value ->> 'task_id' as task_id, \
        value ->> 'attempt' as attempt, value ->> 'result' as result, \
        value ->> 'status' as status from json_each(?1)) \
        update Jobs set status = j.status, attempts = j.attempt, last_result = j.result, \
        done_at = strftime('%s', 'now') from j where Jobs.id = j.task_id and Jobs.lock_by = ?2";
    on_backend(Kind::Sqlite, |h| async move {
        let Place::Sqlite { url, .. } = &h.place else {
            unreachable!("an SQLite harness");
        };
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        for statement in [LOCK, ACK] {
            let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "explain query plan {statement}"
            )))
            .bind("[]")
            .bind("worker")
            .fetch_all(&pool)
            .await
            .expect("explain");
            let steps: Vec<&str> = plan.iter().map(|step| step.3.as_str()).collect();
            assert!(
                steps
                    .iter()
                    .any(|step| step.contains("Jobs USING INDEX sqlite_autoindex_Jobs_1 (id=?)")),
                "{statement}: {steps:?}"
            );
        }
        pool.close().await;
    })
    .await;
}

/// A Redis worker takes each job without scanning the list of waiting jobs.
/// apalis-redis's per-job lease (`acquire_leases.lua`) removed the job from
/// that list with `LREM`, after the fetch had already taken it out: a scan of
/// the whole backlog per job, so that draining n jobs cost O(n²) in Redis
/// (a 100,000-job drain ran at half the rate of a 10,000-job one). The
/// service keeps its own lease on the delivery row, so it asks apalis for
/// none. `INFO commandstats` counts the commands scripts call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_a_job_without_scanning_the_waiting_list() {
    on_backend(Kind::Redis, |h| async move {
        let Place::Redis { url, .. } = &h.place else {
            unreachable!("a Redis harness");
        };
        let mut conn = redis_connection(url).await;
        let before = list_scans(&mut conn).await;
        const BACKLOG: usize = 500;
        h.queue
            .push_many(jobs("scan", BACKLOG))
            .await
            .expect("push_many");
        let recorder = Recorder::default();
        let runner = start_runner(h.queue.clone(), 4, recorder.handler(Duration::ZERO));
        wait_until("the backlog", Duration::from_secs(60), || {
            recorder.finished() >= BACKLOG
        })
        .await;
        runner.stop().await.expect("a clean stop");
        assert_eq!(recorder.distinct(), BACKLOG);
        assert_eq!(list_scans(&mut conn).await, before, "LREM calls");
    })
    .await;
}

/// How many `LREM`s the Redis server has run since it started.
async fn list_scans(conn: &mut ::redis::aio::MultiplexedConnection) -> u64 {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("info commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_lrem:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

async fn assert_no_trigger_on_jobs(url: &str) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let (triggers,): (i64,) = sqlx::query_as(
        "select count(*) from pg_trigger t join pg_class c on c.oid = t.tgrelid \
         join pg_namespace n on n.oid = c.relnamespace \
         where n.nspname = 'apalis' and c.relname = 'jobs' and not t.tgisinternal",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count the triggers");
    assert_eq!(triggers, 0, "a trigger on apalis.jobs");
}

async fn shutdown_waits_for_an_in_flight_handler(h: Harness) {
    let recorder = Recorder::default();
    let runner = start_runner(
        h.queue.clone(),
        4,
        recorder.handler(Duration::from_millis(1500)),
    );
    h.queue.push(job("slow"), None).await.expect("push");
    wait_until("the slow job to start", Duration::from_secs(10), || {
        recorder.runs("slow") == 1
    })
    .await;
    let stopping = Instant::now();
    runner.stop().await.expect("a clean stop");
    println!("{:?}: shutdown took {:?}", h.kind, stopping.elapsed());
    assert_eq!(
        recorder.finished(),
        1,
        "run_workers returned before the handler finished"
    );
    assert!(stopping.elapsed() >= Duration::from_millis(1000));
}

async fn a_panicking_handler_does_not_kill_the_worker(h: Harness) {
    let recorder = Recorder::default();
    let runner = start_runner(h.queue.clone(), 4, recorder.handler(Duration::ZERO));
    h.queue.push(job("panic-1"), None).await.expect("push");
    wait_until("the panicking job", Duration::from_secs(10), || {
        recorder.runs("panic-1") == 1
    })
    .await;
    h.queue
        .push_many(jobs("after", 5))
        .await
        .expect("push_many");
    wait_until("the jobs after it", Duration::from_secs(10), || {
        jobs("after", 5)
            .iter()
            .all(|job| recorder.runs(&job.delivery_id) == 1)
    })
    .await;
    // Neither apalis nor the runner tries the panicked job again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(recorder.runs("panic-1"), 1);
    assert!(!runner.task.is_finished());
    runner.stop().await.expect("a clean stop");
}

async fn two_runners_on_the_same_queue_run_every_job_exactly_once(h: Harness) {
    let (first, second) = (Recorder::default(), Recorder::default());
    let work = Duration::from_millis(20);
    let one = start_runner(h.queue.clone(), 4, first.handler(work));
    let two = start_runner(h.connect_again().await, 4, second.handler(work));
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.connect_again()
        .await
        .push_many(jobs("shared", 200))
        .await
        .expect("push_many");
    wait_until("200 jobs", Duration::from_secs(60), || {
        first.finished() + second.finished() >= 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for job in jobs("shared", 200) {
        let id = &job.delivery_id;
        assert_eq!(first.runs(id) + second.runs(id), 1, "{id}");
    }
    println!(
        "{:?}: the runners ran {} and {} jobs",
        h.kind,
        first.distinct(),
        second.distinct()
    );
    assert!(
        first.distinct() > 0 && second.distinct() > 0,
        "one runner did all the work"
    );
    one.stop().await.expect("a clean stop");
    two.stop().await.expect("a clean stop");
}

async fn a_job_orphaned_by_a_killed_worker_runs_again(h: Harness) {
    let stuck = Recorder::default();
    let killed = start_runner(h.queue.clone(), 2, stuck.handler(Duration::from_secs(120)));
    h.queue.push(job("orphan"), None).await.expect("push");
    wait_until("the job to start", Duration::from_secs(10), || {
        stuck.runs("orphan") == 1
    })
    .await;
    let killed_at = Instant::now();
    killed.kill();
    let recorder = Recorder::default();
    let runner = start_runner(h.connect_again().await, 2, recorder.handler(Duration::ZERO));
    wait_until("the orphan to run again", Duration::from_secs(75), || {
        recorder.runs("orphan") == 1
    })
    .await;
    let delay = recorder.first_start("orphan").0 - killed_at;
    println!(
        "{:?}: the orphan ran again {delay:?} after its worker was killed",
        h.kind
    );
    assert!(delay < Duration::from_secs(50), "{delay:?}");
    runner.stop().await.expect("a clean stop");
}

async fn a_worker_that_loses_its_registration_starts_again(h: Harness) {
    let recorder = Recorder::default();
    let runner = start_runner(h.queue.clone(), 2, recorder.handler(Duration::ZERO));
    let limit = Duration::from_secs(10);
    wait_for_workers(&h, "the worker to register", limit, |workers| workers == 1).await;
    forget_workers(&h).await;
    // Its next heartbeat (or, on Redis, its next fetch) fails, the worker
    // stops, and run_workers starts a new one under a new name.
    let limit = Duration::from_secs(20);
    wait_for_workers(&h, "a new worker", limit, |workers| workers == 1).await;
    h.queue
        .push(job("after-restart"), None)
        .await
        .expect("push");
    wait_until("the job", Duration::from_secs(10), || {
        recorder.runs("after-restart") == 1
    })
    .await;
    runner.stop().await.expect("a clean stop");
}

/// Makes the backend forget the queue's workers, as if they had been
/// declared dead.
async fn forget_workers(h: &Harness) {
    match &h.queue.backend {
        Backend::Sqlite(pool) => {
            sqlx::query("update Workers set worker_type = 'forgotten'")
                .execute(pool)
                .await
                .expect("forget");
        }
        Backend::Postgres(pool) => {
            sqlx::query("update apalis.workers set worker_type = 'forgotten'")
                .execute(pool)
                .await
                .expect("forget");
        }
        Backend::Redis(redis) => {
            let mut conn = redis.conn.clone();
            ::redis::cmd("DEL")
                .arg(format!("{}:workers", h.queue.name))
                .query_async::<()>(&mut conn)
                .await
                .expect("forget");
        }
    }
}

async fn wait_for_workers(h: &Harness, what: &str, limit: Duration, done: impl Fn(i64) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let workers: i64 = match &h.queue.backend {
            Backend::Sqlite(pool) => {
                sqlx::query_scalar("select count(*) from Workers where worker_type = $1")
                    .bind(&*h.queue.name)
                    .fetch_one(pool)
                    .await
                    .expect("count")
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar("select count(*) from apalis.workers where worker_type = $1")
                    .bind(&*h.queue.name)
                    .fetch_one(pool)
                    .await
                    .expect("count")
            }
            Backend::Redis(redis) => {
                let mut conn = redis.conn.clone();
                ::redis::cmd("ZCARD")
                    .arg(format!("{}:workers", h.queue.name))
                    .query_async(&mut conn)
                    .await
                    .expect("count")
            }
        };
        if done(workers) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup_coexists_with_the_services_own_migrations(h: Harness) {
    let probe = || {
        let sql = "create table e2fa_migration_probe (id integer)".into_sql_str();
        let migration = Migration::new(
            20_990_101_000_000,
            "probe".into(),
            MigrationType::Simple,
            sql,
            false,
        );
        Migrator::with_migrations(vec![migration])
    };
    let mut service = probe();
    service.set_ignore_missing(true);
    let strict = probe();
    match &h.queue.backend {
        Backend::Sqlite(pool) => {
            service
                .run(pool)
                .await
                .expect("the service's migrator with ignore_missing");
            let refused = strict.run(pool).await;
            assert!(
                matches!(refused, Err(MigrateError::VersionMissing(_))),
                "on SQLite apalis's versions sit in the same _sqlx_migrations: {refused:?}"
            );
        }
        Backend::Postgres(pool) => {
            service
                .run(pool)
                .await
                .expect("the service's migrator with ignore_missing");
            // apalis-postgres keeps its versions in apalis._sqlx_migrations.
            strict
                .run(pool)
                .await
                .expect("the service's migrator without ignore_missing");
        }
        Backend::Redis(_) => {}
    }
    h.queue
        .setup()
        .await
        .expect("apalis's migrator again, after the service's");
}

/// One test per case and backend: `queue::tests::{sqlite,postgres,redis}::…`.
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_backend(super::Kind::Sqlite, super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_backend(super::Kind::Postgres, super::$case).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_backend(super::Kind::Redis, super::$case).await;
                }
            )*
        }
    };
}

on_every_backend!(
    a_pushed_job_reaches_the_handler_promptly,
    a_job_scheduled_ahead_does_not_run_early,
    two_hundred_jobs_run_exactly_once_and_never_more_than_four_at_once,
    push_many_runs_every_job_once,
    a_backlog_of_nine_thousand_due_jobs_drains,
    a_job_pushed_with_a_transaction_commits_or_rolls_back_with_it,
    shutdown_waits_for_an_in_flight_handler,
    a_panicking_handler_does_not_kill_the_worker,
    two_runners_on_the_same_queue_run_every_job_exactly_once,
    a_job_orphaned_by_a_killed_worker_runs_again,
    a_worker_that_loses_its_registration_starts_again,
    setup_coexists_with_the_services_own_migrations,
);

#[test]
fn a_run_at_is_rounded_up_to_the_next_second() {
    let now = Utc::now().timestamp();
    let in_a_while = DateTime::from_timestamp(now + 60, 1).expect("valid");
    let on_the_second = DateTime::from_timestamp(now + 60, 0).expect("valid");
    assert_eq!(due_second(in_a_while), u64::try_from(now + 61).ok());
    assert_eq!(due_second(on_the_second), u64::try_from(now + 60).ok());
    assert_eq!(due_second(Utc::now() - chrono::Duration::seconds(1)), None);
}

#[test]
fn a_database_url_points_at_another_database() {
    assert_eq!(
        email2fa_db::with_database_name("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        email2fa_db::with_database_name("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        email2fa_db::with_database_name("postgres://h", "x"),
        "postgres://h/x"
    );
}
