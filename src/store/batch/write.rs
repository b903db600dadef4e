//! The writes of a batch: one set-based statement per table, all of them
//! in one statement of data-modifying CTEs on PostgreSQL.
//!
//! Challenge updates are guarded by the status and wrong-try count they
//! were read with, and receipts are inserted `on conflict do nothing`: the
//! caller compares [`WriteCounts`] with what it meant to write, and a batch
//! that lost a race (which the locks should make impossible) is rolled back
//! and decided again.

use std::sync::{LazyLock, OnceLock};

use email2fa_db::with_tx;
use serde::Serialize;

use super::dialect;
use super::rows::{self, Dialect, Ty, source};
use crate::domain::batch::Writes;
use crate::store::{Store, StoreResult, Timestamp, Tx};

/// How many rows the guarded statements wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteCounts {
    /// Receipts inserted.
    pub receipts: u64,
    /// Challenge updates that found their row as it was read.
    pub challenge_updates: u64,
}

/// One table's statement: its JSON columns and its SQL after the source.
struct Table {
    columns: &'static [(&'static str, Ty)],
    /// `{src}` is replaced by the derived table of the rows (alias `x`).
    sql: &'static str,
    /// Counted in [`WriteCounts`].
    counted: Option<fn(&mut WriteCounts, u64)>,
}

const RECEIPTS: Table = Table {
    columns: &[
        ("tenant_id", Ty::Text),
        ("webhook_id", Ty::Text),
        ("body_sha256", Ty::Hex),
        ("event_type", Ty::Text),
        ("answer_sealed", Ty::Hex),
        ("received_at", Ty::Time),
    ],
    sql: "insert into webhook_receipts (tenant_id, webhook_id, body_sha256, event_type, status, \
            answer_sealed, received_at) \
          select x.tenant_id, x.webhook_id, x.body_sha256, x.event_type, 200, x.answer_sealed, \
            x.received_at from {src} where true \
          on conflict (tenant_id, webhook_id) do nothing",
    counted: Some(|c, n| c.receipts = n),
};

const CHALLENGE_COLUMNS: &[(&str, Ty)] = &[
    ("tenant_id", Ty::Text),
    ("id", Ty::Text),
    ("purpose", Ty::Text),
    ("user_id", Ty::Text),
    ("role", Ty::Text),
    ("email", Ty::Text),
    ("user_name", Ty::Text),
    ("locale", Ty::Text),
    ("secondary_auth_provider_id", Ty::Text),
    ("status", Ty::Text),
    ("attempts", Ty::Int),
    ("max_attempts", Ty::Int),
    ("code_length", Ty::Int),
    ("code_ttl_seconds", Ty::Int),
    ("code_hash", Ty::Hex),
    ("code_expires_at", Ty::Time),
    ("code_delivery_id", Ty::Text),
    ("current_delivery_id", Ty::Text),
    ("resend_after", Ty::Time),
    ("factor_id", Ty::Text),
    ("created_at", Ty::Time),
    ("updated_at", Ty::Time),
    ("closed_at", Ty::Time),
];

const CHALLENGES: Table = Table {
    columns: CHALLENGE_COLUMNS,
    sql: "insert into challenges (tenant_id, id, purpose, user_id, role, email, user_name, \
            locale, secondary_auth_provider_id, status, attempts, max_attempts, code_length, \
            code_ttl_seconds, code_hash, code_expires_at, code_delivery_id, current_delivery_id, \
            resend_after, factor_id, created_at, updated_at, closed_at) \
          select x.tenant_id, x.id, x.purpose, x.user_id, x.role, x.email, x.user_name, \
            x.locale, x.secondary_auth_provider_id, x.status, x.attempts, x.max_attempts, \
            x.code_length, x.code_ttl_seconds, x.code_hash, x.code_expires_at, x.code_delivery_id, \
            x.current_delivery_id, x.resend_after, x.factor_id, x.created_at, x.updated_at, \
            x.closed_at from {src} where true",
    counted: None,
};

