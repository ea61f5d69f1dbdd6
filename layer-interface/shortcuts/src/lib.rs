//! `shortcuts`: endpoints an Apple Shortcut can use in one "Get Contents of URL" step. A
//! client of the gateway with no model logic of its own: it asks the gateway (streaming, so
//! it can stop at a deadline a Siri-run shortcut survives), takes the Markdown out of the
//! answer (it will be spoken) and answers plain text — or flat JSON with `?format=json`,
//! never a stream. The device's `Authorization` goes through to the gateway unchanged, so
//! keys, limits and the request log are per device.
//!
//! Start reading at [`routes()`]; [`chat`] talks to the gateway, [`speech`] makes text for
//! the ear, [`store`] keeps conversations and jobs, [`fetch`] reads pages through web-fetch.

pub mod chat;
mod config;
mod error;
pub mod fetch;
pub mod input;
pub mod speech;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use service_kit::routes::Routes;
use tokio::time::Instant;

pub use config::Config;
pub use error::Error;
use input::Input;
use store::{Answer, JobState, Owner};

/// The header a request sets its own deadline with, in milliseconds.
pub const DEADLINE_HEADER: &str = "x-deadline-ms";
/// The header that carries a conversation, both ways.
pub const CONVERSATION_HEADER: &str = "x-conversation-id";
/// Set when an answer is shorter than the model's: `deadline` or `max_words`.
pub const TRUNCATED_HEADER: &str = "x-truncated";

/// What the model is told when the request brings no `system`: the answer will be heard.
const SPOKEN: &str = "You answer questions asked by voice from a phone; the answer will be read aloud. Answer in plain sentences, briefly and directly: no Markdown, no lists, no tables, no code unless asked.";

/// Query parameters that carry a key, refused: a URL ends up in logs and shared shortcuts.
const KEY_PARAMS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "api-key",
    "token",
    "access_token",
    "auth",
    "authorization",
    "bearer",
];

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub gateway: chat::Gateway,
    pub fetcher: Option<fetch::WebFetch>,
    pub conversations: store::Conversations,
    pub jobs: store::Jobs,
    /// Bound beyond loopback: every request needs a key.
    pub keyed: bool,
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The routes and their table.
pub fn routes() -> Routes<Arc<AppState>> {
    Routes::new()
        .get("/", root, "What this service offers, as text")
        .post(
            "/ask",
            ask,
            "Ask a question (JSON `text`, a form field `text`, or the raw body); the answer as plain text",
        )
        .post(
            "/summarise",
            summarise,
            "Summarise a text, or the page at a URL (read through web-fetch); plain text",
        )
        .post("/summarize", summarise, "The same as /summarise")
        .get(
            "/status",
            status,
            "The homelab's state in one spoken sentence, from the system monitor",
        )
        .post(
            "/jobs",
            new_job,
            "Start a long ask or summary (`task`); 202 with the URL to poll",
        )
        .get(
            "/jobs/{id}",
            job,
            "A job's answer: 202 while it runs, then the answer as /ask gives it",
        )
        .health(|state: Arc<AppState>| async move {
            let url = format!("{}/health", state.gateway.base);
            match state.gateway.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("the gateway answers {}", r.status())),
                Err(e) => Err(format!("the gateway cannot be reached: {e}")),
            }
        })
}

/// The whole service on `state`: the routes, the shared layers (request ids, the body
/// limit) and, outermost, the key rules and spoken errors.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.config.common.body_limit;
    service_kit::server::with_common_layers(
        routes().into_router().with_state(state.clone()),
        body_limit,
    )
    .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Whether the client asked for flat JSON (`?format=json`).
fn wants_json(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "format" && v == "json")
    })
}

/// No keys in the address; beyond loopback, no request without a key (health probes
/// aside). Then every error that left without a sentence (the shared layers' 404, 405 and
/// 413) gets one, in the format asked for.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let json = wants_json(req.uri().query());
    let health = req.uri().path().starts_with("/health");
    let key_in_query = req.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| KEY_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
    });
    if key_in_query {
        return spoken(&Error::KeyInAddress, json);
    }
    if state.keyed && !health && !req.headers().contains_key(AUTHORIZATION) {
        return spoken(&Error::MissingKey, json);
    }
    let res = next.run(req).await;
    if res.status().is_success() {
        return res;
    }
    if let Some(Spoken(sentence)) = res.extensions().get::<Spoken>().cloned() {
        if json {
            return with_json(res.status(), &sentence, res.headers());
        }
        return res;
    }
    // The shared layers' answers, in OpenAI's shape: said again as a sentence.
    let e = match res.status() {
        StatusCode::NOT_FOUND => Error::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => Error::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge(state.config.common.body_limit),
        _ => return res,
    };
    spoken(&e, json)
}

