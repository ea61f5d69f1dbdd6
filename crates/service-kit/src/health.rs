//! `GET /health` and `GET /health/ready`.
//!
//! `/health` answers 200 as long as the process serves HTTP: it is what a supervisor restarts
//! on. `/health/ready` runs the service's readiness check (DB reachable, model loaded, ...)
//! and answers 503 with the reason while it fails: it is what a load balancer or the monitor
//! routes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// A readiness check: `Ok(())` when ready, `Err(reason)` when not.
pub type ReadyCheck = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync + 'static,
>;

/// A check that is always ready.
pub fn always_ready() -> ReadyCheck {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

/// Wraps an async closure as a [`ReadyCheck`].
pub fn ready_check<F, Fut>(f: F) -> ReadyCheck
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// The two routes, to merge into a service's router.
pub fn routes<S: Clone + Send + Sync + 'static>(check: ReadyCheck) -> Router<S> {
    Router::new()
        .route("/health", get(alive))
        .route("/health/ready", get(ready).with_state(check))
}

async fn alive() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(check): State<ReadyCheck>) -> Response {
    match check().await {
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
