//! Tenants and their signing secrets (sealed with the master key).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use email2fa_db::{with_db, with_tx};
use ulid::Ulid;

use super::{Store, StoreError, StoreResult, TenantSettings, Timestamp};
use crate::crypto;

/// A tenant with the keys of its currently valid signing secrets.
#[derive(Clone)]
pub struct TenantWithKeys {
    /// The tenant id.
    pub id: String,
    /// Raw HMAC keys (decoded secrets); never logged.
    pub keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TenantWithKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantWithKeys")
            .field("id", &self.id)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .finish()
    }
}

/// How long the ingress trusts a tenant's keys read from the database.
///
/// Staleness is bounded both ways: a key read here still expires at its own
/// `expires_at` (checked at each use), a signature that no cached key
/// matches is checked again against the database (so a secret added by
/// `tenant rotate-secret` in another process works at once), and a secret
/// whose expiry was brought forward stays accepted at most this long.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Most tenants kept; past this the cache starts over (a bound, not an LRU:
/// a platform has a handful of tenants).
const KEY_CACHE_CAPACITY: usize = 4096;

/// How often per tenant a signature that matches none of the cached keys
/// may send the ingress back to the database. A flood of garbage
/// signatures costs at most one read (and decryption) per tenant per gap;
/// a secret rotated in another process is accepted at once, or (during
/// such a flood) within the gap.
pub const FORCED_REFRESH_GAP: Duration = Duration::from_secs(1);

/// The ingress's cache of tenants' signing keys (one database round trip
/// less per webhook), and of tenants that do not exist (a flood of
/// requests for an unknown tenant costs one read per [`KEY_CACHE_TTL`]).
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, CachedKeys>>,
}

struct CachedKeys {
    read_at: Instant,
    /// `None`: there is no such tenant.
    keys: Option<Vec<(Vec<u8>, Option<Timestamp>)>>,
    /// The last read forced by a signature that matched no cached key.
    forced_at: Option<Instant>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

/// What the cache knows of a tenant.
enum Cached {
    /// Its keys still valid now.
    Tenant(TenantWithKeys),
    /// There is no such tenant.
    Absent,
    /// Nothing fresh: ask the database.
    Unknown,
}

impl KeyCache {
    fn get(&self, id: &str, now: Timestamp) -> Cached {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cached) = entries.get(id) else {
            return Cached::Unknown;
        };
        if cached.read_at.elapsed() >= KEY_CACHE_TTL {
            return Cached::Unknown;
        }
        let Some(keys) = &cached.keys else {
            return Cached::Absent;
        };
        Cached::Tenant(TenantWithKeys {
            id: id.to_string(),
            keys: keys
                .iter()
                .filter(|(_, expires_at)| expires_at.is_none_or(|at| at > now))
                .map(|(key, _)| key.clone())
                .collect(),
        })
    }

    fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(id);
    }

    /// Whether a read forced by a mismatched signature may go ahead now
    /// (and, if so, notes it): at most one per [`FORCED_REFRESH_GAP`].
    fn may_force(&self, id: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cached) = entries.get_mut(id) else {
            return true;
        };
        if cached
            .forced_at
            .is_some_and(|at| at.elapsed() < FORCED_REFRESH_GAP)
        {
            return false;
        }
        cached.forced_at = Some(Instant::now());
        true
    }

    fn put(&self, id: &str, keys: Option<Vec<(Vec<u8>, Option<Timestamp>)>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= KEY_CACHE_CAPACITY && !entries.contains_key(id) {
            entries.clear();
        }
        let forced_at = entries.get(id).and_then(|c| c.forced_at);
        let read_at = Instant::now();
        entries.insert(
            id.to_string(),
            CachedKeys {
                read_at,
                keys,
                forced_at,
            },
        );
    }
}

/// A tenant as `tenant list` shows it: no secrets, only their validity.
#[derive(Debug, Clone)]
pub struct TenantSummary {
    /// The tenant id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Its secrets, newest first.
    pub secrets: Vec<TenantSecretInfo>,
}

/// One signing secret's metadata.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantSecretInfo {
    /// The secret's id (not the secret).
    pub id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it stops being accepted; `None` until a rotation.
    pub expires_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: String,
    name: String,
    created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    secret_sealed: Option<Vec<u8>>,
}

