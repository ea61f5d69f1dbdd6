//! What every homelab-llm MCP tool server shares, so that each tool crate holds only its
//! tools:
//!
//! - [`McpArgs`]: the flags every tool server takes (`--stdio`, `--token-env`,
//!   `--allow-origin`, `--host-header`, session limits) besides its own `--bind`.
//! - [`http_app`]: the Streamable HTTP transport (`POST/GET/DELETE /mcp`, JSON or SSE
//!   answers, `Mcp-Session-Id`, `MCP-Protocol-Version`) from the official SDK (`rmcp`), behind
//!   a `Host` and `Origin` check against DNS rebinding, an optional bearer token and a cap
//!   on open sessions; plus `GET /health` for the monitor.
//! - [`serve`]: runs a server over stdio or HTTP until the shutdown signal.
//! - [`tool_error`]: a tool failure as an `isError` result the model can read.
//! - [`client::ToolClient`]: the other side, for services that call one of the tools.

mod auth;
pub mod client;
mod error;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::Args;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt};
use service_kit::config::CommonArgs;
use service_kit::routes::{Route, Routes};
use tokio_util::sync::CancellationToken;

pub use error::Error;

/// Host names every server accepts in `Host` (with any port).
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The flags every MCP tool server takes.
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    /// Serve one client over stdin/stdout (newline-delimited JSON-RPC) instead of HTTP, for
    /// clients that spawn the server. Logs still go to stderr.
    #[arg(long)]
    pub stdio: bool,

    /// Require `Authorization: Bearer TOKEN` on /mcp, TOKEN read from this environment
    /// variable (which must then be set and non-empty).
    #[arg(long, value_name = "NAME")]
    pub token_env: Option<String>,

    /// A browser origin allowed to call /mcp (`http://localhost:8080`, `https://chat.lan:*`);
    /// repeatable. A request with any other `Origin` gets 403; requests without one (non-browser
    /// clients) pass.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,

    /// A `Host` header value accepted besides the loopback names (needed when bound beyond
    /// loopback: the name clients use for this machine); repeatable.
    #[arg(long = "host-header", value_name = "HOST")]
    pub host_headers: Vec<String>,

    /// Most MCP sessions open at once; an `initialize` beyond it gets 503.
    #[arg(long, default_value_t = 64)]
    pub max_sessions: usize,

    /// A session with no traffic for this long is closed.
    #[arg(long, default_value = "10m", value_parser = service_kit::config::duration)]
    pub session_idle: Duration,

    /// A bearer token given in code (by whoever composes the server), before `--token-env`.
    #[arg(skip)]
    pub token: Option<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Default for McpArgs {
    /// The flags' defaults.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: McpArgs,
        }
        <Only as clap::Parser>::parse_from(["mcp"]).args
    }
}

impl McpArgs {
    /// The bearer token: the one given in code, else the one `--token-env` names.
    pub fn token(&self) -> Result<Option<String>, Error> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some(name) = &self.token_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
            _ => Err(Error::MissingToken(name.clone())),
        }
    }
}

/// What [`http_app`] needs beyond the server factory.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Bearer token required on /mcp.
    pub token: Option<String>,
    /// Origins allowed (validation is on even when empty).
    pub allow_origins: Vec<String>,
    /// Extra accepted `Host` values.
    pub host_headers: Vec<String>,
    pub max_sessions: usize,
    pub session_idle: Duration,
    pub body_limit: u64,
    /// Cancelled on shutdown: open SSE streams end so the drain can finish.
    pub cancel: CancellationToken,
}

impl Default for HttpOptions {
    /// The defaults of the flags, with no token.
    fn default() -> Self {
        let args = McpArgs::default();
        HttpOptions {
            token: None,
            allow_origins: args.allow_origins,
            host_headers: args.host_headers,
            max_sessions: args.max_sessions,
            session_idle: args.session_idle,
            body_limit: args.common.body_limit,
            cancel: CancellationToken::new(),
        }
    }
}

impl HttpOptions {
    /// The options these flags give.
    pub fn from_args(args: &McpArgs) -> Result<Self, Error> {
        Ok(HttpOptions {
            token: args.token()?,
            allow_origins: args.allow_origins.clone(),
            host_headers: args.host_headers.clone(),
            max_sessions: args.max_sessions,
            session_idle: args.session_idle,
            body_limit: args.common.body_limit,
            cancel: CancellationToken::new(),
        })
    }
}

/// The HTTP app of an MCP server: `/mcp` (Streamable HTTP) and `/health`.
pub fn http_app<S, F>(factory: F, opts: &HttpOptions) -> Router
where
    S: ServerHandler + Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    service_kit::server::with_common_layers(
        routes(endpoint(factory, opts)).into_router(),
        opts.body_limit,
    )
}

/// The guarded MCP endpoint alone (Streamable HTTP behind the `Host`/`Origin` checks, the
/// optional token and the session cap), for a service that serves MCP beside its own routes:
/// mount it at `/mcp` with [`ENDPOINT_METHODS`].
pub fn endpoint<S, F>(factory: F, opts: &HttpOptions) -> Endpoint
where
    S: ServerHandler + Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    hosts.extend(opts.host_headers.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(opts.allow_origins.clone())
        .enforce_origin_validation()
        .with_json_response(true)
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_cancellation_token(opts.cancel.clone())
        .with_max_request_body_bytes(usize::try_from(opts.body_limit).unwrap_or(usize::MAX));
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(opts.session_idle);
    let sessions = Arc::new(sessions);
    let service = StreamableHttpService::new(move || Ok(factory()), sessions.clone(), config);
    let guard = auth::Guard {
        token_digest: opts.token.as_deref().map(service_kit::auth::digest),
        sessions,
        max_sessions: opts.max_sessions,
    };
    let guarded = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            auth::check,
        ))
        .service(service);
    axum::routing::any_service(guarded)
}

