//! What preparing an email reads: the service's columns that the engine
//! reads with each delivery it claims, in the claim's own statement.

use email2fa_workers::engine::ContextQuery;

use super::{ServiceProviderRow, Timestamp};

/// The state of a code email's challenge that decides whether to mint.
#[derive(Debug, Clone)]
pub struct ChallengeState {
    /// `pending`, `verified`, `locked`, `expired` or `superseded`.
    pub status: String,
    /// The newest send asked for; any other send is superseded.
    pub current_delivery_id: Option<String>,
    /// Digits per code.
    pub code_length: i32,
    /// A code's lifetime from its send.
    pub code_ttl_seconds: i32,
}

/// The tenant's name, the service provider that sends for the delivery's
/// secondary auth provider (or for the tenant's first one, when that was
/// deleted since), and the code email's challenge.
#[derive(Debug, Clone)]
pub struct SendContext {
    /// The tenant's display name.
    pub tenant_name: String,
    /// The secondary auth provider that sends it and its service provider:
    /// `None` when the tenant has no secondary auth provider left.
    pub provider: Option<(String, Option<ServiceProviderRow>)>,
    /// The challenge asked for; `None` when it no longer exists (or none was
    /// asked for).
    pub challenge: Option<ChallengeState>,
}

/// The service's columns read with each claimed delivery
/// ([`SEND_CONTEXT`]), decoded.
#[derive(Debug, sqlx::FromRow)]
pub struct SendContextRow {
    tenant_name: Option<String>,
    sa_service_provider_id: Option<String>,
    sp_id: Option<String>,
    sp_title: Option<String>,
    sp_kind: Option<String>,
    sp_smtp_host: Option<String>,
    sp_smtp_port: Option<i32>,
    sp_smtp_security: Option<String>,
    sp_smtp_username: Option<String>,
    sp_smtp_password_sealed: Option<Vec<u8>>,
    sp_from_address: Option<String>,
    sp_from_name: Option<String>,
    sp_created_at: Option<Timestamp>,
    sp_updated_at: Option<Timestamp>,
    c_status: Option<String>,
    c_current_delivery_id: Option<String>,
    c_code_length: Option<i32>,
    c_code_ttl_seconds: Option<i32>,
}

/// What the engine reads beside each delivery it claims, in the same
/// statement: the tenant's name, the secondary auth provider that sends it
/// (the requested one when it exists, else the tenant's first in
/// `created_at, id` order: its default), its service provider,
/// and the code email's challenge. Joins onto the claimed delivery `d`;
/// left joins only, so that every claimed delivery has its row.
pub const SEND_CONTEXT: ContextQuery = ContextQuery {
    columns: "t.name as tenant_name, \
        sa.service_provider_id as sa_service_provider_id, \
        sp.id as sp_id, sp.title as sp_title, sp.kind as sp_kind, \
        sp.smtp_host as sp_smtp_host, sp.smtp_port as sp_smtp_port, \
        sp.smtp_security as sp_smtp_security, sp.smtp_username as sp_smtp_username, \
        sp.smtp_password_sealed as sp_smtp_password_sealed, \
        sp.from_address as sp_from_address, sp.from_name as sp_from_name, \
        sp.created_at as sp_created_at, sp.updated_at as sp_updated_at, \
        c.status as c_status, c.current_delivery_id as c_current_delivery_id, \
        c.code_length as c_code_length, c.code_ttl_seconds as c_code_ttl_seconds",
    joins: "left join tenants t on t.id = d.tenant_id \
        left join secondary_auth_providers sa on sa.tenant_id = d.tenant_id and sa.id = coalesce(\
            (select x.id from secondary_auth_providers x where x.tenant_id = d.tenant_id \
                and x.id = d.secondary_auth_provider_id), \
            (select x.id from secondary_auth_providers x where x.tenant_id = d.tenant_id \
                order by x.created_at, x.id limit 1)) \
        left join service_providers sp on sp.tenant_id = d.tenant_id \
            and sp.id = sa.service_provider_id \
        left join challenges c on c.tenant_id = d.tenant_id and c.id = d.challenge_id \
            and d.kind <> 'factor_removed'",
};

impl SendContextRow {
    /// The [`SendContext`] of a delivery of `tenant_id`; `None` when the
    /// tenant no longer exists.
    pub fn into_send_context(self, tenant_id: &str) -> Option<SendContext> {
        let row = self;
        let tenant_name = row.tenant_name?;
        let service_provider = match (
            row.sp_id,
            row.sp_title,
            row.sp_kind,
            row.sp_smtp_host,
            row.sp_smtp_port,
            row.sp_smtp_security,
            row.sp_from_address,
            row.sp_created_at,
            row.sp_updated_at,
        ) {
            (
                Some(id),
                Some(title),
                Some(kind),
                Some(smtp_host),
                Some(smtp_port),
                Some(smtp_security),
                Some(from_address),
                Some(created_at),
                Some(updated_at),
            ) => Some(ServiceProviderRow {
                tenant_id: tenant_id.to_string(),
                id,
                title,
                kind,
                smtp_host,
                smtp_port,
                smtp_security,
                smtp_username: row.sp_smtp_username,
                smtp_password_sealed: row.sp_smtp_password_sealed,
                from_address,
                from_name: row.sp_from_name,
                created_at,
                updated_at,
            }),
            _ => None,
        };
        let challenge = match (row.c_status, row.c_code_length, row.c_code_ttl_seconds) {
            (Some(status), Some(code_length), Some(code_ttl_seconds)) => Some(ChallengeState {
                status,
                current_delivery_id: row.c_current_delivery_id,
                code_length,
                code_ttl_seconds,
            }),
            _ => None,
        };
        Some(SendContext {
            tenant_name,
            provider: row
                .sa_service_provider_id
                .map(|sp_id| (sp_id, service_provider)),
            challenge,
        })
    }
}
