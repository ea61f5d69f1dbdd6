//! The OpenAI surface: chat and legacy completions (plain and SSE), models, health, the
//! queue, metrics.
//!
//! A streamed request that has to wait for a sequence gets its headers at once and an SSE
//! comment (`: queued, 2 ahead`), and `: waiting` after every `--sse-keepalive` of silence
//! (waiting, reading the prompt, parked), so a proxy in front can tell a busy engine from a
//! dead one; the role chunk comes with the first token, so the first data event still marks
//! the time to first token. Answers
//! carry llama-server's `timings` (for a stream, on the chunk with `finish_reason`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use contract::ApiError;
use contract::chat::ChatCompletionRequest;
use contract::completions::{CompletionRequest, Prompt};
use contract::embeddings::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingVector, EncodingFormat,
};
use contract::engine::{
    LOADING_MESSAGE, QueueState, RequestState, TRUNCATED_INPUTS_HEADER, Timings,
};
use contract::usage::Usage;
use llm_engine::{Engine, EngineError, Event, Input, Params};
use serde_json::{Value, json};
use service_kit::body::JsonBody;
use service_kit::request_id::RequestId;
use service_kit::routes::Routes;
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::params::{self, Common};
use crate::tool_calls;

/// The routes and their table.
pub fn routes() -> Routes<Arc<AppState>> {
    let api = Routes::new()
        .post(
            "/chat/completions",
            chat,
            "Chat completions with the model's chat template (streamed or not)",
        )
        .post(
            "/completions",
            completions,
            "Text completions (streamed or not)",
        )
        .post(
            "/embeddings",
            embeddings,
            "Embeddings from the embedding model (`--embedding-model`), batched; `float` or `base64`",
        )
        .get(
            "/models",
            models,
            "The served model, with its context and sampler defaults",
        )
        .get(
            "/queue",
            queue,
            "Who is generating and who waits, by priority",
        )
        .get(
            "/queue/{request_id}",
            request_state,
            "One request's state: queued (with its place), generating, or unknown",
        );
    Routes::new()
        .merge(api.under_v1_and_root())
        .get(
            "/health",
            health,
            "200 once the model is loaded, 503 while loading (as llama-server)",
        )
        .get("/health/ready", health, "The same as `/health`")
        .get("/metrics", metrics, "Prometheus metrics")
}

/// The router, on `state`.
pub fn app(state: Arc<AppState>) -> Router {
    routes().into_router().with_state(state)
}

fn loading(state: &AppState) -> Response {
    match state.failed.get() {
        Some(why) => ApiError::service_unavailable(format!("the model failed to load: {why}")).into_response(),
        // llama-server's answer while loading.
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": {"code": 503, "message": LOADING_MESSAGE, "type": "unavailable_error"}})),
        )
            .into_response(),
    }
}

