//! The deliveries table: one row per email, the single truth for queue
//! health on every backend (apalis is only the transport).
//!
//! `queued → sending → sent | retrying | dead | expired | discarded | resent`.
//! The ingress inserts rows inside its webhook transaction; the engine claims
//! them with a lease, so a delivery already `sent` is never sent again and a
//! send cut off by a crash is retried once its lease runs out.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, Row};

use crate::dead_letters::DeadLetterReason;
use email2fa_db::{Db, Timestamp, Tx};
use email2fa_db::{with_db, with_tx};

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

/// A delivery row as the engine works with it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    /// ULID.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: String,
    /// The host's user id.
    pub user_id: String,
    /// The address it goes to.
    pub recipient: String,
    /// Display name.
    pub user_name: Option<String>,
    /// BCP 47 locale.
    pub locale: Option<String>,
    /// `admin` or `customer`.
    pub role: String,
    /// The challenge of a code email.
    pub challenge_id: Option<String>,
    /// The provider that sends it.
    pub secondary_auth_provider_id: String,
    /// Current status.
    pub status: String,
    /// Attempts made (this one included once claimed).
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// After this, sending is pointless.
    pub not_after: Option<Timestamp>,
    /// Created (the webhook's time, for end-to-end latency).
    pub created_at: Timestamp,
}

const COLUMNS: &str = "id, tenant_id, kind, user_id, recipient, user_name, locale, role, \
    challenge_id, secondary_auth_provider_id, status, attempts, max_attempts, not_after, created_at";

/// Claims a delivery for one attempt: `queued`/`retrying` rows that are due,
/// and `sending` rows whose lease ran out (the worker died mid-send). Returns
/// `None` when another worker has it or it is finished.
pub async fn claim(
    db: &Db,
    id: &str,
    now: Timestamp,
    lease_seconds: i64,
) -> Result<Option<Delivery>, sqlx::Error> {
    let sql = sqlx::AssertSqlSafe(format!(
        "update deliveries set status = 'sending', attempts = attempts + 1, lease_until = $3, \
            updated_at = $2 \
         where id = $1 and ((status in ('queued', 'retrying') and next_attempt_at <= $4) \
            or (status = 'sending' and lease_until < $2)) \
         returning {COLUMNS}"
    ));
    // A job may run a little before its row's due time (clock skew between
    // processes, backend rounding); one second of slack avoids a pointless skip.
    let due = now.plus_seconds(1);
    with_db!(db, pool => sqlx::query_as(sql).bind(id).bind(now)
        .bind(now.plus_seconds(lease_seconds)).bind(due).fetch_optional(pool).await)
}

/// The claim of a batch of deliveries together with what the caller reads
/// beside each (the service's columns: see [`crate::engine::ContextQuery`]).
///
/// Built once per engine: the statement text includes the caller's columns
/// and joins, so it is prepared once per connection and reused.
#[derive(Debug, Clone)]
pub struct BatchClaim {
    /// PostgreSQL: the claim and the context in one statement (the update
    /// in a data-modifying CTE, joined to the context).
    postgres: String,
    /// SQLite (no data-modifying CTEs): the context of claimed rows, read
    /// after the claim, outside the write lock.
    sqlite_context: String,
}

/// What is claimable, as in [`claim`], for the PostgreSQL batch claim
/// (`status || ''` for SQLite's `+status`, see [`SQLITE_CLAIM_BATCH`]): it keeps the
/// planner on the primary key. Without statistics (a table that grew since
/// its last analysis, autovacuum on or off) it combined the key with
/// `deliveries_by_status` and read the whole due backlog per claim.
/// `tests/delivery_batches.rs` checks the plan.
const CLAIMABLE_BY_ID: &str = "(((status || '') in ('queued', 'retrying') \
        and next_attempt_at <= $4) \
    or ((status || '') = 'sending' and lease_until < $2))";

