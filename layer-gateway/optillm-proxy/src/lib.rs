//! `optillm-proxy`: OptiLLM's inference-time approaches behind an OpenAI-compatible API.
//! A request picks its approaches as OptiLLM's users pick them ([`selection`]); `none`
//! passes the request through, streaming byte for byte (tool calls included); any other
//! approach runs as ordinary chat completions against the backend ([`approaches`],
//! [`backend`]) and answers in OpenAI's shape with usage summed over every call — streamed,
//! when asked, as progress (`delta.reasoning_content`) and keep-alive comments, then the
//! answer.
//!
//! Start reading at [`routes()`] and [`chat`].

pub mod approaches;
pub mod backend;
mod config;
mod error;
pub mod selection;
pub mod similarity;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use contract::chat::{
    ChatCompletionChunk, ChatCompletionResponse, ChatMessage, Choice, ChunkChoice, Delta, Role,
};
use contract::usage::Usage;
use serde_json::{Map, Value, json};
use service_kit::auth::{KeyCheck, check_key, digest, open_without_key};
use service_kit::routes::Routes;

pub use config::Config;
pub use error::Error;
use selection::{Plan, Refusal};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub http: reqwest::Client,
    key_digest: Option<[u8; 32]>,
    pool: Arc<backend::Pool>,
    web: Option<mcp_kit::client::ToolClient>,
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The routes and their table.
pub fn routes() -> Routes<Arc<AppState>> {
    Routes::new()
        .post(
            "/chat/completions",
            chat,
            "A chat completion through the selected approaches (none: passed through)",
        )
        .get("/models", models, "The backend's models")
        .under_v1_and_root()
        .health(|state: Arc<AppState>| async move {
            let url = format!("{}/models", state.config.base_url.trim_end_matches('/'));
            match state.http.get(&url).send().await {
                Ok(r) if r.status().as_u16() < 500 => Ok(()),
                Ok(r) => Err(format!("the backend answers {}", r.status())),
                Err(e) => Err(format!("the backend cannot be reached: {e}")),
            }
        })
}

/// The router on `state`.
pub fn app(state: Arc<AppState>) -> Router {
    routes().into_router().with_state(state)
}

/// The client's key, checked against ours when one is set; the `Authorization` to send the
/// backend (the client's own, unless it was our key; else `--backend-key`).
fn backend_auth(state: &AppState, headers: &HeaderMap) -> Result<Option<HeaderValue>> {
    let ours = || {
        state
            .config
            .backend_key
            .as_deref()
            .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok())
    };
    let Some(want) = &state.key_digest else {
        return Ok(headers.get(AUTHORIZATION).cloned().or_else(ours));
    };
    match check_key(want, service_kit::auth::bearer(headers)) {
        KeyCheck::Missing => Err(Error::MissingKey),
        KeyCheck::Invalid => Err(Error::InvalidKey),
        KeyCheck::Valid => Ok(ours()),
    }
}

async fn models(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let auth = backend_auth(&state, req.headers())?;
    let mut r = state.http.get(format!(
        "{}/models",
        state.config.base_url.trim_end_matches('/')
    ));
    if let Some(a) = auth {
        r = r.header(AUTHORIZATION, a);
    }
    let res = r
        .send()
        .await
        .map_err(|e| Error::Backend(format!("the backend cannot be reached: {e}")))?;
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = res
        .bytes()
        .await
        .map_err(|e| Error::Backend(e.to_string()))?;
    Ok((status, [(CONTENT_TYPE, "application/json")], body).into_response())
}

/// Keys of the request that are not approach settings (OptiLLM's `request_config` is the
/// rest).
const NOT_CONFIG: &[&str] = &[
    "stream",
    "messages",
    "model",
    "n",
    "response_format",
    "max_completion_tokens",
    "optillm_approach",
    "stream_options",
];

/// Body fields by which a request asks for a smaller budget than the server's.
const BUDGET_CALLS: &str = "optillm_max_backend_calls";
const BUDGET_DEADLINE: &str = "optillm_deadline";

