//! The `homelab` command: create and fill the system-docs DB, manage API keys.
//!
//! Every command takes `--db URL` (env `HOMELAB_DB`, default `sqlite://./var/system-docs.db`,
//! created and migrated on first use). Errors are one line on stderr with a non-zero exit;
//! an import that fails writes nothing.

pub mod commands;
pub mod models;
pub mod openwebui;
pub mod output;
pub mod up;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What went wrong, as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Db(#[from] docsdb::Error),
    #[error("{0}")]
    Input(#[from] docsdb::InputError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// One of `up`'s services could not listen.
    #[error(
        "{service} cannot listen on {addr}: {source}{}",
        bind_hint(source, flag)
    )]
    Bind {
        service: &'static str,
        addr: String,
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A service of `up` stopped before it was asked to.
    #[error("{service} stopped: {reason}")]
    Stopped {
        service: &'static str,
        reason: String,
    },
    /// The local engine could not load its model.
    #[error("the local engine could not load its model: {0}")]
    EngineLoad(String),
    /// `up` refuses what a service it composes would refuse.
    #[error("{reason}")]
    Refused {
        service: &'static str,
        reason: String,
    },
    /// A command cannot do what was asked as asked; the text says what to do instead.
    #[error("{0}")]
    Usage(String),
}

/// What to do about a bind failure.
fn bind_hint(e: &std::io::Error, flag: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            " (is another `homelab up` running? stop it, or choose another port with {flag})"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            " (this machine has no such address; see --bind-host)".to_owned()
        }
        std::io::ErrorKind::PermissionDenied => {
            format!(" (ports below 1024 need privileges; choose another with {flag})")
        }
        _ => String::new(),
    }
}

