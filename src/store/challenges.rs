//! Challenges: one code journey each (enrollment or login). Every status
//! change is a conditional update on `status = 'pending'`, so two racing
//! verifications of the right code cannot both succeed.

use email2fa_workers::{with_db, with_tx};

use super::{Store, StoreResult, Timestamp, Tx};

/// A challenge row. `code_hash` is a keyed hash, never a code.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Challenge {
    /// Owner.
    pub tenant_id: String,
    /// ULID.
    pub id: String,
    /// `enrollment` or `login`.
    pub purpose: String,
    /// The host's user id.
    pub user_id: String,
    /// `admin` or `customer`.
    pub role: String,
    /// Where the codes go.
    pub email: String,
    /// Display name for the email.
    pub user_name: Option<String>,
    /// BCP 47 locale for the email.
    pub locale: Option<String>,
    /// The provider that sends its codes.
    pub secondary_auth_provider_id: String,
    /// `pending`, `verified`, `locked`, `expired` or `superseded`.
    pub status: String,
    /// Wrong tries so far (across resends).
    pub attempts: i32,
    /// Wrong tries allowed (the tenant's setting when it began).
    pub max_attempts: i32,
    /// Digits per code.
    pub code_length: i32,
    /// A code's lifetime from its send.
    pub code_ttl_seconds: i32,
    /// Keyed hash of the current code (written when it is sent).
    pub code_hash: Option<Vec<u8>>,
    /// When the current code stops working.
    pub code_expires_at: Option<Timestamp>,
    /// The delivery that carried the current code.
    pub code_delivery_id: Option<String>,
    /// The newest send asked for; any other send is superseded.
    pub current_delivery_id: Option<String>,
    /// From when `challenge.resend` is accepted.
    pub resend_after: Timestamp,
    /// The factor an enrollment created.
    pub factor_id: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// When it left `pending`.
    pub closed_at: Option<Timestamp>,
}

const COLUMNS: &str = "tenant_id, id, purpose, user_id, role, email, user_name, locale, \
    secondary_auth_provider_id, status, attempts, max_attempts, code_length, code_ttl_seconds, \
    code_hash, code_expires_at, code_delivery_id, current_delivery_id, resend_after, factor_id, \
    created_at, updated_at, closed_at";

/// The outcome of a wrong try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongTry {
    /// Wrong tries so far.
    pub attempts: i32,
    /// True when this try used the last one.
    pub locked: bool,
}

impl Store {
    /// Inserts a new challenge.
    pub async fn insert_challenge(&self, tx: &mut Tx, c: &Challenge) -> StoreResult<()> {
        let sql = sqlx::AssertSqlSafe(format!(
            "insert into challenges ({COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
        ));
        with_tx!(tx, conn => sqlx::query(sql)
            .bind(&c.tenant_id).bind(&c.id).bind(&c.purpose).bind(&c.user_id).bind(&c.role)
            .bind(&c.email).bind(&c.user_name).bind(&c.locale).bind(&c.secondary_auth_provider_id)
            .bind(&c.status).bind(c.attempts).bind(c.max_attempts).bind(c.code_length)
            .bind(c.code_ttl_seconds).bind(&c.code_hash).bind(c.code_expires_at)
            .bind(&c.code_delivery_id).bind(&c.current_delivery_id).bind(c.resend_after)
            .bind(&c.factor_id).bind(c.created_at).bind(c.updated_at).bind(c.closed_at)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// One challenge of a tenant.
    pub async fn challenge_in(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
    ) -> StoreResult<Option<Challenge>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "select {COLUMNS} from challenges where tenant_id = $1 and id = $2"
        ));
        Ok(with_tx!(tx, conn => sqlx::query_as(sql)
            .bind(tenant_id).bind(id).fetch_optional(conn).await)?)
    }

    /// Closes a user's pending challenges of one purpose as `superseded`
    /// (a new "Add" or a new login replaces them).
    pub async fn supersede_pending(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
        purpose: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        Ok(with_tx!(tx, conn => sqlx::query(
            "update challenges set status = 'superseded', closed_at = $4, updated_at = $4, \
                code_hash = null \
             where tenant_id = $1 and user_id = $2 and purpose = $3 and status = 'pending'")
            .bind(tenant_id).bind(user_id).bind(purpose).bind(now)
            .execute(conn).await.map(|r| r.rows_affected()))?)
    }

    /// Points a pending challenge at a new send: every earlier code stops
    /// working at once, the new one is minted when its email goes out.
    pub async fn start_new_send(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
        delivery_id: &str,
        resend_after: Timestamp,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let changed = with_tx!(tx, conn => sqlx::query(
            "update challenges set current_delivery_id = $3, resend_after = $4, code_hash = null, \
                code_expires_at = null, code_delivery_id = null, updated_at = $5 \
             where tenant_id = $1 and id = $2 and status = 'pending'")
            .bind(tenant_id).bind(id).bind(delivery_id).bind(resend_after).bind(now)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }

    /// Counts a wrong try; the try that uses the last attempt locks it.
    /// `None` when the challenge is no longer pending.
    pub async fn record_wrong_try(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<WrongTry>> {
        let row: Option<(i32, String)> = with_tx!(tx, conn => sqlx::query_as(
            "update challenges set attempts = attempts + 1, updated_at = $3, \
                status = case when attempts + 1 >= max_attempts then 'locked' else status end, \
                closed_at = case when attempts + 1 >= max_attempts then $3 else closed_at end, \
                code_hash = case when attempts + 1 >= max_attempts then null else code_hash end \
             where tenant_id = $1 and id = $2 and status = 'pending' \
             returning attempts, status")
            .bind(tenant_id).bind(id).bind(now).fetch_optional(conn).await)?;
        Ok(row.map(|(attempts, status)| WrongTry {
            attempts,
            locked: status == "locked",
        }))
    }

    /// Moves a pending challenge to `verified` or `expired`; false when it
    /// was no longer pending (another verification won the race).
    pub async fn close_challenge(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
        status: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let changed = with_tx!(tx, conn => sqlx::query(
            "update challenges set status = $3, closed_at = $4, updated_at = $4, code_hash = null \
             where tenant_id = $1 and id = $2 and status = 'pending'")
            .bind(tenant_id).bind(id).bind(status).bind(now)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }

    /// Records the factor a verified enrollment created.
    pub async fn set_challenge_factor(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
        factor_id: &str,
    ) -> StoreResult<()> {
        with_tx!(tx, conn => sqlx::query(
            "update challenges set factor_id = $3 where tenant_id = $1 and id = $2")
            .bind(tenant_id).bind(id).bind(factor_id)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Stores a freshly minted code's hash for the send `delivery_id`, if
    /// that send is still the challenge's current one and it is pending: one
    /// statement, so the check and the write cannot be split by a resend.
    pub async fn store_minted_code(
        &self,
        tenant_id: &str,
        id: &str,
        delivery_id: &str,
        code_hash: &[u8],
        expires_at: Timestamp,
    ) -> StoreResult<bool> {
        let _turn = self.db.write_turn().await?;
        let changed = with_db!(&self.db, pool => sqlx::query(
            "update challenges set code_hash = $4, code_expires_at = $5, code_delivery_id = $3, \
                updated_at = $6 \
             where tenant_id = $1 and id = $2 and status = 'pending' \
                and current_delivery_id = $3")
            .bind(tenant_id).bind(id).bind(delivery_id).bind(code_hash).bind(expires_at)
            .bind(Timestamp::now()).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }
}
