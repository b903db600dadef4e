//! What a login decision reads, in one round trip.

use email2fa_workers::with_tx;

use super::{
    Factor, SecondaryAuthProviderRow, Store, StoreError, StoreResult, TenantSettings, Timestamp, Tx,
};

/// The tenant's settings, the user's first factor (oldest, as
/// [`Store::user_factors`] orders them) and that factor's secondary auth
/// provider.
#[derive(Debug, Clone)]
pub struct LoginContext {
    /// The tenant's settings.
    pub settings: TenantSettings,
    /// The user's first factor; `None` when not enrolled.
    pub factor: Option<Factor>,
    /// The factor's provider; `None` when not enrolled or when the provider
    /// was deleted since the enrolment.
    pub provider: Option<SecondaryAuthProviderRow>,
}

#[derive(sqlx::FromRow)]
struct LoginContextRow {
    #[sqlx(flatten)]
    settings: TenantSettings,
    f_id: Option<String>,
    f_role: Option<String>,
    f_email: Option<String>,
    f_provider: Option<String>,
    f_created_at: Option<Timestamp>,
    p_id: Option<String>,
    p_title: Option<String>,
    p_service_provider_id: Option<String>,
    p_created_at: Option<Timestamp>,
    p_updated_at: Option<Timestamp>,
}

const SELECT: &str = "select s.tenant_id, s.require_admin_2fa, s.admin_2fa_allowed, \
        s.customer_2fa_allowed, s.code_length, s.code_ttl_seconds, s.max_attempts, \
        s.resend_cooldown_seconds, s.trust_device_days, s.updated_at, \
        f.id as f_id, f.role as f_role, f.email as f_email, \
        f.secondary_auth_provider_id as f_provider, f.created_at as f_created_at, \
        p.id as p_id, p.title as p_title, p.service_provider_id as p_service_provider_id, \
        p.created_at as p_created_at, p.updated_at as p_updated_at \
    from tenant_settings s \
    left join factors f on f.tenant_id = s.tenant_id and f.id = (select id from factors \
        where tenant_id = $1 and user_id = $2 order by created_at, id limit 1) \
    left join secondary_auth_providers p on p.tenant_id = s.tenant_id \
        and p.id = f.secondary_auth_provider_id \
    where s.tenant_id = $1";

impl Store {
    /// The [`LoginContext`] of `user_id`, in one statement (three reads
    /// before: settings, factors, provider).
    pub async fn login_context(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
    ) -> StoreResult<LoginContext> {
        let row: Option<LoginContextRow> = with_tx!(tx, conn => sqlx::query_as(SELECT)
            .bind(tenant_id).bind(user_id).fetch_optional(conn).await)?;
        let row = row.ok_or(StoreError::NotFound)?;
        let factor = match (
            row.f_id,
            row.f_role,
            row.f_email,
            row.f_provider,
            row.f_created_at,
        ) {
            (Some(id), Some(role), Some(email), Some(provider), Some(created_at)) => Some(Factor {
                tenant_id: tenant_id.to_string(),
                id,
                user_id: user_id.to_string(),
                role,
                email,
                secondary_auth_provider_id: provider,
                created_at,
            }),
            _ => None,
        };
        let provider = match (
            row.p_id,
            row.p_title,
            row.p_service_provider_id,
            row.p_created_at,
            row.p_updated_at,
        ) {
            (
                Some(id),
                Some(title),
                Some(service_provider_id),
                Some(created_at),
                Some(updated_at),
            ) => Some(SecondaryAuthProviderRow {
                tenant_id: tenant_id.to_string(),
                id,
                title,
                service_provider_id,
                created_at,
                updated_at,
            }),
            _ => None,
        };
        Ok(LoginContext {
            settings: row.settings,
            factor,
            provider,
        })
    }
}