const CHALLENGE_UPDATES: Table = Table {
    columns: &[
        ("tenant_id", Ty::Text),
        ("id", Ty::Text),
        ("status", Ty::Text),
        ("attempts", Ty::Int),
        ("closed_at", Ty::Time),
        ("updated_at", Ty::Time),
        ("factor_id", Ty::Text),
        ("current_delivery_id", Ty::Text),
        ("resend_after", Ty::Time),
        ("clear_hash", Ty::Bool),
        ("clear_send", Ty::Bool),
        ("expected_status", Ty::Text),
        ("expected_attempts", Ty::Int),
    ],
    sql: "update challenges set status = x.status, attempts = x.attempts, \
            closed_at = x.closed_at, updated_at = x.updated_at, factor_id = x.factor_id, \
            current_delivery_id = x.current_delivery_id, resend_after = x.resend_after, \
            code_hash = case when x.clear_hash then null else challenges.code_hash end, \
            code_expires_at = case when x.clear_send then null else challenges.code_expires_at end, \
            code_delivery_id = case when x.clear_send then null else challenges.code_delivery_id end, \
            previous_code_hash = case when x.clear_hash then null \
              else challenges.previous_code_hash end, \
            previous_code_expires_at = case when x.clear_hash then null \
              else challenges.previous_code_expires_at end \
          from {src} \
          where challenges.tenant_id = x.tenant_id and challenges.id = x.id \
            and challenges.status = x.expected_status and challenges.attempts = x.expected_attempts",
    counted: Some(|c, n| c.challenge_updates = n),
};

const DELIVERIES: Table = Table {
    columns: &[
        ("id", Ty::Text),
        ("tenant_id", Ty::Text),
        ("kind", Ty::Text),
        ("user_id", Ty::Text),
        ("recipient", Ty::Text),
        ("user_name", Ty::Text),
        ("locale", Ty::Text),
        ("role", Ty::Text),
        ("challenge_id", Ty::Text),
        ("secondary_auth_provider_id", Ty::Text),
        ("max_attempts", Ty::Int),
        ("not_after", Ty::Time),
        ("resent_from", Ty::Text),
        ("created_at", Ty::Time),
    ],
    sql: "insert into deliveries (id, tenant_id, kind, user_id, recipient, user_name, locale, \
            role, challenge_id, secondary_auth_provider_id, status, attempts, max_attempts, \
            not_after, next_attempt_at, resent_from, created_at, updated_at) \
          select x.id, x.tenant_id, x.kind, x.user_id, x.recipient, x.user_name, x.locale, \
            x.role, x.challenge_id, x.secondary_auth_provider_id, 'queued', 0, x.max_attempts, \
            x.not_after, x.created_at, x.resent_from, x.created_at, x.created_at \
          from {src} where true",
    counted: None,
};

const DECISIONS: Table = Table {
    columns: &[
        ("tenant_id", Ty::Text),
        ("id", Ty::Text),
        ("user_id", Ty::Text),
        ("role", Ty::Text),
        ("decision", Ty::Text),
        ("reason", Ty::Text),
        ("challenge_id", Ty::Text),
        ("ip", Ty::Text),
        ("user_agent", Ty::Text),
        ("created_at", Ty::Time),
    ],
    sql: "insert into login_decisions (tenant_id, id, user_id, role, decision, reason, \
            challenge_id, ip, user_agent, created_at) \
          select x.tenant_id, x.id, x.user_id, x.role, x.decision, x.reason, x.challenge_id, \
            x.ip, x.user_agent, x.created_at from {src} where true",
    counted: None,
};

const AUDITS: Table = Table {
    columns: &[
        ("tenant_id", Ty::Text),
        ("id", Ty::Text),
        ("user_id", Ty::Text),
        ("event", Ty::Text),
        ("detail", Ty::Text),
        ("created_at", Ty::Time),
    ],
    sql: "insert into audit_events (tenant_id, id, user_id, event, detail, created_at) \
          select x.tenant_id, x.id, x.user_id, x.event, x.detail, x.created_at \
          from {src} where true",
    counted: None,
};

