//! `enrollment.verify` and `login.verify`: one code, checked in constant
//! time against its keyed hash, good once.
//!
//! Races are settled by the store's conditional updates: of many concurrent
//! verifications of the right code exactly one moves the challenge out of
//! `pending`; the others see `already_used`.

use serde::Serialize;

use super::{EventContext, EventError};
use crate::crypto::new_trust_token;
use crate::events::Verify;
use crate::store::{Challenge, Factor, Timestamp, TrustedDevice};

/// The answer of the two verify events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyAnswer {
    /// `verified`, `invalid_code`, `expired`, `locked` or `already_used`.
    pub outcome: &'static str,
    /// With `invalid_code` and `locked`: wrong tries left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_remaining: Option<i32>,
    /// With a verified enrollment: the new factor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<Factor>,
    /// With a verified login and `trust_device: true`: the token (shown once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_token: Option<String>,
    /// When the trust ends (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_expires_at: Option<String>,
}

impl VerifyAnswer {
    fn outcome(outcome: &'static str, attempts_remaining: Option<i32>) -> Self {
        Self {
            outcome,
            attempts_remaining,
            factor: None,
            trust_token: None,
            trust_expires_at: None,
        }
    }
}

/// Checks a code typed on the enrollment (`login = false`) or login screen.
pub async fn verify(
    ctx: &mut EventContext<'_>,
    event: Verify,
    login: bool,
) -> Result<VerifyAnswer, EventError> {
    event.validate(login)?;
    let purpose = if login { "login" } else { "enrollment" };
    let now = Timestamp::now();
    let challenge = ctx
        .store
        .challenge_in(ctx.tx, ctx.tenant_id, &event.challenge_id)
        .await?
        .filter(|c| c.purpose == purpose)
        .ok_or(EventError::ChallengeNotFound)?;
    match challenge.status.as_str() {
        "pending" => {}
        "verified" => return Ok(VerifyAnswer::outcome("already_used", None)),
        "locked" => return Ok(VerifyAnswer::outcome("locked", Some(0))),
        _ => return Ok(VerifyAnswer::outcome("expired", None)),
    }
    if challenge.code_expires_at.is_some_and(|at| at <= now) {
        ctx.store
            .close_challenge(ctx.tx, ctx.tenant_id, &challenge.id, "expired", now)
            .await?;
        return Ok(VerifyAnswer::outcome("expired", None));
    }
    // Users paste codes with spaces or dashes; those never count.
    let typed: String = event
        .code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let matches = challenge.code_hash.as_deref().is_some_and(|stored| {
        ctx.store
            .hasher()
            .code_matches(&challenge.id, &typed, stored)
    });
    if !matches {
        return wrong_try(ctx, &challenge, now).await;
    }
    // Close first: of racing verifications only the winner goes on, so an
    // enrollment creates exactly one factor.
    let won = ctx
        .store
        .close_challenge(ctx.tx, ctx.tenant_id, &challenge.id, "verified", now)
        .await?;
    if !won {
        return Ok(VerifyAnswer::outcome("already_used", None));
    }
    let factor = if login {
        None
    } else {
        let factor = enroll(ctx, &challenge, now).await?;
        ctx.store
            .set_challenge_factor(ctx.tx, ctx.tenant_id, &challenge.id, &factor.id)
            .await?;
        Some(factor)
    };
    ctx.store
        .reset_failures(ctx.tx, ctx.tenant_id, &challenge.user_id)
        .await?;
    ctx.store
        .audit(
            ctx.tx,
            ctx.tenant_id,
            Some(&challenge.user_id),
            "verified",
            serde_json::json!({"challenge_id": challenge.id, "purpose": purpose}),
        )
        .await?;
    let mut answer = VerifyAnswer::outcome("verified", None);
    answer.factor = factor;
    if login && event.trust_device == Some(true) {
        trust_device(ctx, &challenge, event.device_label, now, &mut answer).await?;
    }
    Ok(answer)
}

