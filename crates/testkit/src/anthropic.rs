//! Anthropic's Messages API (`POST /v1/messages`), as api.anthropic.com answers it: the key
//! in `x-api-key`, an `anthropic-version` header required, a message or its event stream
//! (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`), errors in Anthropic's shape. The answer says which model
//! it got and echoes the last user text, so that tests can check what arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// A request as received: its headers and JSON body.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
}

/// A running Messages server that accepts `key`.
#[derive(Clone)]
pub struct AnthropicUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

struct Shared {
    key: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl AnthropicUpstream {
    pub async fn start(key: &str) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            received: received.clone(),
        });
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .with_state(shared);
        let addr = crate::spawn(app).await;
        AnthropicUpstream { addr, received }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

async fn messages(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid JSON",
        );
    };
    s.received.lock().unwrap().push(Received {
        headers: headers.clone(),
        body: req.clone(),
    });
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(s.key.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        );
    }
    if !headers.contains_key("anthropic-version") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let (Some(model), Some(max_tokens)) = (req["model"].as_str(), req["max_tokens"].as_u64())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model and max_tokens: required",
        );
    };
    let last_user = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            blocks => blocks
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["text"].as_str())
                .collect(),
        })
        .unwrap_or_default();
    let words: Vec<String> = format!("{model} heard: {last_user}")
        .split_inclusive(' ')
        .take(max_tokens as usize)
        .map(str::to_owned)
        .collect();
    let text: String = words.concat();
    let (input, output) = (10 + last_user.len() as u64 / 4, words.len() as u64);
    let id = "msg_native_1";
    if req["stream"] != json!(true) {
        return axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output},
        }))
        .into_response();
    }
    let mut out = event(
        "message_start",
        &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
    );
    out.push_str(&event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    out.push_str(&event("ping", &json!({"type": "ping"})));
    for w in &words {
        out.push_str(&event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    out.push_str(&event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push_str(&event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}}),
    ));
    out.push_str(&event("message_stop", &json!({"type": "message_stop"})));
    ([(header::CONTENT_TYPE, "text/event-stream")], out).into_response()
}
