//! The OpenAI-compatible server for one model on the embedded engine (`llm-engine`), shared
//! by the services that are "the engine with a backend": `orin-llm-server` (candle or
//! llama.cpp, the Jetson and `homelab up`) and `ov-llm-server` (OpenVINO, the Mini). Each
//! service adds only its own name, address and default backend.
//!
//! It binds at once and loads the model in the background: `/health` answers 503 while
//! loading, as llama-server does, so supervisors and the gateway can tell "starting" from
//! "down". Chat and legacy completions, plain and streamed, with the sampler settings a
//! request leaves unset filled from the model's defaults (shown in `/v1/models`) and a
//! priority (`x-homelab-priority` or the body's `priority`) that orders the engine's queue;
//! `/queue` and `/queue/{request_id}` say who waits; `/metrics`. With `--db` the loaded model is
//! registered in the system-docs DB and recorded loaded while the server runs ([`register`]).

mod params;
pub mod register;
mod routes;
mod tool_calls;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use clap::Args;
use llm_engine::{Backend, Engine, EngineConfig};
use service_kit::config::CommonArgs;

pub use routes::{app, routes};

/// The engine flags every engine service takes (besides its `--bind`).
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// The model: a GGUF file, or for OpenVINO an IR folder with its GGUF beside it.
    #[arg(long, env = "HOMELAB_ENGINE_MODEL")]
    pub model: std::path::PathBuf,
    /// The name the model is served under (default: the file or folder name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Context length (0: the model's own, at most 4096).
    #[arg(long, default_value_t = 0)]
    pub context: usize,
    /// Sequences generated at once (all in one forward pass per step: four cost little more
    /// than one).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a sequence; more get 503 at once (a better-priority
    /// newcomer takes the place of the worst one waiting instead).
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// The longest a request waits for a sequence before it gets 503.
    #[arg(long, default_value = "10m", value_parser = service_kit::config::duration)]
    pub max_queue_wait: std::time::Duration,
    /// Memory for the KV of ended sequences, kept so that a request sharing their first
    /// tokens (the rest of a chat, an agent's next step, the same system prompt) reads only
    /// the rest, in MiB (default: a sixteenth of the machine's memory, 256 MiB to 4 GiB; 0:
    /// none). The least recently used go first.
    #[arg(long, env = "HOMELAB_ENGINE_PREFIX_CACHE_MB")]
    pub prefix_cache_mb: Option<usize>,
    /// New tokens for a request that sets no `max_tokens` (0: up to the context).
    #[arg(long, default_value_t = 0)]
    pub default_max_tokens: u32,
    /// How often a streamed request that waits for its first token gets an SSE comment.
    #[arg(long, default_value = "5s", value_parser = service_kit::config::duration)]
    pub sse_keepalive: std::time::Duration,
    /// CPU threads for the llama.cpp backend (0: every core). The candle backend follows
    /// `RAYON_NUM_THREADS`, else every core.
    #[arg(long, env = "HOMELAB_ENGINE_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// The inference backend: `candle` (pure Rust, always built), `llama-cpp` (builds with
    /// `--features llama-cpp`, or `cuda` on the Jetson) or `openvino` (`--features openvino`;
    /// the library is loaded at run time). Each service has its own default.
    #[arg(long, env = "HOMELAB_ENGINE_BACKEND")]
    pub backend: Option<Backend>,
    /// The OpenVINO device: `CPU`, `GPU`, `NPU`, `AUTO`, ...
    #[arg(long, env = "HOMELAB_ENGINE_DEVICE", default_value = "CPU")]
    pub device: String,
    /// The OpenVINO inference precision (`f32`, `bf16`, `f16`); the device's default if unset.
    #[arg(long, env = "HOMELAB_ENGINE_PRECISION")]
    pub precision: Option<String>,
    /// A sentence-transformers model folder (a BERT encoder such as all-MiniLM-L6-v2, as
    /// `homelab models pull minilm-l6` puts it in the cache) served on `/v1/embeddings`
    /// beside the chat model, on candle.
    #[arg(long, env = "HOMELAB_EMBEDDING_MODEL")]
    pub embedding_model: Option<std::path::PathBuf>,
    /// The name the embedding model is served under (default: the folder name).
    #[arg(long)]
    pub embedding_model_id: Option<String>,
    /// Inputs run through the embedding model at once (inputs of requests waiting together
    /// share batches).
    #[arg(long, default_value_t = 32)]
    pub embedding_batch: usize,
    /// Inputs one embeddings request may carry (OpenAI's limit too).
    #[arg(long, default_value_t = 2048)]
    pub embedding_max_inputs: usize,
    /// Inputs that may wait for the embedding model; a request beyond gets 503 at once.
    #[arg(long, default_value_t = 8192)]
    pub embedding_queue: usize,
    /// The system-docs DB to register the model in and to record it loaded while serving
    /// (`sqlite://...` or `postgres://...`; unset: nothing is recorded).
    #[arg(long, env = "HOMELAB_DB")]
    pub db: Option<String>,
    /// The host the model is registered on (default: this machine's name).
    #[arg(long, env = "HOMELAB_HOST")]
    pub host: Option<String>,
    /// The service name the residency rows carry (default: this server's name).
    #[arg(long, env = "HOMELAB_SERVICE_NAME")]
    pub service_name: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl EngineArgs {
    /// For a server configured in code (`Config::new`): serves `model`, and forgets what the
    /// environment said about the registry (`HOMELAB_DB`, `HOMELAB_HOST`,
    /// `HOMELAB_SERVICE_NAME`), so it registers only when its caller says so.
    pub fn configured_in_code(&mut self, model: std::path::PathBuf) {
        self.model = model;
        self.db = None;
        self.host = None;
        self.service_name = None;
    }

    /// The embedding model to load, if any.
    pub fn embedding(&self) -> Option<EmbeddingSetup> {
        self.embedding_model.as_ref().map(|dir| EmbeddingSetup {
            dir: dir.clone(),
            model_id: self.embedding_model_id.clone(),
            limits: llm_engine::embed::EmbedLimits {
                batch: self.embedding_batch,
                queue: self.embedding_queue,
            },
        })
    }

    /// The engine's configuration, with `default_backend` unless `--backend` says otherwise.
    pub fn engine_config(&self, default_backend: Backend) -> EngineConfig {
        EngineConfig {
            backend: self.backend.unwrap_or(default_backend),
            model_path: self.model.clone(),
            model_id: self.model_id.clone(),
            context: self.context,
            parallel: self.parallel,
            queue: self.queue,
            max_queue_wait: self.max_queue_wait,
            default_max_tokens: (self.default_max_tokens > 0).then_some(self.default_max_tokens),
            threads: self.threads,
            device: self.device.clone(),
            precision: self.precision.clone(),
            prefix_cache_mb: self.prefix_cache_mb,
        }
    }
}

