//! `ov-llm-server`: the Intel Mini's model server — the embedded engine with its OpenVINO
//! backend behind the same OpenAI surface as orin-llm-server (`engine-server`). The model is
//! an OpenVINO IR folder (`openvino_model.xml/.bin`) with the GGUF it was derived from beside
//! it (tokenizer and chat template); the OpenVINO C library is loaded at run time from
//! `OPENVINO_LIB_PATH` (a file or folder), else the usual install locations, so the workspace
//! builds without OpenVINO and a missing library is a clear error, not a crash.

use std::future::Future;

use clap::Parser;
pub use engine_server::{AppState, EngineArgs, Error, app};

/// Default address: loopback, port 4011.
pub const DEFAULT_BIND: &str = "127.0.0.1:4011";

/// ov-llm-server: an OpenAI-compatible server for one OpenVINO model.
#[derive(Debug, Clone, Parser)]
#[command(name = "ov-llm-server", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOMELAB_OV_LLM_SERVER_BIND", default_value = DEFAULT_BIND)]
    pub bind: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl Config {
    /// Defaults for the IR folder `model`, on `bind` (registering nowhere unless `engine.db` is
    /// set).
    pub fn new(model: impl Into<std::path::PathBuf>, bind: &str) -> Self {
        let mut c = Config::parse_from(["ov-llm-server", "--model", "x"]);
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

/// Runs the server on a bound listener (the OpenVINO backend unless `--backend` says
/// otherwise).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    engine_server::serve_on(
        listener,
        &config.engine,
        llm_engine::Backend::OpenVino,
        "ov-llm-server",
        shutdown,
    )
    .await
}

service_kit::service!(
    Config,
    "ov-llm-server",
    Error,
    common = engine.common,
    routes = engine_server::routes().table().to_vec()
);
