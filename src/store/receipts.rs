//! Webhook receipts: the idempotency memory of the ingress.
//!
//! The ingress claims `(tenant, webhook-id)` inside the same transaction that
//! executes the event. On PostgreSQL a concurrent duplicate blocks on the
//! primary key until the first commits (then sees its receipt) or rolls back
//! (then executes itself); on SQLite the write lock serializes them. Either
//! way an event runs once.

use email2fa_db::{with_db, with_tx};

use super::{Store, StoreResult, Timestamp, Tx};

/// The first answer to a webhook id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// SHA-256 of the body it answered.
    pub body_sha256: Vec<u8>,
    /// HTTP status of the answer.
    pub status: u16,
    /// The answer's bytes (opened).
    pub answer: Vec<u8>,
}

/// The outcome of claiming a webhook id.
#[derive(Debug)]
pub enum ReceiptClaim {
    /// First time: execute the event, then [`Store::complete_receipt`].
    New,
    /// Seen before: replay (same body) or refuse (different body).
    Seen(Receipt),
}

#[derive(sqlx::FromRow)]
struct ReceiptRow {
    body_sha256: Vec<u8>,
    status: i32,
    answer_sealed: Option<Vec<u8>>,
}

pub(crate) fn answer_context(tenant_id: &str, webhook_id: &str) -> String {
    format!("webhook_answer:{tenant_id}:{webhook_id}")
}

impl Store {
    /// Claims a webhook id for this transaction.
    pub async fn claim_receipt(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        webhook_id: &str,
        body_sha256: &[u8],
        event_type: &str,
    ) -> StoreResult<ReceiptClaim> {
        let inserted = with_tx!(tx, conn => sqlx::query(
            "insert into webhook_receipts \
                (tenant_id, webhook_id, body_sha256, event_type, status, answer_sealed, received_at) \
             values ($1, $2, $3, $4, 0, null, $5) \
             on conflict (tenant_id, webhook_id) do nothing")
            .bind(tenant_id).bind(webhook_id).bind(body_sha256).bind(event_type)
            .bind(Timestamp::now()).execute(conn).await.map(|r| r.rows_affected()))?;
        if inserted == 1 {
            return Ok(ReceiptClaim::New);
        }
        let row: ReceiptRow = with_tx!(tx, conn => sqlx::query_as(
            "select body_sha256, status, answer_sealed from webhook_receipts \
             where tenant_id = $1 and webhook_id = $2")
            .bind(tenant_id).bind(webhook_id).fetch_one(conn).await)?;
        let answer = match row.answer_sealed {
            Some(sealed) => self
                .secret_box
                .open(&sealed, &answer_context(tenant_id, webhook_id))?,
            None => Vec::new(),
        };
        Ok(ReceiptClaim::Seen(Receipt {
            body_sha256: row.body_sha256,
            status: u16::try_from(row.status).unwrap_or(500),
            answer,
        }))
    }

    /// Stores the answer of a claimed webhook id (sealed: it may carry a
    /// trust token).
    pub async fn complete_receipt(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        webhook_id: &str,
        status: u16,
        answer: &[u8],
    ) -> StoreResult<()> {
        let sealed = self
            .secret_box
            .seal(answer, &answer_context(tenant_id, webhook_id));
        with_tx!(tx, conn => sqlx::query(
            "update webhook_receipts set status = $3, answer_sealed = $4 \
             where tenant_id = $1 and webhook_id = $2")
            .bind(tenant_id).bind(webhook_id).bind(i32::from(status)).bind(&sealed)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Forgets receipts received before `before`; returns how many.
    pub async fn prune_receipts(&self, before: Timestamp) -> StoreResult<u64> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "delete from webhook_receipts where received_at < $1")
            .bind(before).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(done)
    }
}
