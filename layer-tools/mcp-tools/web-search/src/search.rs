//! The `web_search` tool and the gateway call behind it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use contract::search::{SearchRequest, SearchResponse, SearchResult};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

use crate::MAX_RESULTS;
use crate::error::Error;

/// Calls the gateway's `/v1/search`.
#[derive(Debug)]
pub struct Searcher {
    client: reqwest::Client,
    endpoint: String,
    key: Option<String>,
    timeout: Duration,
}

impl Searcher {
    pub fn new(
        gateway: &str,
        key: Option<String>,
        tool: Option<String>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let base = gateway.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::GatewayUrl(gateway.to_owned()));
        }
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let endpoint = match tool {
            Some(t) => format!("{base}/v1/search/{t}"),
            None => format!("{base}/v1/search"),
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(Searcher {
            client,
            endpoint,
            key,
            timeout,
        })
    }

    /// Searches; the results as the gateway returned them.
    pub async fn search(&self, req: &SearchRequest) -> Result<Vec<SearchResult>, Error> {
        let mut call = self.client.post(&self.endpoint).json(req);
        if let Some(k) = &self.key {
            call = call.bearer_auth(k);
        }
        let resp = call.send().await.map_err(|e| {
            if e.is_timeout() {
                Error::Timeout(self.timeout)
            } else {
                Error::Unreachable {
                    url: self.endpoint.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            if e.is_timeout() {
                Error::Timeout(self.timeout)
            } else {
                Error::BadAnswer(e.to_string())
            }
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<contract::ApiError>(&body)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
            return Err(Error::Gateway {
                status: status.as_u16(),
                message,
            });
        }
        let answer: SearchResponse =
            serde_json::from_slice(&body).map_err(|e| Error::BadAnswer(e.to_string()))?;
        Ok(answer.results)
    }
}

fn default_max_results() -> u32 {
    5
}

/// How recent results must be.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeRange {
    Day,
    Week,
    Month,
    Year,
}

impl TimeRange {
    fn as_str(self) -> &'static str {
        match self {
            TimeRange::Day => "day",
            TimeRange::Week => "week",
            TimeRange::Month => "month",
            TimeRange::Year => "year",
        }
    }
}

/// The `web_search` tool's arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SearchParams {
    /// What to search for.
    pub query: String,
    /// How many results to return.
    #[serde(default = "default_max_results")]
    #[schemars(range(min = 1, max = 20))]
    pub max_results: u32,
    /// Only results from the last day, week, month or year.
    #[serde(default)]
    pub time_range: Option<TimeRange>,
    /// Language of the results, as a code (`en`, `de`, `fr-CA`).
    #[serde(default)]
    pub language: Option<String>,
}

/// The results as numbered entries: title, URL, snippet.
pub fn format_results(query: &str, results: &[SearchResult]) -> String {
    if results.is_empty() {
        return format!("No results for \"{query}\".");
    }
    let mut out = format!("Results for \"{query}\" ({}):\n", results.len());
    for (i, r) in results.iter().enumerate() {
        let title = if r.title.trim().is_empty() {
            "(untitled)"
        } else {
            r.title.trim()
        };
        let _ = write!(out, "\n{}. {title}\n   {}\n", i + 1, r.url);
        let snippet = r.snippet.split_whitespace().collect::<Vec<_>>().join(" ");
        if !snippet.is_empty() {
            let _ = writeln!(out, "   {snippet}");
        }
        if let Some(d) = r.date.as_deref().filter(|d| !d.is_empty()) {
            let _ = writeln!(out, "   Published: {d}");
        }
    }
    out
}

/// The server: a searcher shared by every session.
#[derive(Clone)]
pub struct WebSearch {
    searcher: Arc<Searcher>,
    tool_router: ToolRouter<Self>,
}

impl WebSearch {
    pub fn new(searcher: Arc<Searcher>) -> Self {
        WebSearch {
            searcher,
            tool_router: Self::tool_router(),
        }
    }

    async fn run(&self, p: SearchParams) -> Result<String, Error> {
        let query = p.query.trim();
        if query.is_empty() {
            return Err(Error::BadArgument("query must not be empty".into()));
        }
        if p.max_results == 0 || p.max_results > MAX_RESULTS {
            return Err(Error::BadArgument(format!(
                "max_results must be between 1 and {MAX_RESULTS} (got {})",
                p.max_results
            )));
        }
        let mut req = SearchRequest::new(query);
        req.max_results = Some(p.max_results);
        req.time_range = p.time_range.map(|t| t.as_str().to_owned());
        req.language = p
            .language
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty());
        let mut results = self.searcher.search(&req).await?;
        results.truncate(p.max_results as usize);
        Ok(format_results(query, &results))
    }
}

#[tool_router]
impl WebSearch {
    /// Searches the web.
    #[tool(
        description = "Searches the web and returns numbered results with title, URL and a snippet. Use the fetch tool to read a result in full.",
        annotations(title = "Web search", read_only_hint = true, open_world_hint = true)
    )]
    async fn web_search(
        &self,
        Parameters(p): Parameters<SearchParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let query = p.query.clone();
        Ok(match self.run(p).await {
            Ok(text) => mcp_kit::tool_text(text),
            Err(e) => {
                tracing::info!(query = %query, error = %e, "search failed");
                mcp_kit::tool_error(e.to_string())
            }
        })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WebSearch {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("web-search", env!("CARGO_PKG_VERSION")))
            .with_instructions("Search the web with the `web_search` tool.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_results() {
        let r = |t: &str, u: &str, s: &str| SearchResult {
            title: t.into(),
            url: u.into(),
            snippet: s.into(),
            date: None,
            last_updated: None,
            extra: Default::default(),
        };
        let text = format_results(
            "rust",
            &[
                r("Rust", "https://rust-lang.org", "A  language\n empowering"),
                r("", "https://x", ""),
            ],
        );
        assert_eq!(
            text,
            "Results for \"rust\" (2):\n\n1. Rust\n   https://rust-lang.org\n   A language empowering\n\n2. (untitled)\n   https://x\n"
        );
        assert_eq!(format_results("q", &[]), "No results for \"q\".");
    }
}
