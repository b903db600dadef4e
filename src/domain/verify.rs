//! `enrollment.verify` and `login.verify`: one code, checked in constant
//! time against its keyed hash, good once. A challenge whose email was sent
//! a second time without a user asking (a retry of the same delivery)
//! accepts the code it replaced too, until that code's own expiry.
//!
//! Every verification of a challenge runs under its user's lock (the
//! challenge id carries the user's key, see [`super::keys`]), one after the
//! other, so of many concurrent verifications of the right code exactly one
//! succeeds; the others see `already_used`.

use serde::Serialize;

use super::EventError;
use super::batch::Overlay;
use crate::events::Verify;
use crate::store::AuditEvent;
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

/// What a typed code came to: the answer's `outcome`, and with it
/// `attempts_remaining` where the contract gives one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The code was right (`verified`).
    Verified,
    /// The code was wrong and tries are left (`invalid_code`).
    InvalidCode {
        /// Wrong tries left.
        attempts_remaining: i32,
    },
    /// The code or the challenge ran out (`expired`).
    Expired,
    /// No tries left (`locked`).
    Locked,
    /// The challenge was verified before (`already_used`).
    AlreadyUsed,
}

impl VerifyOutcome {
    /// The answer's `outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::InvalidCode { .. } => "invalid_code",
            Self::Expired => "expired",
            Self::Locked => "locked",
            Self::AlreadyUsed => "already_used",
        }
    }

    /// The answer's `attempts_remaining`: with `invalid_code`, and 0 with
    /// `locked`.
    pub fn attempts_remaining(self) -> Option<i32> {
        match self {
            Self::InvalidCode { attempts_remaining } => Some(attempts_remaining),
            Self::Locked => Some(0),
            Self::Verified | Self::Expired | Self::AlreadyUsed => None,
        }
    }
}

impl VerifyAnswer {
    fn of(outcome: VerifyOutcome) -> Self {
        Self {
            outcome: outcome.as_str(),
            attempts_remaining: outcome.attempts_remaining(),
            factor: None,
            trust_token: None,
            trust_expires_at: None,
        }
    }
}

/// What a verify of a challenge that is no longer pending answers, by its
/// stored status (`None` while it is pending): a verified one was used, a
/// locked one stays locked, any other closed one (expired, superseded) is
/// expired.
pub fn closed_outcome(status: &str) -> Option<VerifyOutcome> {
    match status {
        "pending" => None,
        "verified" => Some(VerifyOutcome::AlreadyUsed),
        "locked" => Some(VerifyOutcome::Locked),
        _ => Some(VerifyOutcome::Expired),
    }
}

/// What the `attempts`-th wrong code of a challenge allowing
/// `max_attempts` answers: the try that uses the last attempt locks it.
pub fn wrong_code_outcome(attempts: i32, max_attempts: i32) -> VerifyOutcome {
    if attempts >= max_attempts {
        VerifyOutcome::Locked
    } else {
        VerifyOutcome::InvalidCode {
            attempts_remaining: max_attempts - attempts,
        }
    }
}

/// The code as typed, without the spaces and dashes users paste with it.
pub fn normalize_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect()
}