const FACTORS: Table = Table {
    columns: &[
        ("tenant_id", Ty::Text),
        ("id", Ty::Text),
        ("user_id", Ty::Text),
        ("role", Ty::Text),
        ("email", Ty::Text),
        ("secondary_auth_provider_id", Ty::Text),
        ("created_at", Ty::Time),
    ],
    sql: "insert into factors (tenant_id, id, user_id, role, email, secondary_auth_provider_id, \
            created_at) \
          select x.tenant_id, x.id, x.user_id, x.role, x.email, x.secondary_auth_provider_id, \
            x.created_at from {src} where true",
    counted: None,
};

const DEVICES: Table = Table {
    columns: &[
        ("tenant_id", Ty::Text),
        ("id", Ty::Text),
        ("user_id", Ty::Text),
        ("token_hash", Ty::Hex),
        ("label", Ty::Text),
        ("created_at", Ty::Time),
        ("expires_at", Ty::Time),
    ],
    sql: "insert into trusted_devices (tenant_id, id, user_id, token_hash, label, created_at, \
            last_used_at, expires_at, revoked_at) \
          select x.tenant_id, x.id, x.user_id, x.token_hash, x.label, x.created_at, null, \
            x.expires_at, null from {src} where true",
    counted: None,
};

const DEVICES_USED: Table = Table {
    columns: &[("tenant_id", Ty::Text), ("id", Ty::Text), ("at", Ty::Time)],
    sql: "update trusted_devices set last_used_at = x.at from {src} \
          where trusted_devices.tenant_id = x.tenant_id and trusted_devices.id = x.id",
    counted: None,
};

const SECURITY: Table = Table {
    columns: &[
        ("tenant_id", Ty::Text),
        ("user_id", Ty::Text),
        ("failures", Ty::Int),
        ("last_failure_at", Ty::Time),
    ],
    sql: "insert into user_security (tenant_id, user_id, consecutive_failures, last_failure_at) \
          select x.tenant_id, x.user_id, x.failures, x.last_failure_at from {src} where true \
          on conflict (tenant_id, user_id) do update set \
            consecutive_failures = excluded.consecutive_failures, \
            last_failure_at = excluded.last_failure_at",
    counted: None,
};

/// Every table, in the order the JSON parameters are bound.
const TABLES: [&Table; 10] = [
    &RECEIPTS,
    &CHALLENGES,
    &CHALLENGE_UPDATES,
    &DELIVERIES,
    &DECISIONS,
    &AUDITS,
    &FACTORS,
    &DEVICES,
    &DEVICES_USED,
    &SECURITY,
];

fn statement(table: &Table, dialect: Dialect, n: usize) -> String {
    let src = match dialect {
        Dialect::Postgres => rows::unnest_source(n, "x", table.columns),
        Dialect::Sqlite => source(dialect, n, "x", table.columns),
    };
    table.sql.replace("{src}", &src)
}

/// PostgreSQL: the statement of the tables that have rows (`present`, in
/// the order of [`TABLES`]) as CTEs of one statement, over parameters
/// `$1`… in that order (one typed array per column of each table), which
/// answers the counts of the guarded ones (0 for one with no rows). A table with no rows is left out rather than fed
/// an empty list: each part costs executor set-up on every run. The few
/// combinations that occur (a batch of logins writes receipts, challenges,
/// deliveries, decisions and audit events) are each prepared once per
/// connection.
fn postgres_statement(present: &[bool]) -> &'static str {
    // Formatted once per combination and process: the text is the same for
    // every batch of that combination.
    static TEXTS: [OnceLock<String>; 1 << TABLES.len()] =
        [const { OnceLock::new() }; 1 << TABLES.len()];
    let mask = present
        .iter()
        .take(TABLES.len())
        .enumerate()
        .fold(0usize, |mask, (i, here)| mask | (usize::from(*here) << i));
    TEXTS[mask].get_or_init(|| postgres_statement_text(present))
}

