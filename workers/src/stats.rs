//! Queue health read from the deliveries table, so that it is the same on
//! every queue backend (apalis's own counts are missing on Redis and know
//! nothing of our retries): the `/ops/queue` numbers, the per-minute
//! throughput of the dashboard and the per-provider activity.
//!
//! Minute buckets are computed in SQL with one expression per backend (the
//! only place where the two query texts differ): PostgreSQL has `extract`,
//! SQLite stores fixed-width RFC 3339 text that `strftime('%s')` reads.

use email2fa_db::with_db;
use email2fa_db::{Db, Timestamp};

/// The counts of the `emails` queue (API.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// Waiting for a worker: `queued`, plus `retrying` whose next attempt is due.
    pub pending: i64,
    /// `retrying` whose next attempt is not due yet.
    pub scheduled: i64,
    /// `sending`: claimed by a worker.
    pub running: i64,
    /// `sent`: accepted by an SMTP server.
    pub done: i64,
    /// `retrying`: the last attempt failed and another will follow (these are
    /// also counted in `pending` or `scheduled`).
    pub failed: i64,
    /// Unresolved dead letters.
    pub dead: i64,
    /// Seconds the oldest pending delivery has been due; 0 when none is.
    pub oldest_pending_age_seconds: i64,
    /// Seconds since the oldest email not sent yet was created: `queued`,
    /// `sending` or `retrying`, due or in backoff; 0 when none is. Unlike
    /// [`Self::oldest_pending_age_seconds`] it keeps growing while emails
    /// wait out their backoff (an SMTP outage).
    pub oldest_unsent_age_seconds: i64,
}

type CountsRow = (i64, i64, i64, i64, Option<Timestamp>, Option<Timestamp>);

/// Reads the queue counts at `now`.
pub async fn queue_counts(db: &Db, now: Timestamp) -> Result<QueueCounts, sqlx::Error> {
    // Only unfinished rows are aggregated (through `deliveries_by_status`);
    // the sent ones, by far the most, are only counted through the index.
    let row: CountsRow = with_db!(db, pool => sqlx::query_as(
        "select \
            coalesce(sum(case when status = 'queued' \
                or (status = 'retrying' and next_attempt_at <= $1) then 1 else 0 end), 0), \
            coalesce(sum(case when status = 'retrying' and next_attempt_at > $1 \
                then 1 else 0 end), 0), \
            coalesce(sum(case when status = 'sending' then 1 else 0 end), 0), \
            coalesce(sum(case when status = 'retrying' then 1 else 0 end), 0), \
            min(case when status = 'queued' \
                or (status = 'retrying' and next_attempt_at <= $1) then next_attempt_at end), \
            min(created_at) \
         from deliveries where status in ('queued', 'retrying', 'sending')")
        .bind(now).fetch_one(pool).await)?;
    let (done,): (i64,) = with_db!(db, pool => sqlx::query_as(
        "select count(*) from deliveries where status = 'sent'").fetch_one(pool).await)?;
    let dead = crate::dead_letters::count_unresolved(db).await?;
    let (pending, scheduled, running, failed, oldest_due, oldest_created) = row;
    let age =
        |at: Option<Timestamp>| at.map_or(0, |at| (now.unix_seconds() - at.unix_seconds()).max(0));
    let oldest_pending_age_seconds = age(oldest_due);
    let oldest_unsent_age_seconds = age(oldest_created);
    Ok(QueueCounts {
        pending,
        scheduled,
        running,
        done,
        failed,
        dead,
        oldest_pending_age_seconds,
        oldest_unsent_age_seconds,
    })
}

/// Emails sent and given up in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinuteCounts {
    /// Unix seconds of the minute's start.
    pub minute: i64,
    /// Accepted by SMTP.
    pub sent: i64,
    /// Dead-lettered.
    pub dead: i64,
}

