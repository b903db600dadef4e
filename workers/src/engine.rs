//! The delivery engine: one attempt per job — claim the delivery, let the
//! service prepare it (for a code email: mint the code now), render, send,
//! and write the outcome back — plus the outbox sweep, and the re-push of
//! every pending delivery when the queue lost its jobs (a Redis server that
//! came back empty, [`Engine::recover_lost_queue`]).
//!
//! A claim leases its delivery; the lease is renewed while the attempt runs
//! ([`crate::leases`]), so it can be short and a dead worker's deliveries
//! are claimable again soon after it died.
//!
//! Jobs run one delivery each, but their database work is done in batches
//! ([`Batcher`]): the handlers running at the same time submit their
//! delivery ids, and one statement claims them all together with the
//! service's context (provider, tenant, challenge); the service then mints
//! their codes and stores every code's hash in one statement; accepted
//! sends are recorded in one statement too. Everything rarer (retries,
//! dead letters, discards) is written per delivery.
//!
//! Retries are ours, not apalis's: a transient failure schedules the next
//! attempt as a new job with `run_at` from an exponential backoff with jitter
//! (backon), never past the moment the email stops being useful; a permanent
//! failure, or the last attempt, writes a dead letter. The job handler always
//! returns normally once it has recorded what happened.
//!
//! Two failures are the provider's, not the message's, and mark it
//! unhealthy ([`ProviderHealth`]): rejected credentials (535) wait the
//! longest delay without using up an attempt, since every queued email
//! would otherwise die of one wrong password; a connection that cannot be
//! made secure (TLS) is dead-lettered at once as `tls_failed`, since no
//! retry changes a certificate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lettre::message::Mailbox;
use sqlx::FromRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::batcher::Batcher;
use crate::dead_letters::{DeadLetterReason, replace_ignoring_case};
use crate::deliveries::{self, BatchClaim, Delivery, SentRecord};
use crate::health::{ProviderHealth, ProviderProblem, UnhealthyProvider};
use crate::leases::Leases;
use crate::queue::{EmailJob, Queue};
use crate::render::{MessageKind, Renderer, TemplateContext, build_message};
use crate::transport::{SendError, SmtpProvider, Transports};
use email2fa_db::{Db, Timestamp};

/// What the service hands the engine for one delivery.
pub struct Prepared {
    /// The SMTP provider that sends it.
    pub provider: SmtpProvider,
    /// The sender.
    pub from: Mailbox,
    /// The template's values (with the freshly minted code, for code emails).
    pub context: TemplateContext,
}

/// Why a delivery could not be prepared.
#[derive(Debug, Clone)]
pub enum PrepareError {
    /// Nothing to send any more: superseded by a newer send, or the
    /// challenge closed. The delivery is discarded, not dead.
    Skip(String),
    /// Can never be sent (its provider was deleted, a bad address).
    Permanent(String),
    /// Try again later (the database is briefly unavailable).
    Transient(String),
}

/// The service's columns read with each claimed delivery: a select list
/// and joins onto the claimed delivery row, aliased `d`. They may only
/// read (left joins, so that a claimed delivery always has its row).
#[derive(Debug, Clone, Copy)]
pub struct ContextQuery {
    /// Select list, each column named (`t.name as tenant_name, …`).
    pub columns: &'static str,
    /// Joins onto `d` (`left join tenants t on t.id = d.tenant_id …`).
    pub joins: &'static str,
}

/// What the engine asks of the service: it owns challenges, providers and
/// the master key, so it prepares each message. The engine claims its
/// deliveries and reads the service's [`ContextQuery`] beside them in the
/// same statement; the service decodes those columns ([`Self::Context`])
/// and prepares the batch.
pub trait MessageSource: Send + Sync + 'static {
    /// The service's columns of one claimed delivery, decoded.
    type Context: for<'r> FromRow<'r, PgRow>
        + for<'r> FromRow<'r, SqliteRow>
        + Send
        + Sync
        + Unpin
        + 'static;

    /// What to read with each claimed delivery.
    const CONTEXT: ContextQuery;

    /// Prepares claimed deliveries: for code emails, mints each code and
    /// stores every code's keyed hash (in one statement for the batch).
    /// Answers one result per delivery, in order.
    fn prepare_batch(
        &self,
        claimed: Vec<(Delivery, Self::Context)>,
    ) -> impl Future<Output = Vec<(Delivery, Result<Prepared, PrepareError>)>> + Send;
}

