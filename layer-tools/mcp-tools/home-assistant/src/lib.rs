//! `home-assistant`: an MCP tool server that reads Home Assistant states and calls its
//! services — only what the policy file lists (deny by default), every state-changing call
//! logged under the `audit` target.
//!
//! - [`policy`]: the allow-list and its checks.
//! - [`client`]: Home Assistant's REST API.
//! - [`tools`]: the MCP server and its three tools.

pub mod client;
mod error;
pub mod policy;
pub mod tools;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mcp_kit::McpArgs;

pub use error::Error;
pub use tools::HomeAssistant;

/// Default address: loopback, port 4022.
pub const DEFAULT_BIND: &str = "127.0.0.1:4022";

/// MCP tool server: Home Assistant under an allow-list.
#[derive(Debug, Clone, Parser)]
#[command(name = "home-assistant", version)]
pub struct Config {
    /// Address of the Streamable HTTP transport.
    #[arg(long, env = "HOMELAB_HA_MCP_BIND", default_value = DEFAULT_BIND)]
    pub bind: String,

    /// Home Assistant's base URL (`http://homeassistant.local:8123`).
    #[arg(long, env = "HOMELAB_HA_URL")]
    pub ha_url: String,

    /// Environment variable holding a long-lived access token (HA profile → Security).
    #[arg(long, default_value = "HOMELAB_HA_TOKEN")]
    pub ha_token_env: String,

    /// The allow-list (YAML): what may be read and which services may be called on which
    /// entities. Nothing else is allowed.
    #[arg(long, env = "HOMELAB_HA_POLICY")]
    pub policy: PathBuf,

    /// Time limit of one Home Assistant request.
    #[arg(long, default_value = "10s", value_parser = service_kit::config::duration)]
    pub timeout: Duration,

    /// Entities listed at most in one answer.
    #[arg(long, default_value_t = 200)]
    pub max_entities: usize,

    #[command(flatten)]
    pub mcp: McpArgs,
}

/// What every session shares, from these flags: reads the policy, and the token from the
/// environment variable `--ha-token-env` names.
pub fn shared(config: &Config) -> Result<Arc<tools::Shared>, Error> {
    let token = std::env::var(&config.ha_token_env)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::MissingHaToken(config.ha_token_env.clone()))?;
    shared_with_token(config, token)
}

/// As [`shared`], with the token given.
pub fn shared_with_token(config: &Config, token: String) -> Result<Arc<tools::Shared>, Error> {
    let policy = policy::Policy::load(&config.policy)?;
    let client = client::HaClient::new(&config.ha_url, token, config.timeout)?;
    tracing::info!(
        read_domains = ?policy.read.domains,
        read_entities = ?policy.read.entities,
        call_rules = policy.call.len(),
        "policy loaded"
    );
    Ok(Arc::new(tools::Shared {
        client,
        policy,
        max_entities: config.max_entities.max(1),
    }))
}

/// The HTTP app (`/mcp`, `/health`), for tests and `homelab up`.
pub fn app(shared: Arc<tools::Shared>, opts: &mcp_kit::HttpOptions) -> axum::Router {
    mcp_kit::http_app(move || HomeAssistant::new(shared.clone()), opts)
}

async fn run(
    listen: mcp_kit::Listen<'_>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shared = shared(&config)?;
    mcp_kit::serve(
        "home-assistant",
        listen,
        &config.mcp,
        move || HomeAssistant::new(shared.clone()),
        shutdown,
    )
    .await?;
    Ok(())
}

/// What the server refuses before it listens: settings it cannot serve with.
fn check(config: &Config) -> Result<(), Error> {
    shared(config)?;
    config.mcp.token()?;
    Ok(())
}

mcp_kit::tool_service!(Config, "home-assistant", Error, run = run, check = check);
