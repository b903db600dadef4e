//! One delivery in detail (`GET /ops/deliveries/{id}`): its ids, tenant,
//! provider and SMTP server, every failed attempt with the server's answer
//! and its time, the full last error, its dead letter, and whether a resend
//! would be refused and why. Recipients are masked everywhere, in the
//! answers too; no code, password or token is read.

use serde::Serialize;

use email2fa_workers::dead_letters::replace_ignoring_case;
use email2fa_workers::history::{self, DeliveryRecord};

use super::{OpsError, SmtpServers, mask_recipient};
use crate::store::Store;

/// One attempt in the history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// Its number (1 = the first try).
    pub attempt: i32,
    /// When it ended (RFC 3339).
    pub at: String,
    /// `accepted`, `transient`, `auth_failed`, or the dead letter reason it
    /// ended with (`attempts_exhausted`, `rejected`, `tls_failed`,
    /// `permanent`, `render`).
    pub result: String,
    /// The SMTP server's answer or the connection error (address masked).
    pub answer: Option<String>,
}

/// The dead letter of the delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LetterView {
    /// Its id (resend and discard take it).
    pub id: String,
    /// Why the delivery gave up.
    pub reason: String,
    /// When (RFC 3339).
    pub dead_at: String,
    /// `resent` or `discarded`; `null` while it waits for an operator.
    pub resolution: Option<String>,
}

/// Whether a resend of the dead letter would be accepted.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResendVerdict {
    /// True when a resend would queue the email again.
    pub possible: bool,
    /// Why not (the `challenge_closed` detail), when not possible.
    pub refused_because: Option<String>,
}

/// A delivery as the detail view shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    /// The delivery's id.
    pub delivery_id: String,
    /// Owner.
    pub tenant_id: String,
    /// The host's user id.
    pub user_id: String,
    /// `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: String,
    /// Masked: first letter, `***`, then `@domain`.
    pub recipient: String,
    /// `queued`, `sending`, `retrying`, `sent`, `dead`, `expired`,
    /// `discarded` or `resent`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The secondary auth provider.
    pub provider: String,
    /// Its SMTP server, `host:port`; `null` when the provider is gone.
    pub smtp: Option<String>,
    /// The challenge of a code email.
    pub challenge_id: Option<String>,
    /// Its status now (`pending`, `verified`, `locked`, `expired`,
    /// `superseded`); `null` without a challenge or when it is gone.
    pub challenge_status: Option<String>,
    /// The dead delivery this one resends.
    pub resent_from: Option<String>,
    /// The full last error (address masked).
    pub last_error: Option<String>,
    /// The SMTP server's answer to the accepted send.
    pub smtp_reply: Option<String>,
    /// RFC 3339 times.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
    /// When the next attempt is due; `null` unless queued or retrying.
    pub next_attempt_at: Option<String>,
    /// Accepted by SMTP.
    pub sent_at: Option<String>,
    /// Every attempt recorded, oldest first: the failed ones, then the
    /// accepted one.
    pub history: Vec<AttemptView>,
    /// Its dead letter, if it gave up.
    pub dead_letter: Option<LetterView>,
    /// With an unresolved dead letter: would a resend be accepted?
    pub resend: Option<ResendVerdict>,
}

/// The detail of delivery `id`.
pub async fn delivery_detail(store: &Store, id: &str) -> Result<DeliveryDetail, OpsError> {
    let not_found = || OpsError::DeliveryNotFound(id.to_string());
    if !super::is_plausible_id(id) {
        return Err(not_found());
    }
    let d = history::delivery(store.db(), id)
        .await?
        .ok_or_else(not_found)?;
    let masked = mask_recipient(&d.recipient);
    let mask = |text: String| replace_ignoring_case(&text, &d.recipient, &masked);
    let mut attempts: Vec<AttemptView> = history::attempts(store.db(), id)
        .await?
        .into_iter()
        .map(|a| AttemptView {
            attempt: a.attempt,
            at: a.at.to_rfc3339(),
            result: a.result,
            answer: a.answer.map(mask),
        })
        .collect();
    if let Some(sent_at) = d.sent_at {
        attempts.push(AttemptView {
            attempt: d.attempts,
            at: sent_at.to_rfc3339(),
            result: "accepted".into(),
            answer: d.smtp_reply.clone().map(mask),
        });
    }
    let letter = history::letter_of(store.db(), id).await?;
    let challenge_status = challenge_status(store, &d).await?;
    let smtp = SmtpServers::new(store)
        .of(&d.tenant_id, &d.secondary_auth_provider_id)
        .await?;
    let resend = letter
        .as_ref()
        .filter(|l| l.resolution.is_none())
        .map(|_| resend_verdict(&d, challenge_status.as_deref()));
    Ok(DeliveryDetail {
        smtp,
        next_attempt_at: matches!(d.status.as_str(), "queued" | "retrying")
            .then(|| d.next_attempt_at.to_rfc3339()),
        sent_at: d.sent_at.map(|t| t.to_rfc3339()),
        last_error: d.last_error.clone().map(mask),
        smtp_reply: d.smtp_reply.clone().map(mask),
        dead_letter: letter.map(|l| LetterView {
            id: l.id,
            reason: l.reason,
            dead_at: l.dead_at.to_rfc3339(),
            resolution: l.resolution,
        }),
        history: attempts,
        resend,
        challenge_status,
        recipient: masked.clone(),
        delivery_id: d.id,
        tenant_id: d.tenant_id,
        user_id: d.user_id,
        kind: d.kind,
        status: d.status,
        attempts: d.attempts,
        max_attempts: d.max_attempts,
        provider: d.secondary_auth_provider_id,
        challenge_id: d.challenge_id,
        resent_from: d.resent_from,
        created_at: d.created_at.to_rfc3339(),
        updated_at: d.updated_at.to_rfc3339(),
    })
}

/// The status of the delivery's challenge, read in a transaction that
/// changes nothing.
async fn challenge_status(store: &Store, d: &DeliveryRecord) -> Result<Option<String>, OpsError> {
    let Some(challenge_id) = &d.challenge_id else {
        return Ok(None);
    };
    let mut tx = store.begin().await?;
    let challenge = store
        .challenge_in(&mut tx, &d.tenant_id, challenge_id)
        .await;
    drop(tx.rollback().await);
    Ok(challenge?.map(|c| {
        if c.status == "pending" && c.current_delivery_id.as_deref() != Some(d.id.as_str()) {
            "superseded".to_string()
        } else {
            c.status
        }
    }))
}

/// The rules of a resend ([`super::resend`]), read without acting: a code
/// email needs its challenge pending and still pointing at this delivery.
fn resend_verdict(d: &DeliveryRecord, challenge: Option<&str>) -> ResendVerdict {
    let refused = |why: &str| ResendVerdict {
        possible: false,
        refused_because: Some(why.to_string()),
    };
    match (&d.challenge_id, challenge) {
        (None, _) | (Some(_), Some("pending")) => ResendVerdict {
            possible: true,
            refused_because: None,
        },
        (Some(_), None) => refused("the challenge no longer exists"),
        (Some(_), Some("superseded")) => {
            refused("the challenge was replaced by a newer send (\"Send New Code\")")
        }
        (Some(_), Some(status)) => refused(&format!(
            "the challenge is {status}: the user verified, was locked out or the code expired"
        )),
    }
}
