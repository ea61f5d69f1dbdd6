//! `POST /admin/reload` (master key): re-read the routing table now. `GET /metrics`.
//! Readiness: the DB answers and a table is loaded.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Caller;
use crate::error::Error;
use crate::state::AppState;

pub async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match super::caller(&state, &headers) {
        Ok(Caller::Master) => {}
        Ok(Caller::Anonymous) if state.master_hash.is_none() => {}
        Ok(_) => return Error::MasterKeyRequired.into_response(),
        Err(e) => return e.into_response(),
    }
    match state.reload(true).await {
        Ok(_) => {
            let t = state.table.load();
            axum::Json(json!({"reloaded": true, "handles": t.handles.len(), "keys": t.keys.len()}))
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed");
            e.into_response()
        }
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.render_metrics(),
    )
        .into_response()
}

/// The readiness check: the DB answers, a routing table is loaded, the log writer lives.
pub async fn ready(state: Arc<AppState>) -> Result<(), String> {
    state
        .db
        .ping()
        .await
        .map_err(|e| format!("system-docs DB: {e}"))?;
    if !state.is_loaded() {
        return Err("routing table not loaded".into());
    }
    if state.log.died() {
        return Err("the request-log writer died; requests are not being logged".into());
    }
    Ok(())
}
