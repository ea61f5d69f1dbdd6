//! An OpenAI-compatible server for one GGUF model, on the embedded engine (`llm-engine`).
//!
//! It binds at once and loads the model in the background: `/health` answers 503 while
//! loading, as llama-server does, so supervisors and the gateway can tell "starting" from
//! "down". Chat and legacy completions, plain and streamed; `/v1/models` with context
//! length, size on disk and quantisation; `/metrics`.

mod routes;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use clap::Parser;
use llm_engine::{Engine, EngineConfig};
use service_kit::config::CommonArgs;

/// orin-llm-server: an OpenAI-compatible server for one GGUF model.
#[derive(Debug, Clone, Parser)]
#[command(name = "orin-llm-server", version)]
pub struct Config {
    /// The GGUF model file.
    #[arg(long, env = "HOMELAB_ENGINE_MODEL")]
    pub model: std::path::PathBuf,
    /// Address to listen on.
    #[arg(
        long,
        env = "HOMELAB_ORIN_LLM_SERVER_BIND",
        default_value = "127.0.0.1:4013"
    )]
    pub bind: String,
    /// The name the model is served under (default: the file name without `.gguf`).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Context length (0: the model's own, at most 4096).
    #[arg(long, default_value_t = 0)]
    pub context: usize,
    /// Sequences generated at once.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Requests that may wait for a sequence; more get 503 at once.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// CPU threads for the llama.cpp backend (0: every core). The candle backend follows
    /// `RAYON_NUM_THREADS`, else every core.
    #[arg(long, env = "HOMELAB_ENGINE_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// The inference backend: `candle` (pure Rust, always built) or `llama-cpp` (builds with
    /// `--features llama-cpp`, or `cuda` on the Jetson).
    #[arg(long, env = "HOMELAB_ENGINE_BACKEND", default_value = "candle")]
    pub backend: llm_engine::Backend,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Defaults for `model`, on `bind`.
    pub fn new(model: impl Into<std::path::PathBuf>, bind: &str) -> Self {
        let mut c = Config::parse_from(["orin-llm-server", "--model", "x"]);
        c.model = model.into();
        c.bind = bind.to_owned();
        c
    }
}

/// What went wrong starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Service(#[from] service_kit::Error),
    #[error("{0}")]
    Engine(#[from] llm_engine::EngineError),
}

/// Shared state: the engine once loaded, or why loading failed.
#[derive(Debug, Default)]
pub struct AppState {
    engine: OnceLock<Arc<Engine>>,
    failed: OnceLock<String>,
    pub started: i64,
}

impl AppState {
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }
}

pub use routes::app;

/// Loads the model in the background, setting it (or the failure) on `state`.
pub fn load_in_background(state: Arc<AppState>, config: &Config) {
    let cfg = EngineConfig {
        backend: config.backend,
        model_path: config.model.clone(),
        model_id: config.model_id.clone(),
        context: config.context,
        parallel: config.parallel,
        queue: config.queue,
        threads: config.threads,
    };
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        match Engine::load(&cfg) {
            Ok(e) => {
                tracing::info!(model = %e.model_id, context = e.context, secs = t.elapsed().as_secs_f64(), "model loaded");
                let _ = state.engine.set(Arc::new(e));
            }
            Err(e) => {
                tracing::error!(error = %e, model = %cfg.model_path.display(), "model failed to load");
                let _ = state.failed.set(e.to_string());
            }
        }
    });
}

/// Runs the server until `shutdown`.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the server on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = Arc::new(AppState {
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        ..Default::default()
    });
    load_in_background(state.clone(), &config);
    let router = service_kit::server::with_common_layers(app(state), config.common.body_limit);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, config.common.drain_timeout);
    service_kit::server::serve(listener, router, plan).await?;
    Ok(())
}
