//! HTTP routes, thin: authenticate, read the body, call the domain code, answer.

pub mod admin;
pub mod messages;
pub mod models;
pub mod openai;
pub mod responses;
pub mod search;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::auth::{self, Caller};
use crate::error::Error;
use crate::state::AppState;

/// Authenticates against the current table.
pub fn caller(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Caller, Error> {
    auth::authenticate(headers, state.master_hash.as_deref(), &state.table.load())
}

/// A buffered JSON answer's body (the gateway already held it within `--max-response`);
/// `null` when it is not JSON.
pub async fn json_body(body: Body) -> Value {
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Whether an answer is an SSE stream.
pub fn is_event_stream(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// A chat stream turned into another API's events.
pub trait Translate: Send + 'static {
    /// The events for one chat chunk (the JSON of a `data:` event).
    fn chunk(&mut self, chunk: &Value) -> String;
    /// The closing events, once: at `[DONE]`, or where the chat stream broke or ended.
    fn end(&mut self) -> String;
}

/// The chat SSE `body`, translated event by event as it comes.
pub fn translated(body: Body, translate: impl Translate) -> Body {
    struct Relay<T> {
        upstream: axum::body::BodyDataStream,
        decoder: contract::sse::SseDecoder,
        translate: T,
        ended: bool,
    }
    let relay = Relay {
        upstream: body.into_data_stream(),
        decoder: contract::sse::SseDecoder::new(),
        translate,
        ended: false,
    };
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        while !r.ended {
            let mut out = String::new();
            match r.upstream.next().await {
                Some(Ok(bytes)) => {
                    for ev in r.decoder.push(&bytes).unwrap_or_default() {
                        if ev.is_done() {
                            r.ended = true;
                            out.push_str(&r.translate.end());
                            break;
                        }
                        if let Ok(chunk) = serde_json::from_str::<Value>(&ev.data) {
                            out.push_str(&r.translate.chunk(&chunk));
                        }
                    }
                }
                Some(Err(_)) | None => {
                    r.ended = true;
                    out.push_str(&r.translate.end());
                }
            }
            if !out.is_empty() {
                return Some((Ok::<_, std::io::Error>(Bytes::from(out)), r));
            }
        }
        None
    });
    Body::from_stream(stream)
}
