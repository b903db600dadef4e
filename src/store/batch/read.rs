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
struct Address<'a> {
    tenant_id: &'a str,
    id: String,
}

#[derive(Serialize)]
struct Since<'a> {
    tenant_id: &'a str,
    id: &'a str,
    #[serde(serialize_with = "rows::time")]
    since: Timestamp,
}

// SQLite's reads, one statement per table ([`read_one_by_one`],
// [`Store::read_send_counts`]); PostgreSQL reads a batch with
// [`BATCH_READ`]. Settings and providers (the tenant cache's misses) are
// read the same way on both.

static RECEIPTS: LazyLock<String> = LazyLock::new(|| {
    let d = Dialect::Sqlite;
    format!(
        "select r.tenant_id, r.webhook_id, r.body_sha256, r.status as receipt_status, r.answer_sealed \
         from {} cross join webhook_receipts r \
         where r.tenant_id = x.tenant_id and r.webhook_id = x.id",
        source(d, 1, "x", &PAIR)
    )
});

static CHALLENGES: LazyLock<String> = LazyLock::new(|| {
    let d = Dialect::Sqlite;
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
});

static FACTORS: LazyLock<String> = LazyLock::new(|| {
    let d = Dialect::Sqlite;
    format!(
        "select {} from {} cross join factors f \
         where f.tenant_id = x.tenant_id and f.user_id = x.id \
         order by f.tenant_id, f.user_id, f.created_at, f.id",
        prefixed("f", crate::store::factors::FACTOR_COLUMNS),
        source(d, 1, "x", &PAIR)
    )
});

static SECURITY: LazyLock<String> = LazyLock::new(|| {
    let d = Dialect::Sqlite;
    format!(
        "select s.tenant_id, s.user_id, s.consecutive_failures, s.last_failure_at \
         from {} cross join user_security s \
         where s.tenant_id = x.tenant_id and s.user_id = x.id",
        source(d, 1, "x", &PAIR)
    )
});

