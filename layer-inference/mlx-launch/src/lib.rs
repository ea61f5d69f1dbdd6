//! `mlx-launch`: the service the Studio's LaunchDaemon starts. One OpenAI endpoint in front
//! of `mlx_lm.server`: a request for a model starts (or reuses) a child engine for it on a
//! private port, waits until it really answers, and forwards the request; idle children
//! stop; the running models' memory footprints stay within a budget (least recently used
//! stops first). The command is a template, so any OpenAI-compatible engine can be the child.
//!
//! - [`scan`]: MLX folders under `--models-dir` registered as this host's models.
//! - [`registry`]: which models may be started (the system-docs DB, this host).
//! - [`supervisor`]: the children.
//! - [`routes`]: the HTTP face.

mod error;
pub mod registry;
pub mod routes;
pub mod scan;
pub mod supervisor;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::Parser;
use service_kit::config::CommonArgs;
use service_kit::routes::Routes;

pub use error::Error;
use supervisor::{Launch, Supervisor};

/// Default address: loopback, port 4012.
pub const DEFAULT_BIND: &str = "127.0.0.1:4012";
/// The default child: `mlx_lm.server` for one model.
pub const DEFAULT_COMMAND: &str = "mlx_lm.server --model {path} --host 127.0.0.1 --port {port}";

/// The Studio's MLX front.
#[derive(Debug, Clone, Parser)]
#[command(name = "mlx-launch", version)]
pub struct Config {
    #[arg(long, env = "HOMELAB_MLX_LAUNCH_BIND", default_value = DEFAULT_BIND)]
    pub bind: String,

    /// The system-docs DB (the model registry).
    #[arg(long, env = "HOMELAB_DB", default_value = docsdb::DEFAULT_DB_URL)]
    pub db: String,

    /// This host's name in the registry (its models are the ones served).
    #[arg(long, env = "HOMELAB_HOST")]
    pub host: Option<String>,

    /// A folder of MLX models (plain folders or a Hugging Face cache) registered as this
    /// host's models at start and at every registry reload (repeatable).
    #[arg(
        long = "models-dir",
        env = "HOMELAB_MLX_MODELS_DIR",
        value_name = "DIR"
    )]
    pub models_dirs: Vec<std::path::PathBuf>,

    /// Model formats served (repeatable).
    #[arg(long = "format", default_values_t = ["mlx".to_owned()])]
    pub formats: Vec<String>,

    /// The child command, as shell words; `{path}`, `{port}` and `{model_id}` are filled in.
    #[arg(long, default_value = DEFAULT_COMMAND)]
    pub command: String,

    /// A command for one model: `MODEL_ID=COMMAND` (repeatable).
    #[arg(long = "model-command", value_name = "MODEL_ID=COMMAND")]
    pub model_commands: Vec<String>,

    /// The `model` sent to a child. `mlx_lm.server` serves its `--model` as `default_model`
    /// (any other name makes it load that model); `{model_id}` and `{path}` are filled in.
    #[arg(long, default_value = "default_model")]
    pub upstream_model: String,

    /// The most memory the running models may take together (their registered footprints).
    #[arg(long, env = "HOMELAB_MLX_MEMORY_BUDGET", default_value = "96GiB", value_parser = service_kit::config::size)]
    pub memory_budget: u64,

    /// A child with no request for this long is stopped.
    #[arg(long, default_value = "15m", value_parser = service_kit::config::duration)]
    pub idle_timeout: Duration,

    /// How long a child may take to answer its first request (loading the model).
    #[arg(long, default_value = "5m", value_parser = service_kit::config::duration)]
    pub start_timeout: Duration,

    /// How long a child may take to exit after SIGTERM before it is killed.
    #[arg(long, default_value = "15s", value_parser = service_kit::config::duration)]
    pub stop_timeout: Duration,

    /// How often the registry is read again.
    #[arg(long, default_value = "10s", value_parser = service_kit::config::duration)]
    pub reload_interval: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// A config with the defaults, for this DB and address.
    pub fn new(db: &str, bind: &str) -> Self {
        let mut c = Config::parse_from(["mlx-launch"]);
        c.db = db.to_owned();
        c.bind = bind.to_owned();
        c
    }

    /// The registry host name: `--host`, else this machine's name (without `.local`).
    pub fn host_name(&self) -> String {
        docsdb::register::host_name(self.host.as_deref())
    }

    fn launch(&self) -> Result<Launch, Error> {
        let split = |t: &str| -> Result<Vec<String>, Error> {
            let words =
                shell_words::split(t).map_err(|e| Error::Template(t.to_owned(), e.to_string()))?;
            if words.is_empty() {
                return Err(Error::Template(t.to_owned(), "empty command".into()));
            }
            Ok(words)
        };
        let mut per_model = HashMap::new();
        for mc in &self.model_commands {
            let (id, cmd) = mc
                .split_once('=')
                .ok_or_else(|| Error::Template(mc.clone(), "want MODEL_ID=COMMAND".into()))?;
            per_model.insert(id.trim().to_owned(), split(cmd)?);
        }
        Ok(Launch {
            command: split(&self.command)?,
            per_model,
            upstream_model: self.upstream_model.clone(),
            memory_budget: self.memory_budget,
            idle_timeout: self.idle_timeout,
            start_timeout: self.start_timeout,
            stop_timeout: self.stop_timeout,
        })
    }
}

