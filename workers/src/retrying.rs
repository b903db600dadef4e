//! Deliveries waiting for another attempt (`retrying`), as operators see
//! them, and "retry now".
//!
//! Read through `deliveries_by_status (status, next_attempt_at)` in due
//! order, a page at a time by the keyset `(next_attempt_at, id)`: no index
//! of its own on the hot table. The provider's SMTP host is the service's
//! to add (its tables), like every other provider detail.

use email2fa_db::{Db, Timestamp, Tx};
use email2fa_db::{with_db, with_tx};

/// A delivery in backoff.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RetryingDelivery {
    /// The delivery's id.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: String,
    /// The full address (mask it before showing it).
    pub recipient: String,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The last failure (the SMTP server's answer, or why no connection).
    pub last_error: Option<String>,
    /// When the next attempt is due.
    pub next_attempt_at: Timestamp,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed (the last attempt's end).
    pub updated_at: Timestamp,
    /// The secondary auth provider the email goes through.
    pub secondary_auth_provider_id: String,
}

/// Which retrying deliveries to read, in due order.
#[derive(Debug, Clone, Default)]
pub struct RetryingFilter {
    /// Only this tenant's.
    pub tenant_id: Option<String>,
    /// Only this secondary auth provider's.
    pub provider: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only those strictly after this `(next_attempt_at, id)` (a page cursor).
    pub after: Option<(Timestamp, String)>,
}

const COLUMNS: &str = "id, tenant_id, kind, recipient, attempts, max_attempts, last_error, \
    next_attempt_at, created_at, updated_at, secondary_auth_provider_id";

/// Retrying deliveries matching `filter`, the next due first.
pub async fn list(
    db: &Db,
    filter: &RetryingFilter,
    limit: i64,
) -> Result<Vec<RetryingDelivery>, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from deliveries \
         where status = 'retrying' \
            and ($1 is null or tenant_id = $1) \
            and ($2 is null or secondary_auth_provider_id = $2) \
            and ($3 is null or kind = $3) \
            and ($4 is null or next_attempt_at > $4 or (next_attempt_at = $4 and id > $5)) \
         order by next_attempt_at, id limit $6"
    ));
    let (after_at, after_id) = filter.after.clone().unzip();
    with_db!(db, pool => sqlx::query_as(sql)
        .bind(&filter.tenant_id).bind(&filter.provider).bind(&filter.kind)
        .bind(after_at).bind(after_id).bind(limit).fetch_all(pool).await)
}

/// Makes a retrying delivery due at `now` (an operator's "retry now") and
/// returns its tenant; the caller then pushes its job. `None` when it is
/// not `retrying` (sent, given up, or being sent right now).
pub async fn make_due(
    tx: &mut Tx,
    id: &str,
    now: Timestamp,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = with_tx!(tx, conn => sqlx::query_as(
        "update deliveries set next_attempt_at = $2, updated_at = $2 \
         where id = $1 and status = 'retrying' returning tenant_id")
        .bind(id).bind(now).fetch_optional(conn).await)?;
    Ok(row.map(|(tenant,)| tenant))
}