fn postgres_statement_text(present: &[bool]) -> String {
    let mut ctes = Vec::new();
    let mut counts = Vec::new();
    let mut n = 0;
    for (i, table) in TABLES.iter().enumerate() {
        let here = present.get(i).copied().unwrap_or(false);
        if here {
            let returning = if table.counted.is_some() {
                " returning 1"
            } else {
                ""
            };
            ctes.push(format!(
                "w{i} as ({}{returning})",
                statement(table, Dialect::Postgres, n + 1)
            ));
            n += table.columns.len();
        }
        if table.counted.is_some() {
            counts.push(if here {
                format!("(select count(*) from w{i})")
            } else {
                "0::bigint".to_string()
            });
        }
    }
    if ctes.is_empty() {
        return format!("select {}", counts.join(", "));
    }
    format!("with {} select {}", ctes.join(", "), counts.join(", "))
}

/// SQLite: one statement per table, each over its own parameter `$1`.
static SQLITE: LazyLock<Vec<String>> = LazyLock::new(|| {
    TABLES
        .iter()
        .map(|t| statement(t, Dialect::Sqlite, 1))
        .collect()
});

impl Store {
    /// Writes a batch's rows (sealing each receipt's answer) and returns
    /// what the guarded statements wrote.
    pub async fn write_batch(
        &self,
        tx: &mut Tx,
        writes: &Writes,
        now: Timestamp,
    ) -> StoreResult<WriteCounts> {
        let d = dialect(tx);
        let params = self.params(writes, now, d)?;
        match tx {
            Tx::Postgres(conn) => {
                let present: Vec<bool> = params.iter().map(Option::is_some).collect();
                let sql = sqlx::AssertSqlSafe(postgres_statement(&present));
                let mut query = sqlx::query_as(sql);
                for param in params.iter().flatten() {
                    if let Param::Columns(columns) = param {
                        for column in columns {
                            query = column.bind(query);
                        }
                    }
                }
                let (receipts, challenge_updates): (i64, i64) =
                    query.fetch_one(&mut **conn).await?;
                Ok(WriteCounts {
                    receipts: u64::try_from(receipts).unwrap_or(0),
                    challenge_updates: u64::try_from(challenge_updates).unwrap_or(0),
                })
            }
            Tx::Sqlite(..) => {
                let mut counts = WriteCounts::default();
                for ((table, sql), param) in TABLES.iter().zip(SQLITE.iter()).zip(&params) {
                    let Some(Param::Json(param)) = param else {
                        continue;
                    };
                    let sql = sqlx::AssertSqlSafe(sql.as_str());
                    let written = with_tx!(tx, conn => sqlx::query(sql).bind(param)
                        .execute(conn).await.map(|r| r.rows_affected()))?;
                    if let Some(count) = table.counted {
                        count(&mut counts, written);
                    }
                }
                Ok(counts)
            }
        }
    }

