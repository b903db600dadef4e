//! The settings and secondary auth providers of the tenants a batch names,
//! cached: every batch needs them, and they change only when the Services
//! Manager saves.
//!
//! A change forgets the tenant at once in the process that made it
//! ([`Store::forget_tenant`]), and in every other process through a
//! PostgreSQL notification on [`CHANNEL`] sent by the changing transaction
//! ([`Store::announce_tenant_change`]) and heard by
//! [`Store::watch_tenant_changes`]. Entries also expire after [`TTL`], so a
//! notification lost with a broken connection costs seconds, not forever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::domain::batch::TenantState;
use crate::store::{Db, Store, StoreResult, Tx};

/// The PostgreSQL channel of tenant changes (payload: the tenant id).
pub const CHANNEL: &str = "email2fa_tenants";

/// How long an entry serves without a change being heard.
pub const TTL: Duration = Duration::from_secs(5);

/// Most tenants kept; past this the cache starts over (a bound, not an LRU:
/// installations have a handful of tenants).
const MAX_TENANTS: usize = 10_000;

/// The cache.
#[derive(Debug, Default)]
pub struct TenantCache {
    entries: Mutex<HashMap<String, (TenantState, Instant)>>,
    /// Counts forgets: a read that began before one is not kept (it may
    /// predate the change that was forgotten).
    generation: AtomicU64,
}

impl TenantCache {
    /// The fresh entries of `ids`.
    pub(super) fn get_many(&self, ids: &[&str]) -> HashMap<String, TenantState> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter()
            .filter_map(|id| {
                let (state, read_at) = entries.get(*id)?;
                (read_at.elapsed() < TTL).then(|| ((*id).to_string(), state.clone()))
            })
            .collect()
    }

    /// Where a read starts: pass it to [`Self::put_many`].
    pub(super) fn generation(&self) -> (u64, Instant) {
        (self.generation.load(Ordering::Acquire), Instant::now())
    }

    /// Keeps what was just read, unless a tenant was forgotten since the
    /// read began.
    pub(super) fn put_many(&self, read: &HashMap<String, TenantState>, began: (u64, Instant)) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, read_at) = began;
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() + read.len() > MAX_TENANTS {
            entries.clear();
        }
        for (id, state) in read {
            entries.insert(id.clone(), (state.clone(), read_at));
        }
    }

    fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(id);
    }

    fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

impl Store {
    /// Tells the other processes, when `tx` commits, that a tenant's
    /// settings or providers changed (PostgreSQL; SQLite has one process).
    pub async fn announce_tenant_change(&self, tx: &mut Tx, tenant_id: &str) -> StoreResult<()> {
        if let Tx::Postgres(tx) = tx {
            sqlx::query("select pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(tenant_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Forgets a tenant's cached settings and providers (after a change
    /// committed in this process).
    pub fn forget_tenant(&self, tenant_id: &str) {
        self.tenant_cache.forget(tenant_id);
    }

    /// Listens for tenant changes of other processes until `background`
    /// stops (PostgreSQL; a no-op on SQLite). A lost connection forgets
    /// every tenant (changes may have been missed) and listens again.
    pub fn watch_tenant_changes(&self, background: &crate::background::Background) {
        let Db::Postgres(pool) = &self.db else {
            return;
        };
        let (pool, cache) = (pool.clone(), self.tenant_cache.clone());
        background.spawn("tenant change listener", async move {
            loop {
                let listening = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(CHANNEL).await?;
                    loop {
                        match listener.try_recv().await? {
                            Some(notice) => cache.forget(notice.payload()),
                            None => cache.clear(),
                        }
                    }
                };
                let ended: Result<(), sqlx::Error> = listening.await;
                if let Err(error) = ended {
                    tracing::debug!(%error, "tenant change listener lost; listening again");
                }
                cache.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