async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    if req.headers().contains_key(backend::HOP_HEADER) {
        return Err(Error::Loop);
    }
    let auth = backend_auth(&state, req.headers())?;
    let rid = service_kit::request_id::of(&req);
    let bytes = service_kit::body::read_bytes(req)
        .await
        .map_err(|e| Error::BadRequest(e.error.message))?;
    let mut body: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadRequest(format!("the body is not a JSON object: {e}")))?;
    let Some(Value::Array(messages)) = body.get_mut("messages") else {
        return Err(Error::BadRequest("`messages` (a list) is required".into()));
    };
    let tag = selection::take_tag(messages);
    let asked_model = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(&state.config.model)
        .to_owned();
    let body_approach = body
        .remove("optillm_approach")
        .and_then(|v| v.as_str().map(str::to_owned));
    let selected = selection::select(
        &asked_model,
        body_approach.as_deref(),
        tag.as_deref(),
        &state.config.approach,
    )
    .map_err(|r| match r {
        Refusal::NotRun(list) => Error::NotRun(format!(
            "not run by this proxy: {}",
            list.iter()
                .map(|(a, why)| format!("`{a}` ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Refusal::BadCombination(m) => Error::BadRequest(m),
    })?;
    let budget = budget(&state.config, &body)?;
    body.remove(BUDGET_CALLS);
    body.remove(BUDGET_DEADLINE);
    let backend = backend::Backend::new(
        state.http.clone(),
        state.config.base_url.trim_end_matches('/').to_owned(),
        auth,
        rid,
        state.config.backend_timeout,
        state.pool.clone(),
        budget,
    );
    body.insert("model".into(), Value::String(selected.model.clone()));
    if selected.plan == Plan::One("none".into()) {
        return pass_through(&backend, &Value::Object(body)).await;
    }
    let stream = body.get("stream") == Some(&Value::Bool(true));
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
    if n == 0 || n > state.config.max_n {
        return Err(Error::BadRequest(format!(
            "`n` must be between 1 and {} (--max-n)",
            state.config.max_n
        )));
    }
    let mut request: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| !NOT_CONFIG.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(m) = body.get("max_completion_tokens") {
        request.insert("max_tokens".into(), m.clone());
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut plan = selected.plan;
    // readurls answers with the query, pages read in: when nothing comes after it, the
    // query is answered (OptiLLM would hand the client its own question back).
    if plan.approaches().last() == Some(&"readurls") {
        plan = match plan {
            Plan::One(a) => Plan::Chain(vec![a, "none".into()]),
            Plan::Chain(mut v) => {
                v.push("none".into());
                Plan::Chain(v)
            }
            p @ Plan::Parallel(_) => p,
        };
    }
    let job = Job {
        state: state.clone(),
        backend,
        plan,
        model: selected.model,
        response_format: body.get("response_format").cloned(),
        asked_model,
        request,
        messages,
        n,
        include_usage: body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            == Some(&Value::Bool(true)),
    };
    if stream {
        Ok(job.stream())
    } else {
        let label = job.plan.label();
        let choices = job.answers(None).await?;
        Ok(job.response(&label, choices))
    }
}

/// The request's budget: the server's, or less where the request asks for less.
fn budget(config: &Config, body: &Map<String, Value>) -> Result<backend::Budget> {
    let calls = match body.get(BUDGET_CALLS) {
        None | Some(Value::Null) => config.max_backend_calls,
        Some(v) => v
            .as_u64()
            .filter(|&c| c > 0)
            .ok_or_else(|| {
                Error::BadRequest(format!("`{BUDGET_CALLS}` must be a whole number above 0"))
            })?
            .min(config.max_backend_calls),
    };
    let deadline = match body.get(BUDGET_DEADLINE) {
        None | Some(Value::Null) => config.deadline,
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "`{BUDGET_DEADLINE}` must be a number of seconds above 0"
                ))
            })?
            .min(config.deadline),
    };
    Ok(backend::Budget {
        max_calls: calls,
        deadline: tokio::time::Instant::now() + deadline,
    })
}

/// `none`: the request as it is (model and tag aside), the backend's answer byte for byte —
/// a stream stays a stream, tool calls and all.
async fn pass_through(backend: &backend::Backend, body: &Value) -> Result<Response> {
    let res = backend
        .post(body)
        .send()
        .await
        .map_err(|e| Error::Backend(format!("the backend cannot be reached: {e}")))?;
    backend.calls.fetch_add(1, Ordering::Relaxed);
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for h in ["content-type", "cache-control"] {
        if let Some(v) = res.headers().get(h) {
            headers.insert(h, v.clone());
        }
    }
    headers.insert("x-optillm-approach", HeaderValue::from_static("none"));
    headers.insert("x-backend-calls", HeaderValue::from(1));
    Ok((status, headers, Body::from_stream(res.bytes_stream())).into_response())
}

/// One request's approach run.
struct Job {
    state: Arc<AppState>,
    backend: backend::Backend,
    plan: Plan,
    model: String,
    asked_model: String,
    request: Map<String, Value>,
    messages: Vec<Value>,
    response_format: Option<Value>,
    n: usize,
    include_usage: bool,
}

