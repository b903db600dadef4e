//! Storing freshly minted codes' hashes, a batch of sends at a time.

use std::collections::HashSet;

use super::{Db, Store, StoreResult, Timestamp};

/// A code just drawn for a send, as only its keyed hash.
#[derive(Debug, Clone)]
pub struct MintedCode {
    /// The challenge's tenant.
    pub tenant_id: String,
    /// The challenge the code answers.
    pub challenge_id: String,
    /// The send that carries it.
    pub delivery_id: String,
    /// The code's keyed hash (never the code).
    pub code_hash: Vec<u8>,
    /// When the code stops working.
    pub expires_at: Timestamp,
}

impl Store {
    /// Stores each minted code's hash and expiry with its challenge, if its
    /// send is still the challenge's current one and the challenge is
    /// pending: the check and the write are one statement for the whole
    /// batch, so a resend cannot slip between them. Returns the deliveries
    /// whose code was stored; the others were superseded (or the challenge
    /// closed) and must not be sent.
    ///
    /// A delivery that minted before (`code_delivery_id` is already this
    /// delivery: a retry after a crash, a lease that ran out, a sweep's
    /// re-push, an SMTP retry) is a second attempt of the same email, which
    /// no user asked for; the first copy may have arrived. The code it
    /// replaces moves to `previous_code_hash`/`previous_code_expires_at` and
    /// keeps working until its own expiry (only the one just before: a
    /// third attempt replaces the first). A first mint, the first of a new
    /// send, clears them: a new send (`challenge.resend`) supersedes every
    /// earlier code.
    pub async fn store_minted_codes(&self, codes: &[MintedCode]) -> StoreResult<HashSet<String>> {
        if codes.is_empty() {
            return Ok(HashSet::new());
        }
        let mut codes: Vec<&MintedCode> = codes.iter().collect();
        // Row locks in key order: concurrent batches never deadlock.
        codes.sort_unstable_by(|a, b| {
            (&a.tenant_id, &a.challenge_id).cmp(&(&b.tenant_id, &b.challenge_id))
        });
        let now = Timestamp::now();
        let stored: Vec<(String,)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "update challenges c set code_hash = m.code_hash, \
                        code_expires_at = m.expires_at, code_delivery_id = m.delivery_id, \
                        previous_code_hash = case when c.code_delivery_id = m.delivery_id \
                            then c.code_hash end, \
                        previous_code_expires_at = case when c.code_delivery_id = m.delivery_id \
                            then c.code_expires_at end, \
                        updated_at = $6 \
                     from unnest($1::text[], $2::text[], $3::text[], $4::bytea[], \
                        $5::timestamptz[]) as m(tenant_id, id, delivery_id, code_hash, expires_at) \
                     where c.tenant_id = m.tenant_id and c.id = m.id and c.status = 'pending' \
                        and c.current_delivery_id = m.delivery_id \
                     returning c.code_delivery_id",
                )
                .bind(column(&codes, |c| c.tenant_id.clone()))
                .bind(column(&codes, |c| c.challenge_id.clone()))
                .bind(column(&codes, |c| c.delivery_id.clone()))
                .bind(column(&codes, |c| c.code_hash.clone()))
                .bind(column(&codes, |c| c.expires_at.as_datetime()))
                .bind(now)
                .fetch_all(pool)
                .await?
            }
            Db::Sqlite(pool, _) => {
                // No arrays on SQLite: a `values` list, one row per code.
                let rows = (0..codes.len())
                    .map(|i| {
                        let n = 1 + i * 5;
                        format!(
                            "(${}, ${}, ${}, ${}, ${})",
                            n + 1,
                            n + 2,
                            n + 3,
                            n + 4,
                            n + 5
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = sqlx::AssertSqlSafe(format!(
                    "update challenges set code_hash = m.column4, code_expires_at = m.column5, \
                        code_delivery_id = m.column3, \
                        previous_code_hash = case when challenges.code_delivery_id = m.column3 \
                            then challenges.code_hash end, \
                        previous_code_expires_at = case \
                            when challenges.code_delivery_id = m.column3 \
                            then challenges.code_expires_at end, \
                        updated_at = $1 \
                     from (values {rows}) as m \
                     where challenges.tenant_id = m.column1 and challenges.id = m.column2 \
                        and challenges.status = 'pending' \
                        and challenges.current_delivery_id = m.column3 \
                     returning challenges.code_delivery_id"
                ));
                let mut query = sqlx::query_as(sql).bind(now);
                for code in &codes {
                    query = query
                        .bind(&code.tenant_id)
                        .bind(&code.challenge_id)
                        .bind(&code.delivery_id)
                        .bind(&code.code_hash)
                        .bind(code.expires_at);
                }
                let _turn = self.db.write_turn().await?;
                query.fetch_all(pool).await?
            }
        };
        Ok(stored.into_iter().map(|(id,)| id).collect())
    }
}

/// One field of every code, as an array to bind.
fn column<T>(codes: &[&MintedCode], field: impl Fn(&MintedCode) -> T) -> Vec<T> {
    codes.iter().map(|c| field(c)).collect()
}