/// The batch claim on SQLite. `+status` keeps SQLite's planner off
/// `deliveries_by_status`: without statistics it preferred that index to
/// the primary key and read every due delivery of the backlog per claim
/// (a drain in O(n²)). `tests/delivery_batches.rs` checks the plan.
pub const SQLITE_CLAIM_BATCH: &str = "update deliveries set status = 'sending', \
        attempts = attempts + 1, lease_until = $3, updated_at = $2 \
     where id in (select value from json_each($1)) \
        and ((+status in ('queued', 'retrying') and next_attempt_at <= $4) \
            or (+status = 'sending' and lease_until < $2)) \
     returning id, tenant_id, kind, user_id, recipient, user_name, locale, role, \
        challenge_id, secondary_auth_provider_id, status, attempts, max_attempts, not_after, \
        created_at";

impl BatchClaim {
    /// The PostgreSQL statement (for plan checks in tests).
    #[doc(hidden)]
    pub fn postgres_statement(&self) -> &str {
        &self.postgres
    }

    /// `columns` (a select list) and `joins` (joins onto the claimed
    /// delivery, aliased `d`) are the caller's: they read only its own
    /// tables, never write.
    pub fn new(columns: &str, joins: &str) -> Self {
        Self {
            postgres: format!(
                "with claimed as (\
                    update deliveries set status = 'sending', attempts = attempts + 1, \
                        lease_until = $3, updated_at = $2 \
                    where id = any($1) and {CLAIMABLE_BY_ID} \
                    returning {COLUMNS}) \
                 select d.*, {columns} from claimed d {joins}"
            ),
            sqlite_context: format!(
                "select d.id as claimed_delivery_id, {columns} from deliveries d {joins} \
                 where d.id in (select value from json_each($1))"
            ),
        }
    }
}

/// Claims every delivery of `ids` that is claimable (as [`claim`] does for
/// one) and reads each one's context, in one statement on PostgreSQL (two
/// on SQLite: the claim under the write lock, then the read). Returns the
/// claimed deliveries only, each once even if its id was given twice; ids
/// not returned were not claimable (see [`statuses_of`]).
///
/// Rows are locked in id order, so concurrent claimers of overlapping
/// batches wait for each other instead of deadlocking; a row a concurrent
/// claimer took while we waited is re-checked and left out.
pub async fn claim_batch<C>(
    db: &Db,
    query: &BatchClaim,
    ids: &[String],
    now: Timestamp,
    lease_seconds: i64,
) -> Result<Vec<(Delivery, C)>, sqlx::Error>
where
    C: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let lease_until = now.plus_seconds(lease_seconds);
    // One second of slack, as in [`claim`].
    let due = now.plus_seconds(1);
    match db {
        Db::Postgres(pool) => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(query.postgres.as_str()))
                .bind(ids)
                .bind(now)
                .bind(lease_until)
                .bind(due)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| Ok((Delivery::from_row(row)?, C::from_row(row)?)))
                .collect()
        }
        Db::Sqlite(pool, _) => {
            let ids = serde_json::to_string(&ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
            let claimed: Vec<Delivery> = {
                let _turn = db.write_turn().await?;
                sqlx::query_as(SQLITE_CLAIM_BATCH)
                    .bind(&ids)
                    .bind(now)
                    .bind(lease_until)
                    .bind(due)
                    .fetch_all(pool)
                    .await?
            };
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            let claimed_ids: Vec<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
            let claimed_ids =
                serde_json::to_string(&claimed_ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(query.sqlite_context.as_str()))
                .bind(claimed_ids)
                .fetch_all(pool)
                .await?;
            let mut contexts = HashMap::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get("claimed_delivery_id")?;
                contexts.insert(id, C::from_row(row)?);
            }
            // A claimed row always has its context row (only left joins);
            // one deleted in between (its tenant went) has nothing to send.
            Ok(claimed
                .into_iter()
                .filter_map(|d| contexts.remove(&d.id).map(|c| (d, c)))
                .collect())
        }
    }
}