impl Job {
    /// Every choice: the plan run `n` times, one choice per run (per approach with `|`).
    /// When the budget runs out, the best answer so far ends the run, and no run follows.
    async fn answers(
        &self,
        progress: Option<&tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<Vec<String>> {
        let (system, query) = backend::flatten(&self.messages);
        let turns = backend::turns(&self.messages);
        let ctx = |first: bool| {
            approaches::Ctx::new(
                &self.backend,
                &self.model,
                &self.state.config,
                &self.request,
                first.then_some(turns.as_slice()),
                self.response_format.as_ref(),
                self.state.web.as_ref(),
                progress,
            )
        };
        let mut out = Vec::new();
        for _ in 0..self.n {
            let run = match &self.plan {
                Plan::One(a) => approaches::run_or_best(a, &ctx(true), &system, &query).await,
                Plan::Chain(stages) => {
                    // Each stage's (first) answer is the next stage's query; when the budget
                    // runs out, the last answer there is.
                    let mut q = query.clone();
                    let mut answers: Vec<String> = Vec::new();
                    let mut failed = None;
                    for (i, a) in stages.iter().enumerate() {
                        match approaches::run_or_best(a, &ctx(i == 0), &system, &q).await {
                            Ok(got) => answers = got,
                            Err(Error::Budget(_)) if !answers.is_empty() => break,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                        if self.backend.spent().is_some() {
                            break;
                        }
                        q = answers.first().cloned().unwrap_or_default();
                    }
                    match failed {
                        Some(e) => Err(e),
                        None => Ok(answers),
                    }
                }
                Plan::Parallel(all) => {
                    let ctxs: Vec<_> = all.iter().map(|_| ctx(true)).collect();
                    let runs = all
                        .iter()
                        .zip(&ctxs)
                        .map(|(a, c)| approaches::run_or_best(a, c, &system, &query));
                    let mut got = Vec::new();
                    let mut failed = None;
                    for r in futures_util::future::join_all(runs).await {
                        match r {
                            Ok(v) => got.extend(v),
                            Err(e) => failed = failed.or(Some(e)),
                        }
                    }
                    match failed {
                        Some(Error::Budget(_)) if !got.is_empty() => Ok(got),
                        Some(e) => Err(e),
                        None => Ok(got),
                    }
                }
            };
            match run {
                Ok(v) => out.extend(v),
                Err(Error::Budget(_)) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
            if self.backend.spent().is_some() {
                break;
            }
        }
        Ok(out)
    }

    fn usage(&self) -> Usage {
        Usage::new(
            self.backend.prompt_tokens.load(Ordering::Relaxed),
            self.backend.completion_tokens.load(Ordering::Relaxed),
        )
    }

    /// One chunk of this answer's stream.
    fn chunk(
        &self,
        id: &str,
        created: i64,
        choices: Vec<ChunkChoice>,
        usage: Option<Usage>,
    ) -> bytes::Bytes {
        let c = ChatCompletionChunk {
            id: id.to_owned(),
            object: "chat.completion.chunk".into(),
            created,
            model: self.asked_model.clone(),
            choices,
            usage: usage.map(Some),
            system_fingerprint: None,
            extra: Default::default(),
        };
        bytes::Bytes::from(format!(
            "data: {}\n\n",
            serde_json::to_string(&c).unwrap_or_default()
        ))
    }

    fn headers(&self, label: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(label) {
            h.insert("x-optillm-approach", v);
        }
        h.insert("x-backend-calls", HeaderValue::from(self.backend.calls()));
        if let Some(why) = self.backend.spent() {
            h.insert("x-optillm-budget", HeaderValue::from_static(why.as_str()));
        }
        h
    }

    fn response(&self, label: &str, choices: Vec<String>) -> Response {
        let body = ChatCompletionResponse {
            id: completion_id(),
            object: "chat.completion".into(),
            created: contract::chat::unix_now(),
            model: self.asked_model.clone(),
            choices: choices
                .into_iter()
                .enumerate()
                .map(|(i, c)| Choice {
                    index: i as u32,
                    message: ChatMessage::text(Role::Assistant, c),
                    finish_reason: Some("stop".into()),
                    logprobs: None,
                    extra: Default::default(),
                })
                .collect(),
            usage: Some(self.usage()),
            system_fingerprint: None,
            extra: Default::default(),
        };
        (self.headers(label), axum::Json(body)).into_response()
    }

    /// The answer as a stream: progress lines as `delta.reasoning_content` and a keep-alive
    /// comment every few seconds of silence while the approach runs, then each choice, then
    /// usage when asked, then `[DONE]`.
    fn stream(self) -> Response {
        let label = self.plan.label();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
        if let Ok(v) = HeaderValue::from_str(&label) {
            headers.insert("x-optillm-approach", v);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (out_tx, out_rx) =
            tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
        let id = completion_id();
        let created = contract::chat::unix_now();
        tokio::spawn(async move {
            let delta = |index: usize, delta: Delta, finish: Option<&str>| {
                vec![ChunkChoice {
                    index: index as u32,
                    delta,
                    finish_reason: finish.map(str::to_owned),
                    logprobs: None,
                    extra: Default::default(),
                }]
            };
            let progress = |line: String| Delta {
                extra: [(
                    "reasoning_content".to_owned(),
                    Value::String(format!("{line}\n")),
                )]
                .into_iter()
                .collect(),
                ..Delta::default()
            };
            let send = |b: bytes::Bytes| {
                let out = out_tx.clone();
                async move { out.send(Ok(b)).await.is_ok() }
            };
            let opening = Delta {
                role: Some(Role::Assistant),
                content: Some(Some(String::new())),
                ..Delta::default()
            };
            if !send(self.chunk(&id, created, delta(0, opening, None), None)).await {
                return;
            }
            let work = self.answers(Some(&tx));
            tokio::pin!(work);
            let result = loop {
                tokio::select! {
                    r = &mut work => break r,
                    line = rx.recv() => {
                        if let Some(l) = line
                            && !send(self.chunk(&id, created, delta(0, progress(l), None), None)).await
                        {
                            return;
                        }
                    }
                    () = tokio::time::sleep(KEEP_ALIVE) => {
                        if !send(bytes::Bytes::from_static(b": still working\n\n")).await {
                            return;
                        }
                    }
                }
            };
            while let Ok(l) = rx.try_recv() {
                let _ = send(self.chunk(&id, created, delta(0, progress(l), None), None)).await;
            }
            match result {
                Ok(choices) => {
                    for (i, c) in choices.into_iter().enumerate() {
                        let text = Delta {
                            content: Some(Some(c)),
                            ..Delta::default()
                        };
                        let _ = send(self.chunk(&id, created, delta(i, text, None), None)).await;
                        let _ = send(self.chunk(
                            &id,
                            created,
                            delta(i, Delta::default(), Some("stop")),
                            None,
                        ))
                        .await;
                    }
                    if self.include_usage {
                        let _ =
                            send(self.chunk(&id, created, Vec::new(), Some(self.usage()))).await;
                    }
                }
                Err(e) => {
                    let api = e.to_api();
                    let _ = send(bytes::Bytes::from(format!(
                        "data: {}\n\n",
                        json!({"error": api.error})
                    )))
                    .await;
                }
            }
            let _ = send(bytes::Bytes::from_static(contract::sse::DONE_FRAME)).await;
        });
        let body = Body::from_stream(tokio_stream_from(out_rx));
        (headers, body).into_response()
    }
}

/// How long a streaming client may hear nothing before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// Without an API key, only loopback unless `--allow-unauthenticated`.
pub fn check_bind(config: &Config) -> Result<(), Error> {
    if open_without_key(
        &config.listen_on(),
        config.api_key.is_some(),
        config.allow_unauthenticated,
    ) {
        return Err(Error::UnsafeBind(config.listen_on()));
    }
    Ok(())
}

/// Runs the proxy until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    check_bind(&config)?;
    let listener = service_kit::server::bind(&config.listen_on()).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the proxy on a bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Backend(format!("no HTTP client: {e}")))?;
    let body_limit = config.common.body_limit;
    let drain = config.common.drain_timeout;
    let web = (!config.web_fetch.trim().is_empty()).then(|| mcp_kit::client::ToolClient {
        http: http.clone(),
        url: config.web_fetch.clone(),
        key: config.web_fetch_key.clone(),
        name: "homelab-optillm-proxy".into(),
    });
    let state = Arc::new(AppState {
        key_digest: config.api_key.as_deref().map(digest),
        pool: Arc::new(backend::Pool::new(config.max_concurrent_calls)),
        web,
        config,
        http,
    });
    let router = service_kit::server::with_common_layers(app(state), body_limit);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, drain);
    service_kit::server::serve(listener, router, plan).await?;
    Ok(())
}

service_kit::service!(
    Config,
    "optillm-proxy",
    Error,
    common = common,
    routes = routes().table().to_vec(),
    check = check_bind
);
