//! The delivery engine: one attempt per job — claim the delivery, let the
//! service prepare it (for a code email: mint the code now), render, send,
//! and write the outcome back — plus the outbox sweep.
//!
//! Retries are ours, not apalis's: a transient failure schedules the next
//! attempt as a new job with `run_at` from an exponential backoff with jitter
//! (backon), never past the moment the email stops being useful; a permanent
//! failure, or the last attempt, writes a dead letter. The job handler always
//! returns normally once it has recorded what happened.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lettre::message::Mailbox;

use crate::db::{Db, Timestamp};
use crate::dead_letters::replace_ignoring_case;
use crate::deliveries::{self, Delivery};
use crate::queue::{EmailJob, Queue};
use crate::render::{MessageKind, Renderer, TemplateContext, build_message};
use crate::transport::{SendError, SmtpProvider, Transports};

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
#[derive(Debug)]
pub enum PrepareError {
    /// Nothing to send any more: superseded by a newer send, or the
    /// challenge closed. The delivery is discarded, not dead.
    Skip(String),
    /// Can never be sent (its provider was deleted, a bad address).
    Permanent(String),
    /// Try again later (the database is briefly unavailable).
    Transient(String),
}

/// What the engine asks of the service: it owns challenges, providers and
/// the master key, so it prepares each message.
pub trait MessageSource: Send + Sync + 'static {
    /// Loads what the delivery needs and, for a code email, mints its code
    /// (storing only the code's keyed hash with the challenge).
    fn prepare(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Prepared, PrepareError>> + Send;
}

/// Retry policy and leases.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// How long a claimed delivery is ours before a sweep may retry it.
    pub lease_seconds: i64,
    /// How long a due delivery may wait before the sweep re-pushes it.
    pub sweep_grace_seconds: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(60),
            lease_seconds: 120,
            sweep_grace_seconds: 30,
        }
    }
}

/// A job whose delivery row is missing is only waited for while it is this
/// young (older: its webhook's transaction was rolled back).
const INVISIBLE_GRACE: Duration = Duration::from_secs(30);

/// How long a worker waits for a young job's row to become visible.
const VISIBILITY_WAIT: Duration = Duration::from_secs(2);

