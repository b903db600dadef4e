//! What the service writes for hosts and auditors to read: login decisions,
//! audit events, and the per-user failure count behind the lockout.

use email2fa_workers::with_tx;
use ulid::Ulid;

use super::{Store, StoreResult, Timestamp, Tx};

/// One `login.started` decision.
#[derive(Debug, Clone)]
pub struct LoginDecision<'a> {
    /// The host's user id.
    pub user_id: &'a str,
    /// `admin` or `customer`.
    pub role: &'a str,
    /// `allow`, `challenge` or `enroll_required`.
    pub decision: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The challenge it opened, if any.
    pub challenge_id: Option<&'a str>,
    /// The browser's address, as the host saw it.
    pub ip: Option<&'a str>,
    /// The browser's user agent.
    pub user_agent: Option<&'a str>,
}

impl Store {
    /// Records a login decision.
    pub async fn insert_login_decision(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        d: &LoginDecision<'_>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let id = Ulid::generate().to_string();
        with_tx!(tx, conn => sqlx::query(
            "insert into login_decisions (tenant_id, id, user_id, role, decision, reason, \
                challenge_id, ip, user_agent, created_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(tenant_id).bind(&id).bind(d.user_id).bind(d.role).bind(d.decision)
            .bind(d.reason).bind(d.challenge_id).bind(d.ip).bind(d.user_agent).bind(now)
            .execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

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

    /// Adds one failed try to a user's streak.
    pub async fn record_failure(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        with_tx!(tx, conn => sqlx::query(
            "insert into user_security (tenant_id, user_id, consecutive_failures, last_failure_at) \
             values ($1, $2, 1, $3) \
             on conflict (tenant_id, user_id) do update set \
                consecutive_failures = user_security.consecutive_failures + 1, \
                last_failure_at = excluded.last_failure_at")
            .bind(tenant_id).bind(user_id).bind(now).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// A success ends the streak.
    pub async fn reset_failures(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
    ) -> StoreResult<()> {
        with_tx!(tx, conn => sqlx::query(
            "update user_security set consecutive_failures = 0 where tenant_id = $1 and user_id = $2")
            .bind(tenant_id).bind(user_id).execute(conn).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Serialises code sends for a user and a recipient across every
    /// process sharing the database, until the transaction ends: one round
    /// trip. PostgreSQL takes two transaction-scoped advisory locks, always
    /// the user's first (a fixed order, so two sends cannot deadlock);
    /// SQLite transactions already hold the database's write lock.
    pub async fn lock_for_limits(
        &self,
        tx: &mut Tx,
        user_key: &str,
        recipient_key: &str,
    ) -> StoreResult<()> {
        if let super::Tx::Postgres(tx) = tx {
            sqlx::query(
                "select pg_advisory_xact_lock(hashtextextended($1, 0)), \
                        pg_advisory_xact_lock(hashtextextended($2, 0))",
            )
            .bind(user_key)
            .bind(recipient_key)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// What the send limits look at, in one round trip: the user's streak of
    /// wrong codes, and the code sends asked for the user since
    /// `user_since` and to the address since `recipient_since` (sent,
    /// queued, or replaced by a newer one before going out: every request
    /// counts, so hammering "Send New Code" cannot get around the limit),
    /// each with the oldest one's time (when the window frees a slot).
    pub async fn send_limit_counts(
        &self,
        tx: &mut Tx,
        tenant_id: &str,
        user_id: &str,
        recipient: &str,
        user_since: Timestamp,
        recipient_since: Timestamp,
    ) -> StoreResult<SendLimitCounts> {
        Ok(with_tx!(tx, conn => sqlx::query_as(
            "select coalesce(s.consecutive_failures, 0) as failures, \
                    s.last_failure_at as last_failure_at, \
                    u.n as user_sends, u.oldest as oldest_user_send, \
                    r.n as recipient_sends, r.oldest as oldest_recipient_send \
             from (select count(*) as n, min(created_at) as oldest from deliveries \
                   where tenant_id = $1 and user_id = $2 and created_at > $4 \
                     and kind in ('enrollment_code', 'login_code')) u \
             cross join (select count(*) as n, min(created_at) as oldest from deliveries \
                   where tenant_id = $1 and recipient = $3 and created_at > $5 \
                     and kind in ('enrollment_code', 'login_code')) r \
             left join user_security s on s.tenant_id = $1 and s.user_id = $2")
            .bind(tenant_id).bind(user_id).bind(recipient).bind(user_since).bind(recipient_since)
            .fetch_one(conn).await)?)
    }
}

/// What [`Store::send_limit_counts`] reads.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SendLimitCounts {
    /// Wrong codes in a row.
    pub failures: i32,
    /// The last wrong code's time.
    pub last_failure_at: Option<Timestamp>,
    /// Code sends for the user in the user window.
    pub user_sends: i64,
    /// The oldest of those.
    pub oldest_user_send: Option<Timestamp>,
    /// Code sends to the address in the recipient window.
    pub recipient_sends: i64,
    /// The oldest of those.
    pub oldest_recipient_send: Option<Timestamp>,
}
