//! Audit events written outside the batched webhooks (operations, rare
//! events). The batched webhooks write theirs with the batch
//! ([`super::batch`]).

use email2fa_db::with_tx;
use ulid::Ulid;

use super::{Store, StoreResult, Timestamp, Tx};

impl Store {
    /// Records an audit event. `detail` is JSON and never holds a code or
    /// a token.
    pub async fn audit(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: Option<&str>,
        event: &str,
        detail: serde_json::Value,
    ) -> StoreResult<()> {
        let id = Ulid::generate().to_string();
        with_tx!(tx, conn => sqlx::query(
            "insert into audit_events (tenant_id, id, user_id, event, detail, created_at) \
             values ($1, $2, $3, $4, $5, $6)")
            .bind(tenant_id).bind(&id).bind(user_id).bind(event).bind(detail.to_string())
            .bind(Timestamp::now()).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