    /// Each table's rows as its statement takes them (`None` when it has
    /// none), in the order of [`TABLES`]: typed columns on PostgreSQL, a
    /// JSON array on SQLite.
    fn params(
        &self,
        w: &Writes,
        now: Timestamp,
        dialect: Dialect,
    ) -> StoreResult<[Option<Param>; 10]> {
        let some = |i: usize, rows: &dyn ErasedRows| -> StoreResult<Option<Param>> {
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(Some(match dialect {
                Dialect::Postgres => Param::Columns(
                    rows.columns(TABLES[i].columns)
                        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
                ),
                Dialect::Sqlite => Param::Json(rows.json()),
            }))
        };
        let receipts: Vec<_> = w
            .receipts
            .iter()
            .map(|r| Receipt {
                tenant_id: &r.tenant_id,
                webhook_id: &r.webhook_id,
                body_sha256: &r.body_sha256,
                event_type: r.event_type,
                answer_sealed: self.secret_box.seal(
                    &r.answer,
                    &super::super::receipts::answer_context(&r.tenant_id, &r.webhook_id),
                ),
                received_at: r.received_at,
            })
            .collect();
        let challenges: Vec<_> = w.challenges.iter().map(ChallengeJson::from).collect();
        let updates: Vec<_> = w.challenge_updates.iter().map(UpdateJson::from).collect();
        let deliveries: Vec<_> = w
            .deliveries
            .iter()
            .map(|d| DeliveryJson::new(d, now))
            .collect();
        let decisions: Vec<_> = w.decisions.iter().map(DecisionJson::from).collect();
        let audits: Vec<_> = w.audits.iter().map(AuditJson::from).collect();
        let factors: Vec<_> = w.factors.iter().map(FactorJson::from).collect();
        let devices: Vec<_> = w.devices.iter().map(DeviceJson::from).collect();
        let used: Vec<_> = w
            .devices_used
            .iter()
            .map(|(tenant_id, id)| Used {
                tenant_id,
                id,
                at: now,
            })
            .collect();
        let security: Vec<_> = w.security.iter().map(SecurityJson::from).collect();
        Ok([
            some(0, &receipts)?,
            some(1, &challenges)?,
            some(2, &updates)?,
            some(3, &deliveries)?,
            some(4, &decisions)?,
            some(5, &audits)?,
            some(6, &factors)?,
            some(7, &devices)?,
            some(8, &used)?,
            some(9, &security)?,
        ])
    }
}

/// One table's rows as its statement takes them.
enum Param {
    /// PostgreSQL: one typed array per column.
    Columns(Vec<rows::Column>),
    /// SQLite: a JSON array of objects.
    Json(String),
}

/// A table's rows, whatever their struct.
trait ErasedRows {
    fn is_empty(&self) -> bool;
    fn columns(&self, columns: &[(&str, Ty)]) -> Result<Vec<rows::Column>, rows::ColumnError>;
    fn json(&self) -> String;
}

impl<T: Serialize> ErasedRows for Vec<T> {
    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
    fn columns(&self, columns: &[(&str, Ty)]) -> Result<Vec<rows::Column>, rows::ColumnError> {
        rows::columns(self, columns)
    }
    fn json(&self) -> String {
        rows::array(self)
    }
}

#[derive(Serialize)]
struct Receipt<'a> {
    tenant_id: &'a str,
    webhook_id: &'a str,
    #[serde(serialize_with = "rows::hex")]
    body_sha256: &'a [u8],
    event_type: &'a str,
    #[serde(serialize_with = "rows::hex")]
    answer_sealed: Vec<u8>,
    #[serde(serialize_with = "rows::time")]
    received_at: Timestamp,
}

#[derive(Serialize)]
struct ChallengeJson<'a> {
    tenant_id: &'a str,
    id: &'a str,
    purpose: &'a str,
    user_id: &'a str,
    role: &'a str,
    email: &'a str,
    user_name: Option<&'a str>,
    locale: Option<&'a str>,
    secondary_auth_provider_id: &'a str,
    status: &'a str,
    attempts: i32,
    max_attempts: i32,
    code_length: i32,
    code_ttl_seconds: i32,
    #[serde(serialize_with = "rows::opt_hex")]
    code_hash: Option<&'a [u8]>,
    #[serde(serialize_with = "rows::opt_time")]
    code_expires_at: Option<Timestamp>,
    code_delivery_id: Option<&'a str>,
    current_delivery_id: Option<&'a str>,
    #[serde(serialize_with = "rows::time")]
    resend_after: Timestamp,
    factor_id: Option<&'a str>,
    #[serde(serialize_with = "rows::time")]
    created_at: Timestamp,
    #[serde(serialize_with = "rows::time")]
    updated_at: Timestamp,
    #[serde(serialize_with = "rows::opt_time")]
    closed_at: Option<Timestamp>,
}

