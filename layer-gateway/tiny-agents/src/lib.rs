//! `tiny-agents`: agents kept as Hugging Face's tiny-agents keeps them — a folder with
//! `agent.json` and `PROMPT.md` ([`agent_file`]) — run against this stack: model calls go to
//! the gateway (or the agent's `endpointUrl`), tools come from MCP servers over stdio,
//! Streamable HTTP or the older HTTP+SSE ([`tools`], [`sse`]), and the loop is the
//! original's, bounded ([`agent`]).
//!
//! Two ways in: `tiny-agents run PATH`, a terminal session ([`terminal`]), and
//! `tiny-agents serve PATH…`, an OpenAI-compatible server where each agent is the model
//! `agent:NAME` (this file: [`routes()`], [`chat`]). Tool activity reaches chat clients as
//! `reasoning_content` lines, which chat UIs show as the model's thinking.

pub mod agent;
pub mod agent_file;
mod config;
mod error;
pub mod sse;
pub mod terminal;
pub mod tools;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use contract::chat::{
    ChatCompletionChunk, ChatCompletionResponse, ChatMessage, Choice, ChunkChoice, Delta, Role,
};
use docsdb::tool_calls::ToolCallWriter;
use serde_json::{Map, Value, json};
use service_kit::auth::{KeyCheck, check_key, digest, open_without_key};
use service_kit::routes::Routes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, Config, DEFAULT_ENDPOINT, RunArgs, RunLimits};
pub use error::Error;

use agent::{Agent, Event, Outcome};

/// The prefix of an agent's model id.
pub const MODEL_PREFIX: &str = "agent:";

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    agents: Vec<Arc<Agent>>,
    key_digest: Option<[u8; 32]>,
    runs: Arc<Semaphore>,
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The routes and their table.
pub fn routes() -> Routes<Arc<AppState>> {
    Routes::new()
        .post(
            "/chat/completions",
            chat,
            "A run of the agent named by `model` (`agent:NAME`) on the conversation",
        )
        .get("/models", models, "The agents, as models `agent:NAME`")
        .under_v1_and_root()
        .health(|_: Arc<AppState>| async move { Ok::<(), String>(()) })
}

/// The router on `state`.
pub fn app(state: Arc<AppState>) -> Router {
    routes().into_router().with_state(state)
}

fn check_auth(state: &AppState, headers: &axum::http::HeaderMap) -> Result<()> {
    let Some(want) = &state.key_digest else {
        return Ok(());
    };
    match check_key(want, service_kit::auth::bearer(headers)) {
        KeyCheck::Missing => Err(Error::MissingKey),
        KeyCheck::Invalid => Err(Error::InvalidKey),
        KeyCheck::Valid => Ok(()),
    }
}

fn model_id(agent: &Agent) -> String {
    format!("{MODEL_PREFIX}{}", agent.def.name)
}

