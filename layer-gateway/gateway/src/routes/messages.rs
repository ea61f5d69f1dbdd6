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

/// Reads and checks a Messages request, lets `adjust` change it (saying whether it did),
/// translates it and routes it (as it is to an Anthropic endpoint).
async fn route(
    state: &Arc<AppState>,
    req: Request,
    adjust: impl FnOnce(&mut Value) -> bool,
) -> Result<Routed, Response> {
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
    let mut request = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => {
            let e = Error::BadRequest(format!("invalid JSON body: {e}"));
            return Err(refusal(reject(Some(caller), e)).await);
        }
    };
    let adjusted = request.is_object() && adjust(&mut request);
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    // Without a chat translation (Anthropic's built-in tools) it can still go to an
    // Anthropic endpoint as it is.
    let chat = anthropic::to_chat(&request).map(|c| Bytes::from(c.to_string()));
    if let Err(m) = &chat
        && !request.is_object()
    {
        return Err(refusal(reject(Some(caller), Error::BadRequest(m.clone()))).await);
    }
    // The client's own bytes go to an Anthropic endpoint unless `adjust` changed them.
    let native = if adjusted {
        Bytes::from(request.to_string())
    } else {
        body
    };
    let payload = proxy::Payload::Messages { native, chat };
    let res = proxy::forward(
        state.clone(),
        Route::Messages,
        caller,
        request_id.clone(),
        &headers,
        payload,
    )
    .await;
    let native = res.extensions().get::<proxy::NativeMessages>().is_some();
    let res = if native {
        res
    } else {
        as_anthropic_error(res).await?
    };
    Ok(Routed {
        res,
        native,
        model,
        request_id,
    })
}

/// A routed Messages request.
struct Routed {
    /// A chat answer, an Anthropic error, or (`native`) an Anthropic endpoint's own answer.
    res: Response,
    native: bool,
    model: String,
    request_id: String,
}

/// `POST /v1/messages`.
pub async fn messages(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let Routed {
        res,
        native,
        model,
        request_id,
    } = match route(&state, req, |_| false).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if native {
        return res;
    }
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
        true
    };
    let routed = match route(&state, req, adjust).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if routed.native && !routed.res.status().is_success() {
        return routed.res;
    }
    let answer = super::json_body(routed.res.into_body()).await;
    let usage = &answer["usage"];
    let counted = if routed.native {
        usage["input_tokens"].as_u64()
    } else {
        usage["prompt_tokens"].as_u64()
    };
    match counted {
        Some(n) => anthropic_json(StatusCode::OK, &json!({"input_tokens": n})),
        None => anthropic_json(
            StatusCode::BAD_GATEWAY,
            &json!({"type": "error", "error": {"type": "api_error", "message": "the handle's model did not report how many tokens the prompt has"}}),
        ),
    }
}
