//! Standard Webhooks signatures (<https://www.standardwebhooks.com>):
//! `v1,<base64 HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.{body}`,
//! keyed with the base64-decoded `whsec_` secret.
//!
//! A header may carry several space-separated signatures (a sender rotating
//! its secret signs with both), and a tenant may have several valid secrets
//! (our side of a rotation); any pair that matches is enough. The comparison
//! is the MAC's own constant-time check. The signature is checked before the
//! timestamp, so only a correctly signed call learns that its clock is off.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The three signature headers of a call, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignatureHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`, Unix seconds.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
}

/// Why a call's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing or malformed.
    #[error("missing or malformed header {0}")]
    BadHeader(&'static str),
    /// No signature matches any valid secret.
    #[error("no signature matches a valid secret of this tenant")]
    NoMatch,
    /// Correctly signed, but the timestamp is outside the tolerance.
    #[error("webhook-timestamp is {skew} s away from the server's clock (tolerance {tolerance} s)")]
    OutOfTolerance {
        /// Seconds between the timestamp and now (signed: positive = future).
        skew: i64,
        /// The configured tolerance in seconds.
        tolerance: i64,
    },
}

impl SignatureError {
    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadHeader(_) => "bad_header",
            Self::NoMatch => "no_match",
            Self::OutOfTolerance { .. } => "out_of_tolerance",
        }
    }
}

/// The `v1,…` signature of one message with one key.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = mac_for(key, id, &timestamp.to_string(), body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

fn mac_for(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks a call against the tenant's valid keys. Returns the webhook id and
/// timestamp on success.
pub fn verify<'a>(
    headers: SignatureHeaders<'a>,
    body: &[u8],
    keys: &[Vec<u8>],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(&'a str, i64), SignatureError> {
    let id = headers
        .id
        .filter(|id| (1..=255).contains(&id.len()))
        .ok_or(SignatureError::BadHeader("webhook-id"))?;
    let timestamp_text = headers
        .timestamp
        .ok_or(SignatureError::BadHeader("webhook-timestamp"))?;
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| SignatureError::BadHeader("webhook-timestamp"))?;
    let provided: Vec<Vec<u8>> = headers
        .signature
        .ok_or(SignatureError::BadHeader("webhook-signature"))?
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .collect();
    if provided.is_empty() {
        return Err(SignatureError::BadHeader("webhook-signature"));
    }
    let matched = keys.iter().any(|key| {
        let mac = mac_for(key, id, timestamp_text, body);
        provided
            .iter()
            .any(|signature| mac.clone().verify_slice(signature).is_ok())
    });
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    // Compared without a sign: `abs()` of a saturated distance overflows
    // (`i64::MIN` stays negative), which let a signed call with a timestamp
    // near `i64::MIN` through.
    let skew = timestamp.saturating_sub(now);
    if skew.unsigned_abs() > tolerance_seconds.max(0).unsigned_abs() {
        return Err(SignatureError::OutOfTolerance {
            skew,
            tolerance: tolerance_seconds,
        });
    }
    Ok((id, timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignatureHeaders<'a> {
        SignatureHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn any_of_several_signatures_against_any_of_several_keys_is_accepted() {
        let old = b"old-key".to_vec();
        let new = b"new-key".to_vec();
        let body = br#"{"type":"x","data":{}}"#;
        let header = format!("v1,bm9wZQ== {} v2,ignored", sign(&new, "msg_1", NOW, body));
        let ts = NOW.to_string();
        let result = verify(headers("msg_1", &ts, &header), body, &[old, new], NOW, 300);
        assert_eq!(result, Ok(("msg_1", NOW)));
    }

    #[test]
    fn a_changed_body_id_or_timestamp_breaks_the_signature() {
        let key = b"k".to_vec();
        let sig = sign(&key, "msg_1", NOW, b"body");
        let ts = NOW.to_string();
        let later = (NOW + 1).to_string();
        let keys = [key];
        assert_eq!(
            verify(headers("msg_1", &ts, &sig), b"body!", &keys, NOW, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(headers("msg_2", &ts, &sig), b"body", &keys, NOW, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(headers("msg_1", &later, &sig), b"body", &keys, NOW, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn a_correct_signature_outside_the_tolerance_is_refused_for_its_time() {
        let key = b"k".to_vec();
        let old = NOW - 301;
        let sig = sign(&key, "m", old, b"b");
        let ts = old.to_string();
        assert_eq!(
            verify(headers("m", &ts, &sig), b"b", &[key], NOW, 300),
            Err(SignatureError::OutOfTolerance {
                skew: -301,
                tolerance: 300
            })
        );
    }

    #[test]
    fn a_correct_signature_with_an_extreme_timestamp_is_refused_whatever_its_sign() {
        let key = b"k".to_vec();
        for ts in [
            i64::MIN,
            i64::MIN + 1,
            -NOW,
            -1,
            0,
            NOW - 301,
            NOW + 301,
            i64::MAX - 1,
            i64::MAX,
        ] {
            let sig = sign(&key, "m", ts, b"b");
            let text = ts.to_string();
            let verdict = verify(
                headers("m", &text, &sig),
                b"b",
                std::slice::from_ref(&key),
                NOW,
                300,
            );
            assert!(
                matches!(verdict, Err(SignatureError::OutOfTolerance { .. })),
                "timestamp {ts}: {verdict:?}"
            );
        }
        for ts in [NOW - 300, NOW, NOW + 300] {
            let sig = sign(&key, "m", ts, b"b");
            let text = ts.to_string();
            assert_eq!(
                verify(
                    headers("m", &text, &sig),
                    b"b",
                    std::slice::from_ref(&key),
                    NOW,
                    300
                ),
                Ok(("m", ts))
            );
        }
    }

    #[test]
    fn missing_or_malformed_headers_are_named() {
        let keys = [b"k".to_vec()];
        let none = SignatureHeaders {
            id: None,
            timestamp: Some("1"),
            signature: Some("v1,AA=="),
        };
        assert_eq!(
            verify(none, b"", &keys, NOW, 300),
            Err(SignatureError::BadHeader("webhook-id"))
        );
        assert_eq!(
            verify(headers("m", "soon", "v1,AA=="), b"", &keys, NOW, 300),
            Err(SignatureError::BadHeader("webhook-timestamp"))
        );
        assert_eq!(
            verify(headers("m", "1", "v1,!!!"), b"", &keys, NOW, 300),
            Err(SignatureError::BadHeader("webhook-signature"))
        );
        let long_id = "x".repeat(256);
        assert_eq!(
            verify(headers(&long_id, "1", "v1,AA=="), b"", &keys, NOW, 300),
            Err(SignatureError::BadHeader("webhook-id"))
        );
    }
}
