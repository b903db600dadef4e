//! `login.started`: allow, challenge, or require enrollment — and write the
//! decision down with its reason.

use secrecy::ExposeSecret;
use serde::Serialize;

use super::enrollment::{no_provider, open_challenge, role_allowed};
use super::{EventContext, EventError};
use crate::events::{LoginStarted, Role};
use crate::store::{LoginContext, LoginDecision, Timestamp};

/// The answer of `login.started`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginAnswer {
    /// `allow`, `challenge` or `enroll_required`.
    pub decision: &'static str,
    /// `2fa_inactive`, `not_enrolled`, `trusted_device`, `code_sent` or
    /// `enrollment_required`.
    pub reason: &'static str,
    /// With `challenge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge_id: Option<String>,
    /// With `challenge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// With `challenge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_ttl_seconds: Option<i32>,
    /// With `challenge`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resend_after: Option<String>,
}

impl LoginAnswer {
    fn plain(decision: &'static str, reason: &'static str) -> Self {
        Self {
            decision,
            reason,
            challenge_id: None,
            delivery_id: None,
            code_ttl_seconds: None,
            resend_after: None,
        }
    }
}

/// Decides a login's second step.
pub async fn started(
    ctx: &mut EventContext<'_>,
    event: LoginStarted,
) -> Result<LoginAnswer, EventError> {
    event.validate()?;
    let answer = decide(ctx, &event).await?;
    let record = LoginDecision {
        user_id: &event.user.id,
        role: event.user.role.as_str(),
        decision: answer.decision,
        reason: answer.reason,
        challenge_id: answer.challenge_id.as_deref(),
        ip: event.ip.as_deref(),
        user_agent: event.user_agent.as_deref(),
    };
    ctx.store
        .insert_login_decision(ctx.tx, ctx.tenant_id, &record, Timestamp::now())
        .await?;
    Ok(answer)
}

async fn decide(
    ctx: &mut EventContext<'_>,
    event: &LoginStarted,
) -> Result<LoginAnswer, EventError> {
    let user = &event.user;
    let LoginContext {
        settings,
        factor,
        provider,
    } = ctx
        .store
        .login_context(ctx.tx, ctx.tenant_id, &user.id)
        .await?;
    if !role_allowed(&settings, user.role) {
        return Ok(LoginAnswer::plain("allow", "2fa_inactive"));
    }
    let Some(factor) = factor else {
        // "Require 2FA for Admin Users" only counts while admin 2FA is allowed
        // (checked above); customers are never required.
        return Ok(if user.role == Role::Admin && settings.require_admin_2fa {
            LoginAnswer::plain("enroll_required", "enrollment_required")
        } else {
            LoginAnswer::plain("allow", "not_enrolled")
        });
    };
    if let Some(token) = &event.trust_token
        && settings.trust_device_days > 0
    {
        let hash = ctx.store.hasher().token_hash(token.expose_secret());
        let now = Timestamp::now();
        if let Some(device_id) = ctx
            .store
            .use_trusted_device(ctx.tx, ctx.tenant_id, &user.id, &hash, now)
            .await?
        {
            ctx.store
                .audit(
                    ctx.tx,
                    ctx.tenant_id,
                    Some(&user.id),
                    "trusted_login",
                    serde_json::json!({"device_id": device_id}),
                )
                .await?;
            return Ok(LoginAnswer::plain("allow", "trusted_device"));
        }
    }
    // The factor's provider, or the tenant's first if it was deleted since.
    let provider = match provider {
        Some(provider) => provider,
        None => ctx
            .store
            .secondary_auth_provider_in(ctx.tx, ctx.tenant_id, None)
            .await?
            .ok_or_else(no_provider)?,
    };
    let email = factor.email.clone();
    let opened = open_challenge(ctx, "login", user, &email, &provider.id, &settings).await?;
    Ok(LoginAnswer {
        decision: "challenge",
        reason: "code_sent",
        challenge_id: Some(opened.challenge_id),
        delivery_id: Some(opened.delivery_id),
        code_ttl_seconds: Some(opened.code_ttl_seconds),
        resend_after: Some(opened.resend_after),
    })
}
