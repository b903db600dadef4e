//! Emails waiting for another attempt, and "retry now".
//!
//! A retrying email shows its attempt n of N, the last SMTP answer (the
//! recipient masked in it too), when the next attempt is due and the
//! provider with its SMTP host and port. "Retry now" makes it due at once
//! and pushes its job; the job already scheduled for later then finds the
//! delivery sent (or due again later) and does nothing, because every
//! attempt starts with a conditional claim of the row.

use std::collections::HashMap;

use serde::Serialize;

use email2fa_workers::dead_letters::replace_ignoring_case;
use email2fa_workers::queue::{EmailJob, Queue};
use email2fa_workers::retrying::{self, RetryingDelivery, RetryingFilter};

use super::{OpsError, decode_cursor, encode_cursor, mask_recipient};
use crate::events::FieldError;
use crate::store::AuditEvent;
use crate::store::{Store, Timestamp};

/// A retrying email as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RetryingView {
    /// The delivery ("retry now" and the detail view take its id).
    pub delivery_id: String,
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// The secondary auth provider.
    pub provider: String,
    /// Its SMTP server, `host:port`; `null` when the provider is gone.
    pub smtp: Option<String>,
    /// The email: `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: String,
    /// n of "attempt n of N".
    pub attempts: i32,
    /// N: after that many failures it is dead-lettered.
    pub max_attempts: i32,
    /// Its address, masked (`j***@example.com`).
    pub recipient: String,
    /// The last SMTP answer or connection error (the address masked).
    pub last_error: Option<String>,
    /// When the next attempt is due (RFC 3339).
    pub next_attempt_at: String,
    /// When the last attempt ended (RFC 3339).
    pub last_attempt_at: String,
    /// When the email was queued (RFC 3339).
    pub created_at: String,
}

impl RetryingView {
    /// The view of `d`, whose provider sends through `smtp`.
    fn new(d: RetryingDelivery, smtp: Option<String>) -> Self {
        let masked = mask_recipient(&d.recipient);
        Self {
            last_error: d
                .last_error
                .map(|e| replace_ignoring_case(&e, &d.recipient, &masked)),
            delivery_id: d.id,
            tenant_id: d.tenant_id,
            kind: d.kind,
            recipient: masked,
            attempts: d.attempts,
            max_attempts: d.max_attempts,
            next_attempt_at: d.next_attempt_at.to_rfc3339(),
            last_attempt_at: d.updated_at.to_rfc3339(),
            created_at: d.created_at.to_rfc3339(),
            provider: d.secondary_auth_provider_id,
            smtp,
        }
    }
}

/// The SMTP servers of secondary auth providers, each looked up once per
/// answer (a page holds a few providers at most).
pub struct SmtpServers<'a> {
    store: &'a Store,
    known: HashMap<(String, String), Option<String>>,
}

impl<'a> SmtpServers<'a> {
    /// An empty lookup over `store`.
    pub fn new(store: &'a Store) -> Self {
        Self {
            store,
            known: HashMap::new(),
        }
    }

    /// `host:port` of the provider, `None` when it is gone.
    pub async fn of(
        &mut self,
        tenant_id: &str,
        provider: &str,
    ) -> Result<Option<String>, OpsError> {
        let key = (tenant_id.to_string(), provider.to_string());
        if let Some(known) = self.known.get(&key) {
            return Ok(known.clone());
        }
        let server = self.store.smtp_server_of(tenant_id, provider).await?;
        self.known.insert(key, server.clone());
        Ok(server)
    }
}

/// One page of retrying emails.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RetryingPage {
    /// The next due first.
    pub retrying: Vec<RetryingView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One page of retrying emails, the next due first.
pub async fn list_retrying(
    store: &Store,
    mut filter: RetryingFilter,
    limit: i64,
    cursor: Option<&str>,
) -> Result<RetryingPage, OpsError> {
    super::check_limit(limit)?;
    if let Some(cursor) = cursor.filter(|c| !c.is_empty()) {
        filter.after = Some(decode_cursor(cursor).ok_or_else(|| {
            OpsError::Invalid(vec![FieldError::new(
                "cursor",
                "not a cursor this service gave out",
            )])
        })?);
    }
    let mut rows = retrying::list(store.db(), &filter, limit + 1).await?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(r.next_attempt_at, &r.id)))
        .flatten();
    let mut servers = SmtpServers::new(store);
    let mut retrying = Vec::with_capacity(rows.len());
    for row in rows {
        let smtp = servers
            .of(&row.tenant_id, &row.secondary_auth_provider_id)
            .await?;
        retrying.push(RetryingView::new(row, smtp));
    }
    Ok(RetryingPage {
        retrying,
        next_cursor,
    })
}

/// Makes retrying delivery `id` due now and queues its job.
///
/// When the queue refuses the job (Redis down) the row is due all the same
/// and the outbox sweep pushes it within its grace period, so the call
/// still succeeds (and logs the queue's error).
#[tracing::instrument(skip_all, fields(delivery.id = %id))]
pub async fn retry_now(store: &Store, queue: &Queue, id: &str) -> Result<(), OpsError> {
    if !super::is_plausible_id(id) {
        return Err(OpsError::DeliveryNotFound(id.to_string()));
    }
    let mut tx = store.begin().await?;
    let Some(tenant) = retrying::make_due(&mut tx, id, Timestamp::now()).await? else {
        drop(tx.rollback().await);
        return match email2fa_workers::deliveries::status_of(store.db(), id).await? {
            None => Err(OpsError::DeliveryNotFound(id.to_string())),
            Some(status) => Err(OpsError::NotRetrying(format!(
                "the delivery is {status}, not retrying: only an email waiting for its next \
                 attempt can be retried now"
            ))),
        };
    };
    let detail = serde_json::json!({"delivery_id": id});
    store
        .audit(
            &mut tx,
            &tenant,
            None,
            AuditEvent::DeliveryRetriedNow,
            detail,
        )
        .await?;
    crate::store::commit(tx).await?;
    let job = EmailJob {
        delivery_id: id.to_string(),
    };
    if let Err(error) = queue.push(job, None).await {
        tracing::warn!(%error, "could not queue the retry; the outbox sweep will");
    }
    queue.wake_workers();
    tracing::info!("retry made due now by an operator");
    Ok(())
}
