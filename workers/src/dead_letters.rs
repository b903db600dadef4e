//! The dead letters table: deliveries that gave up, with why, until an
//! operator resolves them by a resend or a discard.
//!
//! Resolving is one conditional update on `resolved_at is null`, so of two
//! operators acting on the same letter at the same moment exactly one wins.
//! The engine writes letters ([`crate::deliveries::mark_dead`]); the service's
//! operations API reads and resolves them through the functions here.

use crate::deliveries::Delivery;
use email2fa_db::{Db, Timestamp, Tx};
use email2fa_db::{with_db, with_tx};

/// Why a delivery gave up: the `reason` column of `dead_letters`, and of
/// `GET /ops/dead-letters` and `email2fa dlq list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Transient failures until the last attempt.
    AttemptsExhausted,
    /// The SMTP server refused the message for good (5xx, a rejected
    /// recipient).
    Rejected,
    /// It can never be sent as it is (its provider was deleted, a bad
    /// address).
    Permanent,
    /// Its template failed to render.
    Render,
    /// The connection to its provider could not be made secure (an
    /// untrusted or wrong-host certificate, no STARTTLS where required).
    TlsFailed,
}

impl DeadLetterReason {
    /// Every reason, in the order the README lists them.
    pub const ALL: [Self; 5] = [
        Self::AttemptsExhausted,
        Self::Rejected,
        Self::TlsFailed,
        Self::Permanent,
        Self::Render,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Rejected => "rejected",
            Self::Permanent => "permanent",
            Self::Render => "render",
            Self::TlsFailed => "tls_failed",
        }
    }

    /// The reason a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

/// A dead letter row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    /// ULID.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// The delivery that gave up.
    pub delivery_id: String,
    /// `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: String,
    /// The full address (mask it before showing it).
    pub recipient: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// A [`DeadLetterReason`] name: `attempts_exhausted`, `rejected`,
    /// `tls_failed`, `permanent` or `render`.
    pub reason: String,
    /// When it gave up.
    pub dead_at: Timestamp,
}

const COLUMNS: &str =
    "id, tenant_id, delivery_id, kind, recipient, attempts, last_error, reason, dead_at";

/// Which unresolved letters to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this tenant's.
    pub tenant_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only those dead at or after this time.
    pub since: Option<Timestamp>,
    /// Only this reason (a [`DeadLetterReason`] name).
    pub reason: Option<String>,
    /// Only those sent through this secondary auth provider.
    pub provider: Option<String>,
    /// Leave out this reason (a bulk resend leaves out `rejected`).
    pub except_reason: Option<String>,
    /// Only those strictly older than this `(dead_at, id)` (a page cursor).
    pub before: Option<(Timestamp, String)>,
}

/// The conditions of a [`DeadLetterFilter`] on `dead_letters`, binds
/// `$1`–`$6`. The provider is the delivery's, read by its primary key
/// (letters are few; the hot table gets no index for this).
const MATCHING: &str = "resolved_at is null \
    and ($1 is null or tenant_id = $1) and ($2 is null or kind = $2) \
    and ($3 is null or dead_at >= $3) and ($4 is null or reason = $4) \
    and ($5 is null or reason <> $5) \
    and ($6 is null or exists (select 1 from deliveries d \
        where d.id = dead_letters.delivery_id and d.secondary_auth_provider_id = $6))";

/// Unresolved letters matching `filter`, newest first (`dead_at`, then id).
pub async fn list_unresolved(
    db: &Db,
    filter: &DeadLetterFilter,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from dead_letters where {MATCHING} \
            and ($7 is null or dead_at < $7 or (dead_at = $7 and id < $8)) \
         order by dead_at desc, id desc limit $9"
    ));
    let (before_at, before_id) = filter.before.clone().unzip();
    let f = filter;
    with_db!(db, pool => sqlx::query_as(sql)
        .bind(&f.tenant_id).bind(&f.kind).bind(f.since).bind(&f.reason).bind(&f.except_reason)
        .bind(&f.provider).bind(before_at).bind(before_id).bind(limit).fetch_all(pool).await)
}

/// How many unresolved letters match `filter` (its cursor ignored), and
/// how many of those SMTP rejected for good (`rejected`).
pub async fn count_matching(db: &Db, filter: &DeadLetterFilter) -> Result<(i64, i64), sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "select count(*), coalesce(sum(case when reason = 'rejected' then 1 else 0 end), 0) \
         from dead_letters where {MATCHING}"
    ));
    let f = filter;
    with_db!(db, pool => sqlx::query_as(sql)
        .bind(&f.tenant_id).bind(&f.kind).bind(f.since).bind(&f.reason).bind(&f.except_reason)
        .bind(&f.provider).fetch_one(pool).await)
}

/// Marks an unresolved letter resolved (`resent` or `discarded`) and returns
/// it; `None` when there is no such letter or it was resolved already.
pub async fn resolve(
    tx: &mut Tx,
    id: &str,
    resolution: &str,
    now: Timestamp,
) -> Result<Option<DeadLetter>, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "update dead_letters set resolved_at = $2, resolution = $3 \
         where id = $1 and resolved_at is null returning {COLUMNS}"
    ));
    with_tx!(tx, conn => sqlx::query_as(sql).bind(id).bind(now).bind(resolution)
        .fetch_optional(conn).await)
}

/// The delivery a letter belongs to, with what a resend copies.
pub async fn delivery_in(tx: &mut Tx, id: &str) -> Result<Option<Delivery>, sqlx::Error> {
    with_tx!(tx, conn => sqlx::query_as(
        "select id, tenant_id, kind, user_id, recipient, user_name, locale, role, challenge_id, \
            secondary_auth_provider_id, status, attempts, max_attempts, not_after, created_at \
         from deliveries where id = $1")
        .bind(id).fetch_optional(conn).await)
}

/// Moves a `dead` delivery to `resent` or `discarded`.
pub async fn set_dead_delivery_status(
    tx: &mut Tx,
    id: &str,
    status: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => sqlx::query(
        "update deliveries set status = $2, updated_at = $3 where id = $1 and status = 'dead'")
        .bind(id).bind(status).bind(now).execute(conn).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// How many letters are unresolved (the dead letters gauge).
pub async fn count_unresolved(db: &Db) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = with_db!(db, pool => sqlx::query_as(
        "select count(*) from dead_letters where resolved_at is null").fetch_one(pool).await)?;
    Ok(n)
}

/// `text` with every occurrence of `needle` (ASCII case ignored: SMTP
/// servers echo addresses in any case) replaced by `with`. Used to keep
/// recipients' addresses out of logs and to mask them in answers.
pub fn replace_ignoring_case(text: &str, needle: &str, with: &str) -> String {
    if needle.is_empty() {
        return text.to_string();
    }
    // ASCII lowercasing keeps every byte offset, so positions found in the
    // lowered copy are valid in `text`.
    let (lower, needle) = (text.to_ascii_lowercase(), needle.to_ascii_lowercase());
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (at, _) in lower.match_indices(&needle) {
        out.push_str(&text[rest..at]);
        out.push_str(with);
        rest = at + needle.len();
    }
    out.push_str(&text[rest..]);
    out
}
