//! `GET /metrics`: the Prometheus text exposition of this process.
//!
//! Public on the service's listener, as Prometheus scrapers expect: it holds
//! only counts with bounded labels, no user, address, tenant or secret.
//! Keep the listener on an internal network, or filter `/metrics` at the
//! proxy, if even queue sizes are not for the outside world.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The metrics of this process, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 503, description = "No exporter could be installed in this process")))]
pub async fn metrics() -> Response {
    match crate::metrics::handle() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            handle.render(),
        )
            .into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