/// Why an attempt could not record its outcome (the row is left to its
/// lease and the outbox sweep).
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// A statement of this delivery failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The batch this delivery was part of failed.
    #[error("batch failed: {0}")]
    Batch(Arc<str>),
}

/// Retry policy and leases.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// How long a claimed delivery is ours before a sweep may retry it;
    /// renewed every third of it while its attempt runs
    /// ([`crate::leases`]), so only a dead worker's leases run out.
    pub lease_seconds: i64,
    /// How long a due delivery may wait before the sweep re-pushes it.
    pub sweep_grace_seconds: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(60),
            lease_seconds: 30,
            sweep_grace_seconds: 30,
        }
    }
}

/// A job whose delivery row is missing is only waited for while it is this
/// young (older: its webhook's transaction was rolled back).
const INVISIBLE_GRACE: Duration = Duration::from_secs(30);

/// How long a worker waits for a young job's row to become visible.
const VISIBILITY_WAIT: Duration = Duration::from_secs(2);

/// How often a worker process asks a queue that can lose its jobs (Redis)
/// whether it did: one `SET … NX` a second, so that jobs lost with a Redis
/// server are pushed again about a second after it is back.
pub const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Deliveries read and pushed per round of [`Engine::repush_pending`].
const REPUSH_BATCH: i64 = 500;

/// Most deliveries claimed (or recorded) in one statement.
const MAX_BATCH: usize = 64;

/// Batches of each kind running at once: while one waits for the database,
/// the next collects what arrives meanwhile.
const BATCHES_IN_FLIGHT: usize = 2;

/// The engine. Cheap to clone.
pub struct Engine<S: MessageSource> {
    inner: Arc<Inner<S>>,
}

impl<S: MessageSource> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S: MessageSource> {
    shared: Arc<Shared<S>>,
    queue: Queue,
    renderer: Renderer,
    transports: Transports,
    health: ProviderHealth,
    claims: Batcher<String, Result<Claim, Arc<str>>>,
    sent: Batcher<SentRecord, Result<(), Arc<str>>>,
    leases: Arc<Leases>,
}

/// What the batchers' tasks use (they must not hold the engine itself, or
/// the engine would never be dropped and their tasks never end).
struct Shared<S> {
    db: Db,
    source: S,
    config: EngineConfig,
    claim: BatchClaim,
}

/// What a claim batch tells one job.
enum Claim {
    /// Claimed and prepared: send it.
    Ready(Box<(Delivery, Prepared)>),
    /// Claimed, but it cannot be sent as it is.
    Unprepared(Delivery, PrepareError),
    /// Claimed too late: its code could no longer be used.
    Expired(Delivery),
    /// Not claimable: the row's status, or `None` when it is not visible.
    NotClaimed(Option<String>),
}

/// Whether a failed attempt counts against the delivery's attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The usual case: a transient failure of this attempt.
    Counted,
    /// The provider refused our credentials: not the message's fault, so
    /// the attempt is given back and the next waits the longest delay.
    ProviderBroken,
}

/// The outcome of one job, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the SMTP server.
    Sent,
    /// A transient failure; the next attempt is scheduled.
    Retrying,
    /// Given up: a dead letter was written.
    Dead,
    /// Not sent and not to be: superseded, closed or expired.
    Finished(&'static str),
    /// Nothing to do (already handled elsewhere, or not visible yet).
    Skipped,
}