/// The operator CLI of homelab-llm.
#[derive(Debug, Parser)]
#[command(name = "homelab", version, about, propagate_version = true)]
pub struct Cli {
    /// The system-docs DB: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, global = true, env = "HOMELAB_DB", default_value = docsdb::DEFAULT_DB_URL)]
    pub db: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The system-docs DB itself.
    #[command(subcommand)]
    Db(DbCommand),
    /// Hosts, services, endpoints, models and routing handles.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Open WebUI against this stack.
    #[command(subcommand, name = "openwebui")]
    OpenWebUi(OpenWebUiCommand),
    /// Virtual API keys for the gateway.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// GGUF models in the model cache.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run the whole stack on this machine: the local engine, the gateway and the monitor.
    Up(UpArgs),
    /// Health and traffic of the stack, from the DB: services per layer, then handles.
    Status {
        /// Print JSON (the monitor's /api/status fields, plus `handles`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the DB and the model cache live.
    #[arg(long, env = "HOMELAB_DATA_DIR", default_value = "./var")]
    pub data_dir: std::path::PathBuf,
    /// The address the gateway, the monitor and the MCP tools bind (loopback unless you mean
    /// otherwise; the local engine stays on loopback). Beyond loopback `up` needs a master key
    /// (HOMELAB_MASTER_KEY, which the gateway and the tools then require) or
    /// --allow-unauthenticated, as the gateway does.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_host: String,
    /// Serve beyond loopback without any key: the gateway, the monitor and the MCP tools are
    /// then open to the whole network.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    #[arg(long, default_value_t = 4000)]
    pub gateway_port: u16,
    #[arg(long, default_value_t = 4010)]
    pub engine_port: u16,
    #[arg(long, default_value_t = 4001)]
    pub monitor_port: u16,
    /// Serve this GGUF file, or a model of the catalogue (`qwen2.5-coder-0.5b`: one that
    /// calls tools), instead of the default model.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Run without the local engine (only the gateway over the registry).
    #[arg(long)]
    pub no_engine: bool,
    /// Run the local engine without the embedding model (no handle `embed`).
    #[arg(long)]
    pub no_embeddings: bool,
    /// Run without the MCP tool servers.
    #[arg(long)]
    pub no_tools: bool,
    /// Run without the data layer (the vector store and the memory service).
    #[arg(long)]
    pub no_data: bool,
    /// The vector store's port (Qdrant's REST API; its data in DATA_DIR/vectors.db).
    #[arg(long, default_value_t = 4030)]
    pub vector_db_port: u16,
    /// The memory service's port (mem0's REST API over the vector store; needs the
    /// embedding model).
    #[arg(long, default_value_t = 4031)]
    pub memory_port: u16,
    /// Run without the Apple Shortcuts endpoints.
    #[arg(long)]
    pub no_shortcuts: bool,
    /// Run without the OptiLLM proxy.
    #[arg(long)]
    pub no_optillm: bool,
    /// The OptiLLM proxy's port (inference-time approaches over the gateway: model
    /// `moa-local`, `bon-local`, …).
    #[arg(long, default_value_t = 4002)]
    pub optillm_port: u16,
    /// Run without the agents (tiny-agents serve).
    #[arg(long)]
    pub no_agents: bool,
    /// The agents' port (tiny-agents folders as models `agent:NAME`; the examples are
    /// written to DATA_DIR/agents).
    #[arg(long, default_value_t = 4005)]
    pub agents_port: u16,
    /// The Shortcuts endpoints' port (/ask, /summarise, /status, /jobs: plain text for a
    /// phone, through the gateway with the device's key).
    #[arg(long, default_value_t = 4003)]
    pub shortcuts_port: u16,
    #[arg(long, default_value_t = 4020)]
    pub web_fetch_port: u16,
    #[arg(long, default_value_t = 4021)]
    pub web_search_port: u16,
    #[arg(long, default_value_t = 4022)]
    pub ha_port: u16,
    /// A private host, address or CIDR range web-fetch may reach (repeatable); nothing
    /// private is reachable otherwise.
    #[arg(long = "allow-host", value_name = "HOST_OR_CIDR")]
    pub allow_hosts: Vec<String>,
    /// SearXNG's base URL (JSON format enabled; see layer-tools/searxng): registered as the
    /// gateway's search backend for /v1/search and the web-search tool.
    #[arg(long, env = "HOMELAB_SEARXNG_URL")]
    pub searxng: Option<String>,
    /// Home Assistant's base URL; with --ha-policy, runs the home-assistant tool server
    /// (token from HOMELAB_HA_TOKEN).
    #[arg(long, env = "HOMELAB_HA_URL", requires = "ha_policy")]
    pub ha_url: Option<String>,
    /// The home-assistant allow-list (see layer-tools/mcp-tools/home-assistant).
    #[arg(long, env = "HOMELAB_HA_POLICY", requires = "ha_url")]
    pub ha_policy: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch a model into the cache and register it: `smollm2-135m` (the default chat
    /// model), `qwen2.5-coder-0.5b` (a model that calls tools), `minilm-l6` (the embedding
    /// model), a GGUF file, or an HTTP(S) URL of one.
    Pull(PullArgs),
    /// Registered models, largest memory footprint first, with each host's memory.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `smollm2-135m`, `qwen2.5-coder-0.5b`, `minilm-l6`, a path, or a URL.
    pub source: String,
    /// The model cache.
    #[arg(long, env = "HOMELAB_MODELS", default_value = "./var/models")]
    pub models_dir: std::path::PathBuf,
    /// Expected SHA-256 of the file (known models carry their own).
    #[arg(long)]
    pub sha256: Option<String>,
    /// The model id to register (default: the known name, or the file name without `.gguf`).
    #[arg(long)]
    pub name: Option<String>,
    /// Context length the memory footprint is estimated for (capped at the model's own).
    #[arg(long, default_value_t = 4096)]
    pub context: u64,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the DB if missing and apply pending migrations.
    Migrate,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Apply a handles.jsonl, system.yaml or LiteLLM config.yaml (detected from content).
    Import(ImportArgs),
    /// Write the registry as handles.jsonl or system.yaml.
    Export(ExportArgs),
    /// Show what the registry holds.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to import (`-` for standard input).
    pub file: String,
    /// Show what would change and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One routing handle per line, self-contained (targets carry their endpoint's URL).
    Jsonl,
    /// The whole registry.
    Yaml,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Yaml)]
    pub format: ExportFormat,
    /// Write here (atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListKind {
    Hosts,
    Services,
    Endpoints,
    Models,
    Handles,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(value_enum)]
    pub kind: ListKind,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum OpenWebUiCommand {
    /// Print Open WebUI's environment file, filled from the registry: the gateway for models
    /// (with a new virtual key), embeddings and web search, the vector store, the MCP tool
    /// servers, and user headers for per-user accounting. Registers Open WebUI as a service
    /// the monitor probes.
    Env(OpenWebUiEnvArgs),
}

