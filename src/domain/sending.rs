//! Starting a code send: the send limits, then a queued delivery that the
//! engine turns into an email with a freshly minted code.
//!
//! Limits (all settings): the user's lockout after consecutive failures, at
//! most N codes per user per window and M per recipient per window. They
//! hold across every process sharing the database because the counts are
//! read under a lock on the user and the recipient (PostgreSQL advisory
//! locks; SQLite's single writer), inside the transaction that inserts.

use email2fa_workers::deliveries::{NewDelivery, insert_delivery, new_delivery_id};

use super::{EventContext, EventError};
use crate::store::{Challenge, Timestamp};

/// A send that was queued.
#[derive(Debug, Clone)]
pub struct SendStarted {
    /// The delivery (also the job).
    pub delivery_id: String,
}

/// Checks the limits and queues a code email for `challenge`.
pub async fn queue_code(
    ctx: &mut EventContext<'_>,
    challenge: &Challenge,
    now: Timestamp,
) -> Result<SendStarted, EventError> {
    check_limits(ctx, &challenge.user_id, &challenge.email, now).await?;
    let delivery = NewDelivery {
        id: new_delivery_id(),
        tenant_id: ctx.tenant_id.to_string(),
        kind: if challenge.purpose == "enrollment" {
            "enrollment_code"
        } else {
            "login_code"
        },
        user_id: challenge.user_id.clone(),
        recipient: challenge.email.clone(),
        user_name: challenge.user_name.clone(),
        locale: challenge.locale.clone(),
        role: challenge.role.clone(),
        challenge_id: Some(challenge.id.clone()),
        secondary_auth_provider_id: challenge.secondary_auth_provider_id.clone(),
        max_attempts: ctx.config.delivery_max_attempts,
        not_after: Some(now.plus_seconds(i64::from(challenge.code_ttl_seconds))),
        resent_from: None,
    };
    insert_delivery(ctx.tx, &delivery, now)
        .await
        .map_err(crate::store::StoreError::from)?;
    ctx.deliveries.push(delivery.id.clone());
    Ok(SendStarted {
        delivery_id: delivery.id,
    })
}

/// Seconds from `now` until `at` (at least 1), for `Retry-After`.
pub fn seconds_until(at: Timestamp, now: Timestamp) -> u64 {
    u64::try_from((at.unix_seconds() - now.unix_seconds()).max(1)).unwrap_or(1)
}

async fn check_limits(
    ctx: &mut EventContext<'_>,
    user_id: &str,
    recipient: &str,
    now: Timestamp,
) -> Result<(), EventError> {
    let limits = &ctx.config.limits;
    let store = ctx.store;
    store
        .lock_for_limits(
            ctx.tx,
            &format!("user:{}:{user_id}", ctx.tenant_id),
            &format!("rcpt:{}:{recipient}", ctx.tenant_id),
        )
        .await?;
    let counts = store
        .send_limit_counts(
            ctx.tx,
            ctx.tenant_id,
            user_id,
            recipient,
            now.plus_seconds(-limits.user_window_seconds),
            now.plus_seconds(-limits.recipient_window_seconds),
        )
        .await?;
    let failures = counts.failures;
    if failures >= limits.lockout_failures
        && let Some(last) = counts.last_failure_at
    {
        let until = last.plus_seconds(limits.lockout_seconds);
        if until > now {
            return Err(EventError::RateLimited {
                retry_after: seconds_until(until, now),
                detail: format!(
                    "{failures} wrong codes in a row: new codes are paused for this user"
                ),
            });
        }
    }
    if counts.user_sends >= limits.codes_per_user {
        let free = counts
            .oldest_user_send
            .unwrap_or(now)
            .plus_seconds(limits.user_window_seconds);
        return Err(EventError::RateLimited {
            retry_after: seconds_until(free, now),
            detail: format!(
                "at most {} codes per user per {} minutes",
                limits.codes_per_user,
                limits.user_window_seconds / 60
            ),
        });
    }
    if counts.recipient_sends >= limits.codes_per_recipient {
        let free = counts
            .oldest_recipient_send
            .unwrap_or(now)
            .plus_seconds(limits.recipient_window_seconds);
        return Err(EventError::RateLimited {
            retry_after: seconds_until(free, now),
            detail: format!(
                "at most {} codes per address per {} minutes",
                limits.codes_per_recipient,
                limits.recipient_window_seconds / 60
            ),
        });
    }
    Ok(())
}