/// The engine. Cheap to clone.
pub struct Engine<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S> {
    db: Db,
    queue: Queue,
    source: S,
    renderer: Renderer,
    transports: Transports,
    config: EngineConfig,
    unhealthy: Mutex<HashMap<String, bool>>,
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
    pub fn new(
        db: Db,
        queue: Queue,
        source: S,
        renderer: Renderer,
        transports: Transports,
        config: EngineConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                queue,
                source,
                renderer,
                transports,
                config,
                unhealthy: Mutex::default(),
            }),
        }
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
    pub async fn attempt(&self, job: EmailJob) -> Result<Outcome, sqlx::Error> {
        let inner = &self.inner;
        let Some(delivery) = self.claim_when_visible(&job).await? else {
            return Ok(Outcome::Skipped);
        };
        let now = Timestamp::now();
        if delivery.not_after.is_some_and(|end| end <= now) {
            deliveries::mark_finished(
                &inner.db,
                &delivery.id,
                "expired",
                "its code could no longer be used",
                now,
            )
            .await?;
            return Ok(Outcome::Finished("expired"));
        }
        let prepared = match inner.source.prepare(&delivery).await {
            Ok(prepared) => prepared,
            Err(PrepareError::Skip(why)) => {
                deliveries::mark_finished(&inner.db, &delivery.id, "discarded", &why, now).await?;
                return Ok(Outcome::Finished("discarded"));
            }
            Err(PrepareError::Permanent(why)) => {
                return self.dead(&delivery, "permanent", &why).await;
            }
            Err(PrepareError::Transient(why)) => return self.retry(&delivery, &why, false).await,
        };
        let message = match self.compose(&delivery, &prepared) {
            Ok(message) => message,
            Err(why) => return self.dead(&delivery, "render", &why).await,
        };
        let (message, message_id) = message;
        let started = std::time::Instant::now();
        let result = inner.transports.send(&prepared.provider, message).await;
        crate::metrics::send(&result, started.elapsed(), delivery.created_at);
        match result {
            Ok(reply) => {
                self.set_health(&prepared.provider, true);
                deliveries::mark_sent(
                    &inner.db,
                    &delivery.id,
                    &reply,
                    &message_id,
                    Timestamp::now(),
                )
                .await?;
                tracing::info!(kind = %delivery.kind, attempts = delivery.attempts, "email sent");
                Ok(Outcome::Sent)
            }
            Err(SendError::Transient(why)) => self.retry(&delivery, &why, false).await,
            Err(SendError::AuthFailed(why)) => {
                self.set_health(&prepared.provider, false);
                self.retry(&delivery, &why, true).await
            }
            Err(SendError::Permanent(why)) => self.dead(&delivery, "rejected", &why).await,
        }
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
        let to: Mailbox = delivery
            .recipient
            .parse()
            .map_err(|_| "the recipient is not a valid address".to_string())?;
        build_message(&prepared.from, &to, &rendered, &rendered.locale).map_err(|e| e.to_string())
    }

    /// Claims the job's delivery. With Redis the ingress pushes a job just
    /// before its transaction commits, so a fast worker can see the job
    /// before its row: a young job whose row is missing waits for it (up to
    /// [`VISIBILITY_WAIT`]), then leaves it to the outbox sweep.
    async fn claim_when_visible(&self, job: &EmailJob) -> Result<Option<Delivery>, sqlx::Error> {
        let inner = &self.inner;
        let waited_since = std::time::Instant::now();
        loop {
            let now = Timestamp::now();
            if let Some(delivery) =
                deliveries::claim(&inner.db, &job.delivery_id, now, inner.config.lease_seconds)
                    .await?
            {
                return Ok(Some(delivery));
            }
            match deliveries::status_of(&inner.db, &job.delivery_id)
                .await?
                .as_deref()
            {
                // Committed between our claim and this read: claim again.
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
        let config = &self.inner.config;
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
        provider_broken: bool,
    ) -> Result<Outcome, sqlx::Error> {
        if delivery.attempts >= delivery.max_attempts {
            return self.dead(delivery, "attempts_exhausted", why).await;
        }
        let delay = if provider_broken {
            // Credentials fail for every message alike: wait the longest.
            self.inner.config.backoff_cap
        } else {
            self.delay_for(delivery.attempts)
        };
        let now = Timestamp::now();
        let next = Timestamp::from(
            now.as_datetime() + chrono::Duration::from_std(delay).unwrap_or_default(),
        );
        if delivery.not_after.is_some_and(|end| next >= end) {
            deliveries::mark_finished(&self.inner.db, &delivery.id, "expired", why, now).await?;
            return Ok(Outcome::Finished("expired"));
        }
        deliveries::mark_retrying(&self.inner.db, &delivery.id, why, next, now).await?;
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
        reason: &str,
        why: &str,
    ) -> Result<Outcome, sqlx::Error> {
        deliveries::mark_dead(&self.inner.db, delivery, reason, why, Timestamp::now()).await?;
        tracing::warn!(kind = %delivery.kind, attempts = delivery.attempts, reason, error = %replace_ignoring_case(why, &delivery.recipient, "<recipient>"), "email dead-lettered");
        Ok(Outcome::Dead)
    }

    fn set_health(&self, provider: &SmtpProvider, healthy: bool) {
        let mut map = self
            .inner
            .unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let was_healthy = !map.get(&provider.key).copied().unwrap_or(false);
        if healthy && !was_healthy {
            map.remove(&provider.key);
            tracing::info!(provider = %provider.key, "SMTP provider accepts our credentials again");
        } else if !healthy && was_healthy {
            map.insert(provider.key.clone(), true);
            tracing::error!(provider = %provider.key, host = %provider.host,
                "SMTP provider rejects our credentials (535): marked unhealthy; fix its username/password");
        }
        crate::metrics::unhealthy_providers(map.len());
    }

    /// Providers currently rejecting our credentials.
    pub fn unhealthy_providers(&self) -> Vec<String> {
        let map = self
            .inner
            .unhealthy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    /// Re-pushes deliveries the queue seems to have lost; returns how many.
    pub async fn sweep(&self) -> Result<usize, crate::queue::QueueError> {
        self.sweep_with_grace(self.inner.config.sweep_grace_seconds)
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
        let ids = deliveries::overdue(&self.inner.db, now, due_before, 500)
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

    /// Runs the sweep every `interval` until `shutdown` resolves.
    pub async fn run_sweeper(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {
                    if let Err(error) = self.sweep().await {
                        tracing::warn!(%error, "outbox sweep failed");
                    }
                }
            }
        }
    }
}
