//! `GET /healthz` (the process is up) and `GET /readyz` (its database and
//! queue answer).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;

/// A health answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `unavailable`.
    pub status: &'static str,
    /// `ok` or `unreachable` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    /// `ok` or `unreachable` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<&'static str>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        database: None,
        queue: None,
    })
}

/// The database (and queue) answer: 200, else 503.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to take webhooks", body = Health),
        (status = 503, description = "The database or queue is unreachable", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let (database, queue) = tokio::join!(state.store.ping(), state.queue.ping());
    if let Err(error) = &database {
        tracing::warn!(%error, "readiness: the database does not answer");
    }
    if let Err(error) = &queue {
        tracing::warn!(%error, "readiness: the queue does not answer");
    }
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let ready = database.is_ok() && queue.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: if ready { "ready" } else { "unavailable" },
            database: Some(word(database.is_ok())),
            queue: Some(word(queue.is_ok())),
        }),
    )
}