impl<S: MessageSource> Engine<S> {
    /// An engine over the database, the queue and the service's source.
    /// Starts its batchers: call it inside a Tokio runtime.
    pub fn new(
        db: Db,
        queue: Queue,
        source: S,
        renderer: Renderer,
        transports: Transports,
        config: EngineConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            db,
            source,
            config,
            claim: BatchClaim::new(S::CONTEXT.columns, S::CONTEXT.joins),
        });
        let claims = {
            let shared = Arc::clone(&shared);
            Batcher::start(MAX_BATCH, BATCHES_IN_FLIGHT, move |ids| {
                claim_and_prepare(Arc::clone(&shared), ids)
            })
        };
        let sent = {
            let db = shared.db.clone();
            Batcher::start(MAX_BATCH, BATCHES_IN_FLIGHT, move |records| {
                record_sent(db.clone(), records)
            })
        };
        let leases = Arc::new(Leases::default());
        leases.start_heartbeat(shared.db.clone(), shared.config.lease_seconds);
        Self {
            inner: Arc::new(Inner {
                shared,
                queue,
                renderer,
                transports,
                health: ProviderHealth::default(),
                claims,
                sent,
                leases,
            }),
        }
    }

    fn db(&self) -> &Db {
        &self.inner.shared.db
    }

    fn config(&self) -> &EngineConfig {
        &self.inner.shared.config
    }

    /// The job handler: one attempt at one delivery. Never fails; every
    /// outcome is recorded in the deliveries table.
    pub async fn handle(&self, job: EmailJob) {
        let id = job.delivery_id.clone();
        match self.attempt(job).await {
            Ok(outcome) => {
                crate::metrics::outcome(&outcome);
                tracing::debug!(delivery.id = %id, ?outcome, "delivery attempt done");
            }
            Err(error) => {
                // The database failed while recording: leave the row as it
                // is; its lease runs out and the sweep retries it.
                tracing::warn!(delivery.id = %id, %error, "could not record a delivery attempt");
            }
        }
    }

    /// One attempt, returning what happened.
    #[tracing::instrument(skip_all, fields(delivery.id = %job.delivery_id))]
    pub async fn attempt(&self, job: EmailJob) -> Result<Outcome, AttemptError> {
        let claim = match self.claim_when_visible(&job).await? {
            None | Some(Claim::NotClaimed(_)) => return Ok(Outcome::Skipped),
            Some(claim) => claim,
        };
        // Ours until its outcome is recorded: the lease is renewed meanwhile.
        let _lease = self.inner.leases.hold(&job.delivery_id);
        let (delivery, prepared) = match claim {
            Claim::NotClaimed(_) => return Ok(Outcome::Skipped),
            Claim::Ready(ready) => *ready,
            Claim::Expired(delivery) => {
                let why = "its code could no longer be used";
                self.finish(&delivery, "expired", why).await?;
                return Ok(Outcome::Finished("expired"));
            }
            Claim::Unprepared(delivery, error) => {
                return match error {
                    PrepareError::Skip(why) => {
                        self.finish(&delivery, "discarded", &why).await?;
                        Ok(Outcome::Finished("discarded"))
                    }
                    PrepareError::Permanent(why) => {
                        self.dead(&delivery, DeadLetterReason::Permanent, &why)
                            .await
                    }
                    PrepareError::Transient(why) => {
                        self.retry(&delivery, &why, Retry::Counted).await
                    }
                };
            }
        };
        let message = match self.compose(&delivery, &prepared) {
            Ok(message) => message,
            Err(why) => return self.dead(&delivery, DeadLetterReason::Render, &why).await,
        };
        let (message, message_id) = message;
        let started = std::time::Instant::now();
        let result = self
            .inner
            .transports
            .send(&prepared.provider, &delivery.id, message)
            .await;
        crate::metrics::send(&result, started.elapsed(), delivery.created_at);
        match result {
            Ok(reply) => {
                self.inner.health.clear(&prepared.provider);
                let record = SentRecord {
                    id: delivery.id.clone(),
                    reply,
                    message_id,
                    sent_at: Timestamp::now(),
                };
                self.inner
                    .sent
                    .submit(record)
                    .await
                    .unwrap_or_else(|| Err(Arc::from("the batch was lost")))
                    .map_err(AttemptError::Batch)?;
                tracing::info!(kind = %delivery.kind, attempts = delivery.attempts, "email sent");
                Ok(Outcome::Sent)
            }
            Err(SendError::Transient(why)) => self.retry(&delivery, &why, Retry::Counted).await,
            Err(SendError::AuthFailed(why)) => {
                let problem = ProviderProblem::CredentialsRejected(why.clone());
                self.inner.health.mark(&prepared.provider, problem);
                self.retry(&delivery, &why, Retry::ProviderBroken).await
            }
            Err(SendError::Tls(why)) => {
                let problem = ProviderProblem::TlsFailed(why.clone());
                self.inner.health.mark(&prepared.provider, problem);
                self.dead(&delivery, DeadLetterReason::TlsFailed, &why)
                    .await
            }
            Err(SendError::Permanent(why)) => {
                self.dead(&delivery, DeadLetterReason::Rejected, &why).await
            }
        }
    }

    async fn finish(
        &self,
        delivery: &Delivery,
        status: &str,
        why: &str,
    ) -> Result<(), AttemptError> {
        deliveries::mark_finished(self.db(), &delivery.id, status, why, Timestamp::now()).await?;
        Ok(())
    }

    fn compose(
        &self,
        delivery: &Delivery,
        prepared: &Prepared,
    ) -> Result<(lettre::Message, String), String> {
        let kind = MessageKind::parse(&delivery.kind)
            .ok_or_else(|| format!("unknown kind {}", delivery.kind))?;
        let rendered = self
            .inner
            .renderer
            .render(
                &delivery.tenant_id,
                delivery.locale.as_deref(),
                kind,
                &prepared.context,
            )
            .map_err(|e| e.to_string())?;
        let to = Mailbox::new(
            None,
            crate::address::recipient(&delivery.recipient)
                .map_err(|e| format!("the recipient {e}"))?,
        );
        build_message(&prepared.from, &to, &rendered, &rendered.locale).map_err(|e| e.to_string())
    }

    /// Claims the job's delivery (in a batch with the other jobs running
    /// now). With Redis the ingress pushes a job just before its
    /// transaction commits, so a fast worker can see the job before its
    /// row: a young job whose row is missing waits for it (up to
    /// [`VISIBILITY_WAIT`]), then leaves it to the outbox sweep.
    async fn claim_when_visible(&self, job: &EmailJob) -> Result<Option<Claim>, AttemptError> {
        let waited_since = std::time::Instant::now();
        loop {
            let claim = self
                .inner
                .claims
                .submit(job.delivery_id.clone())
                .await
                .unwrap_or_else(|| Err(Arc::from("the batch was lost")))
                .map_err(AttemptError::Batch)?;
            let status = match claim {
                Claim::NotClaimed(status) => status,
                claimed => return Ok(Some(claimed)),
            };
            match status.as_deref() {
                // Committed between our claim and the status read: claim again.
                Some("queued") if waited_since.elapsed() < VISIBILITY_WAIT => continue,
                // Finished, another worker has it, or a retry not due yet.
                Some(_) => return Ok(None),
                None => {}
            }
            let age = ulid::Ulid::from_string(&job.delivery_id)
                .ok()
                .and_then(|ulid| ulid.datetime().elapsed().ok())
                .unwrap_or(INVISIBLE_GRACE);
            if age >= INVISIBLE_GRACE || waited_since.elapsed() >= VISIBILITY_WAIT {
                // Rolled back (the webhook failed after the push), or very
                // slow: if it ever commits, the sweep pushes it again.
                tracing::debug!(delivery.id = %job.delivery_id, "delivery not visible; leaving it to the sweep");
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn delay_for(&self, attempts: i32) -> Duration {
        let config = self.config();
        ExponentialBuilder::default()
            .with_min_delay(config.backoff_base)
            .with_max_delay(config.backoff_cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(usize::try_from(attempts.max(1) - 1).unwrap_or(0))
            .unwrap_or(config.backoff_cap)
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        why: &str,
        kind: Retry,
    ) -> Result<Outcome, AttemptError> {
        let counted = kind == Retry::Counted;
        if counted && delivery.attempts >= delivery.max_attempts {
            return self
                .dead(delivery, DeadLetterReason::AttemptsExhausted, why)
                .await;
        }
        let delay = if counted {
            self.delay_for(delivery.attempts)
        } else {
            // Credentials fail for every message alike: wait the longest.
            self.config().backoff_cap
        };
        let now = Timestamp::now();
        let next = Timestamp::from(
            now.as_datetime() + chrono::Duration::from_std(delay).unwrap_or_default(),
        );
        if delivery.not_after.is_some_and(|end| next >= end) {
            deliveries::mark_finished(self.db(), &delivery.id, "expired", why, now).await?;
            return Ok(Outcome::Finished("expired"));
        }
        deliveries::mark_retrying(self.db(), &delivery.id, why, next, now, counted).await?;
        let result = if counted { "transient" } else { "auth_failed" };
        self.record_attempt(delivery, result, why, now).await;
        let job = EmailJob {
            delivery_id: delivery.id.clone(),
        };
        if let Err(error) = self.inner.queue.push(job, Some(next.as_datetime())).await {
            // The sweep re-pushes overdue retries.
            tracing::warn!(%error, "could not schedule the next attempt; the sweep will");
        }
        tracing::info!(
            attempts = delivery.attempts,
            delay_ms = delay.as_millis() as u64,
            error = %replace_ignoring_case(why, &delivery.recipient, "<recipient>"),
            "email send failed; retrying"
        );
        Ok(Outcome::Retrying)
    }

    async fn dead(
        &self,
        delivery: &Delivery,
        reason: DeadLetterReason,
        why: &str,
    ) -> Result<Outcome, AttemptError> {
        let now = Timestamp::now();
        deliveries::mark_dead(self.db(), delivery, reason, why, now).await?;
        crate::metrics::dead_letter(reason);
        self.record_attempt(delivery, reason.as_str(), why, now)
            .await;
        tracing::warn!(kind = %delivery.kind, attempts = delivery.attempts, reason = reason.as_str(), error = %replace_ignoring_case(why, &delivery.recipient, "<recipient>"), "email dead-lettered");
        Ok(Outcome::Dead)
    }

    /// Writes a failed attempt's history row. Only the operator's detail
    /// view reads it, so a failure to write it is logged, not retried.
    async fn record_attempt(&self, delivery: &Delivery, result: &str, why: &str, now: Timestamp) {
        if let Err(error) = deliveries::record_attempt(self.db(), delivery, result, why, now).await
        {
            tracing::warn!(%error, "could not record the attempt's history");
        }
    }

    /// Providers this process's workers currently see failing, and why.
    pub fn unhealthy_providers(&self) -> Vec<UnhealthyProvider> {
        self.inner.health.unhealthy()
    }

    /// Re-pushes deliveries the queue seems to have lost; returns how many.
    pub async fn sweep(&self) -> Result<usize, crate::queue::QueueError> {
        self.sweep_with_grace(self.config().sweep_grace_seconds)
            .await
    }

    /// [`Self::sweep`] with another grace period (tests use a short one).
    pub async fn sweep_with_grace(&self, grace: i64) -> Result<usize, crate::queue::QueueError> {
        // A due delivery is lost only if it should have been taken by now:
        // `grace` after it fell due, and `grace` before the oldest job still
        // waiting in the queue (jobs are taken oldest first). Without the
        // second bound every delivery waiting in a large backlog would be
        // pushed again.
        let now = Timestamp::now();
        let mut due_before = now.plus_seconds(-grace);
        if let Some(oldest) = self.inner.queue.oldest_waiting_job().await? {
            due_before = due_before.min(Timestamp::from(oldest).plus_seconds(-grace));
        }
        let ids = deliveries::overdue(self.db(), now, due_before, 500)
            .await
            .map_err(|e| crate::queue::QueueError::Other(e.into()))?;
        let count = ids.len();
        if count > 0 {
            let jobs = ids
                .into_iter()
                .map(|delivery_id| EmailJob { delivery_id })
                .collect();
            self.inner.queue.push_many(jobs).await?;
            tracing::info!(count, "outbox sweep re-pushed overdue deliveries");
        }
        Ok(count)
    }

    /// Pushes every pending delivery again at once, without the sweep's
    /// grace, if the queue lost its jobs since the last check
    /// ([`Queue::take_loss`]: a Redis server that came back empty); returns
    /// how many. Only one process of those sharing the queue takes a loss;
    /// if its re-push fails half-way it gives the loss back, and the next
    /// check (in any process) starts over.
    pub async fn recover_lost_queue(&self) -> Result<usize, crate::queue::QueueError> {
        if !self.inner.queue.take_loss().await? {
            return Ok(0);
        }
        match self.repush_pending().await {
            Ok(0) => {
                tracing::debug!("the queue's sentinel was missing; nothing was pending");
                Ok(0)
            }
            Ok(count) => {
                tracing::warn!(
                    count,
                    "the queue lost its jobs (a Redis server came back empty, or a new \
                     one); re-pushed every pending delivery"
                );
                Ok(count)
            }
            Err(error) => {
                if let Err(error) = self.inner.queue.give_back_loss().await {
                    tracing::warn!(%error, "could not mark the lost queue for another re-push");
                }
                Err(error)
            }
        }
    }

    /// Pushes a job for every delivery still pending (not leased, not
    /// finished; see [`deliveries::pending_after`]), [`REPUSH_BATCH`] at a
    /// time until none is left: one due now, a retry waiting for its
    /// backoff at its due time. Jobs that were not lost run twice at most,
    /// and the second finds its delivery claimed or finished.
    pub async fn repush_pending(&self) -> Result<usize, crate::queue::QueueError> {
        let now = Timestamp::now();
        let mut after = String::new();
        let mut count = 0;
        loop {
            let page = deliveries::pending_after(self.db(), now, &after, REPUSH_BATCH)
                .await
                .map_err(|e| crate::queue::QueueError::Other(e.into()))?;
            let Some((last, _)) = page.last() else {
                return Ok(count);
            };
            after.clone_from(last);
            let full = page.len() == usize::try_from(REPUSH_BATCH).unwrap_or(usize::MAX);
            count += page.len();
            let jobs = page
                .into_iter()
                .map(|(delivery_id, due)| (EmailJob { delivery_id }, Some(due.as_datetime())))
                .collect();
            self.inner.queue.push_many_at(jobs).await?;
            if !full {
                return Ok(count);
            }
        }
    }

    /// Runs the sweep every `interval` until `shutdown` resolves, and on a
    /// queue that can lose its jobs (Redis) checks every
    /// [`LOSS_CHECK_INTERVAL`] whether it did ([`Self::recover_lost_queue`]).
    pub async fn run_sweeper(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        let mut loss_checks = tokio::time::interval(LOSS_CHECK_INTERVAL);
        loss_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watch_losses = self.inner.queue.can_lose_jobs();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {
                    if let Err(error) = self.sweep().await {
                        tracing::warn!(%error, "outbox sweep failed");
                    }
                }
                _ = loss_checks.tick(), if watch_losses => {
                    // While Redis is away every check fails; the sweep's
                    // warning says so every `interval` already.
                    if let Err(error) = self.recover_lost_queue().await {
                        tracing::debug!(%error, "could not check the queue for lost jobs");
                    }
                }
            }
        }
    }
}

/// One claim batch: claims the submitted deliveries with their context in
/// one statement, has the service prepare them (their codes' hashes in one
/// more), and tells each job what became of its delivery.
async fn claim_and_prepare<S: MessageSource>(
    shared: Arc<Shared<S>>,
    ids: Vec<String>,
) -> Vec<Result<Claim, Arc<str>>> {
    let lease = shared.config.lease_seconds;
    let (db, claim, batch) = (&shared.db, &shared.claim, &ids);
    let claimed = retrying(|| async move {
        let now = Timestamp::now();
        let claimed = deliveries::claim_batch::<S::Context>(db, claim, batch, now, lease).await?;
        Ok((claimed, now))
    })
    .await;
    let (claimed, now) = match claimed {
        Ok(claimed) => claimed,
        Err(error) => return failed(&ids, &error),
    };
    crate::metrics::claim_batch(ids.len(), claimed.len());
    let mut answers: HashMap<String, Claim> = HashMap::with_capacity(ids.len());
    let mut live = Vec::with_capacity(claimed.len());
    for (delivery, context) in claimed {
        if delivery.not_after.is_some_and(|end| end <= now) {
            answers.insert(delivery.id.clone(), Claim::Expired(delivery));
        } else {
            live.push((delivery, context));
        }
    }
    for (delivery, prepared) in shared.source.prepare_batch(live).await {
        let claim = match prepared {
            Ok(prepared) => Claim::Ready(Box::new((delivery, prepared))),
            Err(error) => Claim::Unprepared(delivery, error),
        };
        answers.insert(claim_id(&claim).to_owned(), claim);
    }
    let claimed_ids: std::collections::HashSet<String> = answers.keys().cloned().collect();
    let unclaimed: Vec<String> = ids
        .iter()
        .filter(|id| !answers.contains_key(*id))
        .cloned()
        .collect();
    let statuses = if unclaimed.is_empty() {
        HashMap::new()
    } else {
        match deliveries::statuses_of(&shared.db, &unclaimed).await {
            Ok(statuses) => statuses,
            // The claimed ones must still be answered: they are ours now.
            Err(error) => {
                let why: Arc<str> = Arc::from(error.to_string());
                return ids
                    .iter()
                    .map(|id| answers.remove(id).ok_or_else(|| Arc::clone(&why)))
                    .collect();
            }
        }
    };
    ids.iter()
        .map(|id| {
            // An id submitted twice (a job pushed again by the sweep while
            // the first still runs) is claimed once: the first job gets it,
            // the other finds it `sending`.
            let status = statuses
                .get(id)
                .cloned()
                .or_else(|| claimed_ids.contains(id).then(|| "sending".to_owned()));
            Ok(answers.remove(id).unwrap_or(Claim::NotClaimed(status)))
        })
        .collect()
}

fn claim_id(claim: &Claim) -> &str {
    match claim {
        Claim::Ready(ready) => &ready.0.id,
        Claim::Unprepared(delivery, _) | Claim::Expired(delivery) => &delivery.id,
        Claim::NotClaimed(_) => "",
    }
}

fn failed<T>(ids: &[String], error: &sqlx::Error) -> Vec<Result<T, Arc<str>>> {
    let why: Arc<str> = Arc::from(error.to_string());
    ids.iter().map(|_| Err(Arc::clone(&why))).collect()
}

/// How long a worker's claim or record of a batch keeps trying while the
/// database is unavailable. A PostgreSQL restart closes every pooled
/// connection, and each fails the next statement sent on it. A failed
/// claim left its jobs to the outbox sweep (30 s and more); a failed record
/// left its rows `sending`, and the messages, already out, were sent again
/// once their lease ran out: the fault suite (`email2fa-bench faults`) saw
/// 23 messages of a 2 s restart arrive twice, most of them sent after it.
const DB_RETRY: Duration = Duration::from_secs(10);

/// The longest pause between two tries of [`retrying`].
const DB_RETRY_PAUSE_CAP: Duration = Duration::from_secs(1);

/// Runs `statement` until it succeeds, fails for another reason than an
/// unavailable database, or [`DB_RETRY`] has passed. Both statements it
/// serves are safe to run again: a claim only takes rows nobody holds,
/// and recording a send sets the same values twice.
async fn retrying<T, F, Fut>(mut statement: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + DB_RETRY;
    let mut pause = Duration::from_millis(50);
    loop {
        match statement().await {
            // A closed pool (the process is stopping) does not come back.
            Err(error)
                if email2fa_db::is_unavailable(&error)
                    && !matches!(error, sqlx::Error::PoolClosed)
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::debug!(%error, "the database is unavailable; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(DB_RETRY_PAUSE_CAP);
            }
            result => return result,
        }
    }
}

/// One batch of accepted sends, recorded in one statement.
async fn record_sent(db: Db, records: Vec<SentRecord>) -> Vec<Result<(), Arc<str>>> {
    let (db, batch) = (&db, &records);
    match retrying(|| deliveries::mark_sent_batch(db, batch)).await {
        Ok(()) => records.iter().map(|_| Ok(())).collect(),
        Err(error) => {
            let ids: Vec<String> = records.into_iter().map(|r| r.id).collect();
            failed(&ids, &error)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Runs `retrying` over a statement that fails with `errors` in turn,
    /// then succeeds; returns the result and how often it ran.
    async fn run(errors: Vec<sqlx::Error>) -> (Result<u8, sqlx::Error>, usize) {
        let errors = std::sync::Mutex::new(errors.into_iter());
        let calls = AtomicUsize::new(0);
        let result = retrying(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            let next = errors.lock().expect("lock").next();
            async move { next.map_or(Ok(7), Err) }
        })
        .await;
        (result, calls.load(Ordering::SeqCst))
    }

    fn gone() -> sqlx::Error {
        sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into())
    }

    #[tokio::test]
    async fn a_statement_that_fails_while_the_database_is_away_is_tried_again() {
        let (result, calls) = run(vec![gone(), gone()]).await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn a_failure_of_the_statement_itself_is_not_tried_again() {
        let (result, calls) = run(vec![sqlx::Error::RowNotFound]).await;
        assert!(matches!(result, Err(sqlx::Error::RowNotFound)));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn a_closed_pool_is_not_tried_again() {
        let (result, calls) = run(vec![sqlx::Error::PoolClosed]).await;
        assert!(matches!(result, Err(sqlx::Error::PoolClosed)));
        assert_eq!(calls, 1);
    }
}