async fn wrong_try(
    ctx: &mut EventContext<'_>,
    challenge: &Challenge,
    now: Timestamp,
) -> Result<VerifyAnswer, EventError> {
    let store = ctx.store;
    let Some(result) = store
        .record_wrong_try(ctx.tx, ctx.tenant_id, &challenge.id, now)
        .await?
    else {
        // Closed by a concurrent call in between: report what it became.
        let status = store
            .challenge_in(ctx.tx, ctx.tenant_id, &challenge.id)
            .await?
            .map(|c| c.status)
            .unwrap_or_default();
        return Ok(match status.as_str() {
            "verified" => VerifyAnswer::outcome("already_used", None),
            "locked" => VerifyAnswer::outcome("locked", Some(0)),
            _ => VerifyAnswer::outcome("expired", None),
        });
    };
    store
        .record_failure(ctx.tx, ctx.tenant_id, &challenge.user_id, now)
        .await?;
    let event = if result.locked { "locked" } else { "failed" };
    store
        .audit(
            ctx.tx,
            ctx.tenant_id,
            Some(&challenge.user_id),
            event,
            serde_json::json!({"challenge_id": challenge.id, "attempts": result.attempts}),
        )
        .await?;
    let remaining = (challenge.max_attempts - result.attempts).max(0);
    Ok(if result.locked {
        VerifyAnswer::outcome("locked", Some(0))
    } else {
        VerifyAnswer::outcome("invalid_code", Some(remaining))
    })
}

async fn enroll(
    ctx: &mut EventContext<'_>,
    challenge: &Challenge,
    now: Timestamp,
) -> Result<Factor, EventError> {
    let existing = ctx
        .store
        .user_factors(ctx.tx, ctx.tenant_id, &challenge.user_id)
        .await?;
    if let Some(factor) = existing.into_iter().find(|f| f.email == challenge.email) {
        return Ok(factor);
    }
    let factor = Factor {
        tenant_id: ctx.tenant_id.to_string(),
        id: ulid::Ulid::generate().to_string(),
        user_id: challenge.user_id.clone(),
        role: challenge.role.clone(),
        email: challenge.email.clone(),
        secondary_auth_provider_id: challenge.secondary_auth_provider_id.clone(),
        created_at: now,
    };
    ctx.store.insert_factor(ctx.tx, &factor).await?;
    ctx.store
        .audit(
            ctx.tx,
            ctx.tenant_id,
            Some(&challenge.user_id),
            "enrolled",
            serde_json::json!({"factor_id": factor.id, "challenge_id": challenge.id}),
        )
        .await?;
    Ok(factor)
}

async fn trust_device(
    ctx: &mut EventContext<'_>,
    challenge: &Challenge,
    label: Option<String>,
    now: Timestamp,
    answer: &mut VerifyAnswer,
) -> Result<(), EventError> {
    let settings = ctx.store.settings_in(ctx.tx, ctx.tenant_id).await?;
    if settings.trust_device_days <= 0 {
        return Ok(());
    }
    let token = new_trust_token();
    let device = TrustedDevice {
        tenant_id: ctx.tenant_id.to_string(),
        id: ulid::Ulid::generate().to_string(),
        user_id: challenge.user_id.clone(),
        token_hash: ctx.store.hasher().token_hash(&token),
        label,
        created_at: now,
        last_used_at: None,
        expires_at: now.plus_seconds(i64::from(settings.trust_device_days) * 86_400),
        revoked_at: None,
    };
    ctx.store.insert_trusted_device(ctx.tx, &device).await?;
    ctx.store
        .audit(
            ctx.tx,
            ctx.tenant_id,
            Some(&challenge.user_id),
            "device_trusted",
            serde_json::json!({"device_id": device.id}),
        )
        .await?;
    answer.trust_token = Some(token);
    answer.trust_expires_at = Some(device.expires_at.to_rfc3339());
    Ok(())
}