/// What [`endpoint`] gives: a service to mount.
pub type Endpoint = axum::routing::MethodRouter;

/// The methods of `/mcp`, for a route table.
pub const ENDPOINT_METHODS: [(&str, &str); 3] = [
    (
        "POST",
        "MCP Streamable HTTP: JSON-RPC requests and notifications (bearer token when set)",
    ),
    (
        "GET",
        "MCP Streamable HTTP: the session's server-to-client event stream",
    ),
    ("DELETE", "MCP Streamable HTTP: ends a session"),
];

/// A stand-in for [`endpoint`] in a route table built without a running server.
pub fn placeholder() -> Endpoint {
    axum::routing::any(|| async { http::StatusCode::NOT_FOUND })
}

/// The routes of a tool server around its (guarded) MCP endpoint.
fn routes(mcp: Endpoint) -> Routes {
    Routes::new()
        .service("/mcp", mcp, &ENDPOINT_METHODS)
        .health_always_ready()
}

/// The route table of every tool server (the same [`routes`] its app is built from).
pub fn route_table() -> Vec<Route> {
    routes(placeholder()).table().to_vec()
}

/// Where a tool server listens: the address it binds itself (a binary, where `--stdio`
/// serves stdin/stdout instead), or a listener someone else bound (`homelab up`, tests).
pub enum Listen<'a> {
    Bind(&'a str),
    On(tokio::net::TcpListener),
}

/// Runs a tool server until `shutdown`: over stdio when `--stdio` and nothing is bound for
/// it, else over HTTP.
pub async fn serve<S, F>(
    name: &str,
    listen: Listen<'_>,
    args: &McpArgs,
    factory: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error>
where
    S: ServerHandler + Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    let listener = match listen {
        Listen::On(l) => l,
        Listen::Bind(_) if args.stdio => {
            tracing::info!(server = name, "serving MCP over stdio");
            let running = factory()
                .serve(rmcp::transport::stdio())
                .await
                .map_err(|e| Error::Stdio(e.to_string()))?;
            tokio::select! {
                r = running.waiting() => { r.map_err(|e| Error::Stdio(e.to_string()))?; }
                () = shutdown => {}
            }
            return Ok(());
        }
        Listen::Bind(addr) => service_kit::server::bind(addr).await?,
    };
    let opts = HttpOptions::from_args(args)?;
    let app = http_app(factory, &opts);
    serve_on(
        name,
        listener,
        app,
        &opts,
        args.common.drain_timeout,
        shutdown,
    )
    .await
}

/// Serves an [`http_app`] on a bound listener until `shutdown`, then ends open SSE streams
/// (through `opts.cancel`) and drains for at most `drain`.
pub async fn serve_on(
    name: &str,
    listener: tokio::net::TcpListener,
    app: Router,
    opts: &HttpOptions,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(service_kit::Error::Serve)?;
    tracing::info!(server = name, endpoint = %format!("http://{addr}/mcp"), auth = opts.token.is_some(), "serving MCP over Streamable HTTP");
    let cancel = opts.cancel.clone();
    let signal = async move {
        shutdown.await;
        cancel.cancel();
    };
    let plan = service_kit::server::ShutdownPlan::new(signal, drain);
    service_kit::server::serve(listener, app, plan).await?;
    Ok(())
}

/// A tool failure the model can read: an `isError` result with this text.
pub fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// A tool's text answer.
pub fn tool_text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

/// The service shape of a tool server from its one `run(listen, config, shutdown)`: writes
/// `serve` (its `--bind`, or stdio with `--stdio`), `serve_on` (a bound listener) and the
/// [`service_kit::Service`] impl with the tool servers' route table:
/// `mcp_kit::tool_service!(Config, "web-fetch", Error, run = run, check = check);`
/// (the config has `bind: String` and the tool flags at `mcp`).
#[macro_export]
macro_rules! tool_service {
    ($config:ty, $name:literal, $error:ty, run = $run:path, check = $check:expr) => {
        /// Serves over stdio or HTTP until `shutdown`.
        pub async fn serve(
            config: $config,
            shutdown: impl ::std::future::Future<Output = ()> + Send + 'static,
        ) -> ::std::result::Result<(), $error> {
            let bind = config.bind.clone();
            $run($crate::Listen::Bind(&bind), config, shutdown).await
        }

        /// Serves over HTTP on a bound listener until `shutdown`.
        pub async fn serve_on(
            listener: ::tokio::net::TcpListener,
            config: $config,
            shutdown: impl ::std::future::Future<Output = ()> + Send + 'static,
        ) -> ::std::result::Result<(), $error> {
            $run($crate::Listen::On(listener), config, shutdown).await
        }

        ::service_kit::service!(
            $config,
            $name,
            $error,
            common = mcp.common,
            routes = $crate::route_table(),
            check = $check
        );
    };
}