/// Checks a code typed on the enrollment (`login = false`) or login screen.
pub fn verify(
    overlay: &mut Overlay<'_>,
    tenant_id: &str,
    event: &Verify,
    login: bool,
) -> Result<VerifyAnswer, EventError> {
    let purpose = if login { "login" } else { "enrollment" };
    let now = overlay.now;
    let trust_days = overlay.tenant(tenant_id)?.settings.trust_device_days;
    let challenge = overlay
        .challenge(tenant_id, &event.challenge_id)
        .filter(|c| c.purpose == purpose)
        .cloned()
        .ok_or(EventError::ChallengeNotFound)?;
    if let Some(outcome) = closed_outcome(&challenge.status) {
        return Ok(VerifyAnswer::of(outcome));
    }
    if challenge.code_expires_at.is_some_and(|at| at <= now) {
        close(overlay, &challenge, "expired");
        return Ok(VerifyAnswer::of(VerifyOutcome::Expired));
    }
    let typed = normalize_code(&event.code);
    let matches = live_code_hashes(&challenge, now)
        .into_iter()
        .flatten()
        .fold(false, |found, stored| {
            // Both compared whatever the first answered: no timing tells
            // which code matched.
            overlay.hasher.code_matches(&challenge.id, &typed, stored) | found
        });
    if !matches {
        return Ok(wrong_try(overlay, &challenge));
    }
    close(overlay, &challenge, "verified");
    let mut answer = VerifyAnswer::of(VerifyOutcome::Verified);
    if !login {
        let factor = enroll(overlay, &challenge);
        let factor_id = factor.id.clone();
        overlay.update_challenge(tenant_id, &challenge.id, |c| c.factor_id = Some(factor_id));
        answer.factor = Some(factor);
    }
    let last_failure = overlay
        .security(tenant_id, &challenge.user_id)
        .last_failure_at;
    overlay.set_security(tenant_id, &challenge.user_id, 0, last_failure);
    overlay.audit(
        tenant_id,
        &challenge.user_id,
        AuditEvent::Verified,
        serde_json::json!({"challenge_id": challenge.id, "purpose": purpose}),
    );
    if login && event.trust_device == Some(true) {
        trust_device(
            overlay,
            &challenge,
            trust_days,
            event.device_label.clone(),
            &mut answer,
        );
    }
    Ok(answer)
}

/// The hashes of the codes a pending challenge accepts now: its current
/// code, and the one it replaced when the same delivery was sent again (a
/// retry no user asked for; its first copy may be in the inbox) until that
/// code's own expiry. A typed code is one try whichever it is compared with.
fn live_code_hashes(challenge: &Challenge, now: Timestamp) -> [Option<&[u8]>; 2] {
    let previous = challenge.previous_code_hash.as_deref().filter(|_| {
        challenge
            .previous_code_expires_at
            .is_some_and(|at| at > now)
    });
    [challenge.code_hash.as_deref(), previous]
}

/// Moves a pending challenge to `verified` or `expired`.
fn close(overlay: &mut Overlay<'_>, challenge: &Challenge, status: &'static str) {
    let now = overlay.now;
    overlay.update_challenge(&challenge.tenant_id, &challenge.id, |c| {
        c.status = status.into();
        c.closed_at = Some(now);
    });
    overlay.clear_code(&challenge.tenant_id, &challenge.id, false);
}

/// Counts a wrong try; the try that uses the last attempt locks the
/// challenge. The user's streak grows either way.
fn wrong_try(overlay: &mut Overlay<'_>, challenge: &Challenge) -> VerifyAnswer {
    let now = overlay.now;
    let tenant = challenge.tenant_id.as_str();
    let attempts = challenge.attempts + 1;
    let outcome = wrong_code_outcome(attempts, challenge.max_attempts);
    let locked = outcome == VerifyOutcome::Locked;
    overlay.update_challenge(tenant, &challenge.id, |c| {
        c.attempts = attempts;
        if locked {
            c.status = "locked".into();
            c.closed_at = Some(now);
        }
    });
    if locked {
        overlay.clear_code(tenant, &challenge.id, false);
    }
    let streak = overlay.security(tenant, &challenge.user_id).failures + 1;
    overlay.set_security(tenant, &challenge.user_id, streak, Some(now));
    overlay.audit(
        tenant,
        &challenge.user_id,
        if locked {
            AuditEvent::Locked
        } else {
            AuditEvent::Failed
        },
        serde_json::json!({"challenge_id": challenge.id, "attempts": attempts}),
    );
    VerifyAnswer::of(outcome)
}

