//! The HTTP server: the webhook ingress, health checks, metrics, the
//! operations API and dashboard, and the OpenAPI document, with a request
//! span (request id, tenant, event type) around every call.

mod health;
mod metrics;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod server;
mod webhooks;

pub use problem::ApiError;
pub use webhooks::is_valid_tenant_id;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Request};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use email2fa_workers::queue::Queue;

use crate::domain::DomainConfig;
use crate::settings::WebhookSettings;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Ingress limits.
    pub webhook: Arc<WebhookSettings>,
    /// What the events need from the settings.
    pub domain: Arc<DomainConfig>,
    /// Where email jobs go.
    pub queue: Queue,
    /// The batcher of the hot webhooks.
    pub ingest: crate::ingest::Ingest,
    /// The ops token and what `/ops` shows of the engine.
    pub ops: Arc<ops::OpsConfig>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone, Copy)]
struct UlidRequestId;

impl MakeRequestId for UlidRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        ulid::Ulid::generate()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

/// The router with its OpenAPI document, before state and layers.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(webhooks::receive))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(ops::dashboard::dashboard))
        .routes(routes!(ops::api::queue))
        .routes(routes!(ops::api::dead_letters))
        .routes(routes!(ops::api::resend_bulk))
        .routes(routes!(ops::api::discard_bulk))
        .routes(routes!(ops::deliveries::retrying))
        .routes(routes!(ops::deliveries::retry_now))
        .routes(routes!(ops::deliveries::delivery))
        .routes(routes!(ops::api::resend))
        .routes(routes!(ops::api::discard))
        .split_for_parts()
}

/// Only `GET /metrics`, for [`crate::settings::Settings::metrics_listen`].
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", axum::routing::get(metrics::metrics))
}

/// The complete application: routes, state, request ids and request spans.
pub fn router(state: AppState) -> Router {
    let (routes, openapi) = api();
    let openapi = Arc::new(openapi);
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let openapi = Arc::clone(&openapi);
                async move { axum::Json(openapi.as_ref().clone()) }
            }),
        )
        .with_state(state)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let request_id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        request.id = %request_id,
                        method = %request.method(),
                        path = %request.uri().path(),
                        tenant = tracing::field::Empty,
                        event.type = tracing::field::Empty,
                        outcome = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, UlidRequestId))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
}