fn queue_state(e: &Engine) -> QueueState {
    let q = e.queue();
    QueueState {
        parallel: q.parallel as u64,
        running: q.running as u64,
        waiting: q.waiting as u64,
        parked: q.parked as u64,
        limit: q.limit as u64,
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let Some(e) = state.engine() else {
        return loading(&state);
    };
    let q = queue_state(e);
    // llama-server's older slot counts, and the whole queue.
    axum::Json(json!({
        "status": "ok",
        "slots_idle": q.parallel.saturating_sub(q.running),
        "slots_processing": q.running,
        "queue": q,
    }))
    .into_response()
}

async fn queue(State(state): State<Arc<AppState>>) -> Response {
    match state.engine() {
        Some(e) => axum::Json(queue_state(e)).into_response(),
        None => loading(&state),
    }
}

async fn request_state(
    State(state): State<Arc<AppState>>,
    Path(request_id): Path<String>,
) -> Response {
    let Some(e) = state.engine() else {
        return loading(&state);
    };
    let Some(s) = e.request_state(&request_id) else {
        return ApiError::not_found(format!(
            "no request `{request_id}` is waiting or generating here"
        ))
        .into_response();
    };
    let wire = match s {
        llm_engine::RequestState::Waiting {
            priority,
            ahead,
            parked,
            waited_ms,
        } => RequestState::Waiting {
            priority: priority.0,
            ahead: ahead as u64,
            parked,
            waited_ms,
        },
        llm_engine::RequestState::Generating {
            priority,
            tokens,
            since_ms,
        } => RequestState::Generating {
            priority: priority.0,
            tokens,
            since_ms,
        },
    };
    axum::Json(wire).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let Some(e) = state.engine() else {
        return loading(&state);
    };
    let d = &e.sampler_defaults;
    let embedding = state.embeddings().map(|x| {
        let m = x.embedder();
        json!({
            "id": m.model_id,
            "object": "model",
            "created": state.started,
            "owned_by": "homelab",
            "type": "embedding",
            "dimensions": m.info.dimensions,
            "max_input_tokens": m.info.max_tokens,
            "architecture": m.info.family,
            "parameters": m.info.parameters,
            "size_on_disk_bytes": m.info.size_on_disk,
            "max_batch": x.limits().batch,
            "max_inputs_per_request": state.embedding_max_inputs,
        })
    });
    let chat = json!({
        "id": e.model_id,
        "object": "model",
        "created": state.started,
        "owned_by": "homelab",
        "context_length": e.context,
        "size_on_disk_bytes": e.info.file_size,
        "quantization": e.info.quantization(),
        "architecture": e.info.architecture(),
        "parameters": e.info.parameter_count(),
        // What a request gets for each sampler setting it leaves unset, and for max_tokens.
        "sampling_defaults": d.settings,
        "sampling_defaults_from_model_file": d.from_model_file,
        "default_max_tokens": e.default_max_tokens,
    });
    let data: Vec<Value> = std::iter::once(chat).chain(embedding).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<EmbeddingRequest>,
) -> Response {
    if !state.embedding_configured {
        return ApiError::new(
            404,
            "invalid_request_error",
            Some("model_not_found"),
            "this server has no embedding model (start it with --embedding-model)",
        )
        .with_param("model")
        .into_response();
    }
    let Some(service) = state.embeddings().cloned() else {
        return loading(&state);
    };
    let m = service.embedder();
    if let Some(chat) = state.engine()
        && req.model == chat.model_id
        && req.model != m.model_id
    {
        return ApiError::invalid_value(
            "invalid_value",
            format!(
                "`{}` is a chat model; embeddings here come from `{}`",
                req.model, m.model_id
            ),
        )
        .with_param("model")
        .into_response();
    }
    let texts = match req.input {
        EmbeddingInput::Text(t) => vec![t],
        EmbeddingInput::Texts(v) => v,
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenBatches(_) => {
            return ApiError::invalid_value(
                "invalid_value",
                format!(
                    "`{}` takes text: token ids made by another tokenizer (tiktoken) mean nothing to it; send the strings (LangChain: check_embedding_ctx_length=False)",
                    m.model_id
                ),
            )
            .with_param("input")
            .into_response();
        }
    };
    if texts.is_empty() {
        return ApiError::invalid_value("invalid_value", "`input` must not be empty")
            .with_param("input")
            .into_response();
    }
    if texts.len() > state.embedding_max_inputs {
        return ApiError::invalid_value(
            "invalid_value",
            format!(
                "`input` has {} items; at most {} per request (--embedding-max-inputs)",
                texts.len(),
                state.embedding_max_inputs
            ),
        )
        .with_param("input")
        .into_response();
    }
    if let Some(d) = req.dimensions
        && d as usize != m.info.dimensions
    {
        return ApiError::invalid_value(
            "invalid_value",
            format!(
                "`{}` makes vectors of {} dimensions; `dimensions` cannot change that",
                m.model_id, m.info.dimensions
            ),
        )
        .with_param("dimensions")
        .into_response();
    }
    let format = req.encoding_format.unwrap_or(EncodingFormat::Float);
    let out = match service.embed(&texts).await {
        Ok(o) => o,
        Err(e @ EngineError::QueueFull(_)) => {
            let mut res = ApiError::server_busy(format!(
                "the embedding model is busy ({} inputs waiting): {e}; retry shortly",
                service.waiting()
            ))
            .into_response();
            res.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return res;
        }
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    let data = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| Embedding {
            object: "embedding".into(),
            index: i as u32,
            embedding: EmbeddingVector::encode(v, format),
            extra: Default::default(),
        })
        .collect();
    let body = EmbeddingResponse {
        object: "list".into(),
        data,
        model: m.model_id.clone(),
        usage: Some(Usage {
            prompt_tokens: out.tokens,
            completion_tokens: None,
            total_tokens: out.tokens,
            extra: Default::default(),
        }),
        extra: Default::default(),
    };
    let mut res = axum::Json(body).into_response();
    if out.truncated > 0 {
        res.headers_mut().insert(
            TRUNCATED_INPUTS_HEADER,
            axum::http::HeaderValue::from(out.truncated),
        );
    }
    res
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

fn engine_api_error(e: &Engine, err: EngineError) -> ApiError {
    match err {
        EngineError::ContextExceeded { prompt, context } => ApiError::invalid_value(
            "context_length_exceeded",
            format!("This model's maximum context length is {context} tokens; the prompt has {prompt} tokens."),
        )
        .with_param("messages"),
        EngineError::EmptyPrompt => ApiError::bad_request("the prompt is empty"),
        EngineError::QueueFull(_)
        | EngineError::Shed(_)
        | EngineError::QueueTimeout(_)
        | EngineError::KvFull => {
            ApiError::server_busy(format!(
                "the engine is busy ({}): {err}; retry shortly",
                queue_state(e).describe()
            ))
        }
        EngineError::Template(m) => ApiError::bad_request(format!("the chat template refused the messages: {m}")),
        other => ApiError::internal(other.to_string()),
    }
}

fn engine_error(e: &Engine, err: EngineError) -> Response {
    let busy = matches!(
        err,
        EngineError::QueueFull(_)
            | EngineError::Shed(_)
            | EngineError::QueueTimeout(_)
            | EngineError::KvFull
    );
    let mut res = engine_api_error(e, err).into_response();
    if busy {
        res.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    res
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", service_kit::request_id::generate())
}

fn rid(r: Option<Extension<RequestId>>) -> Option<String> {
    r.map(|Extension(r)| r.0)
}

async fn chat(
    State(state): State<Arc<AppState>>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ChatCompletionRequest>,
) -> Response {
    let e = match ready_for(&state, req.n) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let tools = tool_calls::offered(&req);
    let messages = tool_calls::template_messages(
        &req.messages,
        tools
            .as_ref()
            .map(|(t, must)| (t.as_slice(), must.as_deref())),
    );
    let common = Common {
        max_tokens: req.token_limit(),
        temperature: req.temperature,
        top_p: req.top_p,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        seed: req.seed,
        stop: req.stop.as_ref(),
        extra: &req.extra,
    };
    let p = match params::read(&common, &headers, rid(request_id)) {
        Ok(p) => p,
        Err(err) => return err.into_response(),
    };
    run(
        &state,
        e,
        Input::Chat(messages),
        p,
        Kind::Chat {
            tools: tools.as_ref().map(|(t, _)| tool_calls::names(t)),
        },
        req.is_stream(),
        req.wants_stream_usage(),
    )
    .await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
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
    let common = Common {
        // The legacy API's default is 16 tokens.
        max_tokens: Some(req.max_tokens.unwrap_or(16)),
        temperature: req.temperature,
        top_p: req.top_p,
        presence_penalty: None,
        frequency_penalty: None,
        seed: req.seed,
        stop: req.stop.as_ref(),
        extra: &req.extra,
    };
    let p = match params::read(&common, &headers, rid(request_id)) {
        Ok(p) => p,
        Err(err) => return err.into_response(),
    };
    let usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    run(
        &state,
        e,
        Input::Text(prompt.clone()),
        p,
        Kind::Text,
        req.is_stream(),
        usage,
    )
    .await
}

#[derive(Clone, PartialEq)]
enum Kind {
    /// `tools`: the names of the tools the request offered, so that `<tool_call>` blocks
    /// (or an answer that is nothing but a call of one of them) are calls.
    Chat {
        tools: Option<Vec<String>>,
    },
    Text,
}

fn timings_json(t: &llm_engine::Timings, d: &Done) -> Value {
    let (prompt_n, predicted_n) = (d.prompt_tokens, d.completion_tokens);
    let per_second = (t.predicted_ms > 0.0 && predicted_n > 1)
        .then(|| predicted_n as f64 / (t.predicted_ms / 1000.0));
    serde_json::to_value(Timings {
        prompt_n: prompt_n as u64,
        prompt_ms: t.prompt_ms,
        predicted_n: predicted_n as u64,
        predicted_ms: t.predicted_ms,
        predicted_per_second: per_second,
        queue_ms: Some(t.queue_ms),
        parked_ms: Some(t.parked_ms),
        cache_n: Some(d.cached_tokens as u64),
    })
    .unwrap_or(Value::Null)
}

/// What the engine said at the end of a generation.
#[derive(Debug, Clone, Copy)]
struct Done {
    finish: llm_engine::Finish,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    timings: llm_engine::Timings,
}

impl Done {
    fn of(ev: Event) -> Option<Done> {
        match ev {
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                timings,
            } => Some(Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                timings,
            }),
            _ => None,
        }
    }
}

/// OpenAI's `usage`, with the prompt tokens served from the prefix cache as OpenAI reports
/// cached tokens.
fn usage_json(d: &Done) -> Value {
    let (p, c) = (d.prompt_tokens, d.completion_tokens);
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": d.cached_tokens}})
}

async fn run(
    state: &AppState,
    e: Arc<Engine>,
    input: Input,
    p: Params,
    kind: Kind,
    stream: bool,
    stream_usage: bool,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let (err_tx, err_rx) = oneshot::channel();
    let e2 = e.clone();
    tokio::spawn(async move {
        let r = e2.generate(input, p, tx).await;
        let _ = err_tx.send(r);
    });
    // The first event or an error decides the status.
    let Some(first) = rx.recv().await else {
        return match err_rx.await {
            Ok(Err(err)) => engine_error(&e, err),
            _ => ApiError::internal("generation ended without an answer").into_response(),
        };
    };
    let model = e.model_id.clone();
    let created = now_s();
    if !stream {
        let mut text = String::new();
        let mut done = None;
        let mut ev = Some(first);
        while let Some(x) = ev {
            match x {
                Event::Queued { .. } => {}
                Event::Text(t) => text.push_str(&t),
                ev @ Event::Done { .. } => done = Done::of(ev),
            }
            ev = rx.recv().await;
        }
        let Some(d) = done else {
            // It waited, then failed (the queue's longest wait, a generation error).
            return match err_rx.await {
                Ok(Err(err)) => engine_error(&e, err),
                _ => ApiError::internal("generation ended without an answer").into_response(),
            };
        };
        let usage = usage_json(&d);
        let timings = timings_json(&d.timings, &d);
        let finish = d.finish;
        let body = match kind {
            Kind::Chat { tools } => {
                let (content, calls) = if let Some(names) = tools {
                    tool_calls::split(&text, &names)
                } else {
                    (text, Vec::new())
                };
                let mut message = json!({"role": "assistant", "content": content});
                let mut finish = finish.as_str();
                if !calls.is_empty() {
                    if content.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = calls.iter().map(|c| c.openai(&id("call"))).collect();
                    finish = "tool_calls";
                }
                json!({"id": id("chatcmpl"), "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
                "usage": usage, "timings": timings})
            }
            Kind::Text => {
                json!({"id": id("cmpl"), "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish.as_str(), "logprobs": null}],
                "usage": usage, "timings": timings})
            }
        };
        return axum::Json(body).into_response();
    }
    let calls = match &kind {
        Kind::Chat { tools: Some(names) } => Some(tool_calls::Stream::new(names.clone())),
        _ => None,
    };
    let frames = Frames {
        id: id(if matches!(&kind, Kind::Chat { .. }) {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        model,
        created,
        kind,
        usage: stream_usage,
    };
    let sse = SseState {
        calls,
        rx,
        pending: Some(first),
        err_rx: Some(err_rx),
        engine: e,
        frames,
        out: std::collections::VecDeque::new(),
        started: false,
        ended: false,
        keepalive: state.keepalive,
    };
    let body = futures_util::stream::unfold(sse, |mut s| async move {
        let b = s.next_frame().await?;
        Some((Ok::<_, std::io::Error>(b), s))
    });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Builds the frames of one stream.
struct Frames {
    id: String,
    model: String,
    created: i64,
    kind: Kind,
    usage: bool,
}

impl Frames {
    fn object(&self) -> &'static str {
        match self.kind {
            Kind::Chat { .. } => "chat.completion.chunk",
            Kind::Text => "text_completion",
        }
    }

    fn frame(&self, v: &Value) -> Bytes {
        Bytes::from(contract::sse::encode_json_data(v.to_string().as_bytes()))
    }

    fn chunk(&self, choice: Value) -> Value {
        json!({"id": self.id, "object": self.object(), "created": self.created, "model": self.model, "choices": [choice]})
    }

    fn role(&self) -> Option<Bytes> {
        matches!(self.kind, Kind::Chat { .. }).then(|| {
            self.frame(&self.chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})))
        })
    }

    fn piece(&self, text: &str) -> Bytes {
        let choice = match self.kind {
            Kind::Chat { .. } => {
                json!({"index": 0, "delta": {"content": text}, "finish_reason": null})
            }
            Kind::Text => json!({"index": 0, "text": text, "finish_reason": null}),
        };
        self.frame(&self.chunk(choice))
    }

    /// The model's calls, in one chunk.
    fn calls(&self, calls: &[tool_calls::Call]) -> Bytes {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = c.openai(&id("call"));
                v["index"] = json!(i);
                v
            })
            .collect();
        self.frame(
            &self.chunk(json!({"index": 0, "delta": {"tool_calls": calls}, "finish_reason": null})),
        )
    }

    fn end(&self, finish: &str, timings: Value) -> Bytes {
        let choice = match self.kind {
            Kind::Chat { .. } => json!({"index": 0, "delta": {}, "finish_reason": finish}),
            Kind::Text => json!({"index": 0, "text": "", "finish_reason": finish}),
        };
        let mut v = self.chunk(choice);
        v["timings"] = timings;
        self.frame(&v)
    }

    fn usage(&self, d: &Done) -> Bytes {
        let mut v = self.chunk(Value::Null);
        v["choices"] = json!([]);
        v["usage"] = usage_json(d);
        self.frame(&v)
    }
}

