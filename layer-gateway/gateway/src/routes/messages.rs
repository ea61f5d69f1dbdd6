//! `POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic Messages for any handle,
//! translated to chat completions ([`crate::anthropic`]) and routed like every chat — keys
//! (`x-api-key` as well as Bearer), limits, fallbacks, one request-log row — with answers,
//! streams and errors in Anthropic's shapes.

use std::sync::Arc;

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

/// A refusal (the gateway's OpenAI-shaped error answer) in Anthropic's shape.
async fn refusal(res: Response) -> Response {
    as_anthropic_error(res).await.unwrap_or_else(|r| r)
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

/// Reads and checks a Messages request, lets `adjust` change it, translates it and routes it;
/// the chat answer (or an Anthropic error) and the request's model and id.
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
        Err(e) => return Err(refusal(reject(None, e)).await),
    };
    if !service_kit::body::is_json(&headers) {
        let e = Error::BadRequest(
            "the request body must be JSON, sent with `Content-Type: application/json`".into(),
        );
        return Err(refusal(reject(Some(caller), e)).await);
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
            return Err(refusal(res).await);
        }
    };
    let chat = match serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("invalid JSON body: {e}"))
        .and_then(|mut v| {
            if v.is_object() {
                adjust(&mut v);
            }
            anthropic::to_chat(&v)
        }) {
        Ok(c) => c,
        Err(m) => return Err(refusal(reject(Some(caller), Error::BadRequest(m))).await),
    };
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
        let chat = super::json_body(body).await;
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
    // It takes no `max_tokens`, and answers no stream: one token, plain.
    let adjust = |req: &mut Value| {
        req["max_tokens"] = json!(1);
        if let Some(o) = req.as_object_mut() {
            o.remove("stream");
        }
    };
    let (res, _, _) = match route(&state, req, adjust).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let chat = super::json_body(res.into_body()).await;
    match chat["usage"]["prompt_tokens"].as_u64() {
        Some(n) => anthropic_json(StatusCode::OK, &json!({"input_tokens": n})),
        None => anthropic_json(
            StatusCode::BAD_GATEWAY,
            &json!({"type": "error", "error": {"type": "api_error", "message": "the handle's model did not report how many tokens the prompt has"}}),
        ),
    }
}