/// The embedding model a server loads beside its chat model.
#[derive(Debug, Clone)]
pub struct EmbeddingSetup {
    pub dir: std::path::PathBuf,
    pub model_id: Option<String>,
    pub limits: llm_engine::embed::EmbedLimits,
}

/// What went wrong starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Service(#[from] service_kit::Error),
    #[error("{0}")]
    Engine(#[from] llm_engine::EngineError),
    #[error("system-docs DB: {0}")]
    Db(#[from] docsdb::Error),
}

/// Shared state: the engine once loaded, or why loading failed.
#[derive(Debug)]
pub struct AppState {
    engine: OnceLock<Arc<Engine>>,
    /// The embedding model, once loaded (before the chat model).
    embeddings: OnceLock<Arc<llm_engine::embed::Embeddings>>,
    /// An embedding model was asked for (`--embedding-model`).
    pub embedding_configured: bool,
    /// Inputs one embeddings request may carry.
    pub embedding_max_inputs: usize,
    failed: OnceLock<String>,
    pub started: i64,
    /// How often a waiting stream gets an SSE comment.
    pub keepalive: std::time::Duration,
}

impl AppState {
    /// Nothing loaded yet.
    pub fn new(keepalive: std::time::Duration) -> Self {
        AppState {
            engine: OnceLock::new(),
            embeddings: OnceLock::new(),
            embedding_configured: false,
            embedding_max_inputs: 2048,
            failed: OnceLock::new(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            keepalive: keepalive.max(std::time::Duration::from_millis(100)),
        }
    }

    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    pub fn embeddings(&self) -> Option<&Arc<llm_engine::embed::Embeddings>> {
        self.embeddings.get()
    }
}

/// Loads the models in the background, setting them (or the failure) on `state`: the
/// embedding model first (it is small), then the chat model, so `/health` says 200 only when
/// both serve. With a registration, each model is registered and recorded loaded before it
/// is set (so a `/health` of 200 means the registry says so too).
pub fn load_in_background(
    state: Arc<AppState>,
    cfg: EngineConfig,
    embedding: Option<EmbeddingSetup>,
    registration: Option<register::Registration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(setup) = embedding {
            let dir = setup.dir.clone();
            let t = std::time::Instant::now();
            let loaded = tokio::task::spawn_blocking(move || {
                llm_engine::embed::Embedder::load(&setup.dir, setup.model_id.as_deref())
                    .map(|e| llm_engine::embed::Embeddings::start(e, setup.limits))
            })
            .await
            .unwrap_or_else(|e| Err(llm_engine::EngineError::Load(e.to_string())));
            match loaded {
                Ok(e) => {
                    let m = e.embedder();
                    tracing::info!(model = %m.model_id, dimensions = m.info.dimensions, secs = t.elapsed().as_secs_f64(), "embedding model loaded");
                    if let Some(r) = &registration {
                        r.loaded_embedder(m, &dir).await;
                    }
                    let _ = state.embeddings.set(Arc::new(e));
                }
                Err(e) => {
                    tracing::error!(error = %e, model = %dir.display(), "embedding model failed to load");
                    let _ = state
                        .failed
                        .set(format!("the embedding model failed to load: {e}"));
                    return;
                }
            }
        }
        let path = cfg.model_path.clone();
        let t = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(move || Engine::load(&cfg))
            .await
            .unwrap_or_else(|e| Err(llm_engine::EngineError::Load(e.to_string())));
        match loaded {
            Ok(e) => {
                tracing::info!(model = %e.model_id, backend = ?e.backend, context = e.context, secs = t.elapsed().as_secs_f64(), "model loaded");
                if let Some(r) = &registration {
                    r.loaded(&e, &path).await;
                }
                let _ = state.engine.set(Arc::new(e));
            }
            Err(e) => {
                tracing::error!(error = %e, model = %path.display(), "model failed to load");
                let _ = state.failed.set(e.to_string());
            }
        }
    })
}

