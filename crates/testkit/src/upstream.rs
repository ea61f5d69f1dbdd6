//! An OpenAI-compatible upstream: `/v1/chat/completions` (JSON and SSE, with tool-call
//! deltas when the request has tools), `/v1/completions`, `/v1/embeddings`, `/v1/models`,
//! `/health`.
//!
//! Answers are derived from the request so that tests can check what arrived: the reply
//! names the `model` it received, and every request is recorded byte for byte.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// How the upstream behaves. Change it at run time with [`MockUpstream::set`].
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Answer with this status and an OpenAI error body.
    pub fail_status: Option<u16>,
    /// With `fail_status`: fail only this many requests, then behave.
    pub fail_times: Option<usize>,
    /// Wait this long before sending headers.
    pub delay: Duration,
    /// Content chunks in a stream (`tok0 `, `tok1 `, …).
    pub chunks: usize,
    /// The answer's content in these chunks instead (a plain answer joins them).
    pub reply: Option<Vec<String>>,
    /// Pause between stream chunks.
    pub chunk_delay: Duration,
    /// Break the connection after this many content chunks.
    pub die_after: Option<usize>,
    /// Gzip non-streamed bodies whatever the client accepts.
    pub gzip: bool,
    pub prompt_tokens: u64,
    /// Stop after this many stream events until [`MockUpstream::release`] is called.
    pub hold_after: Option<usize>,
    /// Answer the first this-many requests as llama-server does while it loads its model:
    /// 503 `{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}`.
    pub loading_for: Option<usize>,
    /// Chat completion number k (from 0, counted since the last [`MockUpstream::set`])
    /// answers `turns[k]`; past the end of the script, the answer above.
    pub turns: Vec<Turn>,
    /// Refuse chats whose `messages` hold more tokens than this (four bytes of their JSON
    /// each) with a 400 in `context_dialect`'s words.
    pub context_window: Option<u64>,
    pub context_dialect: ContextDialect,
    /// Send no `usage` (a server that reports none), whatever the client asked.
    pub no_usage: bool,
}

/// How a server says a prompt does not fit its context, byte for byte as each sends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContextDialect {
    /// OpenAI (and our engines): `code: context_length_exceeded`.
    #[default]
    OpenAi,
    /// llama-server: `type: exceed_context_size_error` with `n_prompt_tokens`/`n_ctx`.
    LlamaServer,
    /// vLLM: a top-level `BadRequestError` saying "maximum context length".
    Vllm,
}

