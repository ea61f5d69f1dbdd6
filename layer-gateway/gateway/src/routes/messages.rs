//! `POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic Messages for any handle,
//! translated to chat completions ([`crate::anthropic`]) and routed like every chat — keys
//! (`x-api-key` as well as Bearer), limits, fallbacks, one request-log row — with answers,
//! streams and errors in Anthropic's shapes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::anthropic::{self, Events};
use crate::error::Error;
use crate::proxy::{self, Route};
use crate::state::AppState;

/// The client's headers, with `x-api-key` as the bearer token when there is no
/// `Authorization` (Anthropic's SDKs send the key that way).
fn with_key(mut headers: HeaderMap) -> HeaderMap {
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(key) = headers.get("x-api-key").and_then(|k| k.to_str().ok())
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
    {
        headers.insert(header::AUTHORIZATION, v);
    }
    headers
}

fn anthropic_json(status: StatusCode, v: &Value) -> Response {
    (status, axum::Json(v.clone())).into_response()
}

/// A gateway error answer (OpenAI-shaped) in Anthropic's shape; other answers unchanged.
async fn as_anthropic_error(res: Response) -> Result<Response, Response> {
    if res.status().is_success() {
        return Ok(res);
    }
    let status = res.status();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut out = anthropic_json(status, &anthropic::error_body(status.as_u16(), &bytes));
    for name in ["x-request-id", "retry-after"] {
        if let Some(v) = parts.headers.get(name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    Err(out)
}

/// Reads, checks and translates a Messages request, then routes it; the chat answer (or an
/// Anthropic error) and the request's model and id.
async fn route(
    state: &Arc<AppState>,
    req: Request,
    adjust: impl FnOnce(&mut Value),
) -> Result<(Response, String, String), Response> {
    let request_id = service_kit::request_id::of(&req);
    let headers = with_key(req.headers().clone());
    let reject = |caller, e: Error| {
        proxy::reject(
            state,
            Route::Messages,
            request_id.clone(),
            caller,
            &headers,
            e,
        )
    };
    let caller = match super::caller(state, &headers) {
        Ok(c) => c,
        Err(e) => {
            return Err(as_anthropic_error(reject(None, e))
                .await
                .unwrap_or_else(|r| r));
        }
    };
    if !service_kit::body::is_json(&headers) {
        let e = Error::BadRequest(
            "the request body must be JSON, sent with `Content-Type: application/json`".into(),
        );
        return Err(as_anthropic_error(reject(Some(caller), e))
            .await
            .unwrap_or_else(|r| r));
    }
    let body = match service_kit::body::read_bytes(req).await {
        Ok(b) => b,
        Err(api) => {
            let res = proxy::reject_api(
                state,
                Route::Messages,
                request_id.clone(),
                Some(caller),
                &headers,
                api,
            );
            return Err(as_anthropic_error(res).await.unwrap_or_else(|r| r));
        }
    };
    let mut chat = match serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("invalid JSON body: {e}"))
        .and_then(|v| anthropic::to_chat(&v))
    {
        Ok(c) => c,
        Err(m) => {
            return Err(
                as_anthropic_error(reject(Some(caller), Error::BadRequest(m)))
                    .await
                    .unwrap_or_else(|r| r),
            );
        }
    };
    adjust(&mut chat);
    let model = chat["model"].as_str().unwrap_or_default().to_owned();
    let res = proxy::forward(
        state.clone(),
        Route::Messages,
        caller,
        request_id.clone(),
        &headers,
        Bytes::from(chat.to_string()),
    )
    .await;
    let res = as_anthropic_error(res).await?;
    Ok((res, model, request_id))
}

/// `POST /v1/messages`.
pub async fn messages(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (res, model, request_id) = match route(&state, req, |_| {}).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let id = anthropic::message_id(&request_id);
    let streamed = super::is_event_stream(&res);
    let (mut parts, body) = res.into_parts();
    if !streamed {
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let chat: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut out = anthropic_json(StatusCode::OK, &anthropic::from_chat(&chat, &model, &id));
        if let Some(v) = parts.headers.get("x-request-id") {
            out.headers_mut().insert("x-request-id", v.clone());
        }
        return out;
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let events = super::translated(body, Events::new(&id, &model));
    Response::from_parts(parts, events)
}

impl super::Translate for Events {
    fn chunk(&mut self, chunk: &Value) -> String {
        Events::chunk(self, chunk)
    }

    fn end(&mut self) -> String {
        self.finish()
    }
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the handle's model counts them,
/// from a one-token answer's usage.
pub async fn count_tokens(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let adjust = |chat: &mut Value| {
        chat["max_tokens"] = json!(1);
        if let Some(o) = chat.as_object_mut() {
            o.remove("stream");
            o.remove("stream_options");
        }
    };
    // count_tokens takes no `max_tokens`: give the translation one.
    let req = {
        let (parts, body) = req.into_parts();
        let limit = usize::try_from(state.config.common.body_limit).unwrap_or(usize::MAX);
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => {
                return anthropic_json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &json!({"type": "error", "error": {"type": "request_too_large", "message": format!("the body is over {limit} bytes")}}),
                );
            }
        };
        let body = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut v) if v.is_object() => {
                if v.get("max_tokens").is_none() {
                    v["max_tokens"] = json!(1);
                }
                Bytes::from(v.to_string())
            }
            _ => bytes,
        };
        Request::from_parts(parts, Body::from(body))
    };
    let (res, _, _) = match route(&state, req, adjust).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let chat: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match chat["usage"]["prompt_tokens"].as_u64() {
        Some(n) => anthropic_json(StatusCode::OK, &json!({"input_tokens": n})),
        None => anthropic_json(
            StatusCode::BAD_GATEWAY,
            &json!({"type": "error", "error": {"type": "api_error", "message": "the handle's model did not report how many tokens the prompt has"}}),
        ),
    }
}