impl<'a> From<&'a crate::store::Challenge> for ChallengeJson<'a> {
    fn from(c: &'a crate::store::Challenge) -> Self {
        Self {
            tenant_id: &c.tenant_id,
            id: &c.id,
            purpose: &c.purpose,
            user_id: &c.user_id,
            role: &c.role,
            email: &c.email,
            user_name: c.user_name.as_deref(),
            locale: c.locale.as_deref(),
            secondary_auth_provider_id: &c.secondary_auth_provider_id,
            status: &c.status,
            attempts: c.attempts,
            max_attempts: c.max_attempts,
            code_length: c.code_length,
            code_ttl_seconds: c.code_ttl_seconds,
            code_hash: c.code_hash.as_deref(),
            code_expires_at: c.code_expires_at,
            code_delivery_id: c.code_delivery_id.as_deref(),
            current_delivery_id: c.current_delivery_id.as_deref(),
            resend_after: c.resend_after,
            factor_id: c.factor_id.as_deref(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            closed_at: c.closed_at,
        }
    }
}

#[derive(Serialize)]
struct UpdateJson<'a> {
    tenant_id: &'a str,
    id: &'a str,
    status: &'a str,
    attempts: i32,
    #[serde(serialize_with = "rows::opt_time")]
    closed_at: Option<Timestamp>,
    #[serde(serialize_with = "rows::time")]
    updated_at: Timestamp,
    factor_id: Option<&'a str>,
    current_delivery_id: Option<&'a str>,
    #[serde(serialize_with = "rows::time")]
    resend_after: Timestamp,
    clear_hash: bool,
    clear_send: bool,
    expected_status: &'a str,
    expected_attempts: i32,
}

impl<'a> From<&'a crate::domain::batch::ChallengeUpdate> for UpdateJson<'a> {
    fn from(u: &'a crate::domain::batch::ChallengeUpdate) -> Self {
        let c = &u.row;
        Self {
            tenant_id: &c.tenant_id,
            id: &c.id,
            status: &c.status,
            attempts: c.attempts,
            closed_at: c.closed_at,
            updated_at: c.updated_at,
            factor_id: c.factor_id.as_deref(),
            current_delivery_id: c.current_delivery_id.as_deref(),
            resend_after: c.resend_after,
            clear_hash: u.clear_hash,
            clear_send: u.clear_send,
            expected_status: &u.expected_status,
            expected_attempts: u.expected_attempts,
        }
    }
}

#[derive(Serialize)]
struct DeliveryJson<'a> {
    id: &'a str,
    tenant_id: &'a str,
    kind: &'a str,
    user_id: &'a str,
    recipient: &'a str,
    user_name: Option<&'a str>,
    locale: Option<&'a str>,
    role: &'a str,
    challenge_id: Option<&'a str>,
    secondary_auth_provider_id: &'a str,
    max_attempts: i32,
    #[serde(serialize_with = "rows::opt_time")]
    not_after: Option<Timestamp>,
    resent_from: Option<&'a str>,
    #[serde(serialize_with = "rows::time")]
    created_at: Timestamp,
}

impl<'a> DeliveryJson<'a> {
    fn new(d: &'a email2fa_workers::deliveries::NewDelivery, now: Timestamp) -> Self {
        Self {
            id: &d.id,
            tenant_id: &d.tenant_id,
            kind: d.kind,
            user_id: &d.user_id,
            recipient: &d.recipient,
            user_name: d.user_name.as_deref(),
            locale: d.locale.as_deref(),
            role: &d.role,
            challenge_id: d.challenge_id.as_deref(),
            secondary_auth_provider_id: &d.secondary_auth_provider_id,
            max_attempts: d.max_attempts,
            not_after: d.not_after,
            resent_from: d.resent_from.as_deref(),
            created_at: now,
        }
    }
}