/// The user's factor for the challenge's address: the existing one, or a
/// new one.
fn enroll(overlay: &mut Overlay<'_>, challenge: &Challenge) -> Factor {
    let tenant = challenge.tenant_id.as_str();
    if let Some(factor) = overlay
        .factors(tenant, &challenge.user_id)
        .iter()
        .find(|f| f.email == challenge.email)
    {
        return factor.clone();
    }
    let factor = Factor {
        tenant_id: tenant.to_string(),
        id: overlay.mint.id(),
        user_id: challenge.user_id.clone(),
        role: challenge.role.clone(),
        email: challenge.email.clone(),
        secondary_auth_provider_id: challenge.secondary_auth_provider_id.clone(),
        created_at: overlay.now,
    };
    overlay.insert_factor(factor.clone());
    overlay.audit(
        tenant,
        &challenge.user_id,
        AuditEvent::Enrolled,
        serde_json::json!({"factor_id": factor.id, "challenge_id": challenge.id}),
    );
    factor
}

fn trust_device(
    overlay: &mut Overlay<'_>,
    challenge: &Challenge,
    days: i32,
    label: Option<String>,
    answer: &mut VerifyAnswer,
) {
    let tenant = challenge.tenant_id.as_str();
    if days <= 0 {
        return;
    }
    let now: Timestamp = overlay.now;
    let token = overlay.mint.trust_token();
    let device = TrustedDevice {
        tenant_id: tenant.to_string(),
        id: overlay.mint.id(),
        user_id: challenge.user_id.clone(),
        token_hash: overlay.hasher.token_hash(&token),
        label,
        created_at: now,
        last_used_at: None,
        expires_at: now.plus_seconds(i64::from(days) * 86_400),
        revoked_at: None,
    };
    answer.trust_expires_at = Some(device.expires_at.to_rfc3339());
    answer.trust_token = Some(token);
    overlay.audit(
        tenant,
        &challenge.user_id,
        AuditEvent::DeviceTrusted,
        serde_json::json!({"device_id": device.id}),
    );
    overlay.writes().devices.push(device);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_challenge_answers_by_its_status() {
        let cases = [
            ("pending", None),
            ("verified", Some(VerifyOutcome::AlreadyUsed)),
            ("locked", Some(VerifyOutcome::Locked)),
            ("expired", Some(VerifyOutcome::Expired)),
            ("superseded", Some(VerifyOutcome::Expired)),
        ];
        for (status, expected) in cases {
            assert_eq!(closed_outcome(status), expected, "{status}");
        }
    }

    #[test]
    fn the_wrong_code_that_uses_the_last_try_locks() {
        let cases = [
            (
                1,
                5,
                VerifyOutcome::InvalidCode {
                    attempts_remaining: 4,
                },
            ),
            (
                4,
                5,
                VerifyOutcome::InvalidCode {
                    attempts_remaining: 1,
                },
            ),
            (5, 5, VerifyOutcome::Locked),
            (6, 5, VerifyOutcome::Locked),
            (1, 1, VerifyOutcome::Locked),
        ];
        for (attempts, max, expected) in cases {
            assert_eq!(
                wrong_code_outcome(attempts, max),
                expected,
                "{attempts} of {max}"
            );
        }
    }

    #[test]
    fn each_outcome_spells_the_contracts_answer() {
        let cases = [
            (
                VerifyOutcome::Verified,
                serde_json::json!({"outcome": "verified"}),
            ),
            (
                VerifyOutcome::InvalidCode {
                    attempts_remaining: 3,
                },
                serde_json::json!({"outcome": "invalid_code", "attempts_remaining": 3}),
            ),
            (
                VerifyOutcome::Expired,
                serde_json::json!({"outcome": "expired"}),
            ),
            (
                VerifyOutcome::Locked,
                serde_json::json!({"outcome": "locked", "attempts_remaining": 0}),
            ),
            (
                VerifyOutcome::AlreadyUsed,
                serde_json::json!({"outcome": "already_used"}),
            ),
        ];
        for (outcome, expected) in cases {
            let answer = serde_json::to_value(VerifyAnswer::of(outcome)).expect("json");
            assert_eq!(answer, expected, "{outcome:?}");
        }
    }
}
