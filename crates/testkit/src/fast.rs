//! The fastest OpenAI upstream we can make: fixed answers, nothing recorded. Benchmarks use
//! it as the baseline the gateway is measured against.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;

const CHAT: &str = r#"{"id":"chatcmpl-fast","object":"chat.completion","created":1,"model":"fast","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":8,"total_tokens":17}}"#;

/// Eight content chunks, the usage chunk and `[DONE]`, as one SSE body.
fn stream_body() -> Bytes {
    let mut s = String::new();
    for word in ["Hello", " there", ",", " how", " can", " I", " help", "?"] {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-fast\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"fast\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-fast\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"fast\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":8,\"total_tokens\":17}}\n\n");
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

async fn chat(body: Bytes) -> Response {
    // A substring check is enough here and keeps the baseline fast.
    let stream = memchr_stream(&body);
    if stream {
        return (
            [("content-type", "text/event-stream")],
            Body::from(stream_body()),
        )
            .into_response();
    }
    ([("content-type", "application/json")], CHAT).into_response()
}

fn memchr_stream(body: &[u8]) -> bool {
    body.windows(13).any(|w| w == b"\"stream\":true")
}

/// A server error, as a failing backend answers (for fallbacks under load).
async fn fail() -> Response {
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        [("content-type", "application/json")],
        r#"{"error":{"message":"failing on purpose","type":"server_error","param":null,"code":null}}"#,
    )
        .into_response()
}

/// The stream of [`chat`], one event every 5 ms (a client can leave in the middle).
async fn slow() -> Response {
    let body = stream_body();
    let events: Vec<Bytes> = body
        .split_inclusive(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|lines| Bytes::from(lines.concat()))
        .collect();
    let stream = futures_util::stream::iter(events).then(|e| async move {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        Ok::<_, std::io::Error>(e)
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `/v1/...` answers fast; `/fail/v1/...` always 500; `/slow/v1/...` streams slowly.
fn app() -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/fail/v1/chat/completions", post(fail))
        .route("/slow/v1/chat/completions", post(slow))
}

/// Starts it on 127.0.0.1:0, in the background.
pub async fn start() -> SocketAddr {
    crate::spawn(app()).await
}

/// Serves it on 127.0.0.1:`port` until the process ends, with `TCP_NODELAY` like ours.
pub async fn serve(port: u16) -> Result<(), String> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app())
        .await
        .map_err(|e| e.to_string())
}