#[derive(sqlx::FromRow)]
struct ExpiringKeyRow {
    secret_sealed: Option<Vec<u8>>,
    expires_at: Option<Timestamp>,
}

fn secret_context(tenant_id: &str) -> String {
    format!("signing_secret:{tenant_id}")
}

impl Store {
    /// Creates a tenant with its first signing secret and default settings.
    #[tracing::instrument(skip_all, fields(tenant = %id))]
    pub async fn create_tenant(&self, id: &str, name: &str, secret: &str) -> StoreResult<()> {
        let now = Timestamp::now();
        let mut tx = self.begin().await?;
        with_tx!(&mut tx, conn => sqlx::query("insert into tenants (id, name, created_at) values ($1, $2, $3)")
            .bind(id).bind(name).bind(now).execute(conn).await.map(|r| r.rows_affected()))?;
        self.insert_secret(&mut tx, id, secret, now).await?;
        self.insert_default_settings(&mut tx, id, now).await?;
        super::commit(tx).await?;
        // Known at once in this process (it may be cached as absent).
        self.key_cache.forget(id);
        Ok(())
    }

    async fn insert_secret(
        &self,
        tx: &mut super::Tx,
        tenant_id: &str,
        secret: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let sealed = self
            .secret_box
            .seal(secret.as_bytes(), &secret_context(tenant_id));
        let id = Ulid::generate().to_string();
        with_tx!(tx, conn => sqlx::query(
            "insert into tenant_secrets (id, tenant_id, secret_sealed, created_at, expires_at) \
             values ($1, $2, $3, $4, null)")
            .bind(&id).bind(tenant_id).bind(&sealed).bind(now).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    async fn insert_default_settings(
        &self,
        tx: &mut super::Tx,
        tenant_id: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut settings = TenantSettings::defaults_for(tenant_id);
        settings.updated_at = now;
        self.write_settings(tx, &settings).await
    }

    /// Adds a new secret and lets the older ones expire at `overlap_until`
    /// (an older one already expiring sooner keeps its earlier end).
    #[tracing::instrument(skip_all, fields(tenant = %id))]
    pub async fn rotate_secret(
        &self,
        id: &str,
        secret: &str,
        overlap_until: Timestamp,
    ) -> StoreResult<()> {
        let now = Timestamp::now();
        let mut tx = self.begin().await?;
        let exists: Option<(String,)> = with_tx!(&mut tx, conn => sqlx::query_as("select id from tenants where id = $1")
            .bind(id).fetch_optional(conn).await)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        with_tx!(&mut tx, conn => sqlx::query(
            "update tenant_secrets set expires_at = $2 \
             where tenant_id = $1 and (expires_at is null or expires_at > $2)")
            .bind(id).bind(overlap_until).execute(conn).await.map(|r| r.rows_affected()))?;
        self.insert_secret(&mut tx, id, secret, now).await?;
        super::commit(tx).await?;
        // This process sees the new expiries at once; others within
        // KEY_CACHE_TTL.
        self.key_cache.forget(id);
        Ok(())
    }

    /// The tenant and its valid keys, or `None` when there is no such
    /// tenant: from the [`KeyCache`] when it was read less than
    /// [`KEY_CACHE_TTL`] ago. The `bool` tells whether it came from the
    /// cache (a signature that fails against cached keys deserves a
    /// [`Store::tenant_with_keys`]).
    pub async fn tenant_with_cached_keys(
        &self,
        id: &str,
    ) -> StoreResult<Option<(TenantWithKeys, bool)>> {
        match self.key_cache.get(id, Timestamp::now()) {
            Cached::Tenant(tenant) => Ok(Some((tenant, true))),
            Cached::Absent => Ok(None),
            Cached::Unknown => Ok(self
                .tenant_with_keys(id)
                .await?
                .map(|tenant| (tenant, false))),
        }
    }

    /// The tenant's keys read again after a signature matched none of the
    /// cached ones, at most once per [`FORCED_REFRESH_GAP`] per tenant:
    /// `Ok(None)` when a read was forced too recently (the cached keys
    /// stand), else [`Store::tenant_with_keys`].
    pub async fn refresh_keys_after_mismatch(
        &self,
        id: &str,
    ) -> StoreResult<Option<Option<TenantWithKeys>>> {
        if !self.key_cache.may_force(id) {
            return Ok(None);
        }
        Ok(Some(self.tenant_with_keys(id).await?))
    }

    /// The tenant and its valid keys, read from the database (and kept in
    /// the [`KeyCache`]), or `None` when there is no such tenant.
    #[tracing::instrument(skip_all, fields(tenant = %id))]
    pub async fn tenant_with_keys(&self, id: &str) -> StoreResult<Option<TenantWithKeys>> {
        let now = Timestamp::now();
        let rows: Vec<ExpiringKeyRow> = with_db!(&self.db, pool => sqlx::query_as(
            "select s.secret_sealed, s.expires_at from tenants t \
             left join tenant_secrets s on s.tenant_id = t.id \
                 and (s.expires_at is null or s.expires_at > $2) \
             where t.id = $1")
            .bind(id).bind(now).fetch_all(pool).await)?;
        if rows.is_empty() {
            self.key_cache.put(id, None);
            return Ok(None);
        }
        let context = secret_context(id);
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(sealed) = row.secret_sealed else {
                continue;
            };
            let secret = self.secret_box.open(&sealed, &context)?;
            let secret = String::from_utf8_lossy(&secret);
            if let Some(key) = crypto::decode_signing_secret(&secret) {
                keys.push((key, row.expires_at));
            }
        }
        self.key_cache.put(id, Some(keys.clone()));
        Ok(Some(TenantWithKeys {
            id: id.to_string(),
            keys: keys.into_iter().map(|(key, _)| key).collect(),
        }))
    }

    /// The newest valid signing secret of a tenant (for `webhook send`).
    pub async fn newest_secret(&self, id: &str) -> StoreResult<Option<String>> {
        let now = Timestamp::now();
        let row: Option<KeyRow> = with_db!(&self.db, pool => sqlx::query_as(
            "select secret_sealed from tenant_secrets \
             where tenant_id = $1 and (expires_at is null or expires_at > $2) \
             order by created_at desc limit 1")
            .bind(id).bind(now).fetch_optional(pool).await)?;
        let Some(sealed) = row.and_then(|row| row.secret_sealed) else {
            return Ok(None);
        };
        let secret = self.secret_box.open(&sealed, &secret_context(id))?;
        Ok(Some(String::from_utf8_lossy(&secret).into_owned()))
    }

    /// Every tenant with the validity of its secrets.
    pub async fn list_tenants(&self) -> StoreResult<Vec<TenantSummary>> {
        let tenants: Vec<TenantRow> = with_db!(&self.db, pool => sqlx::query_as(
            "select id, name, created_at from tenants order by id")
            .fetch_all(pool).await)?;
        let mut out = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let secrets: Vec<TenantSecretInfo> = with_db!(&self.db, pool => sqlx::query_as(
                "select id, created_at, expires_at from tenant_secrets \
                 where tenant_id = $1 order by created_at desc, id desc")
                .bind(&tenant.id).fetch_all(pool).await)?;
            out.push(TenantSummary {
                id: tenant.id,
                name: tenant.name,
                created_at: tenant.created_at,
                secrets,
            });
        }
        Ok(out)
    }

    /// Gives a tenant a new name (the sender name of its emails whose SMTP
    /// provider has no `from_name`, from the next email on).
    #[tracing::instrument(skip_all, fields(tenant = %id))]
    pub async fn rename_tenant(&self, id: &str, name: &str) -> StoreResult<()> {
        let changed = with_db!(&self.db, pool => sqlx::query("update tenants set name = $2 where id = $1")
            .bind(id).bind(name).execute(pool).await.map(|r| r.rows_affected()))?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// How many tenants exist (the first start creates `default` on zero).
    pub async fn count_tenants(&self) -> StoreResult<i64> {
        let (count,): (i64,) = with_db!(&self.db, pool => sqlx::query_as(
            "select count(*) from tenants").fetch_one(pool).await)?;
        Ok(count)
    }
}
