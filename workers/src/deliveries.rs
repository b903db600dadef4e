//! The deliveries table: one row per email, the single truth for queue
//! health on every backend (apalis is only the transport).
//!
//! `queued → sending → sent | retrying | dead | expired | discarded | resent`.
//! The ingress inserts rows inside its webhook transaction; the engine claims
//! them with a lease, so a delivery already `sent` is never sent again and a
//! send cut off by a crash is retried once its lease runs out.

use crate::db::{Timestamp, Tx};
use crate::with_tx;

/// What the ingress asks the engine to send.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// ULID, minted by the caller (it is also the job's id).
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: &'static str,
    /// The host's user id.
    pub user_id: String,
    /// The address it goes to.
    pub recipient: String,
    /// Display name for the greeting.
    pub user_name: Option<String>,
    /// BCP 47 locale of the user.
    pub locale: Option<String>,
    /// `admin` or `customer`.
    pub role: String,
    /// The challenge whose code it carries (code kinds only).
    pub challenge_id: Option<String>,
    /// The provider that sends it.
    pub secondary_auth_provider_id: String,
    /// Attempts before it becomes a dead letter.
    pub max_attempts: i32,
    /// After this, sending is pointless (a code nobody waits for).
    pub not_after: Option<Timestamp>,
    /// The dead delivery this one resends, if any.
    pub resent_from: Option<String>,
}

/// A new delivery id (a ULID: its time part also tells the engine how old
/// a job is when its row is not visible yet).
pub fn new_delivery_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Inserts a delivery as `queued`, due now.
pub async fn insert_delivery(
    tx: &mut Tx,
    d: &NewDelivery,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => sqlx::query(
        "insert into deliveries (id, tenant_id, kind, user_id, recipient, user_name, locale, role, \
            challenge_id, secondary_auth_provider_id, status, attempts, max_attempts, not_after, \
            next_attempt_at, resent_from, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', 0, $11, $12, $13, $14, $13, $13)")
        .bind(&d.id).bind(&d.tenant_id).bind(d.kind).bind(&d.user_id).bind(&d.recipient)
        .bind(&d.user_name).bind(&d.locale).bind(&d.role).bind(&d.challenge_id)
        .bind(&d.secondary_auth_provider_id).bind(d.max_attempts).bind(d.not_after).bind(now)
        .bind(&d.resent_from).execute(conn).await.map(|r| r.rows_affected()))?;
    Ok(())
}
