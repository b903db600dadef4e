//! Deliveries on `/ops`: `GET /ops/retrying` (emails in backoff), `POST
//! /ops/deliveries/{id}/retry` ("retry now") and `GET /ops/deliveries/{id}`
//! (one delivery in detail).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use email2fa_workers::retrying::RetryingFilter;

use super::OpsAuth;
use super::api::page_size;
use crate::http::{ApiError, AppState};
use crate::ops::{self, DeliveryDetail, FilterInput, OpsError, RetryingPage};

/// The query of `GET /ops/retrying`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetryingQuery {
    /// Only this tenant's emails.
    pub tenant: Option<String>,
    /// Only emails through this secondary auth provider.
    pub provider: Option<String>,
    /// Only this kind: `enrollment_code`, `login_code` or `factor_removed`.
    pub kind: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Emails waiting for their next attempt, the next due first.
#[utoipa::path(get, path = "/ops/retrying", tag = "ops", params(RetryingQuery),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "A page; `next_cursor` is null on the last", body = RetryingPage),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad `tenant`, `provider`, `kind`, `limit` or `cursor`", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn retrying(
    _: OpsAuth,
    State(state): State<AppState>,
    Query(query): Query<RetryingQuery>,
) -> Result<Json<RetryingPage>, ApiError> {
    let filter = retrying_filter(query.tenant, query.provider, query.kind)?;
    let limit = page_size(query.limit.as_deref());
    let page = ops::list_retrying(&state.store, filter, limit, query.cursor.as_deref()).await?;
    Ok(Json(page))
}

/// The retrying filter, checked by the dead letters' rules.
pub fn retrying_filter(
    tenant: Option<String>,
    provider: Option<String>,
    kind: Option<String>,
) -> Result<RetryingFilter, OpsError> {
    let checked = ops::filter(
        "tenant",
        FilterInput {
            tenant,
            kind,
            provider,
            ..FilterInput::default()
        },
    )?;
    Ok(RetryingFilter {
        tenant_id: checked.tenant_id,
        provider: checked.provider,
        kind: checked.kind,
        after: None,
    })
}

/// The answer of "retry now".
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetryAnswer {
    /// The delivery.
    pub delivery_id: String,
    /// Always true: its next attempt is due now and its job queued.
    pub due_now: bool,
}

/// Makes a retrying email's next attempt due now.
#[utoipa::path(post, path = "/ops/deliveries/{id}/retry", tag = "ops",
    params(("id" = String, Path, description = "The delivery's id")),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "Due now; a worker takes it at once", body = RetryAnswer),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: a browser request from another site", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`delivery_not_found`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_retrying`: sent, dead, or being sent now", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn retry_now(
    _: OpsAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RetryAnswer>, ApiError> {
    ops::retry_now(&state.store, &state.queue, &id).await?;
    Ok(Json(RetryAnswer {
        delivery_id: id,
        due_now: true,
    }))
}

/// One delivery: ids, provider and SMTP server, every attempt with the
/// server's answer, its dead letter and whether a resend would be refused.
#[utoipa::path(get, path = "/ops/deliveries/{id}", tag = "ops",
    params(("id" = String, Path, description = "The delivery's id")),
    security(("ops_bearer" = []), ("ops_basic" = [])),
    responses(
        (status = 200, description = "The delivery, recipient masked", body = DeliveryDetail),
        (status = 401, description = "`unauthorized`", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "`delivery_not_found`", body = crate::http::openapi::Problem, content_type = "application/problem+json")))]
pub async fn delivery(
    _: OpsAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    Ok(Json(ops::delivery_detail(&state.store, &id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retrying_filter_names_bad_fields() {
        let Err(OpsError::Invalid(errors)) =
            retrying_filter(Some("Acme!".into()), Some("p\0".into()), Some("x".into()))
        else {
            panic!("refused");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tenant", "kind", "provider"]);
    }
}
