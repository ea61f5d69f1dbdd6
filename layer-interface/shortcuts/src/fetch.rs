//! Reading a page through the web-fetch tool (its SSRF guard, robots.txt and size limits
//! apply), with the shared MCP client.

use mcp_kit::client::ToolClient;
use serde_json::json;
use tokio::time::{Instant, timeout_at};

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct WebFetch {
    pub tool: ToolClient,
}

impl WebFetch {
    pub fn new(http: reqwest::Client, url: String, key: Option<String>) -> WebFetch {
        WebFetch {
            tool: ToolClient {
                http,
                url,
                key,
                name: "homelab-shortcuts".into(),
            },
        }
    }

    /// The page at `url` as text (Markdown for HTML), at most `max_chars`.
    pub async fn fetch(
        &self,
        url: &str,
        max_chars: usize,
        deadline: Instant,
    ) -> Result<String, Error> {
        let call = self
            .tool
            .call("fetch", json!({"url": url, "max_length": max_chars}));
        let answer = timeout_at(deadline, call)
            .await
            .map_err(|_| Error::Fetch("it took too long.".into()))?
            .map_err(|e| {
                tracing::warn!(error = %e, "web-fetch failed");
                Error::Fetch("the web-fetch tool did not answer.".into())
            })?;
        if answer.is_error {
            let first = answer
                .text
                .lines()
                .next()
                .unwrap_or("it was refused")
                .trim();
            return Err(Error::Fetch(format!("{}.", first.trim_end_matches('.'))));
        }
        Ok(answer.text)
    }
}
