//! The reads of a batch: a handful of set-based statements, each over the
//! JSON list of what the batch's webhooks name.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Serialize;

use super::rows::{self, Dialect, Ty, source};
use super::{dialect, fetch_rows};
use crate::domain::batch::{
    HotEvent, HotItem, Key, Security, SeenReceipt, Snapshot, TenantState, Window, key,
};
use crate::store::{
    Challenge, Factor, SecondaryAuthProviderRow, Store, StoreResult, TenantSettings, Timestamp,
    TrustedDevice, Tx, challenges,
};

/// One statement text per dialect, built once.
struct Sql {
    postgres: String,
    sqlite: String,
}

impl Sql {
    fn new(build: impl Fn(Dialect) -> String) -> Self {
        Self {
            postgres: build(Dialect::Postgres),
            sqlite: build(Dialect::Sqlite),
        }
    }

    fn get(&self, dialect: Dialect) -> &str {
        match dialect {
            Dialect::Postgres => &self.postgres,
            Dialect::Sqlite => &self.sqlite,
        }
    }
}

const PAIR: [(&str, Ty); 2] = [("tenant_id", Ty::Text), ("id", Ty::Text)];

#[derive(Serialize)]
struct Pair<'a> {
    tenant_id: &'a str,
    id: &'a str,
}

#[derive(Serialize)]
struct Token<'a> {
    tenant_id: &'a str,
    #[serde(serialize_with = "rows::hex")]
    token_hash: &'a [u8],
}

#[derive(Serialize)]
struct Since<'a> {
    tenant_id: &'a str,
    id: &'a str,
    #[serde(serialize_with = "rows::time")]
    since: Timestamp,
}

static RECEIPTS: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        format!(
            "select r.tenant_id, r.webhook_id, r.body_sha256, r.status, r.answer_sealed \
             from {} cross join webhook_receipts r \
             where r.tenant_id = x.tenant_id and r.webhook_id = x.id",
            source(d, 1, "x", &PAIR)
        )
    })
});

static CHALLENGES: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        let columns = prefixed("c", challenges::COLUMNS);
        format!(
            "select {columns} from {} cross join challenges c \
                where c.tenant_id = x.tenant_id and c.id = x.id \
             union \
             select {columns} from {} cross join challenges c \
                where c.tenant_id = y.tenant_id and c.user_id = y.id and c.status = 'pending'",
            source(d, 1, "x", &PAIR),
            source(d, 2, "y", &PAIR)
        )
    })
});

static FACTORS: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        format!(
            "select {} from {} cross join factors f \
             where f.tenant_id = x.tenant_id and f.user_id = x.id \
             order by f.tenant_id, f.user_id, f.created_at, f.id",
            prefixed("f", crate::store::factors::FACTOR_COLUMNS),
            source(d, 1, "x", &PAIR)
        )
    })
});

static SECURITY: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        format!(
            "select s.tenant_id, s.user_id, s.consecutive_failures, s.last_failure_at \
             from {} cross join user_security s \
             where s.tenant_id = x.tenant_id and s.user_id = x.id",
            source(d, 1, "x", &PAIR)
        )
    })
});

static DEVICES: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        format!(
            "select {} from {} cross join trusted_devices t \
             where t.tenant_id = x.tenant_id and t.token_hash = x.token_hash",
            prefixed("t", crate::store::factors::DEVICE_COLUMNS),
            source(
                d,
                1,
                "x",
                &[("tenant_id", Ty::Text), ("token_hash", Ty::Hex)]
            )
        )
    })
});

static SETTINGS: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        format!(
            "select {} from tenant_settings s where s.tenant_id in (select x.id from {})",
            prefixed("s", crate::store::tenant_settings::COLUMNS),
            source(d, 1, "x", &[("id", Ty::Text)])
        )
    })
});

static PROVIDERS: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        format!(
            "select {} from secondary_auth_providers p \
             where p.tenant_id in (select x.id from {}) \
             order by p.tenant_id, p.created_at, p.id",
            prefixed("p", crate::store::providers::SAP_COLUMNS),
            source(d, 1, "x", &[("id", Ty::Text)])
        )
    })
});

