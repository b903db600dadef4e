//! `login.started`: allow, challenge, or require enrollment — and write the
//! decision down with its reason.

use serde::Serialize;

use super::EventError;
use super::batch::{DecisionRow, Overlay};
use super::enrollment::{no_provider, open_challenge, role_allowed};
use crate::events::{LoginStarted, Role};
use crate::store::AuditEvent;
use crate::store::TenantSettings;

/// A login's decision with its reason, as the answer and the
/// `login_decisions` row spell them (`decision`, `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDecision {
    /// Let the user in without a code, for this reason.
    Allow(AllowReason),
    /// A code was sent (`code_sent`).
    Challenge,
    /// An admin without a factor while 2FA is required for admins
    /// (`enrollment_required`).
    EnrollRequired,
}

/// Why a login is let in without a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowReason {
    /// The role's 2FA toggle is off (`2fa_inactive`).
    Inactive,
    /// No factor, and none required (`not_enrolled`).
    NotEnrolled,
    /// A trusted device's token came with the login (`trusted_device`).
    TrustedDevice,
}

impl LoginDecision {
    /// `allow`, `challenge` or `enroll_required`.
    pub fn decision(self) -> &'static str {
        match self {
            Self::Allow(_) => "allow",
            Self::Challenge => "challenge",
            Self::EnrollRequired => "enroll_required",
        }
    }

    /// `2fa_inactive`, `not_enrolled`, `trusted_device`, `code_sent` or
    /// `enrollment_required`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Allow(AllowReason::Inactive) => "2fa_inactive",
            Self::Allow(AllowReason::NotEnrolled) => "not_enrolled",
            Self::Allow(AllowReason::TrustedDevice) => "trusted_device",
            Self::Challenge => "code_sent",
            Self::EnrollRequired => "enrollment_required",
        }
    }
}

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
    /// The answer of a decision that sends no code.
    fn plain(decision: LoginDecision) -> Self {
        Self {
            decision: decision.decision(),
            reason: decision.reason(),
            challenge_id: None,
            delivery_id: None,
            code_ttl_seconds: None,
            resend_after: None,
        }
    }
}

/// What a login needs to know about the user, before any code is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStep {
    /// Decided already: allowed for a reason, or enrollment required.
    Decided(LoginDecision),
    /// Check the trust cookie, else send a code.
    Challenge,
}

/// The login decision before trust and codes: the role's toggle, then
/// whether the user has a factor. "Require 2FA for Admin Users" only counts
/// while admin 2FA is allowed; customers are never required.
pub fn first_step(settings: &TenantSettings, role: Role, enrolled: bool) -> FirstStep {
    if !role_allowed(settings, role) {
        FirstStep::Decided(LoginDecision::Allow(AllowReason::Inactive))
    } else if enrolled {
        FirstStep::Challenge
    } else if role == Role::Admin && settings.require_admin_2fa {
        FirstStep::Decided(LoginDecision::EnrollRequired)
    } else {
        FirstStep::Decided(LoginDecision::Allow(AllowReason::NotEnrolled))
    }
}

/// Decides a login's second step and records the decision.
pub fn started(
    overlay: &mut Overlay<'_>,
    tenant_id: &str,
    event: &LoginStarted,
    token_hash: Option<&[u8]>,
) -> Result<LoginAnswer, EventError> {
    let answer = decide(overlay, tenant_id, event, token_hash)?;
    let row = DecisionRow {
        tenant_id: tenant_id.to_string(),
        id: overlay.mint.id(),
        user_id: event.user.id.clone(),
        role: event.user.role.as_str(),
        decision: answer.decision,
        reason: answer.reason,
        challenge_id: answer.challenge_id.clone(),
        ip: event.ip.clone(),
        user_agent: event.user_agent.clone(),
        created_at: overlay.now,
    };
    overlay.writes().decisions.push(row);
    Ok(answer)
}