/// Runs the server on a bound listener until `shutdown`; `service` names it in the registry
/// unless `--service-name` says otherwise.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    args: &EngineArgs,
    default_backend: Backend,
    service: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let config = args.engine_config(default_backend);
    let model_id = config.served_model_id();
    let registration = match &args.db {
        Some(url) => {
            let name = args.service_name.as_deref().unwrap_or(service);
            let r = register::Registration::open(url, args.host.as_deref(), name).await?;
            r.unloaded(&model_id).await;
            Some(r)
        }
        None => None,
    };
    let embedding = args.embedding();
    let embed_id = embedding
        .as_ref()
        .map(|e| llm_engine::embed::served_id(&e.dir, e.model_id.as_deref()));
    if let (Some(r), Some(id)) = (&registration, &embed_id) {
        r.unloaded(id).await;
    }
    let mut state = AppState::new(args.sse_keepalive);
    state.embedding_configured = embedding.is_some();
    state.embedding_max_inputs = args.embedding_max_inputs.max(1);
    let state = Arc::new(state);
    let loading = load_in_background(state.clone(), config, embedding, registration.clone());
    let router = service_kit::server::with_common_layers(app(state), args.common.body_limit);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, args.common.drain_timeout);
    let served = service_kit::server::serve(listener, router, plan).await;
    // Not loaded any more: a load still running records nothing after this.
    loading.abort();
    let _ = loading.await;
    if let Some(r) = &registration {
        r.unloaded(&model_id).await;
        if let Some(id) = &embed_id {
            r.unloaded(id).await;
        }
        r.db.close().await;
    }
    Ok(served?)
}