async fn models(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    check_auth(&state, req.headers())?;
    let data: Vec<Value> = state
        .agents
        .iter()
        .map(|a| {
            let mut m = json!({
                "id": model_id(a),
                "object": "model",
                "created": 0,
                "owned_by": "tiny-agents",
            });
            if let Some(d) = &a.def.description {
                m["description"] = json!(d);
            }
            m
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

/// The agent a request names: `agent:NAME` or `NAME`; with one agent, any request without a
/// model.
fn pick<'a>(state: &'a AppState, model: Option<&str>) -> Result<&'a Arc<Agent>> {
    match model.filter(|m| !m.is_empty()) {
        None if state.agents.len() == 1 => Ok(&state.agents[0]),
        None => Err(Error::BadRequest(
            "`model` is required: GET /v1/models lists the agents".into(),
        )),
        Some(m) => {
            let name = m.strip_prefix(MODEL_PREFIX).unwrap_or(m);
            state
                .agents
                .iter()
                .find(|a| a.def.name == name)
                .ok_or_else(|| Error::UnknownAgent(m.to_owned()))
        }
    }
}

/// The agent's history for a request: its system prompt (with the client's system messages
/// after it, in one system message) and the client's other messages.
fn history(agent: &Agent, messages: &[Value]) -> Result<Vec<Value>> {
    if messages.is_empty() {
        return Err(Error::BadRequest("`messages` must not be empty".into()));
    }
    let mut system = agent.system_prompt().to_owned();
    let mut rest = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(role) = m["role"].as_str() else {
            return Err(Error::BadRequest(format!(
                "messages[{i}]: `role` is required"
            )));
        };
        match role {
            "system" | "developer" => {
                let text = text_of(&m["content"]).ok_or_else(|| {
                    Error::BadRequest(format!("messages[{i}]: a system message's content is text"))
                })?;
                if !text.trim().is_empty() {
                    system.push_str("\n\n");
                    system.push_str(&text);
                }
            }
            "user" | "assistant" | "tool" => {
                if !(m["content"].is_string()
                    || m["content"].is_array()
                    || (m["content"].is_null() && role == "assistant"))
                {
                    return Err(Error::BadRequest(format!(
                        "messages[{i}]: `content` must be a string or a list of parts"
                    )));
                }
                rest.push(m.clone());
            }
            other => {
                return Err(Error::BadRequest(format!(
                    "messages[{i}]: unknown role `{other}`"
                )));
            }
        }
    }
    if rest.last().is_none_or(|m| m["role"] == "assistant") {
        return Err(Error::BadRequest(
            "the last message must be the user's: an agent runs on a question".into(),
        ));
    }
    let mut out = vec![json!({"role": "system", "content": system})];
    out.extend(rest);
    Ok(out)
}

/// The text of a message's content: a string, or its text parts joined.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// A line of tool activity, as shown in `reasoning_content`.
pub fn activity(ev: &Event) -> Option<String> {
    match ev {
        Event::ToolCall {
            name, arguments, ..
        } => Some(format!("calling {name}({})…\n", brief(arguments, 160))),
        Event::ToolResult {
            name,
            content,
            ok,
            elapsed,
            ..
        } => Some(if *ok {
            format!(
                "{name} answered ({} characters, {} ms)\n",
                content.chars().count(),
                elapsed.as_millis()
            )
        } else {
            format!(
                "{name} failed ({} ms): {}\n",
                elapsed.as_millis(),
                brief(content, 300)
            )
        }),
        Event::Text(_) | Event::Reasoning(_) => None,
    }
}

/// `s` on one line, cut to `max` characters.
fn brief(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        format!("{}…", one.chars().take(max).collect::<String>())
    }
}

/// A note added to the answer when a run ended on a limit, so the user knows it is cut.
fn limit_note(o: &Outcome) -> Option<String> {
    o.stop
        .is_limit()
        .then(|| format!("\n\n[The agent {}.]", o.stop.describe()))
}

/// A run in its own task.
struct Running {
    events: mpsc::Receiver<Event>,
    done: oneshot::Receiver<Result<Outcome>>,
    /// The outcome, once read ahead (a run that ended before its first event).
    finished: Option<Outcome>,
    /// Cancels the run when dropped (the client went away).
    _guard: tokio_util::sync::DropGuard,
}

