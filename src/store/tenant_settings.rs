//! The Services Manager's 2FA settings of a tenant.

use email2fa_db::{with_db, with_tx};
use serde::Serialize;

use super::{Store, StoreError, StoreResult, Timestamp, Tx};

/// A tenant's 2FA settings, as `settings.updated` answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TenantSettings {
    /// The tenant (not part of the answer).
    #[serde(skip)]
    pub tenant_id: String,
    /// "Require Secondary Authentication (2FA) for Admin Users".
    pub require_admin_2fa: bool,
    /// The Admin "Allowed" toggle.
    pub admin_2fa_allowed: bool,
    /// The Customer "Allowed" toggle.
    pub customer_2fa_allowed: bool,
    /// Digits per code (6–10).
    pub code_length: i32,
    /// A code's lifetime from the moment it is sent (60–3600).
    pub code_ttl_seconds: i32,
    /// Wrong tries per challenge before it locks (1–10).
    pub max_attempts: i32,
    /// Seconds before "Send New Code" is accepted again (0–600).
    pub resend_cooldown_seconds: i32,
    /// Lifetime of "Trust this device" (0–365; 0 disables it).
    pub trust_device_days: i32,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl TenantSettings {
    /// The contract's defaults: everything off, 6 digits, 10 minutes,
    /// 5 tries, 30 s cooldown, 30 days of trust.
    pub fn defaults_for(tenant_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            require_admin_2fa: false,
            admin_2fa_allowed: false,
            customer_2fa_allowed: false,
            code_length: 6,
            code_ttl_seconds: 600,
            max_attempts: 5,
            resend_cooldown_seconds: 30,
            trust_device_days: 30,
            updated_at: Timestamp::now(),
        }
    }
}

/// The columns of a [`TenantSettings`] row.
pub(crate) const COLUMNS: &str = "tenant_id, require_admin_2fa, admin_2fa_allowed, \
    customer_2fa_allowed, code_length, code_ttl_seconds, max_attempts, resend_cooldown_seconds, \
    trust_device_days, updated_at";

const SELECT: &str = "select tenant_id, require_admin_2fa, admin_2fa_allowed, customer_2fa_allowed, \
    code_length, code_ttl_seconds, max_attempts, resend_cooldown_seconds, trust_device_days, \
    updated_at from tenant_settings where tenant_id = $1";

impl Store {
    /// A tenant's settings, read inside a transaction.
    pub async fn settings_in(&self, tx: &mut Tx, tenant_id: &str) -> StoreResult<TenantSettings> {
        let row: Option<TenantSettings> = with_tx!(tx, conn => sqlx::query_as(SELECT)
            .bind(tenant_id).fetch_optional(conn).await)?;
        row.ok_or(StoreError::NotFound)
    }

    /// A tenant's settings.
    pub async fn settings(&self, tenant_id: &str) -> StoreResult<TenantSettings> {
        let row: Option<TenantSettings> = with_db!(&self.db, pool => sqlx::query_as(SELECT)
            .bind(tenant_id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    /// Writes a tenant's whole settings row (insert or replace).
    pub async fn write_settings(&self, tx: &mut Tx, s: &TenantSettings) -> StoreResult<()> {
        with_tx!(tx, conn => sqlx::query(
            "insert into tenant_settings (tenant_id, require_admin_2fa, admin_2fa_allowed, \
                customer_2fa_allowed, code_length, code_ttl_seconds, max_attempts, \
                resend_cooldown_seconds, trust_device_days, updated_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             on conflict (tenant_id) do update set \
                require_admin_2fa = excluded.require_admin_2fa, \
                admin_2fa_allowed = excluded.admin_2fa_allowed, \
                customer_2fa_allowed = excluded.customer_2fa_allowed, \
                code_length = excluded.code_length, \
                code_ttl_seconds = excluded.code_ttl_seconds, \
                max_attempts = excluded.max_attempts, \
                resend_cooldown_seconds = excluded.resend_cooldown_seconds, \
                trust_device_days = excluded.trust_device_days, \
                updated_at = excluded.updated_at")
            .bind(&s.tenant_id).bind(s.require_admin_2fa).bind(s.admin_2fa_allowed)
            .bind(s.customer_2fa_allowed).bind(s.code_length).bind(s.code_ttl_seconds)
            .bind(s.max_attempts).bind(s.resend_cooldown_seconds).bind(s.trust_device_days)
            .bind(s.updated_at).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