/// Sent and dead-lettered emails per minute over the last `minutes`
/// minutes (the current one included), oldest first, with empty minutes.
pub async fn throughput(
    db: &Db,
    now: Timestamp,
    minutes: i64,
) -> Result<Vec<MinuteCounts>, sqlx::Error> {
    let current = now.unix_seconds() / 60;
    let first = current - minutes + 1;
    let since = Timestamp::from(
        chrono::DateTime::from_timestamp(first * 60, 0).unwrap_or_else(chrono::Utc::now),
    );
    let sent = per_minute(db, "deliveries", "sent_at", since).await?;
    let dead = per_minute(db, "dead_letters", "dead_at", since).await?;
    Ok((first..=current)
        .map(|m| MinuteCounts {
            minute: m * 60,
            sent: lookup(&sent, m),
            dead: lookup(&dead, m),
        })
        .collect())
}

fn lookup(rows: &[(i64, i64)], minute: i64) -> i64 {
    rows.iter()
        .find(|(m, _)| *m == minute)
        .map_or(0, |(_, n)| *n)
}

async fn per_minute(
    db: &Db,
    table: &str,
    column: &str,
    since: Timestamp,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    // Both names are constants of this module, never input.
    match db {
        Db::Sqlite(pool, _) => {
            let sql = format!(
                "select cast(strftime('%s', {column}) as integer) / 60, count(*) from {table} \
                 where {column} >= $1 group by 1"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(since)
                .fetch_all(pool)
                .await
        }
        Db::Postgres(pool) => {
            let sql = format!(
                "select (floor(extract(epoch from {column}) / 60))::bigint, count(*) \
                 from {table} where {column} >= $1 group by 1"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(since)
                .fetch_all(pool)
                .await
        }
    }
}

/// One secondary auth provider's recent activity.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProviderActivity {
    /// Owner.
    pub tenant_id: String,
    /// The secondary auth provider the emails went through.
    pub secondary_auth_provider_id: String,
    /// Emails it sent in the window.
    pub sent: i64,
    /// Emails now waiting for another attempt.
    pub retrying: i64,
    /// Emails it gave up on in the window.
    pub dead: i64,
    /// Its last accepted send in the window.
    pub last_sent_at: Option<Timestamp>,
    /// When the oldest email that failed in the window (retrying or dead)
    /// was queued: how long it has been failing, at least.
    pub first_failed_at: Option<Timestamp>,
}

/// Per-provider activity of deliveries changed since `since`, the busiest
/// (or most failing) first, at most `limit`.
pub async fn provider_activity(
    db: &Db,
    since: Timestamp,
    limit: i64,
) -> Result<Vec<ProviderActivity>, sqlx::Error> {
    with_db!(db, pool => sqlx::query_as(
        "select tenant_id, secondary_auth_provider_id, \
            coalesce(sum(case when status = 'sent' then 1 else 0 end), 0) as sent, \
            coalesce(sum(case when status = 'retrying' then 1 else 0 end), 0) as retrying, \
            coalesce(sum(case when status = 'dead' then 1 else 0 end), 0) as dead, \
            max(sent_at) as last_sent_at, \
            min(case when status in ('retrying', 'dead') then created_at end) as first_failed_at \
         from deliveries where updated_at >= $1 \
         group by tenant_id, secondary_auth_provider_id \
         order by 5 desc, 4 desc, 3 desc limit $2")
        .bind(since).bind(limit).fetch_all(pool).await)
}

/// The last failure of a provider's emails changed since `since`: the
/// error and the recipient it concerned (to mask it). Read through
/// `deliveries_by_update`, bounded by the window.
pub async fn provider_last_error(
    db: &Db,
    tenant_id: &str,
    provider: &str,
    since: Timestamp,
) -> Result<Option<(Option<String>, String)>, sqlx::Error> {
    with_db!(db, pool => sqlx::query_as(
        "select last_error, recipient from deliveries \
         where updated_at >= $3 and tenant_id = $1 and secondary_auth_provider_id = $2 \
            and status in ('retrying', 'dead') \
         order by updated_at desc limit 1")
        .bind(tenant_id).bind(provider).bind(since).fetch_optional(pool).await)
}
