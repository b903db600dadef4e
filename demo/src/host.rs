//! The host's one connection to email2fa: sign an event with the tenant's
//! `whsec_` secret (Standard Webhooks) and post it to
//! `POST /v1/webhooks/{tenant_id}`. Copy this file's idea into your
//! platform: every screen below calls [`Email2fa::send`] and reads the
//! answer, nothing else.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// Where email2fa listens and how this host signs for its tenant.
#[derive(Clone)]
pub struct Email2fa {
    http: reqwest::Client,
    endpoint: String,
    key: Vec<u8>,
}

/// One answer of email2fa: its status, its JSON body and, on a 429 or
/// 503, the seconds of its `Retry-After` header.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON answer (a problem+json object on failures).
    pub body: Value,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

impl Answer {
    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The problem's stable `code` (`rate_limited`, `not_allowed`, …).
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// A string field of the answer.
    pub fn text(&self, field: &str) -> &str {
        self.body[field].as_str().unwrap_or("")
    }

    /// The problem's `detail`, with the fields `validation_failed` names.
    pub fn detail(&self) -> String {
        let mut detail = self.text("detail").to_string();
        if let Some(errors) = self.body["errors"].as_array() {
            for error in errors {
                let field = error["field"].as_str().unwrap_or("");
                let message = error["message"].as_str().unwrap_or("");
                detail.push_str(&format!(" {field}: {message}."));
            }
        }
        detail
    }
}

/// Why no answer came at all.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// email2fa could not be reached (or kept answering 503).
    #[error("email2fa is unreachable: {0}")]
    Unreachable(String),
}

/// How often a `503` or a lost connection is tried again, with the same
/// `webhook-id` and body (email2fa then runs the event at most once).
const ATTEMPTS: u32 = 3;

impl Email2fa {
    /// A client for `tenant` on the email2fa at `base` (e.g.
    /// `http://127.0.0.1:8080`), signing with `secret` (`whsec_…`).
    pub fn new(base: &str, tenant: &str, secret: &str) -> anyhow::Result<Self> {
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or_else(|| anyhow::anyhow!("a signing secret starts with whsec_"))?;
        let key = BASE64.decode(encoded)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            endpoint: format!("{}/v1/webhooks/{tenant}", base.trim_end_matches('/')),
            key,
        })
    }

    /// Signs and posts one event; retries a `503` or a lost connection
    /// with the same `webhook-id`, which email2fa answers once.
    pub async fn send(&self, event_type: &str, data: Value) -> Result<Answer, SendError> {
        let id = format!("msg_{}", ulid::Ulid::generate());
        let body = serde_json::to_vec(&json!({
            "type": event_type,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": data,
        }))
        .map_err(|e| SendError::Unreachable(e.to_string()))?;
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.post(&id, &body).await {
                Ok(answer) if answer.status != 503 => return Ok(answer),
                Ok(answer) => last_error = answer.detail(),
                Err(error) => last_error = error.to_string(),
            }
            tracing::warn!(event_type, attempt, "email2fa did not answer; trying again");
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        Err(SendError::Unreachable(last_error))
    }

    /// `v1,` + base64 of HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`,
    /// keyed with the base64-decoded secret.
    fn signature(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    async fn post(&self, id: &str, body: &[u8]) -> Result<Answer, reqwest::Error> {
        // A fresh timestamp for each attempt: a retry is signed anew.
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = self.signature(id, &timestamp, body);
        let response = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.json().await.unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks test vector (standard-webhooks/spec): the same
    /// secret, id, timestamp and body give the same signature.
    #[test]
    fn the_signature_matches_the_standard_webhooks_vector() {
        let client = Email2fa::new(
            "http://127.0.0.1:1",
            "t",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .expect("client");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            client.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_without_its_prefix_is_refused() {
        assert!(Email2fa::new("http://x", "t", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    }
}
