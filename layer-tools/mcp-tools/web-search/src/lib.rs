//! `web-search`: an MCP tool server with one tool, `web_search`, answered by the gateway's
//! `POST /v1/search` — so every search a model makes is authenticated, limited and logged by
//! the gateway like its model calls, and only the gateway speaks SearXNG's API.

mod error;
mod search;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mcp_kit::McpArgs;

pub use error::Error;
pub use search::{Searcher, WebSearch};

/// Default address: loopback, port 4021.
pub const DEFAULT_BIND: &str = "127.0.0.1:4021";
/// Results a tool call may ask for at most.
pub const MAX_RESULTS: u32 = 20;

/// MCP tool server: web search through the gateway.
#[derive(Debug, Clone, Parser)]
#[command(name = "web-search", version)]
pub struct Config {
    /// Address of the Streamable HTTP transport.
    #[arg(long, env = "HOMELAB_WEB_SEARCH_BIND", default_value = DEFAULT_BIND)]
    pub bind: String,

    /// The gateway's base URL (its `/v1/search` answers the searches).
    #[arg(
        long,
        env = "HOMELAB_GATEWAY_URL",
        default_value = "http://127.0.0.1:4000"
    )]
    pub gateway: String,

    /// Environment variable holding the gateway key sent as `Authorization: Bearer`
    /// (no key is sent when it is unset, which a gateway without a master key accepts).
    #[arg(long, default_value = "HOMELAB_GATEWAY_KEY")]
    pub key_env: String,

    /// The gateway's search tool (`/v1/search/{tool}`); its default tool when not given.
    #[arg(long)]
    pub search_tool: Option<String>,

    /// Time limit of one search through the gateway.
    #[arg(long, default_value = "30s", value_parser = service_kit::config::duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub mcp: McpArgs,
}

impl Config {
    /// A config for a gateway at `gateway`, everything else default.
    pub fn for_gateway(gateway: impl Into<String>) -> Self {
        Config {
            bind: DEFAULT_BIND.into(),
            gateway: gateway.into(),
            key_env: "HOMELAB_GATEWAY_KEY".into(),
            search_tool: None,
            timeout: Duration::from_secs(30),
            mcp: McpArgs::default(),
        }
    }
}

/// The searcher these flags describe.
pub fn searcher(config: &Config) -> Result<Arc<Searcher>, Error> {
    let key = std::env::var(&config.key_env)
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    Ok(Arc::new(Searcher::new(
        &config.gateway,
        key,
        config.search_tool.clone(),
        config.timeout,
    )?))
}

/// The HTTP app (`/mcp`, `/health`), for tests and `homelab up`.
pub fn app(config: &Config, opts: &mcp_kit::HttpOptions) -> Result<axum::Router, Error> {
    let searcher = searcher(config)?;
    Ok(mcp_kit::http_app(
        move || WebSearch::new(searcher.clone()),
        opts,
    ))
}

async fn run(
    listen: mcp_kit::Listen<'_>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let searcher = searcher(&config)?;
    mcp_kit::serve(
        "web-search",
        listen,
        &config.mcp,
        move || WebSearch::new(searcher.clone()),
        shutdown,
    )
    .await?;
    Ok(())
}

/// What the server refuses before it listens: settings it cannot serve with.
fn check(config: &Config) -> Result<(), Error> {
    searcher(config)?;
    config.mcp.token()?;
    Ok(())
}

mcp_kit::tool_service!(Config, "web-search", Error, run = run, check = check);
