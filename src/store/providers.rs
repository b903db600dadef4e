//! Service providers (SMTP) and secondary auth providers, the two lists of
//! the Services Manager. SMTP passwords are sealed; they leave this module
//! only as "is one set" or, for the delivery engine, opened in memory.

use email2fa_db::{with_db, with_tx};

use super::{Store, StoreError, StoreResult, Timestamp, Tx};

/// A stored SMTP service provider.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ServiceProviderRow {
    /// Owner.
    pub tenant_id: String,
    /// The host's id for it.
    pub id: String,
    /// Its title in the Services Manager.
    pub title: String,
    /// Always `smtp` for now.
    pub kind: String,
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP server port.
    pub smtp_port: i32,
    /// `starttls`, `tls` or `none`.
    pub smtp_security: String,
    /// SMTP user name, if it authenticates.
    pub smtp_username: Option<String>,
    /// The sealed password (never shown).
    pub smtp_password_sealed: Option<Vec<u8>>,
    /// Envelope and header sender.
    pub from_address: String,
    /// Display name of the sender.
    pub from_name: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// A stored secondary auth provider.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecondaryAuthProviderRow {
    /// Owner.
    pub tenant_id: String,
    /// The host's id for it.
    pub id: String,
    /// Its title.
    pub title: String,
    /// The service provider that sends its emails.
    pub service_provider_id: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// What to do with the stored SMTP password on an upsert.
#[derive(Debug, Clone)]
pub enum PasswordChange {
    /// Keep what is stored (the field was absent).
    Keep,
    /// Remove it (`null`).
    Clear,
    /// Seal and store this one.
    Set(secrecy::SecretString),
}

const SP_COLUMNS: &str = "tenant_id, id, title, kind, smtp_host, smtp_port, smtp_security, \
    smtp_username, smtp_password_sealed, from_address, from_name, created_at, updated_at";

/// The sealing context of an SMTP password: bound to tenant and provider.
pub fn password_context(tenant_id: &str, provider_id: &str) -> String {
    format!("smtp_password:{tenant_id}:{provider_id}")
}

impl Store {
    /// The SMTP server (`host:port`) a secondary auth provider sends
    /// through, for the operator's views; `None` when either provider is
    /// gone. Never its credentials.
    pub async fn smtp_server_of(
        &self,
        tenant_id: &str,
        secondary_auth_provider_id: &str,
    ) -> StoreResult<Option<String>> {
        let row: Option<(String, i32)> = with_db!(&self.db, pool => sqlx::query_as(
            "select s.smtp_host, s.smtp_port from secondary_auth_providers a \
             join service_providers s on s.tenant_id = a.tenant_id and s.id = a.service_provider_id \
             where a.tenant_id = $1 and a.id = $2")
            .bind(tenant_id).bind(secondary_auth_provider_id).fetch_optional(pool).await)?;
        Ok(row.map(|(host, port)| format!("{host}:{port}")))
    }

