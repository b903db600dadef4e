//! The HTTP layer's one error type: every failure becomes an RFC 9457
//! `application/problem+json` answer with a stable `code` (API.md section 2).
//!
//! 4xx details say exactly what was wrong; 5xx answers are opaque and their
//! cause is logged once, inside the request span.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use problem_details::ProblemDetails;
use serde::Serialize;

use crate::events::FieldError;
use crate::store::StoreError;

/// Seconds a client should wait after a 503.
const UNAVAILABLE_RETRY_AFTER: u64 = 5;

/// The challenges of a 401 from `/ops`: Basic first, so browsers ask.
const OPS_BASIC_CHALLENGE: &str = "Basic realm=\"email2fa ops\"";
const OPS_BEARER_CHALLENGE: &str = "Bearer realm=\"email2fa ops\"";

/// A failed call, as the contract names it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: not JSON, or no envelope `type`/`data`.
    #[error("{0}")]
    MalformedPayload(String),
    /// 400: `type` is not an event of the contract.
    #[error("{0}")]
    UnknownEventType(String),
    /// 401: missing or bad signature headers, or no signature matches.
    #[error("{0}")]
    InvalidSignature(String),
    /// 401: correctly signed but outside the tolerance window.
    #[error("{0}")]
    TimestampOutOfTolerance(String),
    /// 403: 2FA is Inactive for the user's role.
    #[error("{0}")]
    NotAllowed(String),
    /// 401: an `/ops` call without the right token.
    #[error(
        "this needs the ops token: Authorization: Bearer TOKEN, or HTTP Basic with the token as password"
    )]
    Unauthorized,
    /// 403: a browser request from another site (cross-site request forgery).
    #[error("{0}")]
    Forbidden(String),
    /// 404: nothing here (e.g. `/ops` while the ops API is off).
    #[error("{0}")]
    NotFound(String),
    /// 404: no unresolved dead letter with this id.
    #[error("{0}")]
    DeadLetterNotFound(String),
    /// 404: no delivery with this id.
    #[error("{0}")]
    DeliveryNotFound(String),
    /// 409: the delivery is not waiting for a retry (sent, dead, …).
    #[error("{0}")]
    NotRetrying(String),
    /// 404: no such tenant.
    #[error("no tenant with this id")]
    UnknownTenant,
    /// 404: no such challenge for this tenant.
    #[error("no such challenge for this tenant")]
    ChallengeNotFound,
    /// 409: the user already has an email factor.
    #[error("{0}")]
    AlreadyEnrolled(String),
    /// 409: no secondary authentication provider configured.
    #[error("{0}")]
    NoProvider(String),
    /// 409: the challenge is verified, locked or replaced.
    #[error("{0}")]
    ChallengeClosed(String),
    /// 409: a reused `webhook-id` with a different body.
    #[error("this webhook-id was already used with a different body")]
    WebhookIdConflict,
    /// 409: a service provider still used by secondary auth providers.
    #[error("{0}")]
    ProviderInUse(String),
    /// 413: body over the limit.
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 422: fields of `data` are wrong.
    #[error("the event's data is invalid")]
    Validation(Vec<FieldError>),
    /// 429: too many codes; retry after the given seconds.
    #[error("{detail}")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
        /// Which limit.
        detail: String,
    },
    /// 503: the database or queue is unreachable; nothing was written.
    #[error("the service is temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 500: a bug; the cause is logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Extensions<'a> {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl ApiError {
    /// Status, stable code and title.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::MalformedPayload(_) => (
                StatusCode::BAD_REQUEST,
                "malformed_payload",
                "Malformed payload",
            ),
            Self::UnknownEventType(_) => (
                StatusCode::BAD_REQUEST,
                "unknown_event_type",
                "Unknown event type",
            ),
            Self::InvalidSignature(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "Invalid signature",
            ),
            Self::TimestampOutOfTolerance(_) => (
                StatusCode::UNAUTHORIZED,
                "timestamp_out_of_tolerance",
                "Timestamp out of tolerance",
            ),
            Self::NotAllowed(_) => (StatusCode::FORBIDDEN, "not_allowed", "Not allowed"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Self::DeadLetterNotFound(_) => (
                StatusCode::NOT_FOUND,
                "dead_letter_not_found",
                "Dead letter not found",
            ),
            Self::DeliveryNotFound(_) => (
                StatusCode::NOT_FOUND,
                "delivery_not_found",
                "Delivery not found",
            ),
            Self::NotRetrying(_) => (StatusCode::CONFLICT, "not_retrying", "Not retrying"),
            Self::UnknownTenant => (StatusCode::NOT_FOUND, "unknown_tenant", "Unknown tenant"),
            Self::ChallengeNotFound => (
                StatusCode::NOT_FOUND,
                "challenge_not_found",
                "Challenge not found",
            ),
            Self::AlreadyEnrolled(_) => {
                (StatusCode::CONFLICT, "already_enrolled", "Already enrolled")
            }
            Self::NoProvider(_) => (StatusCode::CONFLICT, "no_provider", "No provider"),
            Self::ChallengeClosed(_) => {
                (StatusCode::CONFLICT, "challenge_closed", "Challenge closed")
            }
            Self::WebhookIdConflict => (
                StatusCode::CONFLICT,
                "webhook_id_conflict",
                "Webhook id conflict",
            ),
            Self::ProviderInUse(_) => (StatusCode::CONFLICT, "provider_in_use", "Provider in use"),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            Self::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many codes",
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
            ),
        }
    }

    /// The stable `code`, for metrics and logs.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::Unavailable(error.into()),
            other => Self::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let detail = match &self {
            Self::Validation(errors) if errors.len() == 1 => {
                format!("{}: {}", errors[0].field, errors[0].message)
            }
            Self::Validation(errors) => format!("{} fields of data are invalid", errors.len()),
            Self::Unavailable(_) => {
                "the database or the queue is unreachable; nothing was written, retry later".into()
            }
            other => other.to_string(),
        };
        match &self {
            Self::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "answered 503")
            }
            Self::Internal(cause) => tracing::error!(error = format!("{cause:#}"), "answered 500"),
            _ => {}
        }
        let retry_after = match &self {
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let errors = match &self {
            Self::Validation(errors) => Some(errors.as_slice()),
            _ => None,
        };
        let problem = ProblemDetails::from_status_code(status)
            .with_title(title)
            .with_detail(detail)
            .with_extensions(Extensions {
                code,
                errors,
                retry_after,
            });
        let mut response = problem.into_response();
        if matches!(self, Self::Unauthorized) {
            let headers = response.headers_mut();
            for challenge in [OPS_BASIC_CHALLENGE, OPS_BEARER_CHALLENGE] {
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (
            status,
            content_type,
            serde_json::from_slice(&bytes).expect("json"),
        )
    }

    #[tokio::test]
    async fn validation_problems_list_their_fields() {
        let (status, content_type, body) = body_of(ApiError::Validation(vec![FieldError::new(
            "code_length",
            "must be between 6 and 10",
        )]))
        .await;
        assert_eq!(status, 422);
        assert_eq!(content_type.expect("type"), "application/problem+json");
        assert_eq!(body["code"], "validation_failed");
        assert_eq!(body["status"], 422);
        assert_eq!(body["errors"][0]["field"], "code_length");
        assert_eq!(body["detail"], "code_length: must be between 6 and 10");
    }

    #[tokio::test]
    async fn server_errors_hide_their_cause() {
        let cause = anyhow::anyhow!("password authentication failed for user secret_user");
        let (status, _, body) = body_of(ApiError::Internal(cause)).await;
        assert_eq!(status, 500);
        assert!(!body.to_string().contains("secret_user"));
    }
}
