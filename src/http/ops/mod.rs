//! `/ops` and `/ops/*`: the operations API and its dashboard, behind the ops
//! token (API.md section 6).
//!
//! Every handler takes an [`OpsAuth`], so no route can forget the check.
//! The token comes as `Authorization: Bearer TOKEN` (scripts, the CLI) or as
//! HTTP Basic with any user and the token as password (a browser, which
//! then keeps sending it). It is compared in constant time (digests of both
//! sides, so the length does not leak either). Without a configured token
//! every `/ops` path answers 404, as if it did not exist.
//!
//! A browser sends cached Basic credentials with any request to this origin,
//! also one forged by another site's form; state-changing calls therefore
//! refuse requests that a browser marks as coming from another site
//! (`Sec-Fetch-Site`, `Origin`). Scripts send neither header and pass.

pub mod api;
pub mod dashboard;
pub mod deliveries;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// What the engine of this process says about its SMTP providers: those
/// rejecting our credentials or failing TLS, and why.
pub type UnhealthyProviders =
    Arc<dyn Fn() -> Vec<email2fa_workers::health::UnhealthyProvider> + Send + Sync>;

/// The ops API's configuration.
#[derive(Clone, Default)]
pub struct OpsConfig {
    /// The token; `None` turns `/ops` off.
    pub token: Option<SecretString>,
    /// Provider health from this process's engine (absent in `ingress`).
    pub unhealthy_providers: Option<UnhealthyProviders>,
}

impl std::fmt::Debug for OpsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsConfig")
            .field("enabled", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Proof that a request carried the ops token.
#[derive(Debug, Clone, Copy)]
pub struct OpsAuth;

impl FromRequestParts<AppState> for OpsAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = &state.ops.token else {
            return Err(ApiError::NotFound(
                "no such resource (the operations API is off: EMAIL2FA_OPS_TOKEN is not set)"
                    .into(),
            ));
        };
        let presented = presented_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        if !same_secret(&presented, token.expose_secret()) {
            return Err(ApiError::Unauthorized);
        }
        if parts.method != Method::GET && from_another_site(&parts.headers) {
            return Err(ApiError::Forbidden(
                "a request from another site may not change anything here".into(),
            ));
        }
        Ok(OpsAuth)
    }
}

/// The token of `Bearer TOKEN`, or the password of `Basic base64(user:pw)`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

fn same_secret(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.ct_eq(&b))
}

/// True when a browser says the request comes from another site.
fn from_another_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, rest)| rest) != Some(host),
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn the_token_comes_as_bearer_or_as_the_basic_password() {
        let bearer = headers(&[("authorization", "Bearer tok-123")]);
        assert_eq!(presented_token(&bearer).as_deref(), Some("tok-123"));
        let basic = headers(&[("authorization", "Basic b3BzOnRvay0xMjM=")]); // ops:tok-123
        assert_eq!(presented_token(&basic).as_deref(), Some("tok-123"));
        assert_eq!(
            presented_token(&headers(&[("authorization", "Digest x")])),
            None
        );
        assert!(same_secret("tok-123", "tok-123"));
        assert!(!same_secret("tok-12", "tok-123"));
    }

    #[test]
    fn cross_site_browser_requests_are_recognised() {
        assert!(from_another_site(&headers(&[(
            "sec-fetch-site",
            "cross-site"
        )])));
        assert!(!from_another_site(&headers(&[(
            "sec-fetch-site",
            "same-origin"
        )])));
        assert!(from_another_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "ops.example:8080")
        ])));
        assert!(!from_another_site(&headers(&[
            ("origin", "http://ops.example:8080"),
            ("host", "ops.example:8080")
        ])));
        assert!(!from_another_site(&headers(&[("host", "ops.example")])));
    }
}