/// Marks a response whose body is already one sentence.
#[derive(Debug, Clone)]
struct Spoken(String);

fn spoken(e: &Error, json: bool) -> Response {
    said(e.status(), e.to_string(), json)
}

/// One sentence with `status`: `{"error": …}` in JSON, else the text, marked as said.
fn said(status: StatusCode, sentence: String, json: bool) -> Response {
    if json {
        return with_json(status, &sentence, &HeaderMap::new());
    }
    let mut res = text(status, sentence.clone());
    res.extensions_mut().insert(Spoken(sentence));
    res
}

/// A plain-text answer.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// `value` as JSON when the client asked for it, else `words` as text.
fn reply(status: StatusCode, json: bool, value: serde_json::Value, words: String) -> Response {
    if json {
        (status, axum::Json(value)).into_response()
    } else {
        text(status, words)
    }
}

fn with_json(status: StatusCode, sentence: &str, headers: &HeaderMap) -> Response {
    let mut res = (status, axum::Json(json!({ "error": sentence }))).into_response();
    if let Some(v) = headers.get("retry-after") {
        res.headers_mut().insert("retry-after", v.clone());
    }
    res
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut res = spoken(&self, false);
        if matches!(self, Error::RateLimited | Error::Busy | Error::TooManyJobs) {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from_static("10"));
        }
        res
    }
}

async fn root() -> Response {
    text(
        StatusCode::OK,
        "homelab shortcuts: POST /ask, POST /summarise, GET /status, POST /jobs and GET /jobs/ID. Answers are plain text; add ?format=json for JSON.\n",
    )
}

/// A request as the handlers use it.
struct Call {
    input: Input,
    auth: Option<HeaderValue>,
    owner: Owner,
    request_id: String,
    deadline: Instant,
    json: bool,
    conversation: Option<String>,
}

/// Reads the body (held to `--body-limit`, said as a sentence), the key, the deadline and
/// the conversation.
async fn read_call(
    state: &AppState,
    req: Request,
    default: Duration,
    limit: Duration,
) -> Result<Call> {
    let json = wants_json(req.uri().query());
    let headers = req.headers().clone();
    let request_id = service_kit::request_id::of(&req);
    let body = service_kit::body::read_bytes(req).await.map_err(|e| {
        if e.status == 413 {
            Error::TooLarge(state.config.common.body_limit)
        } else {
            Error::BadRequest("The request could not be read.".into())
        }
    })?;
    let input = input::parse(&headers, &body)?;
    let deadline = match headers.get(DEADLINE_HEADER) {
        None => default.min(limit),
        Some(v) => {
            let ms: u64 = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|&ms| ms > 0)
                .ok_or_else(|| {
                    Error::BadRequest("X-Deadline-Ms must be a number of milliseconds.".into())
                })?;
            Duration::from_millis(ms).min(limit)
        }
    };
    let auth = headers.get(AUTHORIZATION).cloned();
    let conversation = headers
        .get(CONVERSATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| input.conversation.clone())
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if conversation.as_ref().is_some_and(|c| c.len() > 128) {
        return Err(Error::BadRequest("The conversation id is too long.".into()));
    }
    Ok(Call {
        owner: store::owner(auth.as_ref().and_then(|a| a.to_str().ok())),
        auth,
        request_id,
        deadline: Instant::now() + deadline,
        json,
        conversation,
        input,
    })
}

/// `max_words` as asked, held to `--max-words`; 0 is refused.
fn max_words(state: &AppState, input: &Input) -> Result<Option<usize>> {
    match input.max_words {
        Some(0) => Err(Error::BadRequest("max_words must be at least 1.".into())),
        Some(n) => Ok(Some(n.min(state.config.max_words))),
        None => Ok(None),
    }
}

/// The model's answer made ready to speak: Markdown out; a stream the deadline cut ends at
/// its last full sentence (none: no answer in time); `max_words` holds.
fn finish(said: chat::Said, words: Option<usize>, model: String) -> Result<Answer> {
    let plain = speech::strip_markdown(&said.text);
    let (mut text, mut truncated) = if said.complete {
        (plain, None)
    } else {
        match speech::whole_sentences(&plain) {
            Some(s) if !s.is_empty() => (s.to_owned(), Some("deadline")),
            _ => return Err(Error::NoAnswerInTime),
        }
    };
    if text.is_empty() {
        return Err(Error::Upstream("the model gave an empty answer.".into()));
    }
    if let Some(cut) = words.and_then(|w| speech::within_words(&text, w)) {
        text = cut;
        truncated = Some("max_words");
    }
    Ok(Answer {
        text,
        truncated,
        conversation: None,
        model,
    })
}

/// The model the request names, else `--model`.
fn model_of(state: &AppState, call: &Call) -> String {
    call.input
        .model
        .clone()
        .unwrap_or_else(|| state.config.model.clone())
}

