//! Resending and discarding dead letters.
//!
//! A resend is a new delivery (`resent_from` = the dead one), so the dead
//! delivery's history stays as it was. For a code email the challenge must
//! still be pending and still point at the dead delivery; it is then pointed
//! at the new one ([`Store::start_new_send`]), so the worker mints a fresh
//! code with a fresh expiry when it sends, and every earlier code stops
//! working. An operator's resend does not count against the user's send
//! limits: the failed sends already did, and the user did not ask again.
//!
//! Each letter is resolved by one conditional update inside the same
//! transaction as the rest, so concurrent operators cannot resend it twice,
//! and a refusal rolls everything back (the letter stays listed).

use serde::Serialize;

use email2fa_workers::dead_letters::{self, DeadLetterFilter, DeadLetterReason};
use email2fa_workers::deliveries::{Delivery, NewDelivery, insert_delivery, new_delivery_id};
use email2fa_workers::queue::{EmailJob, Queue};

use super::OpsError;
use crate::store::AuditEvent;
use crate::store::{Store, Timestamp, Tx};

/// Queues dead letter `id` again; returns the new delivery's id.
#[tracing::instrument(skip_all, fields(dead_letter.id = %id))]
pub async fn resend(store: &Store, queue: &Queue, id: &str) -> Result<String, OpsError> {
    if !super::is_plausible_id(id) {
        return Err(OpsError::NotFound(id.to_string()));
    }
    let mut tx = store.begin().await?;
    match resend_in(store, &mut tx, id, Timestamp::now()).await {
        Ok(delivery_id) => {
            commit_and_push(queue, tx, &delivery_id).await?;
            tracing::info!(delivery.id = %delivery_id, "dead letter resent");
            Ok(delivery_id)
        }
        Err(error) => {
            drop(tx.rollback().await);
            Err(error)
        }
    }
}

async fn resend_in(
    store: &Store,
    tx: &mut Tx,
    id: &str,
    now: Timestamp,
) -> Result<String, OpsError> {
    let letter = dead_letters::resolve(tx, id, "resent", now)
        .await?
        .ok_or_else(|| OpsError::NotFound(id.to_string()))?;
    let old = dead_letters::delivery_in(tx, &letter.delivery_id)
        .await?
        .ok_or_else(|| OpsError::NotFound(id.to_string()))?;
    // The challenge changes under its user's lock, like every hot webhook
    // of that user (see `domain::keys`).
    let user_key = crate::domain::keys::user_key(&old.tenant_id, &old.user_id);
    store.lock_users(tx, &[user_key]).await?;
    let new_id = new_delivery_id();
    let not_after = match &old.challenge_id {
        Some(challenge_id) => Some(reopen(store, tx, &old, challenge_id, &new_id, now).await?),
        None => None,
    };
    let delivery = NewDelivery {
        id: new_id.clone(),
        tenant_id: old.tenant_id.clone(),
        kind: kind_name(&old.kind),
        user_id: old.user_id.clone(),
        recipient: old.recipient.clone(),
        user_name: old.user_name.clone(),
        locale: old.locale.clone(),
        role: old.role.clone(),
        challenge_id: old.challenge_id.clone(),
        secondary_auth_provider_id: old.secondary_auth_provider_id.clone(),
        max_attempts: old.max_attempts,
        not_after,
        resent_from: Some(old.id.clone()),
    };
    insert_delivery(tx, &delivery, now).await?;
    dead_letters::set_dead_delivery_status(tx, &old.id, "resent", now).await?;
    let detail = serde_json::json!({"dead_letter_id": letter.id, "delivery_id": old.id,
        "new_delivery_id": new_id, "kind": old.kind});
    store
        .audit(
            tx,
            &old.tenant_id,
            Some(&old.user_id),
            AuditEvent::DeadLetterResent,
            detail,
        )
        .await?;
    Ok(new_id)
}

/// Points the challenge of a dead code email at its resend and returns the
/// resend's `not_after`; refuses when a new code would be useless.
async fn reopen(
    store: &Store,
    tx: &mut Tx,
    old: &Delivery,
    challenge_id: &str,
    new_id: &str,
    now: Timestamp,
) -> Result<Timestamp, OpsError> {
    let closed = |why: String| OpsError::ChallengeClosed(why);
    let challenge = store
        .challenge_in(tx, &old.tenant_id, challenge_id)
        .await?
        .ok_or_else(|| closed("the challenge no longer exists".into()))?;
    if challenge.status != "pending" {
        return Err(closed(format!("the challenge is {}", challenge.status)));
    }
    if challenge.current_delivery_id.as_deref() != Some(old.id.as_str()) {
        return Err(closed(
            "the challenge was replaced by a newer send (\"Send New Code\")".into(),
        ));
    }
    let cooldown = store
        .settings_in(tx, &old.tenant_id)
        .await?
        .resend_cooldown_seconds;
    let resend_after = now.plus_seconds(i64::from(cooldown));
    let started = store
        .start_new_send(tx, &old.tenant_id, challenge_id, new_id, resend_after, now)
        .await?;
    if !started {
        return Err(closed("the challenge is no longer pending".into()));
    }
    Ok(now.plus_seconds(i64::from(challenge.code_ttl_seconds)))
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "enrollment_code" => "enrollment_code",
        "login_code" => "login_code",
        _ => "factor_removed",
    }
}