/// The status of each delivery of `ids` that exists.
pub async fn statuses_of(db: &Db, ids: &[String]) -> Result<HashMap<String, String>, sqlx::Error> {
    let rows: Vec<(String, String)> = match db {
        Db::Postgres(pool) => {
            sqlx::query_as("select id, status from deliveries where id = any($1)")
                .bind(ids.to_vec())
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(pool, _) => {
            let ids = serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
            sqlx::query_as(
                "select id, status from deliveries where id in (select value from json_each($1))",
            )
            .bind(ids)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows.into_iter().collect())
}

/// A send the SMTP server accepted, to record with [`mark_sent_batch`].
#[derive(Debug, Clone)]
pub struct SentRecord {
    /// The delivery.
    pub id: String,
    /// The server's reply.
    pub reply: String,
    /// The message's `Message-ID`.
    pub message_id: String,
    /// When the server accepted it.
    pub sent_at: Timestamp,
}

/// Records several accepted sends in one statement (see [`mark_sent`]).
pub async fn mark_sent_batch(db: &Db, sent: &[SentRecord]) -> Result<(), sqlx::Error> {
    if sent.is_empty() {
        return Ok(());
    }
    let mut sent: Vec<&SentRecord> = sent.iter().collect();
    // Row locks in id order: concurrent batches never deadlock.
    sent.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    match db {
        Db::Postgres(pool) => {
            sqlx::query(
                "update deliveries d set status = 'sent', smtp_reply = m.reply, \
                    message_id = m.message_id, sent_at = m.sent_at, updated_at = m.sent_at, \
                    lease_until = null, last_error = null \
                 from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) \
                    as m(id, reply, message_id, sent_at) \
                 where d.id = m.id",
            )
            .bind(column(&sent, |s| s.id.clone()))
            .bind(column(&sent, |s| s.reply.clone()))
            .bind(column(&sent, |s| s.message_id.clone()))
            .bind(column(&sent, |s| s.sent_at.as_datetime()))
            .execute(pool)
            .await?;
        }
        Db::Sqlite(pool, _) => {
            // No arrays: a `values` list with one row per send (the text
            // differs per batch size, so at most one prepared statement
            // per size).
            let rows = (0..sent.len())
                .map(|i| {
                    let n = i * 4;
                    format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = sqlx::AssertSqlSafe(format!(
                "update deliveries set status = 'sent', smtp_reply = m.column2, \
                    message_id = m.column3, sent_at = m.column4, updated_at = m.column4, \
                    lease_until = null, last_error = null \
                 from (values {rows}) as m where deliveries.id = m.column1"
            ));
            let mut query = sqlx::query(sql);
            for s in &sent {
                query = query
                    .bind(&s.id)
                    .bind(&s.reply)
                    .bind(&s.message_id)
                    .bind(s.sent_at);
            }
            let _turn = db.write_turn().await?;
            query.execute(pool).await?;
        }
    }
    Ok(())
}

/// One field of every record, as an array to bind.
fn column<T>(sent: &[&SentRecord], field: impl Fn(&SentRecord) -> T) -> Vec<T> {
    sent.iter().map(|s| field(s)).collect()
}

/// The status of a delivery, or `None` when the row does not exist (yet).
pub async fn status_of(db: &Db, id: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = with_db!(db, pool => sqlx::query_as(
        "select status from deliveries where id = $1").bind(id).fetch_optional(pool).await)?;
    Ok(row.map(|(status,)| status))
}

/// Records a send the SMTP server accepted.
pub async fn mark_sent(
    db: &Db,
    id: &str,
    reply: &str,
    message_id: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    with_db!(db, pool => sqlx::query(
        "update deliveries set status = 'sent', smtp_reply = $2, message_id = $3, sent_at = $4, \
            updated_at = $4, lease_until = null, last_error = null where id = $1")
        .bind(id).bind(reply).bind(message_id).bind(now)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Records a transient failure and when the next attempt is due. An
/// attempt that does not `count` (the provider refused our credentials:
/// nothing about the message failed) is given back, so it does not bring
/// the delivery closer to `max_attempts`.
pub async fn mark_retrying(
    db: &Db,
    id: &str,
    error: &str,
    next_at: Timestamp,
    now: Timestamp,
    count: bool,
) -> Result<(), sqlx::Error> {
    let given_back = i32::from(!count);
    with_db!(db, pool => sqlx::query(
        "update deliveries set status = 'retrying', last_error = $2, next_attempt_at = $3, \
            updated_at = $4, lease_until = null, attempts = attempts - $5 where id = $1")
        .bind(id).bind(error).bind(next_at).bind(now).bind(given_back)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Ends a delivery without a dead letter: `discarded` (superseded, closed
/// challenge) or `expired` (its code could no longer be used).
pub async fn mark_finished(
    db: &Db,
    id: &str,
    status: &str,
    error: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    with_db!(db, pool => sqlx::query(
        "update deliveries set status = $2, last_error = $3, updated_at = $4, lease_until = null \
         where id = $1")
        .bind(id).bind(status).bind(error).bind(now)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Gives up on a delivery: status `dead` and a dead letter with the reason,
/// in one transaction.
pub async fn mark_dead(
    db: &Db,
    d: &Delivery,
    reason: DeadLetterReason,
    error: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    with_tx!(&mut tx, conn => sqlx::query(
        "update deliveries set status = 'dead', last_error = $2, updated_at = $3, lease_until = null \
         where id = $1")
        .bind(&d.id).bind(error).bind(now).execute(conn).await.map(|r| r.rows_affected()))?;
    let letter_id = ulid::Ulid::generate().to_string();
    with_tx!(&mut tx, conn => sqlx::query(
        "insert into dead_letters (id, tenant_id, delivery_id, kind, recipient, attempts, last_error, \
            reason, dead_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&letter_id).bind(&d.tenant_id).bind(&d.id).bind(&d.kind).bind(&d.recipient)
        .bind(d.attempts).bind(error).bind(reason.as_str()).bind(now)
        .execute(conn).await.map(|r| r.rows_affected()))?;
    tx.commit().await
}

/// Writes one failed attempt to `delivery_attempts` (the detail view's
/// history): its number, what happened (`transient`, `auth_failed`, or the
/// dead letter reason) and the server's answer.
pub async fn record_attempt(
    db: &Db,
    d: &Delivery,
    result: &str,
    answer: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    let id = ulid::Ulid::generate().to_string();
    with_db!(db, pool => sqlx::query(
        "insert into delivery_attempts (delivery_id, id, attempt, at, result, answer) \
         values ($1, $2, $3, $4, $5, $6)")
        .bind(&d.id).bind(&id).bind(d.attempts).bind(now).bind(result).bind(answer)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Deliveries the queue seems to have lost: `queued`/`retrying` and due
/// before `due_before` (a crash between commit and push), or `sending` with
/// an expired lease (a worker killed mid-send).
pub async fn overdue(
    db: &Db,
    now: Timestamp,
    due_before: Timestamp,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = with_db!(db, pool => sqlx::query_as(
        "select id from deliveries \
         where (status in ('queued', 'retrying') and next_attempt_at < $2) \
            or (status = 'sending' and lease_until < $1) \
         order by next_attempt_at limit $3")
        .bind(now).bind(due_before).bind(limit).fetch_all(pool).await)?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// One page of the deliveries still pending, in id order after `after`:
/// `queued`/`retrying` whatever their due time, and `sending` with an
/// expired lease (nobody holds them), each with the time its next attempt
/// is due. A lease still running belongs to a live worker, which records
/// its outcome itself. For the re-push after a queue lost its jobs.
pub async fn pending_after(
    db: &Db,
    now: Timestamp,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, Timestamp)>, sqlx::Error> {
    with_db!(db, pool => sqlx::query_as(
        "select id, next_attempt_at from deliveries \
         where id > $2 and (status in ('queued', 'retrying') \
            or (status = 'sending' and lease_until < $1)) \
         order by id limit $3")
        .bind(now).bind(after).bind(limit).fetch_all(pool).await)
}

/// Extends the leases of deliveries this process is sending to `until`
/// (the engine's lease heartbeat); a row no longer `sending` (recorded
/// meanwhile) is left alone.
pub async fn renew_leases(db: &Db, ids: &[String], until: Timestamp) -> Result<(), sqlx::Error> {
    let mut ids = ids.to_vec();
    // Row locks in id order, as every batch statement here takes them.
    ids.sort_unstable();
    match db {
        Db::Postgres(pool) => {
            sqlx::query(
                "update deliveries set lease_until = $2 \
                 where id = any($1) and status = 'sending'",
            )
            .bind(ids)
            .bind(until)
            .execute(pool)
            .await?;
        }
        Db::Sqlite(pool, _) => {
            let ids = serde_json::to_string(&ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
            let _turn = db.write_turn().await?;
            sqlx::query(
                "update deliveries set lease_until = $2 \
                 where id in (select value from json_each($1)) and +status = 'sending'",
            )
            .bind(ids)
            .bind(until)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}
