//! Factors (a user's enrolled email address) and trusted devices.

use email2fa_db::with_tx;

use super::{Store, StoreResult, Timestamp, Tx};

/// An email factor.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Factor {
    /// Owner.
    #[serde(skip)]
    pub tenant_id: String,
    /// ULID.
    pub id: String,
    /// The host's user id.
    #[serde(skip)]
    pub user_id: String,
    /// `admin` or `customer`.
    #[serde(skip)]
    pub role: String,
    /// The enrolled address.
    pub email: String,
    /// The provider that sends its codes.
    #[serde(skip)]
    pub secondary_auth_provider_id: String,
    /// When it was enrolled.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A trusted browser. The token exists only as `token_hash`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct TrustedDevice {
    /// Owner.
    #[serde(skip)]
    pub tenant_id: String,
    /// ULID.
    pub id: String,
    /// The host's user id.
    #[serde(skip)]
    pub user_id: String,
    /// Keyed hash of the token.
    #[serde(skip)]
    pub token_hash: Vec<u8>,
    /// The host's label ("Firefox on Linux").
    pub label: Option<String>,
    /// When it was trusted.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last trusted login.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// When the trust ends.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// When it was revoked.
    #[serde(skip)]
    pub revoked_at: Option<Timestamp>,
}

pub(crate) const FACTOR_COLUMNS: &str =
    "tenant_id, id, user_id, role, email, secondary_auth_provider_id, created_at";
pub(crate) const DEVICE_COLUMNS: &str =
    "tenant_id, id, user_id, token_hash, label, created_at, last_used_at, expires_at, revoked_at";

impl Store {
    /// A user's factors, oldest first.
    pub async fn user_factors(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
    ) -> StoreResult<Vec<Factor>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "select {FACTOR_COLUMNS} from factors where tenant_id = $1 and user_id = $2 order by created_at, id"
        ));
        Ok(
            with_tx!(tx, conn => sqlx::query_as(sql).bind(tenant_id).bind(user_id).fetch_all(conn).await)?,
        )
    }

    /// Deletes one factor or all of a user's; returns the deleted ones.
    pub async fn delete_factors(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
        factor_id: Option<&str>,
    ) -> StoreResult<Vec<Factor>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "delete from factors where tenant_id = $1 and user_id = $2 and ($3 is null or id = $3) \
             returning {FACTOR_COLUMNS}"
        ));
        Ok(
            with_tx!(tx, conn => sqlx::query_as(sql).bind(tenant_id).bind(user_id).bind(factor_id)
            .fetch_all(conn).await)?,
        )
    }

    /// Closes the user's pending login challenges that send their codes to
    /// `email` (a removed factor's address) as `expired`, their code hashes
    /// dropped as when any challenge closes; returns how many.
    /// Their verify then answers `expired`, and the worker discards their
    /// queued code emails (it sends only for a pending challenge).
    pub async fn expire_login_challenges(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
        email: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        Ok(with_tx!(tx, conn => sqlx::query(
            "update challenges set status = 'expired', closed_at = $4, updated_at = $4, \
                code_hash = null, previous_code_hash = null, previous_code_expires_at = null \
             where tenant_id = $1 and user_id = $2 and purpose = 'login' \
                and status = 'pending' and email = $3")
            .bind(tenant_id).bind(user_id).bind(email).bind(now)
            .execute(conn).await.map(|done| done.rows_affected()))?)
    }

    /// Revokes one or all of a user's live trusted devices; returns how many.
    pub async fn revoke_trusted_devices(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
        device_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<u64> {
        Ok(with_tx!(tx, conn => sqlx::query(
            "update trusted_devices set revoked_at = $4 \
             where tenant_id = $1 and user_id = $2 and ($3 is null or id = $3) \
                and revoked_at is null and expires_at > $4")
            .bind(tenant_id).bind(user_id).bind(device_id).bind(now)
            .execute(conn).await.map(|r| r.rows_affected()))?)
    }

    /// A user's live trusted devices, newest first.
    pub async fn active_trusted_devices(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<TrustedDevice>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "select {DEVICE_COLUMNS} from trusted_devices where tenant_id = $1 and user_id = $2 \
             and revoked_at is null and expires_at > $3 order by created_at desc, id desc"
        ));
        Ok(
            with_tx!(tx, conn => sqlx::query_as(sql).bind(tenant_id).bind(user_id).bind(now)
            .fetch_all(conn).await)?,
        )
    }
}
