//! The JSON half of `/ops`: queue counts, dead letters, resend, discard.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::OpsAuth;
use crate::http::{ApiError, AppState};
use crate::ops::{
    self, BulkAnswer, BulkDiscarded, DeadLetterPage, FilterInput, OpsError, QueueStats,
};
use email2fa_workers::dead_letters::DeadLetterFilter;

impl From<OpsError> for ApiError {
    fn from(error: OpsError) -> Self {
        match error {
            OpsError::NotFound(_) => Self::DeadLetterNotFound(error.to_string()),
            OpsError::ChallengeClosed(detail) => Self::ChallengeClosed(detail),
            OpsError::DeliveryNotFound(_) => Self::DeliveryNotFound(error.to_string()),
            OpsError::NotRetrying(detail) => Self::NotRetrying(detail),
            OpsError::Invalid(errors) => Self::Validation(errors),
            OpsError::Store(error) => error.into(),
            OpsError::Queue(error) => Self::Unavailable(error.into()),
        }
    }
}

/// The queue counts, read from the deliveries table.
#[utoipa::path(get, path = "/ops/queue", tag = "ops", security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "One entry, `emails`", body = QueueStats),
        (status = 401, description = "`unauthorized`: no or a wrong token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: the ops API is off", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn queue(
    _: OpsAuth,
    State(state): State<AppState>,
) -> Result<Json<QueueStats>, ApiError> {
    Ok(Json(ops::queue_stats(&state.store).await?))
}

/// The query of `GET /ops/dead-letters`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's letters.
    pub tenant: Option<String>,
    /// Only this kind: `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: Option<String>,
    /// Only letters dead at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only this reason: `attempts_exhausted`, `rejected`, `tls_failed`,
    /// `permanent` or `render`.
    pub reason: Option<String>,
    /// Only letters sent through this secondary auth provider.
    pub provider: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Unresolved dead letters, newest first, recipients masked.
#[utoipa::path(get, path = "/ops/dead-letters", tag = "ops", params(ListQuery),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "A page; `next_cursor` is null on the last", body = DeadLetterPage),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad `tenant`, `kind`, `since`, `reason`, `provider`, `limit` or `cursor`", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn dead_letters(
    _: OpsAuth,
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let input = FilterInput {
        tenant: query.tenant,
        kind: query.kind,
        since: query.since,
        reason: query.reason,
        provider: query.provider,
    };
    let filter = ops::filter("tenant", input)?;
    let limit = page_size(query.limit.as_deref());
    let page = ops::list(&state.store, filter, limit, query.cursor.as_deref()).await?;
    Ok(Json(page))
}

/// A `limit` parameter: 50 when absent, 0 (refused) when not a number.
pub fn page_size(text: Option<&str>) -> i64 {
    match text {
        None | Some("") => 50,
        Some(text) => text.parse().unwrap_or(0),
    }
}

/// The answer of a resend.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResendAnswer {
    /// The new delivery (status `queued`, `resent_from` the dead one).
    pub delivery_id: String,
}

/// Queues one dead letter again, with a fresh code for code emails.
#[utoipa::path(post, path = "/ops/dead-letters/{id}/resend", tag = "ops",
    params(("id" = String, Path, description = "The dead letter's id")),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "Queued again as a new delivery", body = ResendAnswer),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`dead_letter_not_found`: unknown, or already resent or discarded", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`challenge_closed`: the challenge was verified, locked, expired or replaced by a newer send", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: nothing was written", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn resend(
    _: OpsAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResendAnswer>, ApiError> {
    let delivery_id = ops::resend(&state.store, &state.queue, &id).await?;
    Ok(Json(ResendAnswer { delivery_id }))
}

/// The body of a bulk resend or discard; every field optional (`{}`
/// matches every unresolved letter).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    /// Only this tenant's letters.
    pub tenant_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only letters dead at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only this reason.
    pub reason: Option<String>,
    /// Only letters sent through this secondary auth provider.
    pub provider: Option<String>,
    /// Resend also letters SMTP rejected for good (`rejected`); without
    /// it they are left out and counted in `left_out_permanent`. Ignored by
    /// a discard.
    #[serde(default)]
    pub include_permanent: bool,
}

impl BulkFilter {
    /// Reads the body (empty: match all) into a checked filter.
    fn parse(body: &Bytes) -> Result<(DeadLetterFilter, bool), ApiError> {
        let body: Self = if body.iter().all(u8::is_ascii_whitespace) {
            Self::default()
        } else {
            let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(body)
                .map_err(|e| ApiError::MalformedPayload(format!("the body is not JSON: {e}")))?;
            crate::events::parse_data(&raw).map_err(ApiError::Validation)?
        };
        let input = FilterInput {
            tenant: body.tenant_id,
            kind: body.kind,
            since: body.since,
            reason: body.reason,
            provider: body.provider,
        };
        Ok((ops::filter("tenant_id", input)?, body.include_permanent))
    }
}

/// Queues again every unresolved dead letter that matches.
#[utoipa::path(post, path = "/ops/dead-letters/resend", tag = "ops",
    request_body(content = BulkFilter, content_type = "application/json"),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "What was resent and what was refused (with its code)", body = BulkAnswer),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn resend_bulk(
    _: OpsAuth,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<BulkAnswer>, ApiError> {
    let (filter, include_permanent) = BulkFilter::parse(&body)?;
    let answer =
        ops::resend_matching(&state.store, &state.queue, &filter, include_permanent).await?;
    Ok(Json(answer))
}

/// Discards every unresolved dead letter that matches.
#[utoipa::path(post, path = "/ops/dead-letters/discard", tag = "ops",
    request_body(content = BulkFilter, content_type = "application/json"),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "The letters discarded", body = BulkDiscarded),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: a browser request from another site", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn discard_bulk(
    _: OpsAuth,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<BulkDiscarded>, ApiError> {
    let (filter, _) = BulkFilter::parse(&body)?;
    Ok(Json(ops::discard_matching(&state.store, &filter).await?))
}

/// The answer of a discard.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiscardAnswer {
    /// The dead letter.
    pub id: String,
    /// Always true.
    pub discarded: bool,
}

/// Discards a dead letter: it leaves the list, its delivery is `discarded`.
#[utoipa::path(delete, path = "/ops/dead-letters/{id}", tag = "ops",
    params(("id" = String, Path, description = "The dead letter's id")),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "Discarded", body = DiscardAnswer),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`dead_letter_not_found`: unknown, or already resent or discarded", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn discard(
    _: OpsAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DiscardAnswer>, ApiError> {
    ops::discard(&state.store, &id).await?;
    Ok(Json(DiscardAnswer {
        id,
        discarded: true,
    }))
}