/// A stream in progress.
struct SseState {
    rx: mpsc::Receiver<Event>,
    pending: Option<Event>,
    err_rx: Option<oneshot::Receiver<Result<(), EngineError>>>,
    engine: Arc<Engine>,
    frames: Frames,
    out: std::collections::VecDeque<Bytes>,
    /// The first token was sent (with the role chunk before it).
    started: bool,
    ended: bool,
    keepalive: Duration,
    /// The answer's `<tool_call>` blocks held back, when the request offered tools.
    calls: Option<tool_calls::Stream>,
}

impl SseState {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(b);
            }
            if self.ended {
                return None;
            }
            let ev = match self.pending.take() {
                Some(ev) => Some(ev),
                // Silence (waiting, reading the prompt, parked behind a better request): a
                // comment now and then, so the client and any proxy see the engine is alive.
                None => match tokio::time::timeout(self.keepalive, self.rx.recv()).await {
                    Err(_) => {
                        self.out.push_back(Bytes::from_static(b": waiting\n\n"));
                        continue;
                    }
                    Ok(ev) => ev,
                },
            };
            match ev {
                Some(Event::Queued { ahead }) => self
                    .out
                    .push_back(Bytes::from(format!(": queued, {ahead} ahead\n\n"))),
                Some(Event::Text(t)) => {
                    let t = match &mut self.calls {
                        Some(c) => c.push(&t),
                        None => t,
                    };
                    if t.is_empty() {
                        continue;
                    }
                    if !self.started {
                        self.started = true;
                        self.out.extend(self.frames.role());
                    }
                    self.out.push_back(self.frames.piece(&t));
                }
                Some(ev @ Event::Done { .. }) => {
                    let Some(d) = Done::of(ev) else { continue };
                    if !self.started {
                        self.started = true;
                        self.out.extend(self.frames.role());
                    }
                    let mut finish = d.finish.as_str();
                    if let Some(c) = self.calls.take() {
                        let (rest, calls) = c.finish();
                        if !rest.is_empty() {
                            self.out.push_back(self.frames.piece(&rest));
                        }
                        if !calls.is_empty() {
                            self.out.push_back(self.frames.calls(&calls));
                            finish = "tool_calls";
                        }
                    }
                    let t = timings_json(&d.timings, &d);
                    self.out.push_back(self.frames.end(finish, t));
                    if self.frames.usage {
                        self.out.push_back(self.frames.usage(&d));
                    }
                    self.out
                        .push_back(Bytes::from_static(contract::sse::DONE_FRAME));
                    self.ended = true;
                }
                None => {
                    // Ended without `Done`: say why, as an error event.
                    self.ended = true;
                    let err = match self.err_rx.take() {
                        Some(rx) => rx.await.ok().and_then(Result::err),
                        None => None,
                    };
                    if let Some(err) = err {
                        let api = engine_api_error(&self.engine, err);
                        self.out.push_back(
                            self.frames
                                .frame(&serde_json::to_value(&api).unwrap_or(Value::Null)),
                        );
                    }
                }
            }
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let Some(e) = state.engine() else {
        return (StatusCode::OK, "# model loading\n").into_response();
    };
    let s = &e.stats;
    let q = e.queue();
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
         # TYPE homelab_engine_parked_sequences gauge\nhomelab_engine_parked_sequences {}\n\
         # TYPE homelab_engine_busy_sequences gauge\nhomelab_engine_busy_sequences {}\n\
         # HELP homelab_engine_prefix_cache_lookups_total Requests that looked for a cached prompt prefix.\n\
         # TYPE homelab_engine_prefix_cache_lookups_total counter\nhomelab_engine_prefix_cache_lookups_total {}\n\
         # HELP homelab_engine_prefix_cache_hits_total Requests that started from a cached prefix.\n\
         # TYPE homelab_engine_prefix_cache_hits_total counter\nhomelab_engine_prefix_cache_hits_total {}\n\
         # HELP homelab_engine_prefix_cache_tokens_reused_total Prompt tokens not read again thanks to the cache.\n\
         # TYPE homelab_engine_prefix_cache_tokens_reused_total counter\nhomelab_engine_prefix_cache_tokens_reused_total {}\n\
         # TYPE homelab_engine_prefix_cache_bytes gauge\nhomelab_engine_prefix_cache_bytes {}\n\
         # TYPE homelab_engine_prefix_cache_budget_bytes gauge\nhomelab_engine_prefix_cache_budget_bytes {}\n\
         # TYPE homelab_engine_prefix_cache_entries gauge\nhomelab_engine_prefix_cache_entries {}\n\
         # HELP homelab_engine_batch_steps_total Forward passes (each runs every active sequence).\n\
         # TYPE homelab_engine_batch_steps_total counter\nhomelab_engine_batch_steps_total {}\n\
         # HELP homelab_engine_batch_tokens_total Tokens fed by those passes (their mean is the batch size).\n\
         # TYPE homelab_engine_batch_tokens_total counter\nhomelab_engine_batch_tokens_total {}\n",
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
        q.waiting,
        q.parked,
        q.running,
        get(&s.prefix_lookups),
        get(&s.prefix_hits),
        get(&s.prefix_tokens_reused),
        get(&s.prefix_bytes),
        e.prefix_cache_bytes,
        get(&s.prefix_entries),
        get(&s.steps),
        get(&s.step_tokens),
    );
    let mut text = text;
    if let Some(x) = state.embeddings() {
        let s = &x.stats;
        text.push_str(&format!(
            "# TYPE homelab_engine_embedding_requests_total counter\nhomelab_engine_embedding_requests_total {}\n\
             # TYPE homelab_engine_embedding_inputs_total counter\nhomelab_engine_embedding_inputs_total {}\n\
             # TYPE homelab_engine_embedding_tokens_total counter\nhomelab_engine_embedding_tokens_total {}\n\
             # TYPE homelab_engine_embedding_batches_total counter\nhomelab_engine_embedding_batches_total {}\n\
             # TYPE homelab_engine_embedding_seconds_total counter\nhomelab_engine_embedding_seconds_total {}\n\
             # TYPE homelab_engine_embedding_waiting_inputs gauge\nhomelab_engine_embedding_waiting_inputs {}\n",
            get(&s.requests),
            get(&s.inputs),
            get(&s.tokens),
            get(&s.batches),
            get(&s.busy_us) as f64 / 1e6,
            x.waiting(),
        ));
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
