//! `memory`: user memory for agents and scripts, in the REST shape of mem0's open-source
//! server, so mem0 clients and habits carry over.
//!
//! A memory is a text that belongs to a user (and/or an agent, a run). It is stored as a
//! point in the vector store (through its Qdrant API, like any other client) with the vector
//! the gateway's `embed` handle makes of it ([`upstream`]); adding a near-duplicate of a
//! memory of the same user updates that memory instead of adding a second ([`memories`]).
//! Text is stored as given; `infer: true` first asks a model behind the gateway for the
//! facts in a conversation ([`extract`]). Errors answer `{"detail": …}` as mem0's server does
//! ([`error`]).
//!
//! Start reading at [`routes()`] and [`memories::Memories`].

mod config;
mod error;
pub mod extract;
pub mod memories;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use service_kit::auth::{KeyCheck, check_key, digest, open_without_key, request_key};
use service_kit::routes::Routes;

pub use config::Config;
pub use error::Error;
use memories::{Memories, NewMemory, Scope, Settings};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub memories: Memories,
    key_digest: Option<[u8; 32]>,
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The routes and their table.
pub fn routes() -> Routes<Arc<AppState>> {
    Routes::new()
        .get("/", root, "Name, version and the API it speaks")
        .post(
            "/memories",
            add,
            "Remember messages or a text for a user/agent/run (`infer: true`: the facts in them)",
        )
        .get(
            "/memories",
            list,
            "The memories of `?user_id=` / `agent_id` / `run_id` (all without one)",
        )
        .delete(
            "/memories",
            delete_all,
            "Forget every memory of `?user_id=` / `agent_id` / `run_id`",
        )
        .get("/memories/{id}", get_one, "One memory")
        .put(
            "/memories/{id}",
            update,
            "Change a memory's text (re-embedded) or metadata",
        )
        .delete("/memories/{id}", delete_one, "Forget one memory")
        .get(
            "/memories/{id}/history",
            history,
            "A memory's changes, oldest first",
        )
        .post(
            "/search",
            search,
            "The memories of a user/agent/run nearest in meaning to a query, with scores",
        )
        .post("/reset", reset, "Forget every memory of everyone")
        .health(|state: Arc<AppState>| async move { state.memories.up.ping().await })
}

/// The router on `state`, keys checked.
pub fn app(state: Arc<AppState>) -> Router {
    routes()
        .into_router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .with_state(state)
}

/// Health probes need no key; everything else needs the key when one is set, sent as mem0's
/// clients send it (`Authorization: Token …` or `Bearer …`, or `X-API-Key`).
async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(want) = &state.key_digest else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/health" | "/health/ready") {
        return next.run(req).await;
    }
    let headers = req.headers();
    // mem0's clients: `X-API-Key`, `Bearer`, or the platform's `Token`.
    let given = request_key(headers, &["x-api-key"]).or_else(|| {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("Token "))
            .map(str::trim)
    });
    match check_key(want, given) {
        KeyCheck::Missing => Error::MissingKey.into_response(),
        KeyCheck::Invalid => Error::InvalidKey.into_response(),
        KeyCheck::Valid => next.run(req).await,
    }
}

/// A JSON body read under `--body-limit`, with 422 naming what is wrong.
struct Json<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _state: &S) -> Result<Self> {
        let max = req
            .extensions()
            .get::<service_kit::body::BodyLimit>()
            .map_or(0, |b| b.0);
        let body: Bytes = service_kit::body::read_bytes(req).await.map_err(|e| {
            if e.status == 413 {
                Error::TooLarge(max)
            } else {
                Error::BadRequest(e.error.message)
            }
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map(Json).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                Error::Invalid(format!("the body is not valid: {inner}"))
            } else {
                Error::Invalid(format!("`{path}`: {inner}"))
            }
        })
    }
}

async fn root() -> Response {
    axum::Json(json!({
        "name": "homelab-llm memory",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "mem0 open-source REST server",
    }))
    .into_response()
}

/// A message's `content`: a string, or OpenAI's list of parts (the text parts, joined).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

impl Content {
    fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Content,
    #[serde(default)]
    name: Option<String>,
}

/// `messages`: a list of messages, or one string (as mem0's Python `add` takes).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Messages {
    List(Vec<Message>),
    Text(String),
}

#[derive(Debug, Deserialize)]
struct AddRequest {
    #[serde(default)]
    messages: Option<Messages>,
    #[serde(default)]
    text: Option<String>,
    #[serde(flatten)]
    scope: Scope,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Extract facts with a model first (mem0's default; here only when asked).
    #[serde(default)]
    infer: Option<bool>,
}

fn checked_text(state: &AppState, text: String, what: &str) -> Result<String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(Error::BadRequest(format!("{what} is empty")));
    }
    let n = t.chars().count();
    if n > state.config.max_memory_chars {
        return Err(Error::BadRequest(format!(
            "{what} has {n} characters; a memory holds at most {} (--max-memory-chars)",
            state.config.max_memory_chars
        )));
    }
    Ok(t.to_owned())
}

