//! One delivery as the operator's detail view shows it: the row, its dead
//! letter if any, and every failed attempt (`delivery_attempts`, written by
//! the engine). All reads by
//! primary key; no code, password or token is among the columns.

use email2fa_db::with_db;
use email2fa_db::{Db, Timestamp};

/// A delivery with what the detail view shows of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    /// The delivery's id.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: String,
    /// The host's user id.
    pub user_id: String,
    /// The full address (mask it before showing it).
    pub recipient: String,
    /// `queued`, `sending`, `retrying`, `sent`, `dead`, `expired`,
    /// `discarded` or `resent`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// The SMTP server's answer to the accepted send.
    pub smtp_reply: Option<String>,
    /// The challenge of a code email.
    pub challenge_id: Option<String>,
    /// The dead delivery this one resends.
    pub resent_from: Option<String>,
    /// The secondary auth provider.
    pub secondary_auth_provider_id: String,
    /// When the next attempt is due (meaningful while queued or retrying).
    pub next_attempt_at: Timestamp,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Accepted by SMTP.
    pub sent_at: Option<Timestamp>,
}

/// The delivery `id`, or `None`.
pub async fn delivery(db: &Db, id: &str) -> Result<Option<DeliveryRecord>, sqlx::Error> {
    with_db!(db, pool => sqlx::query_as(
        "select id, tenant_id, kind, user_id, recipient, status, attempts, max_attempts, \
            last_error, smtp_reply, challenge_id, resent_from, secondary_auth_provider_id, \
            next_attempt_at, created_at, updated_at, sent_at \
         from deliveries where id = $1")
        .bind(id).fetch_optional(pool).await)
}

/// One failed attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRecord {
    /// Its number (1 = the first try).
    pub attempt: i32,
    /// When it ended.
    pub at: Timestamp,
    /// `transient`, `auth_failed`, or the dead letter reason it ended with.
    pub result: String,
    /// The SMTP server's answer or the connection error.
    pub answer: Option<String>,
}

/// The failed attempts of delivery `id`, oldest first (at most 100).
pub async fn attempts(db: &Db, id: &str) -> Result<Vec<AttemptRecord>, sqlx::Error> {
    with_db!(db, pool => sqlx::query_as(
        "select attempt, at, result, answer from delivery_attempts \
         where delivery_id = $1 order by id limit 100")
        .bind(id).fetch_all(pool).await)
}

/// The dead letter of a delivery, resolved or not.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LetterRecord {
    /// Its id.
    pub id: String,
    /// Why it gave up.
    pub reason: String,
    /// When.
    pub dead_at: Timestamp,
    /// `resent` or `discarded` once resolved.
    pub resolution: Option<String>,
}

/// The newest dead letter of delivery `id` (`dead_letters_by_delivery`).
pub async fn letter_of(db: &Db, id: &str) -> Result<Option<LetterRecord>, sqlx::Error> {
    with_db!(db, pool => sqlx::query_as(
        "select id, reason, dead_at, resolution from dead_letters where delivery_id = $1 \
         order by dead_at desc limit 1")
        .bind(id).fetch_optional(pool).await)
}