/// What the handlers share.
pub struct AppState {
    pub supervisor: Arc<Supervisor>,
}

/// Registers the models found in `dirs`; a failure is logged (what is registered still serves).
async fn register_found(db: &docsdb::Db, host: &str, dirs: &[std::path::PathBuf]) {
    if dirs.is_empty() {
        return;
    }
    match scan::register(db, host, dirs).await {
        Ok(n) => tracing::debug!(models = n, "models folders registered"),
        Err(e) => tracing::warn!(error = %e, "could not register the models folders"),
    }
}

/// The routes and their table.
pub fn routes() -> Routes<Arc<AppState>> {
    const CHAT: &str =
        "Chat completions, forwarded to the model's `mlx_lm.server` child, started on demand";
    Routes::new()
        .post("/v1/chat/completions", routes::chat, CHAT)
        .post("/chat/completions", routes::chat, CHAT)
        .post(
            "/v1/completions",
            routes::completions,
            "Text completions, forwarded like chat",
        )
        .get(
            "/v1/models",
            routes::models,
            "The registry's models on this host, with whether each runs now",
        )
        .get(
            "/status",
            routes::status,
            "The running children and the memory budget",
        )
        .health_always_ready()
}

/// The HTTP app.
pub fn app(state: Arc<AppState>, body_limit: u64) -> Router {
    service_kit::server::with_common_layers(routes().into_router().with_state(state), body_limit)
}

/// Binds `config.bind` and serves until `shutdown`, then stops every child.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// As [`serve`], on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let launch = config.launch()?;
    let db = docsdb::Db::open(&config.db).await?;
    let host = config.host_name();
    register_found(&db, &host, &config.models_dirs).await;
    let models = registry::load(&db, &host, &config.formats).await?;
    tracing::info!(host = %host, models = models.len(), budget = config.memory_budget, "registry read");
    let residency = supervisor::Residency {
        db: db.clone(),
        host: host.clone(),
    };
    let supervisor = Arc::new(Supervisor::new(launch, models, Some(residency)));
    // Whatever a previous run recorded as loaded is not loaded now.
    supervisor.clear_residency().await;
    let state = Arc::new(AppState {
        supervisor: supervisor.clone(),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    // The registry is read again now and then; idle children are stopped.
    {
        let (sup, stop, formats) = (supervisor.clone(), stop.clone(), config.formats.clone());
        let (every, dirs) = (config.reload_interval, config.models_dirs.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
                register_found(&db, &host, &dirs).await;
                match registry::load(&db, &host, &formats).await {
                    Ok(m) => sup.set_models(m),
                    Err(e) => tracing::warn!(error = %e, "could not read the registry"),
                }
            }
        });
    }
    {
        let (sup, stop) = (supervisor.clone(), stop.clone());
        let tick =
            (config.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(tick) => sup.stop_idle().await,
                }
            }
        });
    }
    let app = app(state, config.common.body_limit);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, config.common.drain_timeout);
    let result = service_kit::server::serve(listener, app, plan).await;
    stop.cancel();
    supervisor.stop_all().await;
    supervisor.clear_residency().await;
    Ok(result?)
}

service_kit::service!(
    Config,
    "mlx-launch",
    Error,
    common = common,
    routes = routes().table().to_vec()
);