/// Asks the gateway with `messages` (at most about `words` words) and makes the answer ready
/// to speak.
async fn generate(
    state: &AppState,
    call: &Call,
    model: String,
    messages: Vec<serde_json::Value>,
    words: Option<usize>,
) -> Result<Answer> {
    let mut body = json!({"model": model, "messages": messages});
    if let Some(w) = words {
        // About two tokens a word, and room to finish the sentence.
        body["max_tokens"] = json!(w * 2 + 16);
    }
    let said = state
        .gateway
        .chat(body, call.auth.as_ref(), &call.request_id, call.deadline)
        .await?;
    finish(said, words, model)
}

async fn run_ask(state: &AppState, call: &Call) -> Result<Answer> {
    let question = input::required_text(&call.input)?;
    let words = max_words(state, &call.input)?;
    let history = call
        .conversation
        .as_deref()
        .and_then(|id| state.conversations.turns(id, &call.owner))
        .unwrap_or_default();
    let mut system = call
        .input
        .system
        .clone()
        .unwrap_or_else(|| SPOKEN.to_owned());
    if let Some(w) = words {
        system.push_str(&format!(" Answer in at most {w} words."));
    }
    let mut messages = vec![json!({"role": "system", "content": system})];
    for (q, a) in &history {
        messages.push(json!({"role": "user", "content": q}));
        messages.push(json!({"role": "assistant", "content": a}));
    }
    messages.push(json!({"role": "user", "content": question}));
    let mut answer = generate(state, call, model_of(state, call), messages, words).await?;
    let id = call
        .conversation
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    state
        .conversations
        .record(&id, call.owner, question, answer.text.clone());
    answer.conversation = Some(id);
    Ok(answer)
}

/// A text that is one web address.
fn as_url(text: &str) -> Option<String> {
    let t = text.trim();
    let u = url::Url::parse(t).ok()?;
    (matches!(u.scheme(), "http" | "https") && !t.contains(char::is_whitespace))
        .then(|| t.to_owned())
}

async fn run_summarise(state: &AppState, call: &Call) -> Result<Answer> {
    let words = max_words(state, &call.input)?;
    let url = call
        .input
        .url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| call.input.text.as_deref().and_then(as_url));
    let (source, text) = match url {
        Some(u) => {
            if as_url(&u).is_none() {
                return Err(Error::BadRequest(
                    "That is not a web address starting with http or https.".into(),
                ));
            }
            let fetcher = state.fetcher.as_ref().ok_or(Error::NoFetcher)?;
            let page = fetcher
                .fetch(&u, state.config.max_summary_chars, call.deadline)
                .await?;
            (format!("The web page {u}"), page)
        }
        None => (
            "The text".to_owned(),
            input::required_text(&call.input).map_err(|_| Error::NothingToSummarise)?,
        ),
    };
    let max = state.config.max_summary_chars;
    let (text, cut) = match text.char_indices().nth(max) {
        Some((at, _)) => (&text[..at], true),
        None => (text.as_str(), false),
    };
    let length = words.map_or_else(
        || "in at most three sentences".to_owned(),
        |w| format!("in at most {w} words"),
    );
    let system = format!(
        "Summarise what the user sends for someone who will hear it read aloud, {length}: plain sentences, no Markdown, no lists. Say first what it is about.{}",
        if cut {
            " Only its beginning is given."
        } else {
            ""
        }
    );
    let messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": format!("{source}:\n\n{text}")}),
    ];
    generate(state, call, model_of(state, call), messages, words).await
}

/// An answer as text (the default) or flat JSON, with its headers.
fn answered(answer: &Answer, json: bool) -> Response {
    let mut res = reply(
        StatusCode::OK,
        json,
        json!({
            "answer": answer.text,
            "conversation": answer.conversation,
            "truncated": answer.truncated,
            "model": answer.model,
        }),
        answer.text.clone(),
    );
    let h = res.headers_mut();
    if let Some(c) = answer
        .conversation
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert(CONVERSATION_HEADER, c);
    }
    if let Some(t) = answer.truncated {
        h.insert(TRUNCATED_HEADER, HeaderValue::from_static(t));
    }
    if let Ok(m) = HeaderValue::from_str(&answer.model) {
        h.insert("x-model", m);
    }
    res
}

async fn ask(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let c = &state.config;
    let call = read_call(&state, req, c.deadline, c.max_deadline).await?;
    let answer = run_ask(&state, &call).await?;
    Ok(answered(&answer, call.json))
}

async fn summarise(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let c = &state.config;
    let call = read_call(&state, req, c.deadline, c.max_deadline).await?;
    let answer = run_summarise(&state, &call).await?;
    Ok(answered(&answer, call.json))
}

