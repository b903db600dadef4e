//! `service_provider.*` and `secondary_auth_provider.*`.

use serde::Serialize;

use super::{DeletedAnswer, EventContext, EventError};
use crate::events::{
    FieldError, ProviderDeleted, SecondaryAuthProviderUpserted, ServiceProviderUpserted,
};
use crate::store::{
    SecondaryAuthProviderRow, ServiceProviderRow, StoreError, Timestamp, providers::PasswordChange,
};

/// A service provider as answers show it: the password only as `password_set`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceProviderAnswer {
    /// The host's id.
    pub id: String,
    /// Title.
    pub title: String,
    /// `smtp`.
    pub kind: String,
    /// SMTP details.
    pub smtp: SmtpAnswer,
    /// Created.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
}

/// The `smtp` object of [`ServiceProviderAnswer`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SmtpAnswer {
    /// Host.
    pub host: String,
    /// Port.
    pub port: i32,
    /// `starttls`, `tls` or `none`.
    pub security: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Whether a password is stored (it is never shown).
    pub password_set: bool,
    /// Sender address.
    pub from_address: String,
    /// Sender name.
    pub from_name: Option<String>,
}

impl From<ServiceProviderRow> for ServiceProviderAnswer {
    fn from(row: ServiceProviderRow) -> Self {
        Self {
            smtp: SmtpAnswer {
                host: row.smtp_host,
                port: row.smtp_port,
                security: row.smtp_security,
                username: row.smtp_username,
                password_set: row.smtp_password_sealed.is_some(),
                from_address: row.from_address,
                from_name: row.from_name,
            },
            id: row.id,
            title: row.title,
            kind: row.kind,
            created_at: row.created_at.to_rfc3339(),
            updated_at: row.updated_at.to_rfc3339(),
        }
    }
}

/// A secondary auth provider as answers show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecondaryAuthProviderAnswer {
    /// The host's id.
    pub id: String,
    /// Title.
    pub title: String,
    /// The service provider that sends its emails.
    pub service_provider_id: String,
    /// Created.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
}

/// Adds or changes an SMTP service provider.
pub async fn upsert_service(
    ctx: &mut EventContext<'_>,
    event: ServiceProviderUpserted,
) -> Result<ServiceProviderAnswer, EventError> {
    event.validate()?;
    let now = Timestamp::now();
    let smtp = event.smtp;
    let password = match smtp.password {
        None => PasswordChange::Keep,
        Some(None) => PasswordChange::Clear,
        Some(Some(secret)) => PasswordChange::Set(secret),
    };
    let row = ServiceProviderRow {
        tenant_id: ctx.tenant_id.to_string(),
        id: event.id,
        title: event.title,
        kind: event.kind,
        smtp_host: smtp.host,
        smtp_port: i32::from(smtp.port),
        smtp_security: smtp.security.as_str().to_string(),
        smtp_username: smtp.username,
        smtp_password_sealed: None,
        from_address: smtp.from_address,
        from_name: smtp.from_name,
        created_at: now,
        updated_at: now,
    };
    let stored = ctx
        .store
        .upsert_service_provider(ctx.tx, &row, &password)
        .await?;
    Ok(stored.into())
}

/// Deletes an SMTP service provider unless a secondary auth provider uses it.
pub async fn delete_service(
    ctx: &mut EventContext<'_>,
    event: ProviderDeleted,
) -> Result<DeletedAnswer, EventError> {
    event.validate()?;
    let used_by = ctx
        .store
        .providers_using(ctx.tx, ctx.tenant_id, &event.id)
        .await?;
    if !used_by.is_empty() {
        return Err(EventError::ProviderInUse {
            id: event.id,
            used_by,
        });
    }
    let deleted = ctx
        .store
        .delete_service_provider(ctx.tx, ctx.tenant_id, &event.id)
        .await?;
    Ok(DeletedAnswer {
        id: event.id,
        deleted,
    })
}

/// Adds or changes a secondary auth provider.
pub async fn upsert_secondary(
    ctx: &mut EventContext<'_>,
    event: SecondaryAuthProviderUpserted,
) -> Result<SecondaryAuthProviderAnswer, EventError> {
    event.validate()?;
    let now = Timestamp::now();
    let row = SecondaryAuthProviderRow {
        tenant_id: ctx.tenant_id.to_string(),
        id: event.id,
        title: event.title,
        service_provider_id: event.service_provider_id,
        created_at: now,
        updated_at: now,
    };
    let stored = match ctx.store.upsert_secondary_auth_provider(ctx.tx, &row).await {
        Err(StoreError::NotFound) => {
            return Err(EventError::Invalid(vec![FieldError::new(
                "service_provider_id",
                format!(
                    "no service provider {:?}; send service_provider.upserted first",
                    row.service_provider_id
                ),
            )]));
        }
        other => other?,
    };
    Ok(SecondaryAuthProviderAnswer {
        id: stored.id,
        title: stored.title,
        service_provider_id: stored.service_provider_id,
        created_at: stored.created_at.to_rfc3339(),
        updated_at: stored.updated_at.to_rfc3339(),
    })
}

/// Deletes a secondary auth provider.
pub async fn delete_secondary(
    ctx: &mut EventContext<'_>,
    event: ProviderDeleted,
) -> Result<DeletedAnswer, EventError> {
    event.validate()?;
    let deleted = ctx
        .store
        .delete_secondary_auth_provider(ctx.tx, ctx.tenant_id, &event.id)
        .await?;
    Ok(DeletedAnswer {
        id: event.id,
        deleted,
    })
}
