//! Signed webhooks, prepared before the clock starts: Standard Webhooks
//! headers with a fresh `webhook-id` each, signed with the service's own
//! [`email2fa::signature::sign`].

use std::ops::Range;

use bytes::Bytes;
use serde_json::{Value, json};

/// The tenant every deployment gets.
pub const TENANT: &str = "bench";

/// The domain of every benchmark user's address.
pub const DOMAIN: &str = "bench.example";

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The raw body.
    pub body: Bytes,
    /// The benchmark user the request is about (0 for settings calls).
    pub user: u64,
}

/// The address of benchmark user `n` (unique per user; the service limits
/// codes per address).
pub fn recipient(n: u64) -> String {
    format!("u{n}@{DOMAIN}")
}

/// The user number of a benchmark address, the inverse of [`recipient`].
pub fn user_of(address: &str) -> Option<u64> {
    address
        .strip_prefix('u')?
        .strip_suffix(&format!("@{DOMAIN}"))?
        .parse()
        .ok()
}

/// Signs one event for the tenant.
pub fn prepare(key: &[u8], event_type: &str, data: Value, user: u64) -> Prepared {
    let id = format!("msg_{}", ulid::Ulid::generate());
    let timestamp = chrono::Utc::now().timestamp();
    let body = serde_json::to_vec(&json!({
        "type": event_type,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": data,
    }))
    .expect("a JSON value serialises");
    let signature = email2fa::signature::sign(key, &id, timestamp, &body);
    Prepared {
        id,
        timestamp: timestamp.to_string(),
        signature,
        body: Bytes::from(body),
        user,
    }
}

/// One `login.started` per user, each user enrolled beforehand (so each
/// call opens a challenge and queues one code email).
pub fn login_started(key: &[u8], users: Range<u64>) -> Vec<Prepared> {
    users
        .map(|n| {
            let data = json!({
                "user": {"id": format!("u{n}"), "role": "customer", "email": recipient(n)},
                "ip": "203.0.113.7",
                "user_agent": "email2fa-bench",
            });
            prepare(key, "login.started", data, n)
        })
        .collect()
}

/// The settings calls of `configure_mail` in the test suite: service
/// provider `p1` at the sink, secondary auth provider `s1`, both roles
/// allowed.
pub fn configure_mail(key: &[u8], sink_port: u16) -> Vec<Prepared> {
    vec![
        prepare(
            key,
            "service_provider.upserted",
            json!({"id": "p1", "title": "Bench sink", "kind": "smtp",
                   "smtp": {"host": "127.0.0.1", "port": sink_port, "security": "none",
                            "from_address": "shop@bench.example", "from_name": "Bench Shop"}}),
            0,
        ),
        prepare(
            key,
            "secondary_auth_provider.upserted",
            json!({"id": "s1", "title": "Email codes", "service_provider_id": "p1"}),
            0,
        ),
        prepare(
            key,
            "settings.updated",
            json!({"admin_2fa_allowed": true, "customer_2fa_allowed": true}),
            0,
        ),
    ]
}