#[derive(Debug, Args)]
pub struct OpenWebUiEnvArgs {
    /// The name of the virtual key made for Open WebUI (its secret goes into the file).
    #[arg(long)]
    pub key: String,
    /// Revoke a live key of that name first and make a new one (its secret is not stored,
    /// so it cannot be printed again).
    #[arg(long)]
    pub rotate: bool,
    /// The gateway's base URL as Open WebUI reaches it (default: the registered gateway).
    #[arg(long)]
    pub gateway: Option<String>,
    /// Open WebUI's own address, registered for the monitor to probe.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// The MCP tools want a bearer key (a master key is set): tool entries get
    /// `auth_type: bearer` with the key left to fill in.
    #[arg(long)]
    pub keyed_tools: bool,
    /// Write here (created with mode 600, atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the secret is printed once, as the last line of standard output.
    Create(CreateKeyArgs),
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke the live key with this name.
    Revoke { name: String },
}

#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    #[arg(long)]
    pub name: String,
    /// Handles the key may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub handles: Option<Vec<String>>,
    /// On the gateway's MCP endpoint (/mcp): tool servers (`web-fetch`) or tools
    /// (`web-fetch/fetch`) the key may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub tools: Option<Vec<String>>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<i64>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<i64>,
    /// Total tokens the key may ever use.
    #[arg(long)]
    pub budget: Option<i64>,
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), Error> {
    if let Command::Up(a) = &cli.command {
        // `up` keeps its DB in its data folder; --db does not apply.
        let _ = service_kit::telemetry::init(service_kit::config::LogFormat::Text);
        let opts = up::UpOptions {
            data_dir: a.data_dir.clone(),
            bind_host: a.bind_host.clone(),
            master_key: std::env::var("HOMELAB_MASTER_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty()),
            allow_unauthenticated: a.allow_unauthenticated,
            gateway_port: a.gateway_port,
            engine_port: a.engine_port,
            monitor_port: a.monitor_port,
            model: a.model.clone(),
            no_engine: a.no_engine,
            embeddings: !a.no_embeddings,
            tools: up::ToolsOptions {
                enabled: !a.no_tools,
                web_fetch_port: a.web_fetch_port,
                web_search_port: a.web_search_port,
                ha_port: a.ha_port,
                allow_hosts: a.allow_hosts.clone(),
                searxng: a.searxng.clone(),
                home_assistant: a.ha_url.clone().zip(a.ha_policy.clone()),
            },
            vector_db_port: (!a.no_data).then_some(a.vector_db_port),
            memory_port: (!a.no_data).then_some(a.memory_port),
            shortcuts_port: (!a.no_shortcuts).then_some(a.shortcuts_port),
            optillm_port: (!a.no_optillm).then_some(a.optillm_port),
            agents_port: (!a.no_agents).then_some(a.agents_port),
        };
        return up::up(&opts, service_kit::server::signal(), |r| {
            output::line(&up::banner(r))
        })
        .await;
    }
    let db = docsdb::Db::open(&cli.db).await?;
    let result = match cli.command {
        Command::Db(DbCommand::Migrate) => commands::migrate(&db).await,
        Command::Registry(RegistryCommand::Import(a)) => commands::import(&db, &a).await,
        Command::Registry(RegistryCommand::Export(a)) => commands::export(&db, &a).await,
        Command::Registry(RegistryCommand::List(a)) => commands::list(&db, &a).await,
        Command::OpenWebUi(OpenWebUiCommand::Env(a)) => commands::openwebui_env(&db, &a).await,
        Command::Keys(KeysCommand::Create(a)) => commands::create_key(&db, &a).await,
        Command::Keys(KeysCommand::List { json }) => commands::list_keys(&db, json).await,
        Command::Keys(KeysCommand::Revoke { name }) => commands::revoke_key(&db, &name).await,
        Command::Models(ModelsCommand::Pull(a)) => commands::pull_model(&db, &a).await,
        Command::Models(ModelsCommand::List { json }) => {
            commands::list(
                &db,
                &ListArgs {
                    kind: ListKind::Models,
                    json,
                },
            )
            .await
        }
        Command::Status { json } => commands::status(&db, json).await,
        // Handled above, before the DB is opened.
        Command::Up(_) => Ok(()),
    };
    db.close().await;
    result
}
