//! Challenges: one code journey each (enrollment or login). The hot
//! webhooks read and write them in batches ([`super::batch`]), under their
//! user's lock; what is left here are the single-row read and write of the
//! operations side (conditional on the challenge still being pending). The
//! delivery engine stores its codes' hashes in batches
//! ([`Store::store_minted_codes`]).

use email2fa_db::with_tx;

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
    /// Keyed hash of the code the current one replaced when the same
    /// delivery was sent again (a retry no user asked for): the first copy
    /// may be in the inbox already, so it stays valid beside the new one.
    pub previous_code_hash: Option<Vec<u8>>,
    /// When that earlier code stops working (its own expiry).
    pub previous_code_expires_at: Option<Timestamp>,
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

pub(crate) const COLUMNS: &str = "tenant_id, id, purpose, user_id, role, email, user_name, locale, \
    secondary_auth_provider_id, status, attempts, max_attempts, code_length, code_ttl_seconds, \
    code_hash, code_expires_at, code_delivery_id, current_delivery_id, resend_after, factor_id, \
    created_at, updated_at, closed_at, previous_code_hash, previous_code_expires_at";

impl Store {
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

    /// Points a pending challenge at a new send: every earlier code (the
    /// previous one too) stops working at once, the new one is minted when
    /// its email goes out.
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
                code_expires_at = null, code_delivery_id = null, previous_code_hash = null, \
                previous_code_expires_at = null, updated_at = $5 \
             where tenant_id = $1 and id = $2 and status = 'pending'")
            .bind(tenant_id).bind(id).bind(delivery_id).bind(resend_after).bind(now)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(changed == 1)
    }
}
