//! `enrollment.started` ("Add" → "Send Code") and `challenge.resend`
//! ("Send New Code"), and opening a challenge, which login shares.

use serde::Serialize;

use super::sending::{queue_code, seconds_until};
use super::{EventContext, EventError};
use crate::events::{ChallengeResend, EnrollmentStarted, FieldError, Role, User};
use crate::store::{Challenge, TenantSettings, Timestamp};

/// The answer of `enrollment.started` and `challenge.resend` (and the
/// challenge fields of `login.started`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChallengeAnswer {
    /// The challenge to verify against.
    pub challenge_id: String,
    /// The queued email.
    pub delivery_id: String,
    /// The code's lifetime, counted from its send.
    pub code_ttl_seconds: i32,
    /// From when "Send New Code" is accepted (RFC 3339).
    pub resend_after: String,
}

/// Whether the role's "Allowed" toggle is Active.
pub fn role_allowed(settings: &TenantSettings, role: Role) -> bool {
    match role {
        Role::Admin => settings.admin_2fa_allowed,
        Role::Customer => settings.customer_2fa_allowed,
    }
}

/// Opens a pending challenge (superseding the user's earlier pending one of
/// the same purpose) and queues its first code.
pub async fn open_challenge(
    ctx: &mut EventContext<'_>,
    purpose: &str,
    user: &User,
    email: &str,
    provider_id: &str,
    settings: &TenantSettings,
) -> Result<ChallengeAnswer, EventError> {
    let now = Timestamp::now();
    ctx.store
        .supersede_pending(ctx.tx, ctx.tenant_id, &user.id, purpose, now)
        .await?;
    let mut challenge = Challenge {
        tenant_id: ctx.tenant_id.to_string(),
        id: ulid::Ulid::generate().to_string(),
        purpose: purpose.to_string(),
        user_id: user.id.clone(),
        role: user.role.as_str().to_string(),
        email: email.to_string(),
        user_name: user.name.clone(),
        locale: user.locale.clone(),
        secondary_auth_provider_id: provider_id.to_string(),
        status: "pending".into(),
        attempts: 0,
        max_attempts: settings.max_attempts,
        code_length: settings.code_length,
        code_ttl_seconds: settings.code_ttl_seconds,
        code_hash: None,
        code_expires_at: None,
        code_delivery_id: None,
        current_delivery_id: None,
        resend_after: now.plus_seconds(i64::from(settings.resend_cooldown_seconds)),
        factor_id: None,
        created_at: now,
        updated_at: now,
        closed_at: None,
    };
    let send = queue_code(ctx, &challenge, now).await?;
    challenge.current_delivery_id = Some(send.delivery_id.clone());
    ctx.store.insert_challenge(ctx.tx, &challenge).await?;
    ctx.store
        .audit(
            ctx.tx,
            ctx.tenant_id,
            Some(&user.id),
            "code_sent",
            serde_json::json!({"challenge_id": challenge.id, "delivery_id": send.delivery_id, "purpose": purpose}),
        )
        .await?;
    Ok(ChallengeAnswer {
        challenge_id: challenge.id,
        delivery_id: send.delivery_id,
        code_ttl_seconds: challenge.code_ttl_seconds,
        resend_after: challenge.resend_after.to_rfc3339(),
    })
}

/// "Add" → "Send Code".
pub async fn started(
    ctx: &mut EventContext<'_>,
    event: EnrollmentStarted,
) -> Result<ChallengeAnswer, EventError> {
    event.validate()?;
    let settings = ctx.store.settings_in(ctx.tx, ctx.tenant_id).await?;
    if !role_allowed(&settings, event.user.role) {
        return Err(EventError::NotAllowed(format!(
            "2FA is Inactive for {} users (the {} \"Allowed\" toggle)",
            event.user.role.as_str(),
            if event.user.role == Role::Admin {
                "Admin"
            } else {
                "Customer"
            }
        )));
    }
    let factors = ctx
        .store
        .user_factors(ctx.tx, ctx.tenant_id, &event.user.id)
        .await?;
    if !factors.is_empty() {
        return Err(EventError::AlreadyEnrolled);
    }
    let provider = ctx
        .store
        .secondary_auth_provider_in(
            ctx.tx,
            ctx.tenant_id,
            event.secondary_auth_provider_id.as_deref(),
        )
        .await?;
    let provider = match (provider, &event.secondary_auth_provider_id) {
        (Some(provider), _) => provider,
        (None, Some(id)) => {
            return Err(EventError::Invalid(vec![FieldError::new(
                "secondary_auth_provider_id",
                format!("no secondary auth provider {id:?}"),
            )]));
        }
        (None, None) => return Err(no_provider()),
    };
    let email = event.address().to_string();
    open_challenge(
        ctx,
        "enrollment",
        &event.user,
        &email,
        &provider.id,
        &settings,
    )
    .await
}

/// The 409 for a tenant without a secondary auth provider.
pub fn no_provider() -> EventError {
    EventError::NoProvider(
        "no secondary authentication provider is configured: send service_provider.upserted and secondary_auth_provider.upserted first".into(),
    )
}

/// "Send New Code": a new code, every earlier one stops working, the
/// wrong-try counter carries on.
pub async fn resend(
    ctx: &mut EventContext<'_>,
    event: ChallengeResend,
) -> Result<ChallengeAnswer, EventError> {
    event.validate()?;
    let now = Timestamp::now();
    let challenge = ctx
        .store
        .challenge_in(ctx.tx, ctx.tenant_id, &event.challenge_id)
        .await?
        .ok_or(EventError::ChallengeNotFound)?;
    if challenge.status != "pending" {
        return Err(EventError::ChallengeClosed(challenge.status));
    }
    if challenge.resend_after > now {
        return Err(EventError::RateLimited {
            retry_after: seconds_until(challenge.resend_after, now),
            detail: "a new code can be sent once the resend cooldown has passed".into(),
        });
    }
    let send = queue_code(ctx, &challenge, now).await?;
    let settings = ctx.store.settings_in(ctx.tx, ctx.tenant_id).await?;
    let resend_after = now.plus_seconds(i64::from(settings.resend_cooldown_seconds));
    ctx.store
        .start_new_send(
            ctx.tx,
            ctx.tenant_id,
            &challenge.id,
            &send.delivery_id,
            resend_after,
            now,
        )
        .await?;
    ctx.store
        .audit(
            ctx.tx,
            ctx.tenant_id,
            Some(&challenge.user_id),
            "code_sent",
            serde_json::json!({"challenge_id": challenge.id, "delivery_id": send.delivery_id, "purpose": challenge.purpose, "resend": true}),
        )
        .await?;
    Ok(ChallengeAnswer {
        challenge_id: challenge.id,
        delivery_id: send.delivery_id,
        code_ttl_seconds: challenge.code_ttl_seconds,
        resend_after: resend_after.to_rfc3339(),
    })
}
