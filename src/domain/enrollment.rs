//! `enrollment.started` ("Add" → "Send Code") and `challenge.resend`
//! ("Send New Code"), and opening a challenge, which login shares.

use serde::Serialize;

use super::EventError;
use super::batch::Overlay;
use super::sending::{check_limits, queue_code, seconds_until};
use crate::events::{ChallengeResend, EnrollmentStarted, FieldError, Role, User};
use crate::store::AuditEvent;
use crate::store::{Challenge, TenantSettings};

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

/// Opens a pending challenge, superseding the user's earlier pending ones
/// of the same purpose, and queues its first code. Checks the send limits
/// before it changes anything.
pub fn open_challenge(
    overlay: &mut Overlay<'_>,
    tenant_id: &str,
    purpose: &str,
    user: &User,
    email: &str,
    provider_id: &str,
    settings: &TenantSettings,
) -> Result<ChallengeAnswer, EventError> {
    let now = overlay.now;
    let id = overlay.mint.challenge_id(tenant_id, &user.id);
    let mut challenge = Challenge {
        tenant_id: tenant_id.to_string(),
        id,
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
        previous_code_hash: None,
        previous_code_expires_at: None,
    };
    check_limits(overlay, &challenge)?;
    for earlier in overlay.pending_of(tenant_id, &user.id, purpose) {
        overlay.update_challenge(tenant_id, &earlier, |c| {
            c.status = "superseded".into();
            c.closed_at = Some(now);
        });
        overlay.clear_code(tenant_id, &earlier, false);
    }
    let delivery_id = queue_code(overlay, &challenge);
    challenge.current_delivery_id = Some(delivery_id.clone());
    let answer = ChallengeAnswer {
        challenge_id: challenge.id.clone(),
        delivery_id: delivery_id.clone(),
        code_ttl_seconds: challenge.code_ttl_seconds,
        resend_after: challenge.resend_after.to_rfc3339(),
    };
    let detail = serde_json::json!({"challenge_id": challenge.id, "delivery_id": delivery_id, "purpose": purpose});
    overlay.insert_challenge(challenge);
    overlay.audit(tenant_id, &user.id, AuditEvent::CodeSent, detail);
    Ok(answer)
}

/// "Add" → "Send Code".
pub fn started(
    overlay: &mut Overlay<'_>,
    tenant_id: &str,
    event: &EnrollmentStarted,
) -> Result<ChallengeAnswer, EventError> {
    let tenant = overlay.tenant(tenant_id)?.clone();
    let role = event.user.role;
    if !role_allowed(&tenant.settings, role) {
        return Err(EventError::NotAllowed(format!(
            "2FA is Inactive for {} users (the {} \"Allowed\" toggle)",
            role.as_str(),
            if role == Role::Admin {
                "Admin"
            } else {
                "Customer"
            }
        )));
    }
    if !overlay.factors(tenant_id, &event.user.id).is_empty() {
        return Err(EventError::AlreadyEnrolled);
    }
    let provider = match &event.secondary_auth_provider_id {
        Some(id) => tenant
            .providers
            .iter()
            .find(|p| &p.id == id)
            .ok_or_else(|| {
                EventError::Invalid(vec![FieldError::new(
                    "secondary_auth_provider_id",
                    format!("no secondary auth provider {id:?}"),
                )])
            })?,
        None => tenant.providers.first().ok_or_else(no_provider)?,
    };
    open_challenge(
        overlay,
        tenant_id,
        "enrollment",
        &event.user,
        event.address(),
        &provider.id,
        &tenant.settings,
    )
}

/// The 409 for a tenant without a secondary auth provider.
pub fn no_provider() -> EventError {
    EventError::NoProvider(
        "no secondary authentication provider is configured: send service_provider.upserted and secondary_auth_provider.upserted first".into(),
    )
}

/// "Send New Code": a new code, every earlier one stops working, the
/// wrong-try counter carries on.
pub fn resend(
    overlay: &mut Overlay<'_>,
    tenant_id: &str,
    event: &ChallengeResend,
) -> Result<ChallengeAnswer, EventError> {
    let now = overlay.now;
    let challenge = overlay
        .challenge(tenant_id, &event.challenge_id)
        .cloned()
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
    check_limits(overlay, &challenge)?;
    let cooldown = overlay.tenant(tenant_id)?.settings.resend_cooldown_seconds;
    let resend_after = now.plus_seconds(i64::from(cooldown));
    let delivery_id = queue_code(overlay, &challenge);
    let new_send = delivery_id.clone();
    overlay.update_challenge(tenant_id, &challenge.id, |c| {
        c.current_delivery_id = Some(new_send);
        c.resend_after = resend_after;
    });
    overlay.clear_code(tenant_id, &challenge.id, true);
    overlay.audit(
        tenant_id,
        &challenge.user_id,
        AuditEvent::CodeSent,
        serde_json::json!({"challenge_id": challenge.id, "delivery_id": delivery_id, "purpose": challenge.purpose, "resend": true}),
    );
    Ok(ChallengeAnswer {
        challenge_id: challenge.id,
        delivery_id,
        code_ttl_seconds: challenge.code_ttl_seconds,
        resend_after: resend_after.to_rfc3339(),
    })
}
