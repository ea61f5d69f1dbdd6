//! `GET /health` and `GET /health/ready`.
//!
//! `/health` answers 200 as long as the process serves HTTP: it is what a supervisor restarts
//! on. `/health/ready` runs the service's readiness check (DB reachable, model loaded, ...)
//! and answers 503 with the reason while it fails: it is what a load balancer or the monitor
//! routes on. A service adds both with [`crate::routes::Routes::health`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub(crate) async fn alive() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// What `/health/ready` answers for a check's outcome.
pub(crate) fn ready_response(outcome: Result<(), String>) -> Response {
    match outcome {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"status": "not_ready", "reason": reason})),
            )
                .into_response()
        }
    }
}
