//! `POST /v1/webhooks/{tenant_id}`: the signed webhook ingress.
//!
//! Order of checks, cheapest and least revealing first: body size (413),
//! tenant (404), signature then timestamp (401), envelope (400), data (422),
//! idempotency (replay or 409), then the event and its receipt in one
//! transaction. A failure after the transaction began rolls it back, so
//! nothing is half-written, and failures are never remembered: a retry with
//! the same `webhook-id` is evaluated afresh.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use secrecy::ExposeSecret;

use super::{ApiError, AppState};
use crate::domain::batch::{HotEvent, HotItem};
use crate::domain::{self, EventContext, EventError};
use crate::events::{Envelope, EnvelopeError, EventType, parse_data};
use crate::ingest::{Answer, IngestError};
use crate::signature::{self, SignatureError, SignatureHeaders};
use crate::store::ReceiptClaim;
use email2fa_workers::queue::{EmailJob, QueueError};

/// `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn is_valid_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Receives one signed event.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{tenant_id}",
    tag = "webhooks",
    params(
        ("tenant_id" = String, Path, description = "The tenant, `^[a-z0-9][a-z0-9-]{0,62}$`"),
        ("webhook-id" = String, Header, description = "Unique id of this message (1–255 characters); the idempotency key"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; refused beyond the tolerance (default 300 s)"),
        ("webhook-signature" = String, Header, description = "Space-separated `v1,<base64 HMAC-SHA256>` signatures"),
    ),
    request_body(content = super::openapi::WebhookEnvelope, content_type = "application/json"),
    responses(
        (status = 200, description = "The event's answer (see each event). A replay carries `idempotent-replayed: true`.",
            content_type = "application/json"),
        (status = 400, description = "`malformed_payload` or `unknown_event_type`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_signature` or `timestamp_out_of_tolerance`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_tenant` or `challenge_not_found`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`webhook_id_conflict`, `already_enrolled`, `no_provider`, `provider_in_use` or `challenge_closed`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with `errors`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`not_allowed`: 2FA is Inactive for the user's role", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`, with `Retry-After` and `retry_after`", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, with `Retry-After`; nothing was written", body = super::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    tenant_id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A path that is not UTF-8 names no tenant: `unknown_tenant` as
    // problem+json, like any other unknown tenant (axum's own rejection
    // is a 400 in plain text).
    let tenant_id = tenant_id.map_or_else(|_| String::new(), |Path(id)| id);
    let span = tracing::Span::current();
    let (started, mut event_type) = (std::time::Instant::now(), "unknown");
    let result = handle(&state, &tenant_id, &headers, body, &mut event_type).await;
    let outcome = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
    span.record("outcome", outcome);
    crate::metrics::webhook(event_type, outcome, started.elapsed());
    result
}

async fn handle(
    state: &AppState,
    tenant_id: &str,
    headers: &HeaderMap,
    body: Body,
    event_type_seen: &mut &'static str,
) -> Result<Response, ApiError> {
    let body = read_body(body, headers, state.webhook.max_body_bytes).await?;
    if !is_valid_tenant_id(tenant_id) {
        return Err(ApiError::UnknownTenant);
    }
    tracing::Span::current().record("tenant", tenant_id);
    let (tenant, cached) = state
        .store
        .tenant_with_cached_keys(tenant_id)
        .await?
        .ok_or(ApiError::UnknownTenant)?;
    let signed = SignatureHeaders {
        id: header_text(headers, "webhook-id"),
        timestamp: header_text(headers, "webhook-timestamp"),
        signature: header_text(headers, "webhook-signature"),
    };
    let now = chrono::Utc::now().timestamp();
    let tolerance = state.webhook.tolerance_seconds;
    let verified = match signature::verify(signed, &body, &tenant.keys, now, tolerance) {
        // The cached keys may predate a rotation: ask the database (at
        // most once a second per tenant, so garbage signatures do not turn
        // into database load).
        Err(SignatureError::NoMatch) if cached => {
            match state.store.refresh_keys_after_mismatch(tenant_id).await? {
                Some(fresh) => {
                    let fresh = fresh.ok_or(ApiError::UnknownTenant)?;
                    signature::verify(signed, &body, &fresh.keys, now, tolerance)
                }
                None => Err(SignatureError::NoMatch),
            }
        }
        verified => verified,
    };
    let (webhook_id, _) = verified.map_err(signature_problem)?;
    let envelope = Envelope::parse(&body).map_err(|error| match error {
        EnvelopeError::Malformed(message) => ApiError::MalformedPayload(message),
        EnvelopeError::UnknownType(name) => ApiError::UnknownEventType(format!(
            "{name:?} is not an event type of this service (see /openapi.json)"
        )),
    })?;
    let event_type = envelope.event_type.as_str();
    tracing::Span::current().record("event.type", event_type);
    *event_type_seen = event_type;
    let body_sha256 = Sha256::digest(&body).to_vec();
    if envelope.event_type.is_hot() {
        let item = HotItem {
            tenant_id: tenant_id.to_string(),
            webhook_id: webhook_id.to_string(),
            body_sha256,
            event: hot_event(state, &envelope).map_err(event_problem)?,
        };
        return match state.ingest.submit(item).await {
            Ok(Answer::Fresh(answer)) => Ok(json_response(StatusCode::OK, answer, false)),
            Ok(Answer::Replayed { status, body }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                Ok(json_response(status, body, true))
            }
            Err(error) => Err(ingest_problem(error)),
        };
    }

    let store = &state.store;
    let mut tx = store.begin().await?;
    let claim = store
        .claim_receipt(&mut tx, tenant_id, webhook_id, &body_sha256, event_type)
        .await?;
    if let ReceiptClaim::Seen(receipt) = claim {
        drop(tx.rollback().await);
        if receipt.body_sha256 != body_sha256 {
            return Err(ApiError::WebhookIdConflict);
        }
        let status = StatusCode::from_u16(receipt.status).unwrap_or(StatusCode::OK);
        return Ok(json_response(status, receipt.answer, true));
    }
    let mut ctx = EventContext {
        store,
        tx: &mut tx,
        tenant_id,
        config: &state.domain,
        deliveries: Vec::new(),
    };
    let executed = domain::execute(&mut ctx, &envelope).await;
    let jobs = ctx.deliveries;
    match executed {
        Ok(answer) => {
            store
                .complete_receipt(&mut tx, tenant_id, webhook_id, 200, &answer)
                .await?;
            let configures = envelope.event_type.configures_tenant();
            if configures {
                store.announce_tenant_change(&mut tx, tenant_id).await?;
            }
            commit_and_push(state, tx, jobs).await?;
            if configures {
                store.forget_tenant(tenant_id);
            }
            Ok(json_response(StatusCode::OK, answer, false))
        }
        Err(error) => {
            drop(tx.rollback().await);
            Err(event_problem(error))
        }
    }
}

/// Pushes the event's email jobs with its transaction, then commits
/// ([`Queue::push_with`](email2fa_workers::queue::Queue::push_with)): with
/// the database as the queue the jobs commit with the event, so neither
/// exists without the other; with Redis they are pushed first, so that a
/// Redis outage refuses the webhook (503) with nothing written.
async fn commit_and_push(
    state: &AppState,
    mut tx: crate::store::Tx,
    jobs: Vec<String>,
) -> Result<(), ApiError> {
    let pushed = !jobs.is_empty();
    let jobs = jobs
        .into_iter()
        .map(|delivery_id| EmailJob { delivery_id })
        .collect();
    if let Err(error) = state.queue.push_with(&mut tx, jobs).await {
        drop(tx.rollback().await);
        return Err(match error {
            QueueError::Unavailable(_) => {
                ApiError::Unavailable(anyhow::anyhow!("the queue is unavailable: {error}"))
            }
            QueueError::Other(_) => ApiError::Internal(anyhow::Error::new(error)),
        });
    }
    crate::store::commit(tx).await?;
    if pushed {
        state.queue.wake_workers();
    }
    Ok(())
}

/// A hot event's typed, validated data (422 before anything is read or
/// written), with the keyed hash of a login's trust cookie.
fn hot_event(state: &AppState, envelope: &Envelope<'_>) -> Result<HotEvent, EventError> {
    let data = envelope.data;
    Ok(match envelope.event_type {
        EventType::EnrollmentStarted => {
            let mut event: crate::events::EnrollmentStarted = parse_data(data)?;
            event.validate()?;
            event.normalize();
            HotEvent::EnrollmentStarted(event)
        }
        EventType::LoginStarted => {
            let event: crate::events::LoginStarted = parse_data(data)?;
            event.validate()?;
            let token_hash = event
                .trust_token
                .as_ref()
                .map(|token| state.store.hasher().token_hash(token.expose_secret()));
            HotEvent::LoginStarted { event, token_hash }
        }
        EventType::EnrollmentVerify | EventType::LoginVerify => {
            let login = envelope.event_type == EventType::LoginVerify;
            let event: crate::events::Verify = parse_data(data)?;
            event.validate(login)?;
            HotEvent::Verify { event, login }
        }
        _ => {
            let event: crate::events::ChallengeResend = parse_data(data)?;
            event.validate()?;
            HotEvent::Resend(event)
        }
    })
}

fn ingest_problem(error: IngestError) -> ApiError {
    match error {
        IngestError::Event(error) => event_problem(error),
        IngestError::Unavailable(what) => ApiError::Unavailable(anyhow::anyhow!(what)),
        IngestError::Stopped => ApiError::Unavailable(anyhow::anyhow!("the ingress is stopping")),
        IngestError::Internal => ApiError::Internal(anyhow::anyhow!("the webhook's batch failed")),
    }
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = header_text(headers, header::CONTENT_LENGTH.as_str())
        .and_then(|length| length.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map(|bytes| bytes.to_vec())
        .map_err(|_| ApiError::PayloadTooLarge(limit))
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn signature_problem(error: SignatureError) -> ApiError {
    tracing::info!(reason = error.reason(), "webhook signature refused");
    crate::metrics::signature_failure(error.reason());
    match error {
        SignatureError::OutOfTolerance { .. } => {
            ApiError::TimestampOutOfTolerance(format!("{error}; check the sender's clock"))
        }
        SignatureError::BadHeader(_) | SignatureError::NoMatch => {
            ApiError::InvalidSignature(error.to_string())
        }
    }
}

fn event_problem(error: EventError) -> ApiError {
    match error {
        EventError::Invalid(errors) => ApiError::Validation(errors),
        EventError::ProviderInUse { .. } => ApiError::ProviderInUse(error.to_string()),
        EventError::NotAllowed(detail) => ApiError::NotAllowed(detail),
        EventError::ChallengeNotFound => ApiError::ChallengeNotFound,
        EventError::WebhookIdConflict => ApiError::WebhookIdConflict,
        EventError::AlreadyEnrolled => ApiError::AlreadyEnrolled(error.to_string()),
        EventError::NoProvider(detail) => ApiError::NoProvider(detail),
        EventError::ChallengeClosed(_) => ApiError::ChallengeClosed(error.to_string()),
        EventError::RateLimited {
            retry_after,
            detail,
        } => ApiError::RateLimited {
            retry_after,
            detail,
        },
        EventError::Store(error) => error.into(),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>, replayed: bool) -> Response {
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_contract_pattern() {
        for good in ["default", "acme-shop", "0", &"a".repeat(63)] {
            assert!(is_valid_tenant_id(good), "{good}");
        }
        for bad in [
            "",
            "-acme",
            "Acme",
            "acme_shop",
            "acme.shop",
            &"a".repeat(64),
            "../x",
        ] {
            assert!(!is_valid_tenant_id(bad), "{bad}");
        }
    }
}