impl Running {
    fn start(
        agent: Arc<Agent>,
        mut messages: Vec<Value>,
        rid: String,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Running {
        let (tx, events) = mpsc::channel(64);
        let (done_tx, done) = oneshot::channel();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        tokio::spawn(async move {
            let r = agent.run(&mut messages, &rid, &tx, &token).await;
            drop(tx);
            drop(permit);
            let _ = done_tx.send(r);
        });
        Running {
            events,
            done,
            finished: None,
            _guard: cancel.drop_guard(),
        }
    }

    /// How the run ended (after its last event).
    async fn outcome(&mut self) -> Result<Outcome> {
        if let Some(o) = self.finished.take() {
            return Ok(o);
        }
        (&mut self.done)
            .await
            .map_err(|_| Error::Backend("the run stopped unexpectedly".into()))?
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    check_auth(&state, req.headers())?;
    let rid = service_kit::request_id::of(&req);
    let bytes = service_kit::body::read_bytes(req)
        .await
        .map_err(|e| Error::BadRequest(e.error.message))?;
    let body: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadRequest(format!("the body is not a JSON object: {e}")))?;
    let agent = pick(&state, body.get("model").and_then(Value::as_str))?.clone();
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(Error::BadRequest("`messages` (a list) is required".into()));
    };
    let messages = history(&agent, messages)?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::BadRequest("`stream` must be true or false".into())),
    };
    let reply = Reply {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: contract::chat::unix_now(),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map_or_else(|| model_id(&agent), str::to_owned),
        usage_chunk: body
            .get("stream_options")
            .is_some_and(|o| o["include_usage"] == true),
    };
    let permit = state
        .runs
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Error::Backend("the server is shutting down".into()))?;
    let mut run = Running::start(agent, messages, rid, permit);
    // Wait for the first thing the run does, so that a run that fails at once (the model's
    // endpoint down) is an error status, not a stream that says nothing.
    let first = run.events.recv().await;
    if first.is_none() {
        run.finished = Some(run.outcome().await?);
    }
    if !stream {
        let (mut content, mut reasoning) = (String::new(), String::new());
        let mut next = first;
        while let Some(ev) = next {
            match &ev {
                Event::Text(t) => content.push_str(t),
                Event::Reasoning(r) => reasoning.push_str(r),
                other => reasoning.push_str(&activity(other).unwrap_or_default()),
            }
            next = run.events.recv().await;
        }
        let outcome = run.outcome().await?;
        return Ok(reply.answer(content, reasoning, &outcome));
    }
    let head = reply.chunk(
        Delta {
            role: Some(Role::Assistant),
            content: Some(Some(String::new())),
            ..Default::default()
        },
        None,
    );
    // Each event as a chunk as it comes; after the last, the end of the stream.
    let rest = futures_util::stream::unfold(Some((run, first, reply)), |state| async move {
        let (mut run, pending, reply) = state?;
        let next = match pending {
            Some(p) => Some(p),
            None => run.events.recv().await,
        };
        Some(match next {
            Some(ev) => (reply.event(&ev), Some((run, None, reply))),
            None => {
                let end = match run.outcome().await {
                    Ok(outcome) => reply.finish(&outcome),
                    Err(e) => error_frame(&e),
                };
                (end, None)
            }
        })
    });
    let body = futures_util::stream::once(async move { head })
        .chain(rest)
        .map(Ok::<_, std::convert::Infallible>);
    Ok((
        [
            (CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

use futures_util::StreamExt as _;

/// One `data:` event holding `v`.
fn frame(v: &impl serde::Serialize) -> bytes::Bytes {
    bytes::Bytes::from(contract::sse::encode_json_data(
        &serde_json::to_vec(v).unwrap_or_default(),
    ))
}

fn reasoning_delta(text: String) -> Delta {
    let mut extra = contract::Extra::new();
    extra.insert("reasoning_content".into(), Value::String(text));
    Delta {
        extra,
        ..Default::default()
    }
}

fn finish_reason(o: &Outcome) -> &'static str {
    if o.stop.is_limit() { "length" } else { "stop" }
}

/// A failure after the stream began: an error event (OpenAI's shape), then `[DONE]`.
fn error_frame(e: &Error) -> bytes::Bytes {
    let mut out = frame(&json!({"error": e.to_api()})).to_vec();
    out.extend_from_slice(contract::sse::DONE_FRAME);
    bytes::Bytes::from(out)
}

/// What every part of one answer carries.
struct Reply {
    id: String,
    created: i64,
    /// The model id as the client named it.
    model: String,
    /// The client asked for a usage chunk (`stream_options.include_usage`).
    usage_chunk: bool,
}

impl Reply {
    fn chunk_with(
        &self,
        choices: Vec<ChunkChoice>,
        usage: Option<contract::usage::Usage>,
    ) -> bytes::Bytes {
        frame(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: usage.map(Some),
            system_fingerprint: None,
            extra: Default::default(),
        })
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> bytes::Bytes {
        let choice = ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_owned),
            logprobs: None,
            extra: Default::default(),
        };
        self.chunk_with(vec![choice], None)
    }

    /// An event of the run: text as content, the rest as `reasoning_content`.
    fn event(&self, ev: &Event) -> bytes::Bytes {
        let delta = match ev {
            Event::Text(t) => Delta {
                content: Some(Some(t.clone())),
                ..Default::default()
            },
            Event::Reasoning(r) => reasoning_delta(r.clone()),
            other => reasoning_delta(activity(other).unwrap_or_default()),
        };
        self.chunk(delta, None)
    }

    /// The end of a stream: the limit note (if any), the finish reason, usage when asked
    /// and known, `[DONE]`.
    fn finish(&self, o: &Outcome) -> bytes::Bytes {
        let mut out = Vec::new();
        if let Some(note) = limit_note(o) {
            let delta = Delta {
                content: Some(Some(note)),
                ..Default::default()
            };
            out.extend_from_slice(&self.chunk(delta, None));
        }
        out.extend_from_slice(&self.chunk(Delta::default(), Some(finish_reason(o))));
        // Usage only when the backend reported it: a made-up zero would be counted as real.
        if let Some(usage) = o.usage.clone().filter(|_| self.usage_chunk) {
            out.extend_from_slice(&self.chunk_with(Vec::new(), Some(usage)));
        }
        out.extend_from_slice(contract::sse::DONE_FRAME);
        bytes::Bytes::from(out)
    }

    /// The whole answer of a run that was not streamed.
    fn answer(&self, mut content: String, reasoning: String, o: &Outcome) -> Response {
        if let Some(note) = limit_note(o) {
            content.push_str(&note);
        }
        let mut message = ChatMessage::text(Role::Assistant, content);
        if !reasoning.is_empty() {
            message
                .extra
                .insert("reasoning_content".into(), Value::String(reasoning));
        }
        let r = ChatCompletionResponse {
            id: self.id.clone(),
            object: "chat.completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                index: 0,
                message,
                finish_reason: Some(finish_reason(o).to_owned()),
                logprobs: None,
                extra: Default::default(),
            }],
            usage: o.usage.clone(),
            system_fingerprint: None,
            extra: Default::default(),
        };
        axum::Json(r).into_response()
    }
}