static DEVICES: LazyLock<String> = LazyLock::new(|| {
    let d = Dialect::Sqlite;
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

/// SQLite: the code sends of users and to addresses within their windows,
/// an address compared with ASCII letters lowercased (SQLite's `lower`,
/// as [`email2fa_workers::address::limit_key`] gives it; the index
/// `deliveries_by_recipient_ci` holds the same expression). An
/// operator's resend of a dead letter (`resent_from` set) is not counted:
/// the user never received the dead email and did not ask again.
static COUNTS: LazyLock<String> = LazyLock::new(|| {
    let d = Dialect::Sqlite;
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
            and d.resent_from is null \
         group by x.tenant_id, x.id \
         union all \
         select 'recipient', y.tenant_id, y.id, count(d.id), min(d.created_at) \
         from {} left join deliveries d on d.tenant_id = y.tenant_id \
            and lower(d.recipient) = y.id \
            and d.created_at > y.since and d.kind in ('enrollment_code', 'login_code') \
            and d.resent_from is null \
         group by y.tenant_id, y.id",
        source(d, 1, "x", &columns),
        source(d, 2, "y", &columns),
    )
});

/// PostgreSQL: everything [`Store::read_batch`] reads, the send counts
/// included, in one round trip. It first takes the advisory lock of each
/// user key of the batch (`$2`, sorted; `$1` their class), then calls the
/// function `batch_read` (migration `20261208000001_batch_read.sql`), which
/// locks every address the batch can send to, then reads receipts,
/// challenges, factors, security streaks, the sends of the batch's users
/// and addresses within their windows, and the trusted devices of the
/// trust tokens presented (`$6`, null when no login carries one). `$7` the
/// addresses the webhooks name (enrollments'), as the limit compares
/// them; `$8` and `$9` the windows' starts.
///
/// The call is lateral on the users' locks (one of its arguments depends
/// on their count), so PostgreSQL takes every user lock before it runs the
/// function, and the function's statements, each with a snapshot of its
/// own, read after them.
const BATCH_READ: &str = "select b.* \
     from (select count(pg_advisory_xact_lock($1, k)) as users from unnest($2::int4[]) as k) l \
     cross join lateral batch_read($3::jsonb, $4::jsonb, $5::jsonb, $6::jsonb, $7::jsonb, \
          case when l.users >= 0 then $8::timestamptz end, $9) as b";

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
    receipt_status: i32,
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

#[derive(sqlx::FromRow)]
struct SendsRow {
    tenant_id: String,
    id: String,
    sends: i64,
    oldest: Option<Timestamp>,
}

impl SendsRow {
    fn into_entry(self) -> (Key, Window) {
        (
            key(&self.tenant_id, &self.id),
            Window {
                count: self.sends,
                oldest: self.oldest,
            },
        )
    }
}

/// Where the send limits' windows start.
#[derive(Debug, Clone, Copy)]
pub struct SendWindows {
    /// Sends of a user after this count.
    pub user_since: Timestamp,
    /// Sends to an address after this count.
    pub recipient_since: Timestamp,
}

impl Store {
    /// Reads everything a batch decides on. On PostgreSQL that is one
    /// round trip ([`BATCH_READ`]) which also locks the users of
    /// `user_keys` and every address the batch can send to and counts the sends of the batch's users and
    /// addresses within `windows`; on SQLite (in-process, where a statement
    /// costs no round trip) one table at a time, without the counts
    /// ([`Store::read_send_counts`]).
    pub async fn read_batch(
        &self,
        tx: &mut Tx,
        items: &[&HotItem],
        user_keys: &[u32],
        windows: SendWindows,
    ) -> StoreResult<Snapshot> {
        let lists = Lists::of(items);
        let read = match tx {
            Tx::Postgres(conn) => read_at_once(conn, &lists, user_keys, windows).await?,
            Tx::Sqlite(..) => read_one_by_one(tx, &lists).await?,
        };
        let mut snap = Snapshot {
            user_sends: read
                .user_sends
                .into_iter()
                .map(SendsRow::into_entry)
                .collect(),
            recipient_sends: (read.recipient_sends.into_iter())
                .map(SendsRow::into_entry)
                .collect(),
            ..Snapshot::default()
        };
        for row in read.receipts {
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
                    status: u16::try_from(row.receipt_status).unwrap_or(500),
                    answer,
                },
            );
        }
        for challenge in read.challenges {
            snap.challenges
                .insert(key(&challenge.tenant_id, &challenge.id), challenge);
        }
        for factor in read.factors {
            snap.factors
                .entry(key(&factor.tenant_id, &factor.user_id))
                .or_default()
                .push(factor);
        }
        for row in read.security {
            snap.security.insert(
                key(&row.tenant_id, &row.user_id),
                Security {
                    failures: row.consecutive_failures,
                    last_failure_at: row.last_failure_at,
                    stored: true,
                },
            );
        }
        for device in read.devices {
            snap.devices.insert(
                (device.tenant_id.clone(), device.token_hash.clone()),
                device,
            );
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
    /// addresses since `recipient_since` into the snapshot (SQLite; on
    /// PostgreSQL [`Store::read_batch`] counts them).
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
            &COUNTS,
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

/// What a batch's webhooks name, as the JSON lists its reads take.
struct Lists {
    /// Each webhook's id (its receipt).
    receipts: String,
    /// The challenges named (verifies, resends).
    named: String,
    /// The users named (logins, enrollments).
    starting: String,
    /// The trust tokens of logins that carry one.
    tokens: String,
    /// Whether `tokens` is not empty.
    any_token: bool,
    /// The challenges named, as keys.
    named_keys: std::collections::HashSet<Key>,
    /// The users named, as keys.
    users: Vec<Key>,
    /// The addresses enrollments name, as the limit compares them.
    addresses: String,
}

impl Lists {
    fn of(items: &[&HotItem]) -> Self {
        let receipts: Vec<Pair<'_>> = items
            .iter()
            .map(|i| Pair {
                tenant_id: &i.tenant_id,
                id: &i.webhook_id,
            })
            .collect();
        let named_by = |id_of: fn(&HotEvent) -> Option<&str>| -> Vec<Pair<'_>> {
            items
                .iter()
                .filter_map(|i| {
                    id_of(&i.event).map(|id| Pair {
                        tenant_id: &i.tenant_id,
                        id,
                    })
                })
                .collect()
        };
        let named = named_by(HotEvent::challenge_id);
        let starting = named_by(HotEvent::user_id);
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
        let addresses: Vec<Address<'_>> = items
            .iter()
            .filter_map(|i| match &i.event {
                HotEvent::EnrollmentStarted(e) => Some(Address {
                    tenant_id: &i.tenant_id,
                    id: email2fa_workers::address::limit_key(e.address()),
                }),
                _ => None,
            })
            .collect();
        Self {
            addresses: rows::array(&addresses),
            receipts: rows::array(&receipts),
            named: rows::array(&named),
            starting: rows::array(&starting),
            any_token: !tokens.is_empty(),
            tokens: rows::array(&tokens),
            named_keys: named.iter().map(|p| key(p.tenant_id, p.id)).collect(),
            users: starting.iter().map(|p| key(p.tenant_id, p.id)).collect(),
        }
    }
}

/// The rows a batch read, table by table.
#[derive(Default)]
struct Read {
    receipts: Vec<ReceiptRow>,
    challenges: Vec<Challenge>,
    factors: Vec<Factor>,
    security: Vec<SecurityRow>,
    devices: Vec<TrustedDevice>,
    user_sends: Vec<SendsRow>,
    recipient_sends: Vec<SendsRow>,
}

/// PostgreSQL: [`BATCH_READ`], its rows sorted back into their tables.
async fn read_at_once(
    conn: &mut sqlx::PgConnection,
    lists: &Lists,
    user_keys: &[u32],
    windows: SendWindows,
) -> StoreResult<Read> {
    use sqlx::{FromRow, Row};
    let rows = sqlx::query(BATCH_READ)
        .bind(super::USER_LOCKS)
        .bind(super::sorted_keys(user_keys))
        .bind(&lists.receipts)
        .bind(&lists.named)
        .bind(&lists.starting)
        .bind(lists.any_token.then_some(lists.tokens.as_str()))
        .bind(&lists.addresses)
        .bind(windows.user_since)
        .bind(windows.recipient_since)
        .fetch_all(conn)
        .await?;
    let mut read = Read::default();
    for row in &rows {
        let kind: &str = row.try_get("kind")?;
        match kind {
            "receipt" => read.receipts.push(ReceiptRow::from_row(row)?),
            "challenge" => read.challenges.push(Challenge::from_row(row)?),
            "factor" => read.factors.push(Factor::from_row(row)?),
            "security" => read.security.push(SecurityRow::from_row(row)?),
            "device" => read.devices.push(TrustedDevice::from_row(row)?),
            "user_sends" => read.user_sends.push(SendsRow::from_row(row)?),
            "recipient_sends" => read.recipient_sends.push(SendsRow::from_row(row)?),
            other => {
                return Err(
                    sqlx::Error::Protocol(format!("a batch read a row of kind {other}")).into(),
                );
            }
        }
    }
    // A user's factors oldest first, as the reads one by one give them
    // (sorted here rather than by a sort node in every run).
    read.factors.sort_by(|a, b| {
        (&a.tenant_id, &a.user_id, a.created_at, &a.id).cmp(&(
            &b.tenant_id,
            &b.user_id,
            b.created_at,
            &b.id,
        ))
    });
    Ok(read)
}

/// SQLite: one statement per table, the users' after the challenges'
/// (whose owners they include).
async fn read_one_by_one(tx: &mut Tx, lists: &Lists) -> StoreResult<Read> {
    let receipts = fetch_rows(tx, &RECEIPTS, vec![lists.receipts.clone()]).await?;
    let challenges: Vec<Challenge> = fetch_rows(
        tx,
        &CHALLENGES,
        vec![lists.named.clone(), lists.starting.clone()],
    )
    .await?;
    // The users: those named, and the owners of the challenges named.
    let mut users = lists.users.clone();
    users.extend(
        challenges
            .iter()
            .filter(|c| lists.named_keys.contains(&key(&c.tenant_id, &c.id)))
            .map(|c| key(&c.tenant_id, &c.user_id)),
    );
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
    let factors = fetch_rows(tx, &FACTORS, vec![user_list.clone()]).await?;
    let security = fetch_rows(tx, &SECURITY, vec![user_list]).await?;
    let devices = if lists.any_token {
        fetch_rows(tx, &DEVICES, vec![lists.tokens.clone()]).await?
    } else {
        Vec::new()
    };
    Ok(Read {
        receipts,
        challenges,
        factors,
        security,
        devices,
        ..Read::default()
    })
}
