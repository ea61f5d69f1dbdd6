//! `web-fetch`: an MCP tool server that fetches web pages for models, compatible with the
//! reference `mcp-server-fetch` tool, with strict defaults (see the README):
//!
//! - [`guard`]: the SSRF guard (address classes, allow-list, the pinning resolver).
//! - [`fetch`]: one fetch: robots.txt, guarded redirects, limits, paging.
//! - [`content`]: body → text (HTML main content → Markdown; binary refused).
//! - [`tools`]: the MCP server and its `fetch` tool.

pub mod config;
pub mod content;
mod error;
pub mod fetch;
pub mod guard;
pub mod tools;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use error::Error;
use fetch::{Fetcher, Limits};
use guard::Guard;
pub use tools::WebFetch;

/// The fetcher these flags describe.
pub fn fetcher(config: &Config) -> Result<Arc<Fetcher>, Error> {
    let limits = Limits {
        connect_timeout: config.connect_timeout,
        timeout: config.timeout,
        max_redirects: config.max_redirects,
        max_bytes: usize::try_from(config.max_bytes).unwrap_or(usize::MAX),
        respect_robots: !config.ignore_robots_txt,
        user_agent: config.user_agent.clone(),
    };
    Ok(Arc::new(Fetcher::new(
        Guard::new(config.allow_hosts.clone()),
        limits,
    )?))
}

/// The HTTP app (`/mcp`, `/health`), for tests and `homelab up`.
pub fn app(config: &Config, opts: &mcp_kit::HttpOptions) -> Result<axum::Router, Error> {
    let fetcher = fetcher(config)?;
    Ok(mcp_kit::http_app(
        move || WebFetch::new(fetcher.clone()),
        opts,
    ))
}

async fn run(
    listen: mcp_kit::Listen<'_>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let fetcher = fetcher(&config)?;
    if !config.allow_hosts.is_empty() {
        tracing::info!(allow = ?config.allow_hosts, "private hosts allow-listed");
    }
    mcp_kit::serve(
        "web-fetch",
        listen,
        &config.mcp,
        move || WebFetch::new(fetcher.clone()),
        shutdown,
    )
    .await?;
    Ok(())
}

/// What the server refuses before it listens: settings it cannot serve with.
fn check(config: &Config) -> Result<(), Error> {
    fetcher(config)?;
    config.mcp.token()?;
    Ok(())
}

mcp_kit::tool_service!(Config, "web-fetch", Error, run = run, check = check);