impl ContextDialect {
    /// The 400 body for a prompt of `prompt` tokens in a window of `window`.
    pub fn body(self, prompt: u64, window: u64) -> Value {
        match self {
            ContextDialect::OpenAi => json!({"error": {
                "message": format!("This model's maximum context length is {window} tokens. However, your messages resulted in {prompt} tokens. Please reduce the length of the messages."),
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
            ContextDialect::LlamaServer => json!({"error": {
                "code": 400, "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error", "n_prompt_tokens": prompt, "n_ctx": window}}),
            ContextDialect::Vllm => json!({"object": "error",
                "message": format!("This model's maximum context length is {window} tokens. However, you requested {prompt} tokens in the messages, Please reduce the length of the messages."),
                "type": "BadRequestError", "param": null, "code": 400}),
        }
    }
}

/// A scripted chat answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// Text, streamed in these pieces.
    Text(Vec<String>),
    /// Tool calls (streamed as a model streams them: id and name first, then the arguments
    /// in pieces), with finish reason `tool_calls`.
    Calls(Vec<ScriptedCall>),
}

impl Turn {
    /// Text streamed word by word.
    pub fn text(s: &str) -> Turn {
        Turn::Text(s.split_inclusive(' ').map(str::to_owned).collect())
    }

    /// One tool call.
    pub fn call(id: &str, name: &str, arguments: &str) -> Turn {
        Turn::Calls(vec![ScriptedCall::new(id, name, arguments)])
    }
}

/// A tool call of a [`Turn::Calls`].
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedCall {
    pub id: String,
    pub name: String,
    /// The arguments in the pieces they are streamed in.
    pub pieces: Vec<String>,
}

impl ScriptedCall {
    /// A call whose arguments are streamed in three pieces.
    pub fn new(id: &str, name: &str, arguments: &str) -> Self {
        let chars: Vec<char> = arguments.chars().collect();
        let third = chars.len().div_ceil(3).max(1);
        ScriptedCall {
            id: id.to_owned(),
            name: name.to_owned(),
            pieces: chars.chunks(third).map(|c| c.iter().collect()).collect(),
        }
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            fail_status: None,
            fail_times: None,
            delay: Duration::ZERO,
            chunks: 3,
            reply: None,
            chunk_delay: Duration::ZERO,
            die_after: None,
            gzip: false,
            prompt_tokens: 7,
            hold_after: None,
            loading_for: None,
            turns: Vec::new(),
            context_window: None,
            context_dialect: ContextDialect::default(),
            no_usage: false,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

struct Shared {
    name: String,
    behavior: Mutex<Behavior>,
    failures: AtomicUsize,
    loading: AtomicUsize,
    chats: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    gate: Arc<tokio::sync::Semaphore>,
}

/// A running upstream.
#[derive(Clone)]
pub struct MockUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockUpstream {
    /// Starts an upstream called `name` (it appears in `system_fingerprint`).
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, Behavior::default()).await
    }

    /// Starts an upstream with a behaviour.
    pub async fn start_with(name: &str, behavior: Behavior) -> Self {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            behavior: Mutex::new(behavior),
            failures: AtomicUsize::new(0),
            loading: AtomicUsize::new(0),
            chats: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .route("/health", get(|| async { "ok" }))
            .with_state(shared.clone());
        let addr = crate::spawn(app).await;
        MockUpstream { addr, shared }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the behaviour.
    pub fn set(&self, b: Behavior) {
        *self.shared.behavior.lock().unwrap() = b;
        self.shared.failures.store(0, Ordering::SeqCst);
        self.shared.loading.store(0, Ordering::SeqCst);
        self.shared.chats.store(0, Ordering::SeqCst);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Lets held streams (see [`Behavior::hold_after`]) go on.
    pub fn release(&self) {
        self.shared.gate.add_permits(1000);
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
}

/// Records the request and applies delay/failure; `Err` is the response to send instead.
async fn prelude(
    s: &Shared,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Behavior, Response> {
    s.requests.lock().unwrap().push(Recorded {
        method,
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let b = s.behavior.lock().unwrap().clone();
    if let Some(n) = b.loading_for
        && s.loading.fetch_add(1, Ordering::SeqCst) < n
    {
        let body = json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}});
        return Err((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
    }
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    if let Some(status) = b.fail_status {
        let n = s.failures.fetch_add(1, Ordering::SeqCst);
        if b.fail_times.is_none_or(|times| n < times) {
            let code = StatusCode::from_u16(status).unwrap();
            let body = json!({"error": {"message": format!("{} says {status}", s.name), "type": "server_error", "param": null, "code": null}});
            return Err((code, axum::Json(body)).into_response());
        }
    }
    Ok(b)
}

fn json_response(b: &Behavior, v: &Value) -> Response {
    let bytes = serde_json::to_vec(v).unwrap();
    if b.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        let gz = enc.finish().unwrap();
        return (
            [
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gz,
        )
            .into_response();
    }
    ([("content-type", "application/json")], bytes).into_response()
}

async fn chat(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match prelude(&s, method, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("").to_owned();
    if let Some(window) = b.context_window {
        let prompt = (req["messages"].to_string().len() as u64).div_ceil(4);
        if prompt > window {
            let body = b.context_dialect.body(prompt, window);
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    }
    let k = s.chats.fetch_add(1, Ordering::SeqCst);
    if let Some(turn) = b.turns.get(k) {
        return scripted(&s.name, &model, turn, req["stream"].as_bool() == Some(true));
    }
    let tools = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    if req["stream"].as_bool() == Some(true) {
        let include_usage =
            req["stream_options"]["include_usage"].as_bool() == Some(true) && !b.no_usage;
        return stream_chat(
            s.name.clone(),
            b,
            model,
            tools,
            include_usage,
            s.gate.clone(),
        );
    }
    let parts = content_chunks(&b);
    let completion = parts.len() as u64;
    let message = if tools {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]})
    } else {
        json!({"role": "assistant", "content": parts.concat()})
    };
    let mut v = json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
        "system_fingerprint": s.name,
        "choices": [{"index": 0, "message": message, "finish_reason": if tools { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": b.prompt_tokens, "completion_tokens": completion, "total_tokens": b.prompt_tokens + completion}
    });
    if b.no_usage {
        v.as_object_mut().map(|o| o.remove("usage"));
    }
    json_response(&b, &v)
}

/// A scripted turn, streamed or whole.
fn scripted(name: &str, model: &str, turn: &Turn, stream: bool) -> Response {
    let usage = json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10});
    if !stream {
        let (message, finish) = match turn {
            Turn::Text(parts) => (
                json!({"role": "assistant", "content": parts.concat()}),
                "stop",
            ),
            Turn::Calls(calls) => (
                json!({"role": "assistant", "content": null, "tool_calls": calls.iter().map(|c| json!({
                    "id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.pieces.concat()},
                })).collect::<Vec<_>>()}),
                "tool_calls",
            ),
        };
        let v = json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
            "system_fingerprint": name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        });
        return ([("content-type", "application/json")], v.to_string()).into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model, "system_fingerprint": name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    match turn {
        Turn::Text(parts) => {
            for p in parts {
                out.push_str(&chunk(json!({"content": p}), Value::Null));
            }
            out.push_str(&chunk(json!({}), json!("stop")));
        }
        Turn::Calls(calls) => {
            for (i, c) in calls.iter().enumerate() {
                out.push_str(&chunk(json!({"tool_calls": [{"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}), Value::Null));
                for p in &c.pieces {
                    out.push_str(&chunk(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": p}}]}),
                        Value::Null,
                    ));
                }
            }
            out.push_str(&chunk(json!({}), json!("tool_calls")));
        }
    }
    out.push_str("data: [DONE]\n\n");
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        out,
    )
        .into_response()
}

/// The answer's content chunks: the scripted reply, or `tok0 `, `tok1 `, ….
fn content_chunks(b: &Behavior) -> Vec<String> {
    b.reply
        .clone()
        .unwrap_or_else(|| (0..b.chunks).map(|i| format!("tok{i} ")).collect())
}

fn stream_chat(
    name: String,
    b: Behavior,
    model: String,
    tools: bool,
    usage: bool,
    gate: Arc<tokio::sync::Semaphore>,
) -> Response {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model, "system_fingerprint": name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events: Vec<Bytes> = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if tools {
        events.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}), Value::Null));
        for part in ["{\"city\"", ":\"Paris\"}"] {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
        events.push(chunk(json!({}), json!("tool_calls")));
    } else {
        for part in content_chunks(&b) {
            events.push(chunk(json!({ "content": part }), Value::Null));
        }
        events.push(chunk(json!({}), json!("stop")));
    }
    if usage {
        let n = content_chunks(&b).len() as u64;
        let u = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": {"prompt_tokens": b.prompt_tokens, "completion_tokens": n, "total_tokens": b.prompt_tokens + n}});
        events.push(Bytes::from(format!("data: {u}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let die_at = b.die_after.map(|n| n + 1); // +1: the role chunk comes first
    let hold_at = b.hold_after;
    let stream = futures_util::stream::unfold(
        (events.into_iter().enumerate(), b.chunk_delay),
        move |(mut it, delay)| {
            let gate = gate.clone();
            async move {
                let (i, ev) = it.next()?;
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if hold_at == Some(i) {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                if die_at.is_some_and(|d| i >= d) {
                    return Some((Err(std::io::Error::other("upstream died")), (it, delay)));
                }
                Some((Ok::<_, std::io::Error>(ev), (it, delay)))
            }
        },
    );
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn completions(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match prelude(&s, method, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let v = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": req["model"],
        "choices": [{"index": 0, "text": " once", "finish_reason": "length", "logprobs": null}],
        "usage": {"prompt_tokens": b.prompt_tokens, "completion_tokens": 1, "total_tokens": b.prompt_tokens + 1}});
    json_response(&b, &v)
}

async fn embeddings(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = match prelude(&s, method, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = match &req["input"] {
        Value::Array(a) if a.first().is_some_and(|x| !x.is_number()) => a.len(),
        _ => 1,
    };
    let base64 = req["encoding_format"] == "base64";
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let emb = if base64 {
                json!("AACAPwAAAEA=")
            } else {
                json!([1.0, 2.0])
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let v = json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": b.prompt_tokens, "total_tokens": b.prompt_tokens}});
    json_response(&b, &v)
}

async fn models(State(s): State<Arc<Shared>>) -> Result<Response, Infallible> {
    Ok(axum::Json(json!({"object": "list", "data": [{"id": s.name, "object": "model", "created": 0, "owned_by": "mock"}]})).into_response())
}