/// Reads the agents of `config` and checks their names are distinct: everything `serve`
/// refuses before it listens.
pub fn load_agents(config: &Config) -> Result<Vec<agent_file::AgentDef>> {
    let mut defs: Vec<agent_file::AgentDef> = Vec::new();
    for path in &config.agents {
        let def = agent_file::load(path)?;
        if let Some(other) = defs.iter().find(|d| d.name == def.name) {
            return Err(Error::Usage(format!(
                "two agents are named `{}` ({} and {}): rename a folder",
                def.name,
                other.file.display(),
                def.file.display()
            )));
        }
        defs.push(def);
    }
    Ok(defs)
}

/// Builds an agent from its definition; its tool calls become rows through `tool_log`.
pub fn build_agent(
    def: agent_file::AgentDef,
    run: &RunLimits,
    http: reqwest::Client,
    tool_log: Option<Arc<ToolCallWriter>>,
) -> Agent {
    let endpoint = def
        .endpoint_url
        .clone()
        .unwrap_or_else(|| run.endpoint.clone())
        .trim_end_matches('/')
        .to_owned();
    let mut def = def;
    if def.api_key.as_deref().is_none_or(str::is_empty) {
        def.api_key = run.endpoint_key.clone();
    }
    Agent {
        toolbox: tools::Toolbox::new(&def.servers, http.clone()),
        def,
        http,
        endpoint,
        limits: run.limits(),
        tool_log,
    }
}

/// The writer of tool-call rows into `--db`, when one is given.
pub async fn tool_log(run: &RunLimits) -> Result<Option<Arc<ToolCallWriter>>> {
    let Some(url) = &run.db else { return Ok(None) };
    let db = docsdb::Db::open(url)
        .await
        .map_err(|e| Error::Usage(format!("the system-docs DB ({url}): {e}")))?;
    Ok(Some(Arc::new(ToolCallWriter::spawn(
        db,
        docsdb::writer::WriterConfig::default(),
    ))))
}

/// Writes the tool-call rows still queued.
pub async fn close_tool_log(log: Option<Arc<ToolCallWriter>>) {
    if let Some(log) = log
        && !log.close().await
    {
        tracing::error!("some tool-call rows could not be written");
    }
}

