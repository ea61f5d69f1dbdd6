//! The OpenAI surface: chat and legacy completions (plain and SSE), models, health, metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use contract::ApiError;
use contract::chat::ChatCompletionRequest;
use contract::completions::{CompletionRequest, Prompt};
use llm_engine::template::TemplateMessage;
use llm_engine::{Engine, EngineError, Event, Finish, Input, Params};
use serde_json::{Value, json};
use service_kit::body::JsonBody;
use tokio::sync::mpsc;

use crate::AppState;

/// The routes (also without the `/v1` prefix).
pub fn app(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/chat/completions", post(chat))
        .route("/completions", post(completions))
        .route("/models", get(models));
    Router::new()
        .nest("/v1", api.clone())
        .merge(api)
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn loading(state: &AppState) -> Response {
    match state.failed.get() {
        Some(why) => ApiError::service_unavailable(format!("the model failed to load: {why}")).into_response(),
        // llama-server's answer while loading.
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})),
        )
            .into_response(),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine().is_some() {
        axum::Json(json!({"status": "ok"})).into_response()
    } else {
        loading(&state)
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let Some(e) = state.engine() else {
        return loading(&state);
    };
    axum::Json(json!({"object": "list", "data": [{
        "id": e.model_id,
        "object": "model",
        "created": state.started,
        "owned_by": "homelab",
        "context_length": e.context,
        "size_on_disk_bytes": e.info.file_size,
        "quantization": e.info.quantization(),
        "architecture": e.info.architecture(),
        "parameters": e.info.parameter_count(),
    }]}))
    .into_response()
}

/// The engine, if it is loaded and the request asks for one choice (`n` other than 1 is
/// refused, clearly, rather than ignored).
fn ready_for(state: &AppState, n: Option<u32>) -> Result<Arc<Engine>, Box<Response>> {
    let Some(e) = state.engine().cloned() else {
        return Err(Box::new(loading(state)));
    };
    if n.unwrap_or(1) != 1 {
        let refusal = ApiError::invalid_value("unsupported_value", "only n = 1 is supported")
            .with_param("n")
            .into_response();
        return Err(Box::new(refusal));
    }
    Ok(e)
}

