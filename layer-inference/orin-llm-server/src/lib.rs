//! `orin-llm-server`: an OpenAI-compatible server for one GGUF model on the embedded engine
//! (candle, or llama.cpp with the `llama-cpp`/`cuda` features) — the Jetson's server and the
//! local engine of `homelab up`. The HTTP face is `engine-server`'s.

use std::future::Future;

use clap::Parser;
pub use engine_server::{AppState, EngineArgs, Error, app};

/// Default address: loopback, port 4013.
pub const DEFAULT_BIND: &str = "127.0.0.1:4013";

/// orin-llm-server: an OpenAI-compatible server for one GGUF model.
#[derive(Debug, Clone, Parser)]
#[command(name = "orin-llm-server", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOMELAB_ORIN_LLM_SERVER_BIND", default_value = DEFAULT_BIND)]
    pub bind: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl Config {
    /// Defaults for `model`, on `bind` (registering nowhere unless `engine.db` is set).
    pub fn new(model: impl Into<std::path::PathBuf>, bind: &str) -> Self {
        let mut c = Config::parse_from(["orin-llm-server", "--model", "x"]);
        c.engine.configured_in_code(model.into());
        c.bind = bind.to_owned();
        c
    }
}

/// Runs the server until `shutdown`.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the server on a bound listener (the candle backend unless `--backend` says otherwise).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    engine_server::serve_on(
        listener,
        &config.engine,
        llm_engine::Backend::Candle,
        "orin-llm-server",
        shutdown,
    )
    .await
}

service_kit::service!(
    Config,
    "orin-llm-server",
    Error,
    common = engine.common,
    routes = engine_server::routes().table().to_vec()
);