#[derive(Serialize)]
struct DecisionJson<'a> {
    tenant_id: &'a str,
    id: &'a str,
    user_id: &'a str,
    role: &'a str,
    decision: &'a str,
    reason: &'a str,
    challenge_id: Option<&'a str>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    #[serde(serialize_with = "rows::time")]
    created_at: Timestamp,
}

impl<'a> From<&'a crate::domain::batch::DecisionRow> for DecisionJson<'a> {
    fn from(d: &'a crate::domain::batch::DecisionRow) -> Self {
        Self {
            tenant_id: &d.tenant_id,
            id: &d.id,
            user_id: &d.user_id,
            role: d.role,
            decision: d.decision,
            reason: d.reason,
            challenge_id: d.challenge_id.as_deref(),
            ip: d.ip.as_deref(),
            user_agent: d.user_agent.as_deref(),
            created_at: d.created_at,
        }
    }
}

#[derive(Serialize)]
struct AuditJson<'a> {
    tenant_id: &'a str,
    id: &'a str,
    user_id: Option<&'a str>,
    event: &'a str,
    detail: &'a str,
    #[serde(serialize_with = "rows::time")]
    created_at: Timestamp,
}

impl<'a> From<&'a crate::domain::batch::AuditRow> for AuditJson<'a> {
    fn from(a: &'a crate::domain::batch::AuditRow) -> Self {
        Self {
            tenant_id: &a.tenant_id,
            id: &a.id,
            user_id: a.user_id.as_deref(),
            event: a.event,
            detail: &a.detail,
            created_at: a.created_at,
        }
    }
}

#[derive(Serialize)]
struct FactorJson<'a> {
    tenant_id: &'a str,
    id: &'a str,
    user_id: &'a str,
    role: &'a str,
    email: &'a str,
    secondary_auth_provider_id: &'a str,
    #[serde(serialize_with = "rows::time")]
    created_at: Timestamp,
}

impl<'a> From<&'a crate::store::Factor> for FactorJson<'a> {
    fn from(f: &'a crate::store::Factor) -> Self {
        Self {
            tenant_id: &f.tenant_id,
            id: &f.id,
            user_id: &f.user_id,
            role: &f.role,
            email: &f.email,
            secondary_auth_provider_id: &f.secondary_auth_provider_id,
            created_at: f.created_at,
        }
    }
}

#[derive(Serialize)]
struct DeviceJson<'a> {
    tenant_id: &'a str,
    id: &'a str,
    user_id: &'a str,
    #[serde(serialize_with = "rows::hex")]
    token_hash: &'a [u8],
    label: Option<&'a str>,
    #[serde(serialize_with = "rows::time")]
    created_at: Timestamp,
    #[serde(serialize_with = "rows::time")]
    expires_at: Timestamp,
}

impl<'a> From<&'a crate::store::TrustedDevice> for DeviceJson<'a> {
    fn from(d: &'a crate::store::TrustedDevice) -> Self {
        Self {
            tenant_id: &d.tenant_id,
            id: &d.id,
            user_id: &d.user_id,
            token_hash: &d.token_hash,
            label: d.label.as_deref(),
            created_at: d.created_at,
            expires_at: d.expires_at,
        }
    }
}

#[derive(Serialize)]
struct Used<'a> {
    tenant_id: &'a str,
    id: &'a str,
    #[serde(serialize_with = "rows::time")]
    at: Timestamp,
}

#[derive(Serialize)]
struct SecurityJson<'a> {
    tenant_id: &'a str,
    user_id: &'a str,
    failures: i32,
    #[serde(serialize_with = "rows::opt_time")]
    last_failure_at: Option<Timestamp>,
}

impl<'a> From<&'a crate::domain::batch::SecurityRow> for SecurityJson<'a> {
    fn from(s: &'a crate::domain::batch::SecurityRow) -> Self {
        Self {
            tenant_id: &s.tenant_id,
            user_id: &s.user_id,
            failures: s.failures,
            last_failure_at: s.last_failure_at,
        }
    }
}