fn engine_error(e: EngineError) -> Response {
    match e {
        EngineError::ContextExceeded { prompt, context } => ApiError::invalid_value(
            "context_length_exceeded",
            format!("This model's maximum context length is {context} tokens; the prompt has {prompt} tokens."),
        )
        .with_param("messages")
        .into_response(),
        EngineError::QueueFull(n) => ApiError::service_unavailable(format!("the server is busy ({n} requests waiting); retry shortly")).into_response(),
        EngineError::Template(m) => ApiError::bad_request(format!("the chat template refused the messages: {m}")).into_response(),
        other => ApiError::internal(other.to_string()).into_response(),
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", service_kit::request_id::generate())
}

#[allow(clippy::too_many_arguments)]
fn params(
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<&contract::OneOrMany<String>>,
) -> Params {
    Params {
        max_tokens,
        temperature,
        top_p,
        seed: seed.map(|s| s as u64),
        stop: stop.map(|s| s.as_slice().to_vec()).unwrap_or_default(),
    }
}

async fn chat(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ChatCompletionRequest>,
) -> Response {
    let e = match ready_for(&state, req.n) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let messages = req
        .messages
        .iter()
        .map(|m| TemplateMessage {
            role: m.role.as_str().to_owned(),
            content: m.text_content(),
        })
        .collect();
    let p = params(
        req.token_limit(),
        req.temperature,
        req.top_p,
        req.seed,
        req.stop.as_ref(),
    );
    run(
        e,
        Input::Chat(messages),
        p,
        Kind::Chat,
        req.is_stream(),
        req.wants_stream_usage(),
    )
    .await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Response {
    let e = match ready_for(&state, req.n) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let Prompt::Text(prompt) = &req.prompt else {
        return ApiError::invalid_value(
            "unsupported_value",
            "only a single string prompt is supported",
        )
        .with_param("prompt")
        .into_response();
    };
    // The legacy API's default is 16 tokens.
    let p = params(
        Some(req.max_tokens.unwrap_or(16)),
        req.temperature,
        req.top_p,
        req.seed,
        req.stop.as_ref(),
    );
    let usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    run(
        e,
        Input::Text(prompt.clone()),
        p,
        Kind::Text,
        req.is_stream(),
        usage,
    )
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

async fn run(
    e: Arc<Engine>,
    input: Input,
    p: Params,
    kind: Kind,
    stream: bool,
    stream_usage: bool,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let (err_tx, err_rx) = tokio::sync::oneshot::channel();
    let e2 = e.clone();
    tokio::spawn(async move {
        let r = e2.generate(input, p, tx).await;
        let _ = err_tx.send(r);
    });
    // The first event or an error decides the status.
    let first = rx.recv().await;
    if first.is_none() {
        return match err_rx.await {
            Ok(Err(err)) => engine_error(err),
            _ => ApiError::internal("generation ended without an answer").into_response(),
        };
    }
    let model = e.model_id.clone();
    let created = now_s();
    if !stream {
        let mut text = String::new();
        let mut done = None;
        let mut ev = first;
        while let Some(x) = ev {
            match x {
                Event::Text(t) => text.push_str(&t),
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => done = Some((finish, prompt_tokens, completion_tokens)),
            }
            ev = rx.recv().await;
        }
        let (finish, pt, ct) = done.unwrap_or((Finish::Length, 0, 0));
        let usage = json!({"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct});
        let body = match kind {
            Kind::Chat => {
                json!({"id": id("chatcmpl"), "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish.as_str(), "logprobs": null}],
                "usage": usage})
            }
            Kind::Text => {
                json!({"id": id("cmpl"), "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish.as_str(), "logprobs": null}],
                "usage": usage})
            }
        };
        return axum::Json(body).into_response();
    }
    let cid = id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let frame = move |choice: Value, usage: Option<Value>| {
        let mut v = json!({"id": cid, "object": object, "created": created, "model": model, "choices": [choice]});
        if let Some(u) = usage {
            v["choices"] = json!([]);
            v["usage"] = u;
        }
        Bytes::from(contract::sse::encode_json_data(v.to_string().as_bytes()))
    };
    let piece = move |text: &str| match kind {
        Kind::Chat => json!({"index": 0, "delta": {"content": text}, "finish_reason": null}),
        Kind::Text => json!({"index": 0, "text": text, "finish_reason": null}),
    };
    let end = move |finish: Finish| match kind {
        Kind::Chat => json!({"index": 0, "delta": {}, "finish_reason": finish.as_str()}),
        Kind::Text => json!({"index": 0, "text": "", "finish_reason": finish.as_str()}),
    };
    let mut out: Vec<Bytes> = Vec::new();
    if kind == Kind::Chat {
        out.push(frame(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}), None));
    }
    let state = (
        rx,
        first,
        out.into_iter().collect::<std::collections::VecDeque<_>>(),
        false,
    );
    let body = futures_util::stream::unfold(
        state,
        move |(mut rx, mut pending, mut out, mut ended)| {
            let frame = frame.clone();
            async move {
                loop {
                    if let Some(b) = out.pop_front() {
                        return Some((Ok::<_, std::io::Error>(b), (rx, pending, out, ended)));
                    }
                    if ended {
                        return None;
                    }
                    let ev = match pending.take() {
                        Some(ev) => Some(ev),
                        None => rx.recv().await,
                    };
                    match ev {
                        Some(Event::Text(t)) => out.push_back(frame(piece(&t), None)),
                        Some(Event::Done {
                            finish,
                            prompt_tokens,
                            completion_tokens,
                        }) => {
                            out.push_back(frame(end(finish), None));
                            if stream_usage {
                                let u = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
                                out.push_back(frame(Value::Null, Some(u)));
                            }
                            out.push_back(Bytes::from_static(contract::sse::DONE_FRAME));
                            ended = true;
                        }
                        None => ended = true,
                    }
                }
            }
        },
    );
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let Some(e) = state.engine() else {
        return (StatusCode::OK, "# model loading\n").into_response();
    };
    let s = &e.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let decode_s = get(&s.decode_us) as f64 / 1e6;
    let completion = get(&s.completion_tokens);
    let text = format!(
        "# TYPE homelab_engine_requests_total counter\nhomelab_engine_requests_total {}\n\
         # TYPE homelab_engine_prompt_tokens_total counter\nhomelab_engine_prompt_tokens_total {}\n\
         # TYPE homelab_engine_completion_tokens_total counter\nhomelab_engine_completion_tokens_total {completion}\n\
         # TYPE homelab_engine_prefill_seconds_total counter\nhomelab_engine_prefill_seconds_total {}\n\
         # TYPE homelab_engine_decode_seconds_total counter\nhomelab_engine_decode_seconds_total {decode_s}\n\
         # TYPE homelab_engine_decode_tokens_per_second gauge\nhomelab_engine_decode_tokens_per_second {}\n\
         # TYPE homelab_engine_time_to_first_token_seconds summary\nhomelab_engine_time_to_first_token_seconds_sum {}\nhomelab_engine_time_to_first_token_seconds_count {}\n\
         # TYPE homelab_engine_queue_depth gauge\nhomelab_engine_queue_depth {}\n\
         # TYPE homelab_engine_busy_sequences gauge\nhomelab_engine_busy_sequences {}\n",
        get(&s.requests),
        get(&s.prompt_tokens),
        get(&s.prefill_us) as f64 / 1e6,
        if decode_s > 0.0 {
            completion as f64 / decode_s
        } else {
            0.0
        },
        get(&s.ttft_us) as f64 / 1e6,
        get(&s.ttft_count),
        e.waiting(),
        e.busy(),
    );
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