/// An HTTP client for model calls and SSE servers.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Backend(format!("no HTTP client: {e}")))
}

/// Refused before listening: beyond loopback without a key; a bad agent file.
pub fn check(config: &Config) -> Result<()> {
    if open_without_key(
        &config.bind,
        config.api_key.is_some(),
        config.allow_unauthenticated,
    ) {
        return Err(Error::UnsafeBind(config.bind.clone()));
    }
    if config.max_runs == 0 {
        return Err(Error::Usage("--max-runs must be at least 1".into()));
    }
    load_agents(config).map(|_| ())
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    check(&config)?;
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Serves on a bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let http = http_client()?;
    let mut defs = load_agents(&config)?;
    for def in &mut defs {
        for missing in def.resolve_inputs(|_| None) {
            tracing::info!(agent = %def.name, input = %missing.id, variable = %missing.env_key(), "input not set in the environment: left empty");
        }
    }
    for d in &defs {
        tracing::info!(agent = %d.name, model = %d.model, servers = ?d.server_lines(), "serving agent:{}", d.name);
    }
    let log = tool_log(&config.run).await?;
    let agents: Vec<Arc<Agent>> = defs
        .into_iter()
        .map(|d| Arc::new(build_agent(d, &config.run, http.clone(), log.clone())))
        .collect();
    let state = Arc::new(AppState {
        agents: agents.clone(),
        key_digest: config.api_key.as_deref().map(digest),
        runs: Arc::new(Semaphore::new(config.max_runs)),
    });
    let router = service_kit::server::with_common_layers(app(state), config.common.body_limit);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, config.common.drain_timeout);
    let served = service_kit::server::serve(listener, router, plan).await;
    for a in &agents {
        a.toolbox.close().await;
    }
    close_tool_log(log).await;
    served?;
    Ok(())
}

service_kit::service!(
    Config,
    "tiny-agents",
    Error,
    common = common,
    routes = routes().table().to_vec(),
    check = check
);

/// An example agent kept in the repository (`layer-gateway/tiny-agents/agents/NAME`).
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub name: &'static str,
    pub agent_json: &'static str,
    pub prompt: &'static str,
    /// The MCP servers it uses, as `homelab up` names them, with the URL the file holds for
    /// each (the server's default address).
    pub servers: &'static [(&'static str, &'static str)],
}

/// The example agents.
pub const EXAMPLES: &[Example] = &[
    Example {
        name: "web-researcher",
        agent_json: include_str!("../agents/web-researcher/agent.json"),
        prompt: include_str!("../agents/web-researcher/PROMPT.md"),
        servers: &[
            ("web-search", "http://127.0.0.1:4021/mcp"),
            ("web-fetch", "http://127.0.0.1:4020/mcp"),
        ],
    },
    Example {
        name: "home-agent",
        agent_json: include_str!("../agents/home-agent/agent.json"),
        prompt: include_str!("../agents/home-agent/PROMPT.md"),
        servers: &[("home-assistant", "http://127.0.0.1:4022/mcp")],
    },
    Example {
        name: "stack-doctor",
        agent_json: include_str!("../agents/stack-doctor/agent.json"),
        prompt: include_str!("../agents/stack-doctor/PROMPT.md"),
        servers: &[("system-monitor", "http://127.0.0.1:4001/mcp")],
    },
];

impl Example {
    /// Writes the agent folder under `root` with each server's URL replaced by
    /// `url_of(server name)`; `None` when a server it needs is not there.
    pub fn write(
        &self,
        root: &std::path::Path,
        url_of: impl Fn(&str) -> Option<String>,
    ) -> std::io::Result<Option<std::path::PathBuf>> {
        let mut json = self.agent_json.to_owned();
        for (server, default) in self.servers {
            let Some(url) = url_of(server) else {
                return Ok(None);
            };
            json = json.replace(default, &url);
        }
        let dir = root.join(self.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(agent_file::AGENT_FILE), json)?;
        std::fs::write(dir.join("PROMPT.md"), self.prompt)?;
        Ok(Some(dir))
    }
}