async fn status(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let json = wants_json(req.uri().query());
    let deadline = Instant::now() + state.config.deadline;
    if state.keyed {
        // Beyond loopback the key must be one the gateway takes.
        let mut check = state
            .gateway
            .http
            .get(format!("{}/v1/models", state.gateway.base));
        if let Some(a) = req.headers().get(AUTHORIZATION) {
            check = check.header(AUTHORIZATION, a.clone());
        }
        match tokio::time::timeout_at(deadline, check.send()).await {
            Ok(Ok(r)) if r.status().as_u16() == 401 || r.status().as_u16() == 403 => {
                return Err(Error::BadKey);
            }
            Ok(Ok(_)) => {}
            _ => return Err(Error::Upstream("its gateway cannot be reached.".into())),
        }
    }
    let url = format!(
        "{}/api/status?format=text",
        state.config.monitor.trim_end_matches('/')
    );
    let sentence =
        match tokio::time::timeout_at(deadline, state.gateway.http.get(&url).send()).await {
            Ok(Ok(r)) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => {
                return Err(Error::Upstream(
                    "the monitor cannot be reached, so its state is unknown.".into(),
                ));
            }
        };
    let sentence = sentence.trim().to_owned();
    Ok(reply(
        StatusCode::OK,
        json,
        json!({ "status": sentence }),
        sentence,
    ))
}

async fn new_job(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let query_task = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "task")
            .map(|(_, v)| v.into_owned())
    });
    // A job's deadline is its timeout, not a shortcut's patience.
    let timeout = state.config.job_timeout;
    let call = read_call(&state, req, timeout, timeout).await?;
    let task = call
        .input
        .task
        .clone()
        .or(query_task)
        .unwrap_or_else(|| "ask".into());
    let summarise = match task.as_str() {
        "ask" => false,
        "summarise" | "summarize" => true,
        other => {
            return Err(Error::BadRequest(format!(
                "A job is ask or summarise, not {other}."
            )));
        }
    };
    // Refuse what would fail at once, before a job exists.
    if summarise {
        if call.input.text.is_none() && call.input.url.is_none() {
            return Err(Error::NothingToSummarise);
        }
    } else {
        input::required_text(&call.input)?;
    }
    max_words(&state, &call.input)?;
    let id = state.jobs.start(call.owner)?;
    let json = call.json;
    let st = state.clone();
    let job_id = id.clone();
    tokio::spawn(async move {
        let result = if summarise {
            run_summarise(&st, &call).await
        } else {
            run_ask(&st, &call).await
        };
        let done = match result {
            Ok(a) => JobState::Done(a),
            Err(e) => JobState::Failed {
                status: e.status().as_u16(),
                sentence: e.to_string(),
            },
        };
        st.jobs.finish(&job_id, done);
    });
    let poll = format!("/jobs/{id}");
    let mut res = reply(
        StatusCode::ACCEPTED,
        json,
        json!({"id": id, "status": "running", "poll": poll}),
        format!("Working on it. The answer will be at {poll}."),
    );
    if let Ok(v) = HeaderValue::from_str(&poll) {
        res.headers_mut().insert("location", v);
    }
    Ok(res)
}

async fn job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response> {
    let json = wants_json(req.uri().query());
    let owner = store::owner(
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|a| a.to_str().ok()),
    );
    match state.jobs.get(&id, &owner) {
        None => Err(Error::UnknownJob),
        Some(JobState::Running) => {
            let mut res = reply(
                StatusCode::ACCEPTED,
                json,
                json!({"id": id, "status": "running"}),
                "Still working.".into(),
            );
            res.headers_mut()
                .insert("retry-after", HeaderValue::from_static("5"));
            Ok(res)
        }
        Some(JobState::Done(answer)) => Ok(answered(&answer, json)),
        Some(JobState::Failed { status, sentence }) => Ok(said(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            sentence,
            json,
        )),
    }
}

/// Runs the service until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the service on a bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let gateway = chat::Gateway::new(&config.gateway, config.connect_timeout)?;
    let fetcher = (!config.web_fetch.trim().is_empty()).then(|| {
        fetch::WebFetch::new(
            gateway.http.clone(),
            config.web_fetch.clone(),
            config.web_fetch_key.clone(),
        )
    });
    let keyed = !service_kit::auth::is_loopback_bind(&config.bind);
    let drain = config.common.drain_timeout;
    let state = Arc::new(AppState {
        conversations: store::Conversations::new(
            config.max_turns,
            config.conversation_ttl,
            config.max_conversations,
        ),
        jobs: store::Jobs::new(config.job_ttl, config.max_jobs),
        config,
        gateway,
        fetcher,
        keyed,
    });
    let router = app(state);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, drain);
    service_kit::server::serve(listener, router, plan).await?;
    Ok(())
}

service_kit::service!(
    Config,
    "shortcuts",
    Error,
    common = common,
    routes = routes().table().to_vec()
);