    /// One service provider.
    pub async fn service_provider_in(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
    ) -> StoreResult<Option<ServiceProviderRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "select {SP_COLUMNS} from service_providers where tenant_id = $1 and id = $2"
        ));
        Ok(with_tx!(tx, conn => sqlx::query_as(sql)
            .bind(tenant_id).bind(id).fetch_optional(conn).await)?)
    }

    /// Inserts or updates a service provider; returns the stored row.
    pub async fn upsert_service_provider(
        &self,
        tx: &mut Tx,
        row: &ServiceProviderRow,
        password: &PasswordChange,
    ) -> StoreResult<ServiceProviderRow> {
        use secrecy::ExposeSecret;
        let existing = self
            .service_provider_in(tx, &row.tenant_id, &row.id)
            .await?;
        let sealed = match password {
            PasswordChange::Keep => existing
                .as_ref()
                .and_then(|e| e.smtp_password_sealed.clone()),
            PasswordChange::Clear => None,
            PasswordChange::Set(secret) => Some(self.secret_box.seal(
                secret.expose_secret().as_bytes(),
                &password_context(&row.tenant_id, &row.id),
            )),
        };
        let created_at = existing.map_or(row.updated_at, |e| e.created_at);
        with_tx!(tx, conn => sqlx::query(
            "insert into service_providers (tenant_id, id, title, kind, smtp_host, smtp_port, \
                smtp_security, smtp_username, smtp_password_sealed, from_address, from_name, \
                created_at, updated_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             on conflict (tenant_id, id) do update set title = excluded.title, \
                kind = excluded.kind, smtp_host = excluded.smtp_host, \
                smtp_port = excluded.smtp_port, smtp_security = excluded.smtp_security, \
                smtp_username = excluded.smtp_username, \
                smtp_password_sealed = excluded.smtp_password_sealed, \
                from_address = excluded.from_address, from_name = excluded.from_name, \
                updated_at = excluded.updated_at")
            .bind(&row.tenant_id).bind(&row.id).bind(&row.title).bind(&row.kind)
            .bind(&row.smtp_host).bind(row.smtp_port).bind(&row.smtp_security)
            .bind(&row.smtp_username).bind(&sealed).bind(&row.from_address)
            .bind(&row.from_name).bind(created_at).bind(row.updated_at)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(ServiceProviderRow {
            smtp_password_sealed: sealed,
            created_at,
            ..row.clone()
        })
    }

    /// Deletes a service provider. `Err(InUse)` lists nothing: callers ask
    /// [`Store::providers_using`] first to say which providers hold it.
    pub async fn delete_service_provider(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
    ) -> StoreResult<bool> {
        let done = with_tx!(tx, conn => sqlx::query(
            "delete from service_providers where tenant_id = $1 and id = $2")
            .bind(tenant_id).bind(id).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(done > 0)
    }

    /// Ids of the secondary auth providers that send through a service provider.
    pub async fn providers_using(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        service_provider_id: &str,
    ) -> StoreResult<Vec<String>> {
        let rows: Vec<(String,)> = with_tx!(tx, conn => sqlx::query_as(
            "select id from secondary_auth_providers \
             where tenant_id = $1 and service_provider_id = $2 order by id")
            .bind(tenant_id).bind(service_provider_id).fetch_all(conn).await)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Inserts or updates a secondary auth provider; returns the stored row.
    /// `Err(NotFound)` when its service provider does not exist.
    pub async fn upsert_secondary_auth_provider(
        &self,
        tx: &mut Tx,
        row: &SecondaryAuthProviderRow,
    ) -> StoreResult<SecondaryAuthProviderRow> {
        if self
            .service_provider_in(tx, &row.tenant_id, &row.service_provider_id)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound);
        }
        let (created_at,): (Timestamp,) = with_tx!(tx, conn => sqlx::query_as(
            "insert into secondary_auth_providers \
                (tenant_id, id, title, service_provider_id, created_at, updated_at) \
             values ($1, $2, $3, $4, $5, $5) \
             on conflict (tenant_id, id) do update set title = excluded.title, \
                service_provider_id = excluded.service_provider_id, \
                updated_at = excluded.updated_at \
             returning created_at")
            .bind(&row.tenant_id).bind(&row.id).bind(&row.title)
            .bind(&row.service_provider_id).bind(row.updated_at)
            .fetch_one(conn).await)?;
        Ok(SecondaryAuthProviderRow {
            created_at,
            ..row.clone()
        })
    }

    /// Deletes a secondary auth provider.
    pub async fn delete_secondary_auth_provider(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        id: &str,
    ) -> StoreResult<bool> {
        let done = with_tx!(tx, conn => sqlx::query(
            "delete from secondary_auth_providers where tenant_id = $1 and id = $2")
            .bind(tenant_id).bind(id).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(done > 0)
    }
}

pub(crate) const SAP_COLUMNS: &str =
    "tenant_id, id, title, service_provider_id, created_at, updated_at";

impl Store {}
