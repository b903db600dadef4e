//! Audit events written outside the batched webhooks (operations, rare
//! events). The batched webhooks write theirs with the batch
//! ([`super::batch`]).

use email2fa_db::with_tx;
use ulid::Ulid;

use super::{Store, StoreResult, Timestamp, Tx};

/// What an audit event records: the `event` column of `audit_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditEvent {
    /// A code email was queued (enrollment, login, resend).
    CodeSent,
    /// A code was right.
    Verified,
    /// A code was wrong.
    Failed,
    /// A wrong code used the last try; the challenge is locked.
    Locked,
    /// An enrollment created a factor.
    Enrolled,
    /// The host removed the user's factor.
    FactorRemoved,
    /// A verified login trusted its device.
    DeviceTrusted,
    /// A login was let in by a trusted device.
    TrustedLogin,
    /// The host revoked trusted devices.
    DevicesRevoked,
    /// An operator retried a retrying delivery now.
    DeliveryRetriedNow,
    /// An operator resent a dead letter.
    DeadLetterResent,
    /// An operator discarded a dead letter.
    DeadLetterDiscarded,
}

impl AuditEvent {
    /// Every event.
    pub const ALL: [Self; 12] = [
        Self::CodeSent,
        Self::Verified,
        Self::Failed,
        Self::Locked,
        Self::Enrolled,
        Self::FactorRemoved,
        Self::DeviceTrusted,
        Self::TrustedLogin,
        Self::DevicesRevoked,
        Self::DeliveryRetriedNow,
        Self::DeadLetterResent,
        Self::DeadLetterDiscarded,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CodeSent => "code_sent",
            Self::Verified => "verified",
            Self::Failed => "failed",
            Self::Locked => "locked",
            Self::Enrolled => "enrolled",
            Self::FactorRemoved => "factor_removed",
            Self::DeviceTrusted => "device_trusted",
            Self::TrustedLogin => "trusted_login",
            Self::DevicesRevoked => "devices_revoked",
            Self::DeliveryRetriedNow => "delivery_retried_now",
            Self::DeadLetterResent => "dead_letter_resent",
            Self::DeadLetterDiscarded => "dead_letter_discarded",
        }
    }
}

impl Store {
    /// Records an audit event. `detail` is JSON and never holds a code or
    /// a token.
    pub async fn audit(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: Option<&str>,
        event: AuditEvent,
        detail: serde_json::Value,
    ) -> StoreResult<()> {
        let id = Ulid::generate().to_string();
        with_tx!(tx, conn => sqlx::query(
            "insert into audit_events (tenant_id, id, user_id, event, detail, created_at) \
             values ($1, $2, $3, $4, $5, $6)")
            .bind(tenant_id).bind(&id).bind(user_id).bind(event.as_str()).bind(detail.to_string())
            .bind(Timestamp::now()).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::AuditEvent;

    #[test]
    fn every_audit_event_has_its_own_snake_case_name() {
        let names: std::collections::HashSet<&str> =
            AuditEvent::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names.len(),
            AuditEvent::ALL.len(),
            "two events share a name"
        );
        for name in names {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
    }
}