static COUNTS: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new(|d| {
        let columns = [
            ("tenant_id", Ty::Text),
            ("id", Ty::Text),
            ("since", Ty::Time),
        ];
        format!(
            "select 'user' as scope, x.tenant_id, x.id, count(d.id) as sends, \
                    min(d.created_at) as oldest \
             from {} left join deliveries d on d.tenant_id = x.tenant_id and d.user_id = x.id \
                and d.created_at > x.since and d.kind in ('enrollment_code', 'login_code') \
             group by x.tenant_id, x.id \
             union all \
             select 'recipient', y.tenant_id, y.id, count(d.id), min(d.created_at) \
             from {} left join deliveries d on d.tenant_id = y.tenant_id and d.recipient = y.id \
                and d.created_at > y.since and d.kind in ('enrollment_code', 'login_code') \
             group by y.tenant_id, y.id",
            source(d, 1, "x", &columns),
            source(d, 2, "y", &columns)
        )
    })
});

fn prefixed(alias: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(sqlx::FromRow)]
struct ReceiptRow {
    tenant_id: String,
    webhook_id: String,
    body_sha256: Vec<u8>,
    status: i32,
    answer_sealed: Option<Vec<u8>>,
}

#[derive(sqlx::FromRow)]
struct SecurityRow {
    tenant_id: String,
    user_id: String,
    consecutive_failures: i32,
    last_failure_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct CountRow {
    scope: String,
    tenant_id: String,
    id: String,
    sends: i64,
    oldest: Option<Timestamp>,
}

impl Store {
    /// Reads everything a batch decides on, except the send counts
    /// ([`Store::read_send_counts`], which need the addresses' locks).
    pub async fn read_batch(&self, tx: &mut Tx, items: &[&HotItem]) -> StoreResult<Snapshot> {
        let d = dialect(tx);
        let mut snap = Snapshot::default();
        let receipts: Vec<Pair<'_>> = items
            .iter()
            .map(|i| Pair {
                tenant_id: &i.tenant_id,
                id: &i.webhook_id,
            })
            .collect();
        let rows: Vec<ReceiptRow> =
            fetch_rows(tx, RECEIPTS.get(d), vec![rows::array(&receipts)]).await?;
        for row in rows {
            let answer = match &row.answer_sealed {
                Some(sealed) => self.secret_box.open(
                    sealed,
                    &super::super::receipts::answer_context(&row.tenant_id, &row.webhook_id),
                )?,
                None => Vec::new(),
            };
            snap.receipts.insert(
                key(&row.tenant_id, &row.webhook_id),
                SeenReceipt {
                    body_sha256: row.body_sha256,
                    status: u16::try_from(row.status).unwrap_or(500),
                    answer,
                },
            );
        }
        let named: Vec<Pair<'_>> = items
            .iter()
            .filter_map(|i| {
                i.event.challenge_id().map(|id| Pair {
                    tenant_id: &i.tenant_id,
                    id,
                })
            })
            .collect();
        let starting: Vec<Pair<'_>> = items
            .iter()
            .filter_map(|i| {
                i.event.user_id().map(|id| Pair {
                    tenant_id: &i.tenant_id,
                    id,
                })
            })
            .collect();
        let found: Vec<Challenge> = fetch_rows(
            tx,
            CHALLENGES.get(d),
            vec![rows::array(&named), rows::array(&starting)],
        )
        .await?;
        for challenge in found {
            snap.challenges
                .insert(key(&challenge.tenant_id, &challenge.id), challenge);
        }
        // The users: those named, and the owners of the challenges named.
        let mut users: Vec<Key> = items
            .iter()
            .filter_map(|i| i.event.user_id().map(|u| key(&i.tenant_id, u)))
            .collect();
        users.extend(items.iter().filter_map(|i| {
            let id = i.event.challenge_id()?;
            let c = snap.challenges.get(&key(&i.tenant_id, id))?;
            Some(key(&c.tenant_id, &c.user_id))
        }));
        users.sort();
        users.dedup();
        let user_pairs: Vec<Pair<'_>> = users
            .iter()
            .map(|(t, u)| Pair {
                tenant_id: t,
                id: u,
            })
            .collect();
        let user_list = rows::array(&user_pairs);
        let factors: Vec<Factor> = fetch_rows(tx, FACTORS.get(d), vec![user_list.clone()]).await?;
        for factor in factors {
            snap.factors
                .entry(key(&factor.tenant_id, &factor.user_id))
                .or_default()
                .push(factor);
        }
        let streaks: Vec<SecurityRow> = fetch_rows(tx, SECURITY.get(d), vec![user_list]).await?;
        for row in streaks {
            snap.security.insert(
                key(&row.tenant_id, &row.user_id),
                Security {
                    failures: row.consecutive_failures,
                    last_failure_at: row.last_failure_at,
                    stored: true,
                },
            );
        }
        let tokens: Vec<Token<'_>> = items
            .iter()
            .filter_map(|i| match &i.event {
                HotEvent::LoginStarted {
                    token_hash: Some(hash),
                    ..
                } => Some(Token {
                    tenant_id: &i.tenant_id,
                    token_hash: hash,
                }),
                _ => None,
            })
            .collect();
        if !tokens.is_empty() {
            let devices: Vec<TrustedDevice> =
                fetch_rows(tx, DEVICES.get(d), vec![rows::array(&tokens)]).await?;
            for device in devices {
                snap.devices.insert(
                    (device.tenant_id.clone(), device.token_hash.clone()),
                    device,
                );
            }
        }
        snap.tenants = self.read_tenants(tx, items).await?;
        Ok(snap)
    }

