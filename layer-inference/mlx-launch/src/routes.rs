//! The OpenAI face: chat and completions forwarded to the model's child, `/v1/models` from
//! the registry, `/status` for operators.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::Error;
use crate::supervisor::Lease;

pub async fn chat(State(app): State<Arc<AppState>>, req: Request) -> Response {
    forward(app, "/v1/chat/completions", req).await
}

pub async fn completions(State(app): State<Arc<AppState>>, req: Request) -> Response {
    forward(app, "/v1/completions", req).await
}

/// Refuses what `mlx_lm.server` would silently ignore.
fn check_supported(body: &serde_json::Map<String, Value>) -> Result<(), Error> {
    let set = |k: &str| body.get(k).filter(|v| !v.is_null());
    if let Some(n) = set("n")
        && n.as_u64() != Some(1)
    {
        return Err(Error::BadRequest(format!(
            "n = {n} is not supported: mlx_lm.server returns one choice whatever n says; send n = 1 (or several requests)"
        )));
    }
    if let Some(rf) = set("response_format")
        && rf.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(Error::BadRequest(
            "response_format is not supported: mlx_lm.server ignores it, so the output would not follow the format".into(),
        ));
    }
    if let Some(tc) = set("tool_choice")
        && !matches!(tc.as_str(), Some("auto" | "none"))
    {
        return Err(Error::BadRequest(
            "tool_choice other than \"auto\" or \"none\" is not supported: mlx_lm.server ignores it".into(),
        ));
    }
    Ok(())
}

async fn forward(app: Arc<AppState>, path: &str, req: Request) -> Response {
    match try_forward(&app, path, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "request failed");
            e.into_response()
        }
    }
}

async fn try_forward(app: &AppState, path: &str, req: Request) -> Result<Response, Error> {
    if !service_kit::body::is_json(req.headers()) {
        return Err(Error::BadRequest("the request body must be JSON".into()));
    }
    let bytes = service_kit::body::read_bytes(req)
        .await
        .map_err(Error::Api)?;
    let mut body: serde_json::Map<String, Value> =
        service_kit::body::parse_json(&bytes).map_err(Error::Api)?;
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| Error::BadRequest("`model` is required".into()))?
        .to_owned();
    check_supported(&body)?;
    let lease = app.supervisor.acquire(&model).await?;
    body.insert("model".into(), Value::String(lease.upstream_model.clone()));
    // A whole body, so the child gets a Content-Length (mlx_lm.server answers 411 without).
    let out = serde_json::to_vec(&body).map_err(|e| Error::BadRequest(e.to_string()))?;
    let resp = match send(app, &lease, path, &out).await {
        Ok(r) => r,
        Err(first) => {
            // The child died or stopped answering before it said anything: start it again
            // and retry once.
            tracing::warn!(model = %model, error = %first, "engine unreachable; restarting and retrying once");
            app.supervisor.discard(&lease).await;
            drop(lease);
            let lease = app.supervisor.acquire(&model).await?;
            let resp = send(app, &lease, path, &out)
                .await
                .map_err(|e| Error::Upstream {
                    model: model.clone(),
                    message: e.to_string(),
                })?;
            return Ok(relay(resp, lease, &model));
        }
    };
    Ok(relay(resp, lease, &model))
}

async fn send(
    app: &AppState,
    lease: &Lease,
    path: &str,
    body: &[u8],
) -> Result<reqwest::Response, reqwest::Error> {
    app.supervisor
        .http()
        .post(format!("{}{path}", lease.base_url))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await
}

/// Passes the child's answer on as it comes (status, content type, body chunks), holding the
/// lease until the body ends so the child is not stopped under a stream.
fn relay(resp: reqwest::Response, lease: Lease, model: &str) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let model = model.to_owned();
    let stream = resp.bytes_stream().map(move |chunk| {
        let _held = &lease;
        chunk.map_err(|e| {
            tracing::warn!(model = %model, error = %e, "engine stream broke");
            std::io::Error::other(e)
        })
    });
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}

/// `GET /v1/models`: the registry's models (not the child's list, which misses single-file
/// models), with whether each runs now.
pub async fn models(State(app): State<Arc<AppState>>) -> Response {
    let running: Vec<String> = app
        .supervisor
        .status()
        .into_iter()
        .map(|c| c.model_id)
        .collect();
    let data: Vec<Value> = app
        .supervisor
        .models()
        .values()
        .map(|m| {
            json!({
                "id": m.model_id,
                "object": "model",
                "created": 0,
                "owned_by": "homelab",
                "loaded": running.contains(&m.model_id),
                "memory_bytes": m.memory_bytes,
                "context_length": m.context_length,
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /status`: the running children and the memory budget.
pub async fn status(State(app): State<Arc<AppState>>) -> Response {
    let children = app.supervisor.status();
    let used: u64 = children.iter().map(|c| c.memory_bytes).sum();
    axum::Json(json!({
        "memory_budget_bytes": app.supervisor.budget(),
        "memory_used_bytes": used,
        "children": children,
        "starts": app.supervisor.starts.load(std::sync::atomic::Ordering::Relaxed),
        "stops": app.supervisor.stops.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}
