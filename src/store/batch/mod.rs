//! A batch of hot webhooks in one transaction: the locks, the set-based
//! reads that fill a [`Snapshot`], and the set-based writes of the
//! [`Writes`] that [`crate::domain::batch::plan`] decided.
//!
//! On PostgreSQL a batch reads in one round trip, which first takes an
//! advisory lock per user key (sorted), then calls the function
//! `batch_read`, which takes a lock per address the batch can send to
//! (sorted) before it counts the sends: always users before addresses and
//! each in ascending order, so that batches of different processes cannot
//! deadlock. On SQLite the transaction's write lock serialises everything.
//! Every write goes out in one statement on PostgreSQL (data-modifying
//! CTEs) and in one statement per table on SQLite.

mod read;
pub mod rows;
mod tenants;
mod write;

pub use read::SendWindows;
pub use tenants::TenantCache;
pub use write::WriteCounts;

use email2fa_db::LaneConn;
use email2fa_db::with_tx;

use super::{StoreResult, Tx};
use rows::Dialect;

/// The advisory lock class of user keys (the first half of the two-key
/// form, so that these never meet anyone else's single-key locks); the
/// batch read takes them too (read.rs, `BATCH_READ`).
const USER_LOCKS: i32 = 0x2FA0_0001;
// The advisory lock class of recipient addresses is 0x2FA0_0002; the
// function `batch_read` takes those locks (read.rs).

/// The dialect of a transaction.
pub(super) fn dialect(tx: &Tx) -> Dialect {
    match tx {
        Tx::Sqlite(..) => Dialect::Sqlite,
        Tx::Postgres(_) => Dialect::Postgres,
    }
}

impl super::Store {
    /// Whether batches lock users and addresses (PostgreSQL; SQLite's one
    /// writer needs no locks).
    pub fn batches_lock(&self) -> bool {
        matches!(self.db, super::Db::Postgres(_))
    }

    /// Starts a batch's transaction on the lane's connection
    /// ([`email2fa_db::Db::begin_lane`]); the read takes the
    /// users' locks ([`Store::read_batch`]).
    pub async fn begin_batch(&self, lane: &mut Option<LaneConn>) -> StoreResult<Tx> {
        Ok(self.db.begin_lane(lane).await?)
    }

    /// Commits a batch's transaction and, on a lane's connection, begins
    /// the next one in the same round trip ([`Tx::finish_lane`]).
    pub async fn commit_batch(&self, tx: Tx, lane: &mut Option<LaneConn>) -> StoreResult<()> {
        *lane = tx.finish_lane(true).await?;
        Ok(())
    }

    /// Rolls back a batch's transaction (a race, or nothing to write),
    /// keeping the lane's connection when it answers.
    pub async fn roll_back_batch(&self, tx: Tx, lane: &mut Option<LaneConn>) {
        *lane = tx.finish_lane(false).await.ok().flatten();
    }

    /// Takes the advisory locks of these user keys until the transaction
    /// ends, in ascending order (PostgreSQL; a no-op on SQLite), for a
    /// transaction that did not take them with its `begin`.
    pub async fn lock_users(&self, tx: &mut Tx, keys: &[u32]) -> StoreResult<()> {
        lock(tx, USER_LOCKS, keys).await
    }
}

async fn lock(tx: &mut Tx, class: i32, keys: &[u32]) -> StoreResult<()> {
    let Tx::Postgres(tx) = tx else {
        return Ok(());
    };
    // `unnest` yields them in array order.
    let keys = sorted_keys(keys);
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("select count(pg_advisory_xact_lock($1, k)) from unnest($2::int4[]) as k")
        .bind(class)
        .bind(keys)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The keys as PostgreSQL's int4, sorted and distinct: every batch takes
/// them in the same order.
fn sorted_keys(keys: &[u32]) -> Vec<i32> {
    let mut keys: Vec<i32> = keys
        .iter()
        .map(|k| i32::from_ne_bytes(k.to_ne_bytes()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The same statement on whichever connection a [`Tx`] holds, returning
/// rows of `T` (shared by the reads).
pub(super) async fn fetch_rows<T>(
    tx: &mut Tx,
    sql: &str,
    params: Vec<String>,
) -> StoreResult<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    Ok(with_tx!(tx, conn => {
        let mut query = sqlx::query_as(sql);
        for param in params {
            query = query.bind(param);
        }
        query.fetch_all(conn).await
    })?)
}