    /// The settings and providers of the batch's tenants: from the cache
    /// ([`super::TenantCache`]) where fresh, else read (two statements).
    async fn read_tenants(
        &self,
        tx: &mut Tx,
        items: &[&HotItem],
    ) -> StoreResult<HashMap<String, TenantState>> {
        #[derive(Serialize)]
        struct Id<'a> {
            id: &'a str,
        }
        let d = dialect(tx);
        let mut ids: Vec<&str> = items.iter().map(|i| i.tenant_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut tenants = self.tenant_cache.get_many(&ids);
        ids.retain(|id| !tenants.contains_key(*id));
        if ids.is_empty() {
            return Ok(tenants);
        }
        let began = self.tenant_cache.generation();
        let list = rows::array(&ids.iter().map(|id| Id { id }).collect::<Vec<_>>());
        let settings: Vec<TenantSettings> =
            fetch_rows(tx, SETTINGS.get(d), vec![list.clone()]).await?;
        let providers: Vec<SecondaryAuthProviderRow> =
            fetch_rows(tx, PROVIDERS.get(d), vec![list]).await?;
        let mut read: HashMap<String, TenantState> = settings
            .into_iter()
            .map(|settings| {
                (
                    settings.tenant_id.clone(),
                    TenantState {
                        settings,
                        providers: Vec::new(),
                    },
                )
            })
            .collect();
        for provider in providers {
            if let Some(tenant) = read.get_mut(&provider.tenant_id) {
                tenant.providers.push(provider);
            }
        }
        self.tenant_cache.put_many(&read, began);
        tenants.extend(read);
        Ok(tenants)
    }

    /// Reads the code sends of these users since `user_since` and to these
    /// addresses since `recipient_since` into the snapshot.
    pub async fn read_send_counts(
        &self,
        tx: &mut Tx,
        snap: &mut Snapshot,
        users: &[Key],
        recipients: &[Key],
        user_since: Timestamp,
        recipient_since: Timestamp,
    ) -> StoreResult<()> {
        if users.is_empty() && recipients.is_empty() {
            return Ok(());
        }
        let since = |keys: &[Key], since: Timestamp| {
            let rows: Vec<Since<'_>> = keys
                .iter()
                .map(|(t, id)| Since {
                    tenant_id: t,
                    id,
                    since,
                })
                .collect();
            rows::array(&rows)
        };
        let counts: Vec<CountRow> = fetch_rows(
            tx,
            COUNTS.get(dialect(tx)),
            vec![since(users, user_since), since(recipients, recipient_since)],
        )
        .await?;
        for row in counts {
            let window = Window {
                count: row.sends,
                oldest: row.oldest,
            };
            let k = key(&row.tenant_id, &row.id);
            if row.scope == "user" {
                snap.user_sends.insert(k, window);
            } else {
                snap.recipient_sends.insert(k, window);
            }
        }
        Ok(())
    }
}
