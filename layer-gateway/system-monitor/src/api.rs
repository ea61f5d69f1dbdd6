//! The JSON API. Field names are stable and documented in the crate README.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use docsdb::monitor::{self, counts};
use serde::Deserialize;

use crate::Error;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct Format {
    pub format: Option<String>,
}

/// `GET /api/status[?format=text]`: every service's state, or with `format=text` one
/// sentence to be read aloud ("All 7 services up." / "2 problems: …").
pub async fn status(
    State(state): State<Arc<AppState>>,
    Query(q): Query<Format>,
) -> Result<axum::response::Response, Error> {
    use axum::response::IntoResponse;
    let services = monitor::services(&state.db).await?;
    match q.format.as_deref() {
        None | Some("json") => {}
        Some("text") => {
            return Ok((
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                )],
                monitor::spoken_status(&services),
            )
                .into_response());
        }
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "unknown format `{other}`: json (the default) or text"
            )));
        }
    }
    let counts = counts(&services);
    Ok(Json(serde_json::json!({
        "status": counts.overall(),
        "at_ms": docsdb::now_ms(),
        "counts": counts,
        "services": services,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct Limit {
    pub limit: Option<i64>,
}

/// `GET /api/services/{name}`
pub async fn service(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, Error> {
    let row = monitor::service(&state.db, &name)
        .await?
        .ok_or_else(|| Error::UnknownService(name.clone()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let checks = monitor::recent_checks(&state.db, &name, limit).await?;
    let since = docsdb::now_ms() - 24 * monitor::HOUR_MS;
    let hourly = monitor::hourly(&state.db, since, Some(&name)).await?;
    Ok(Json(serde_json::json!({
        "service": row,
        "checks": checks,
        "hourly": hourly,
    })))
}

/// `GET /api/handles`
pub async fn handles(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, Error> {
    Ok(Json(
        serde_json::json!({ "handles": monitor::handles(&state.db).await? }),
    ))
}

/// `GET /api/handles/{handle}`: one handle's traffic and its callers over the last 24 hours
/// (per virtual key and per end user a client named, e.g. Open WebUI's users).
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let row = monitor::handles(&state.db)
        .await?
        .into_iter()
        .find(|h| h.handle == name)
        .ok_or_else(|| Error::UnknownHandle(name.clone()))?;
    let callers = monitor::handle_users(&state.db, Some(&name)).await?;
    Ok(Json(
        serde_json::json!({ "handle": row, "callers": callers }),
    ))
}

/// `GET /api/models`
pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, Error> {
    Ok(Json(
        serde_json::json!({ "models": monitor::models(&state.db).await? }),
    ))
}

/// `GET /api/hosts`
pub async fn hosts(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, Error> {
    Ok(Json(
        serde_json::json!({ "hosts": monitor::hosts(&state.db).await? }),
    ))
}

/// `GET /api/errors?limit=N`
pub async fn errors(
    State(state): State<Arc<AppState>>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, Error> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        serde_json::json!({ "errors": monitor::errors(&state.db, limit).await? }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ToolsQuery {
    pub limit: Option<i64>,
    pub request_id: Option<String>,
}

/// `GET /api/tools?limit=N&request_id=ID`: calls per tool over the last 24 hours, and the
/// newest calls (of one request when `request_id` is given).
pub async fn tools(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ToolsQuery>,
) -> Result<Json<serde_json::Value>, Error> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let tools = docsdb::tool_calls::stats(&state.db).await?;
    let calls = docsdb::tool_calls::recent(&state.db, limit, q.request_id.as_deref()).await?;
    Ok(Json(serde_json::json!({ "tools": tools, "calls": calls })))
}