/// Discards dead letter `id`: resolved as `discarded`, its delivery too.
#[tracing::instrument(skip_all, fields(dead_letter.id = %id))]
pub async fn discard(store: &Store, id: &str) -> Result<(), OpsError> {
    if !super::is_plausible_id(id) {
        return Err(OpsError::NotFound(id.to_string()));
    }
    let now = Timestamp::now();
    let mut tx = store.begin().await?;
    let Some(letter) = dead_letters::resolve(&mut tx, id, "discarded", now).await? else {
        drop(tx.rollback().await);
        return Err(OpsError::NotFound(id.to_string()));
    };
    dead_letters::set_dead_delivery_status(&mut tx, &letter.delivery_id, "discarded", now).await?;
    let detail = serde_json::json!({"dead_letter_id": letter.id, "delivery_id": letter.delivery_id,
        "kind": letter.kind});
    store
        .audit(
            &mut tx,
            &letter.tenant_id,
            None,
            AuditEvent::DeadLetterDiscarded,
            detail,
        )
        .await?;
    crate::store::commit(tx).await?;
    tracing::info!("dead letter discarded");
    Ok(())
}

/// A letter a bulk resend queued again.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Resent {
    /// The dead letter.
    pub id: String,
    /// Its new delivery.
    pub delivery_id: String,
}

/// A letter a bulk resend left alone, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Refused {
    /// The dead letter (still listed).
    pub id: String,
    /// `challenge_closed` or `dead_letter_not_found` (resolved meanwhile).
    pub code: &'static str,
    /// In words.
    pub detail: String,
}

/// The answer of a bulk resend.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct BulkAnswer {
    /// Queued again, newest letter first.
    pub resent: Vec<Resent>,
    /// Left alone (e.g. their challenge closed meanwhile).
    pub refused: Vec<Refused>,
    /// Matching letters SMTP rejected for good (`rejected`, a 5xx answer)
    /// that were left out because `include_permanent` was not set: they
    /// would come straight back.
    pub left_out_permanent: i64,
}

/// Most letters one bulk resend looks at.
const BULK_MAX: i64 = 10_000;

/// Resends every unresolved letter matching `filter`, each in its own
/// transaction; refusals are reported, not fatal. Letters SMTP rejected for
/// good (`rejected`) are left out (and counted) unless `include_permanent`.
/// A database or queue outage stops the run with an error (what was resent
/// stays resent, and running it again carries on).
pub async fn resend_matching(
    store: &Store,
    queue: &Queue,
    filter: &DeadLetterFilter,
    include_permanent: bool,
) -> Result<BulkAnswer, OpsError> {
    let mut filter = filter.clone();
    let mut answer = BulkAnswer::default();
    if !include_permanent {
        let rejected = DeadLetterReason::Rejected.as_str();
        answer.left_out_permanent = match filter.reason.as_deref() {
            Some(reason) if reason != rejected => 0,
            _ => dead_letters::count_matching(store.db(), &filter).await?.1,
        };
        filter.except_reason = Some(rejected.to_string());
    }
    let letters = dead_letters::list_unresolved(store.db(), &filter, BULK_MAX).await?;
    for letter in letters {
        match resend(store, queue, &letter.id).await {
            Ok(delivery_id) => answer.resent.push(Resent {
                id: letter.id,
                delivery_id,
            }),
            Err(error @ (OpsError::ChallengeClosed(_) | OpsError::NotFound(_))) => {
                let code = match error {
                    OpsError::ChallengeClosed(_) => "challenge_closed",
                    _ => "dead_letter_not_found",
                };
                answer.refused.push(Refused {
                    id: letter.id,
                    code,
                    detail: error.to_string(),
                });
            }
            Err(error) => return Err(error),
        }
    }
    Ok(answer)
}

/// The answer of a bulk discard.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct BulkDiscarded {
    /// The letters discarded, newest first.
    pub discarded: Vec<String>,
}

/// Discards every unresolved letter matching `filter` (at most 10,000 per
/// call), each in its own transaction with its audit event; a letter
/// resolved meanwhile by someone else is skipped.
pub async fn discard_matching(
    store: &Store,
    filter: &DeadLetterFilter,
) -> Result<BulkDiscarded, OpsError> {
    let letters = dead_letters::list_unresolved(store.db(), filter, BULK_MAX).await?;
    let mut answer = BulkDiscarded::default();
    for letter in letters {
        match discard(store, &letter.id).await {
            Ok(()) => answer.discarded.push(letter.id),
            Err(OpsError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(answer)
}

/// Pushes the job with the transaction and commits, by the ingress's rule
/// ([`Queue::push_with`]): with the database as the queue they commit
/// together; with Redis the push comes first, so that an outage refuses the
/// call with nothing written.
async fn commit_and_push(queue: &Queue, mut tx: Tx, delivery_id: &str) -> Result<(), OpsError> {
    let job = EmailJob {
        delivery_id: delivery_id.to_string(),
    };
    if let Err(error) = queue.push_with(&mut tx, vec![job]).await {
        drop(tx.rollback().await);
        return Err(error.into());
    }
    crate::store::commit(tx).await?;
    queue.wake_workers();
    Ok(())
}
