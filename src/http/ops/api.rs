//! The JSON half of `/ops`: queue counts, dead letters, resend, discard.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::OpsAuth;
use crate::http::{ApiError, AppState};
use crate::ops::{self, BulkAnswer, DeadLetterPage, OpsError, QueueStats};

impl From<OpsError> for ApiError {
    fn from(error: OpsError) -> Self {
        match error {
            OpsError::NotFound(_) => Self::DeadLetterNotFound(error.to_string()),
            OpsError::ChallengeClosed(detail) => Self::ChallengeClosed(detail),
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
        (status = 422, description = "`validation_failed`: a bad `kind`, `since`, `limit` or `cursor`", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn dead_letters(
    _: OpsAuth,
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let filter = ops::filter("tenant", query.tenant, query.kind, query.since.as_deref())?;
    let limit = match query.limit.as_deref() {
        None | Some("") => 50,
        Some(text) => text.parse().unwrap_or(0),
    };
    let page = ops::list(&state.store, filter, limit, query.cursor.as_deref()).await?;
    Ok(Json(page))
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

/// The body of a bulk resend; every field optional (`{}` resends all).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    /// Only this tenant's letters.
    pub tenant_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only letters dead at or after this RFC 3339 time.
    pub since: Option<String>,
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
    let body: BulkFilter = if body.iter().all(u8::is_ascii_whitespace) {
        BulkFilter::default()
    } else {
        let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(&body)
            .map_err(|e| ApiError::MalformedPayload(format!("the body is not JSON: {e}")))?;
        crate::events::parse_data(&raw).map_err(ApiError::Validation)?
    };
    let filter = ops::filter(
        "tenant_id",
        body.tenant_id,
        body.kind,
        body.since.as_deref(),
    )?;
    Ok(Json(
        ops::resend_matching(&state.store, &state.queue, &filter).await?,
    ))
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
