//! The MCP face: one tool, `fetch`, with the reference `mcp-server-fetch` arguments.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

use crate::fetch::{FetchArgs, Fetcher};

fn default_max_length() -> usize {
    5000
}

/// The `fetch` tool's arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FetchParams {
    /// URL to fetch (http or https).
    pub url: String,
    /// Maximum number of characters to return.
    #[serde(default = "default_max_length")]
    #[schemars(range(min = 1, max = 999_999))]
    pub max_length: usize,
    /// Start the content at this character index: use it to read on when the previous fetch
    /// was truncated.
    #[serde(default)]
    pub start_index: usize,
    /// Return the page as it is, without reducing HTML to Markdown.
    #[serde(default)]
    pub raw: bool,
}

/// The server: a fetcher shared by every session.
#[derive(Clone)]
pub struct WebFetch {
    fetcher: Arc<Fetcher>,
    tool_router: ToolRouter<Self>,
}

impl WebFetch {
    pub fn new(fetcher: Arc<Fetcher>) -> Self {
        WebFetch {
            fetcher,
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl WebFetch {
    /// Fetches a URL.
    #[tool(
        description = "Fetches a URL from the internet and returns its contents. HTML is reduced to the main content and written as Markdown (raw=true returns it as is); JSON and plain text come back as they are. Long pages come in parts: when the answer ends by asking for a start_index, call again with it to read on. Private and local addresses are refused, and robots.txt is honoured.",
        annotations(
            title = "Fetch a web page",
            read_only_hint = true,
            open_world_hint = true
        )
    )]
    async fn fetch(
        &self,
        Parameters(p): Parameters<FetchParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let args = FetchArgs {
            url: p.url,
            max_length: p.max_length,
            start_index: p.start_index,
            raw: p.raw,
        };
        Ok(match self.fetcher.fetch(&args).await {
            Ok(text) => {
                tracing::info!(url = %args.url, bytes = text.len(), "fetched");
                mcp_kit::tool_text(text)
            }
            Err(e) => {
                tracing::info!(url = %args.url, error = %e, "fetch refused or failed");
                mcp_kit::tool_error(e.to_string())
            }
        })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WebFetch {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("web-fetch", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Fetch web pages as Markdown with the `fetch` tool. Private addresses are refused unless the operator allowed them.",
            )
    }
}