async fn add(State(state): State<Arc<AppState>>, Json(req): Json<AddRequest>) -> Result<Response> {
    req.scope.required()?;
    let messages: Vec<Message> = match (req.messages, req.text) {
        (Some(Messages::List(m)), None) => m,
        (Some(Messages::Text(t)), None) | (None, Some(t)) => vec![Message {
            role: "user".into(),
            content: Content::Text(t),
            name: None,
        }],
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest(
                "send `messages` or `text`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(Error::BadRequest(
                "`messages` (or `text`) is required".into(),
            ));
        }
    };
    if messages.len() > state.config.max_messages {
        return Err(Error::BadRequest(format!(
            "{} messages; at most {} per request (--max-messages)",
            messages.len(),
            state.config.max_messages
        )));
    }
    let texts = if req.infer == Some(true) {
        let conversation = messages
            .iter()
            .filter(|m| m.role != "system")
            .map(|m| format!("{}: {}", m.role, m.content.text()))
            .collect::<Vec<_>>()
            .join("\n");
        extract::facts(&state.memories.up, &conversation)
            .await?
            .into_iter()
            .filter_map(|f| checked_text(&state, f, "a fact").ok())
            .map(|text| NewMemory {
                text,
                role: None,
                actor_id: None,
            })
            .collect()
    } else {
        messages
            .into_iter()
            .filter(|m| m.role != "system")
            .map(|m| {
                Ok(NewMemory {
                    text: checked_text(&state, m.content.text(), "a message's content")?,
                    role: Some(m.role),
                    actor_id: m.name,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let changes = state.memories.add(texts, &req.scope, req.metadata).await?;
    Ok(axum::Json(json!({ "results": changes })).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    scope: Scope,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Result<Response> {
    if !q.scope.is_empty() {
        q.scope.required()?;
    }
    let items = state.memories.list(&q.scope, q.top_k.or(q.limit)).await?;
    Ok(axum::Json(json!({ "results": items })).into_response())
}

async fn delete_all(
    State(state): State<Arc<AppState>>,
    Query(scope): Query<Scope>,
) -> Result<Response> {
    scope.required()?;
    let n = state.memories.delete_all(&scope).await?;
    Ok(
        axum::Json(json!({"message": "All relevant memories deleted", "deleted": n}))
            .into_response(),
    )
}

async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(scope): Query<Scope>,
) -> Result<Response> {
    Ok(axum::Json(state.memories.get(&id, &scope).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct UpdateRequest {
    #[serde(default)]
    text: Option<String>,
    /// mem0's older name for `text`.
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(scope): Query<Scope>,
    Json(req): Json<UpdateRequest>,
) -> Result<Response> {
    let text = req
        .text
        .or(req.data)
        .map(|t| checked_text(&state, t, "`text`"))
        .transpose()?;
    if text.is_none() && req.metadata.is_none() {
        return Err(Error::BadRequest(
            "nothing to change: send `text` and/or `metadata`".into(),
        ));
    }
    let item = state
        .memories
        .update(&id, &scope, text, req.metadata)
        .await?;
    Ok(
        axum::Json(json!({"message": "Memory updated successfully!", "memory": item}))
            .into_response(),
    )
}

async fn delete_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(scope): Query<Scope>,
) -> Result<Response> {
    state.memories.delete(&id, &scope).await?;
    Ok(axum::Json(json!({"message": "Memory deleted successfully"})).into_response())
}

async fn history(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(scope): Query<Scope>,
) -> Result<Response> {
    Ok(axum::Json(state.memories.history(&id, &scope).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct SearchRequest {
    query: String,
    #[serde(flatten)]
    scope: Scope,
    /// mem0's filters: the scope ids, and metadata fields to match exactly.
    #[serde(default)]
    filters: Option<Map<String, Value>>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    top_k: Option<usize>,
    /// The lowest score a result may have.
    #[serde(default)]
    threshold: Option<f32>,
}

async fn search(
    State(state): State<Arc<AppState>>,
    Json(req): Json<SearchRequest>,
) -> Result<Response> {
    let mut scope = req.scope;
    let mut metadata = Map::new();
    for (k, v) in req.filters.unwrap_or_default() {
        let id = || {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::BadRequest(format!("filters.{k} must be a string")))
        };
        match k.as_str() {
            "user_id" => scope.user_id = Some(id()?),
            "agent_id" => scope.agent_id = Some(id()?),
            "run_id" => scope.run_id = Some(id()?),
            _ => {
                metadata.insert(k, v);
            }
        }
    }
    scope.required()?;
    let query = checked_text(&state, req.query, "`query`")?;
    let items = state
        .memories
        .search(
            &query,
            &scope,
            &metadata,
            req.top_k.or(req.limit),
            req.threshold,
        )
        .await?;
    Ok(axum::Json(json!({ "results": items })).into_response())
}

async fn reset(State(state): State<Arc<AppState>>) -> Result<Response> {
    state.memories.reset().await?;
    Ok(axum::Json(json!({"message": "All memories reset"})).into_response())
}

/// Without an API key, only loopback unless `--allow-unauthenticated`.
pub fn check_bind(config: &Config) -> Result<(), Error> {
    if open_without_key(
        &config.bind,
        config.api_key.is_some(),
        config.allow_unauthenticated,
    ) {
        return Err(Error::UnsafeBind(config.bind.clone()));
    }
    Ok(())
}

/// Runs the service until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    check_bind(&config)?;
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the service on a bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let up = upstream::Upstreams::new(&config)?;
    let memories = Memories::new(
        up,
        Settings {
            duplicate_threshold: config.duplicate_threshold,
            max_results: config.max_results,
            max_history: config.max_history,
        },
    );
    let body_limit = config.common.body_limit;
    let drain = config.common.drain_timeout;
    let state = Arc::new(AppState {
        key_digest: config.api_key.as_deref().map(digest),
        config,
        memories,
    });
    let router = service_kit::server::with_common_layers(app(state), body_limit);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, drain);
    service_kit::server::serve(listener, router, plan).await?;
    Ok(())
}

service_kit::service!(
    Config,
    "memory",
    Error,
    common = common,
    routes = routes().table().to_vec(),
    check = check_bind
);
