//! The one store over PostgreSQL and SQLite: every query of the service, with
//! the sqlx errors mapped to [`StoreError`] here and nowhere else.
//!
//! Queries are written once in lowercase SQL with `$n` placeholders and run
//! on either backend through `with_db!` (pool) or `with_tx!`
//! (transaction). One file per table family.

pub mod batch;
pub mod challenges;
mod factors;
mod minted_codes;
pub mod providers;
mod receipts;
mod records;
mod send_context;
mod tenant_settings;
mod tenants;

pub use challenges::Challenge;
pub use email2fa_db::{Db, PoolConfig, Timestamp, Tx};
pub use factors::{Factor, TrustedDevice};
pub use minted_codes::MintedCode;
pub use providers::{SecondaryAuthProviderRow, ServiceProviderRow};
pub use receipts::{Receipt, ReceiptClaim};
pub use records::AuditEvent;
pub use send_context::{ChallengeState, SEND_CONTEXT, SendContext, SendContextRow};
pub use tenant_settings::TenantSettings;
pub use tenants::{KEY_CACHE_TTL, KeyCache, TenantSecretInfo, TenantSummary, TenantWithKeys};

use crate::crypto::{KeyedHasher, MasterKey, SecretBox, SecretBoxError};
use email2fa_db::{self as db, PG_SCHEMA};

/// What can go wrong in the store, in domain words.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is overloaded: callers answer 503.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write.
    #[error("already exists")]
    AlreadyExists,
    /// A foreign key refused the write or the delete.
    #[error("still referenced")]
    InUse,
    /// A sealed value does not open with this master key.
    #[error(transparent)]
    Sealed(#[from] SecretBoxError),
    /// Anything else (a bug, a schema mismatch).
    #[error("database error")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if db::is_unavailable(&error) {
            Self::Unavailable(error)
        } else if db::is_unique_violation(&error) {
            Self::AlreadyExists
        } else if matches!(&error, sqlx::Error::Database(e) if e.is_foreign_key_violation()) {
            Self::InUse
        } else if matches!(error, sqlx::Error::RowNotFound) {
            Self::NotFound
        } else {
            Self::Other(error)
        }
    }
}

/// Short for `Result<T, StoreError>`.
pub type StoreResult<T> = Result<T, StoreError>;

/// The store: a pool, the box that seals secrets at rest, and the keyed
/// hasher that stands in for codes and trust tokens.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    secret_box: SecretBox,
    hasher: KeyedHasher,
    key_cache: std::sync::Arc<KeyCache>,
    tenant_cache: std::sync::Arc<batch::TenantCache>,
}

const CREATE_SCHEMA: &str = "create schema if not exists email2fa";

const _: () = assert!(
    PG_SCHEMA.len() == "email2fa".len(),
    "CREATE_SCHEMA and analyze_grown_tables name PG_SCHEMA"
);

/// How often [`Store::analyze_grown_tables`] runs in every long-running
/// process.
pub const STATISTICS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The size (rows at the last analysis) from which a table's planner
/// statistics are left to autovacuum (see [`Store::analyze_grown_tables`]).
pub const STATISTICS_UNTIL_ROWS: f32 = 10_000.0;

impl Store {
    /// A store over an open pool, keyed by the master key.
    pub fn new(db: Db, master_key: &MasterKey) -> Self {
        Self {
            db,
            secret_box: SecretBox::new(master_key),
            hasher: KeyedHasher::new(master_key),
            key_cache: std::sync::Arc::default(),
            tenant_cache: std::sync::Arc::default(),
        }
    }

    /// Keyed hashing of codes and trust tokens.
    pub fn hasher(&self) -> &KeyedHasher {
        &self.hasher
    }

    /// The pool, for the delivery engine and readiness checks.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The box that seals and opens secrets at rest.
    pub fn secret_box(&self) -> &SecretBox {
        &self.secret_box
    }

    /// Applies the migrations of this backend (idempotent; PostgreSQL takes
    /// an advisory lock, so concurrent starts are safe).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        // apalis-sqlite keeps its migrations in the same `_sqlx_migrations`
        // table, so each migrator must ignore the other's versions.
        match &self.db {
            Db::Sqlite(pool, _) => {
                let mut migrator = sqlx::migrate!("./migrations/sqlite");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await
            }
            Db::Postgres(pool) => {
                sqlx::query(CREATE_SCHEMA).execute(pool).await?;
                let mut migrator = sqlx::migrate!("./migrations/postgres");
                migrator.set_ignore_missing(true);
                migrator.run(pool).await
            }
        }
    }

    /// Refreshes the planner statistics of the small tables (fewer than
    /// [`STATISTICS_UNTIL_ROWS`] rows at their last analysis) that grew
    /// (or changed) by more than 50 rows plus half their size since then,
    /// the service's and apalis's, on PostgreSQL; returns the tables it
    /// analysed (none on SQLite).
    ///
    /// PostgreSQL caches a plan per prepared statement and connection, and
    /// builds it from the statistics of the moment: plans made while the
    /// tables were empty (a new database, or statistics taken in the middle
    /// of a bulk load) scan whole tables once they hold rows, and the
    /// ingress slowed to a tenth until the next analysis. Autovacuum, where
    /// it runs at all, analyses a new table only after a minute or more;
    /// this runs every [`STATISTICS_CHECK`] and never analyses a table that
    /// did not change, and an analysis makes every connection plan its
    /// statements again. Growth by half keeps the analyses of a growing
    /// table logarithmic in its size: at 10 % they took a tenth of
    /// PostgreSQL's CPU under a steady load. Beyond
    /// [`STATISTICS_UNTIL_ROWS`] the plans no longer change shape (key
    /// lookups by index), while each analysis samples up to 30,000 rows:
    /// from there on the statistics are autovacuum's (the ingress's first
    /// minute of load on a new database spent a fifth of PostgreSQL's time
    /// in this task's analyses of tables of 30,000 to 75,000 rows).
    pub async fn analyze_grown_tables(&self) -> StoreResult<Vec<String>> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(Vec::new());
        };
        let grown: Vec<(String,)> = sqlx::query_as(
            "select quote_ident(s.schemaname) || '.' || quote_ident(s.relname) \
             from pg_stat_user_tables s join pg_class c on c.oid = s.relid \
             where s.schemaname in ('email2fa', 'apalis') \
               and s.n_mod_since_analyze > 50 + 0.5 * greatest(c.reltuples, 0) \
               and c.reltuples < $1 \
             order by 1",
        )
        .bind(STATISTICS_UNTIL_ROWS)
        .fetch_all(pool)
        .await?;
        let tables: Vec<String> = grown.into_iter().map(|(name,)| name).collect();
        if !tables.is_empty() {
            let sql = sqlx::AssertSqlSafe(format!("analyze {}", tables.join(", ")));
            sqlx::query(sql).execute(pool).await?;
        }
        Ok(tables)
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> StoreResult<Tx> {
        Ok(self.db.begin().await?)
    }

    /// One round trip (readiness).
    pub async fn ping(&self) -> StoreResult<()> {
        Ok(self.db.ping().await?)
    }
}

/// Commits a transaction, mapping the error.
pub async fn commit(tx: Tx) -> StoreResult<()> {
    Ok(tx.commit().await?)
}