fn decide(
    overlay: &mut Overlay<'_>,
    tenant_id: &str,
    event: &LoginStarted,
    token_hash: Option<&[u8]>,
) -> Result<LoginAnswer, EventError> {
    let user = &event.user;
    let tenant = overlay.tenant(tenant_id)?.clone();
    let settings = &tenant.settings;
    let factor = overlay.factors(tenant_id, &user.id).first().cloned();
    if let FirstStep::Decided(decision) = first_step(settings, user.role, factor.is_some()) {
        return Ok(LoginAnswer::plain(decision));
    }
    let Some(factor) = factor else {
        return Ok(LoginAnswer::plain(LoginDecision::Allow(
            AllowReason::NotEnrolled,
        )));
    };
    if let Some(hash) = token_hash
        && settings.trust_device_days > 0
        && let Some(device) = overlay.trusted_device(tenant_id, &user.id, hash)
    {
        let device_id = device.id.clone();
        overlay
            .writes()
            .devices_used
            .push((tenant_id.to_string(), device_id.clone()));
        overlay.audit(
            tenant_id,
            &user.id,
            AuditEvent::TrustedLogin,
            serde_json::json!({"device_id": device_id}),
        );
        return Ok(LoginAnswer::plain(LoginDecision::Allow(
            AllowReason::TrustedDevice,
        )));
    }
    // The factor's provider, or the tenant's first if it was deleted since.
    let provider = tenant
        .providers
        .iter()
        .find(|p| p.id == factor.secondary_auth_provider_id)
        .or(tenant.providers.first())
        .ok_or_else(no_provider)?;
    let opened = open_challenge(
        overlay,
        tenant_id,
        "login",
        user,
        &factor.email,
        &provider.id,
        settings,
    )?;
    Ok(LoginAnswer {
        decision: LoginDecision::Challenge.decision(),
        reason: LoginDecision::Challenge.reason(),
        challenge_id: Some(opened.challenge_id),
        delivery_id: Some(opened.delivery_id),
        code_ttl_seconds: Some(opened.code_ttl_seconds),
        resend_after: Some(opened.resend_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Timestamp;

    fn settings(admin: bool, customer: bool, require_admin: bool) -> TenantSettings {
        TenantSettings {
            admin_2fa_allowed: admin,
            customer_2fa_allowed: customer,
            require_admin_2fa: require_admin,
            updated_at: Timestamp::now(),
            ..TenantSettings::defaults_for("t")
        }
    }

    #[test]
    fn the_first_step_follows_the_toggles_and_enrollment() {
        use AllowReason::*;
        use FirstStep::*;
        let cases = [
            // (admin allowed, customer allowed, require admin, role, enrolled) → step
            (
                (false, false, false, Role::Admin, true),
                Decided(LoginDecision::Allow(Inactive)),
            ),
            (
                (false, false, true, Role::Admin, false),
                Decided(LoginDecision::Allow(Inactive)),
            ),
            (
                (true, false, false, Role::Customer, true),
                Decided(LoginDecision::Allow(Inactive)),
            ),
            ((true, false, false, Role::Admin, true), Challenge),
            (
                (true, false, false, Role::Admin, false),
                Decided(LoginDecision::Allow(NotEnrolled)),
            ),
            (
                (true, false, true, Role::Admin, false),
                Decided(LoginDecision::EnrollRequired),
            ),
            (
                (false, true, true, Role::Customer, false),
                Decided(LoginDecision::Allow(NotEnrolled)),
            ),
            ((false, true, false, Role::Customer, true), Challenge),
        ];
        for ((admin, customer, require, role, enrolled), expected) in cases {
            let step = first_step(&settings(admin, customer, require), role, enrolled);
            assert_eq!(
                step, expected,
                "{admin} {customer} {require} {role:?} {enrolled}"
            );
        }
    }

    #[test]
    fn each_decision_spells_the_contracts_decision_and_reason() {
        let cases = [
            (
                LoginDecision::Allow(AllowReason::Inactive),
                "allow",
                "2fa_inactive",
            ),
            (
                LoginDecision::Allow(AllowReason::NotEnrolled),
                "allow",
                "not_enrolled",
            ),
            (
                LoginDecision::Allow(AllowReason::TrustedDevice),
                "allow",
                "trusted_device",
            ),
            (LoginDecision::Challenge, "challenge", "code_sent"),
            (
                LoginDecision::EnrollRequired,
                "enroll_required",
                "enrollment_required",
            ),
        ];
        for (decision, spelled, reason) in cases {
            assert_eq!((decision.decision(), decision.reason()), (spelled, reason));
            let answer = serde_json::to_value(LoginAnswer::plain(decision)).expect("json");
            assert_eq!(
                answer,
                serde_json::json!({"decision": spelled, "reason": reason})
            );
        }
    }
}
