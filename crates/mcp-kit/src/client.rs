//! A minimal MCP client over Streamable HTTP, for services that call the project's tools
//! (web-fetch, so that its SSRF guard, robots.txt and size limits apply; the gateway's `/mcp`,
//! which lists and calls every tool server's tools): initialize, `tools/list` or
//! `tools/call`, close the session.

use serde_json::{Value, json};

use crate::Error;

/// The protocol revision asked for; the server answers with the one it speaks.
pub const PROTOCOL: &str = "2025-06-18";

/// One tool server.
#[derive(Debug, Clone)]
pub struct ToolClient {
    pub http: reqwest::Client,
    /// The server's MCP endpoint (`http://127.0.0.1:3101/mcp`).
    pub url: String,
    /// Its bearer token, when it wants one.
    pub key: Option<String>,
    /// How this client names itself in `initialize`.
    pub name: String,
}

/// What a tool answered: its text parts, and whether it reported a failure (`isError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolAnswer {
    pub text: String,
    pub is_error: bool,
}

impl ToolClient {
    fn post(&self, session: Option<&str>, version: &str, body: &Value) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", version)
            .json(body);
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        r
    }

    /// Calls tool `name` with `arguments` in a session of its own. `Err` when the server
    /// cannot be reached or breaks the protocol; a tool's own failure is an answer with
    /// `is_error`.
    pub async fn call(&self, name: &str, arguments: Value) -> Result<ToolAnswer, Error> {
        let result = self.call_raw(name, arguments).await?;
        let text = result["content"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        Ok(ToolAnswer {
            text,
            is_error: result["isError"] == true,
        })
    }

    /// Calls tool `name`: the `tools/call` result as the server sent it.
    pub async fn call_raw(&self, name: &str, arguments: Value) -> Result<Value, Error> {
        let params = json!({"name": name, "arguments": arguments});
        let mut results = self.session(&[("tools/call", params)]).await?;
        Ok(results.pop().unwrap_or(Value::Null))
    }

    /// Every tool the server lists (following `nextCursor`, at most `MAX_PAGES` pages), in
    /// one session.
    pub async fn list_tools(&self) -> Result<Vec<Value>, Error> {
        const MAX_PAGES: usize = 20;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let page = self
                .session(&[("tools/list", params)])
                .await?
                .pop()
                .unwrap_or(Value::Null);
            tools.extend(page["tools"].as_array().cloned().unwrap_or_default());
            cursor = page["nextCursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools)
    }

    /// Runs `requests` (method, params) in a session of their own: initialize, the requests
    /// in order, close. Their results, or the first error.
    async fn session(&self, requests: &[(&str, Value)]) -> Result<Vec<Value>, Error> {
        let broken = |e: String| Error::Client(format!("{}: {e}", self.url));
        let init = json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": self.name, "version": env!("CARGO_PKG_VERSION")},
            },
        });
        let res = self
            .post(None, PROTOCOL, &init)
            .send()
            .await
            .map_err(|e| broken(e.to_string()))?;
        let session = res
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let hello = reply(res, 1).await.map_err(broken)?;
        let version = hello["result"]["protocolVersion"]
            .as_str()
            .unwrap_or(PROTOCOL)
            .to_owned();
        let results = async {
            let notified = self
                .post(
                    session.as_deref(),
                    &version,
                    &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                )
                .send()
                .await
                .map_err(|e| broken(e.to_string()))?;
            if !notified.status().is_success() {
                return Err(broken(format!("initialized: {}", notified.status())));
            }
            let mut results = Vec::with_capacity(requests.len());
            for (n, (method, params)) in requests.iter().enumerate() {
                let id = n as u64 + 2;
                let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
                let res = self
                    .post(session.as_deref(), &version, &body)
                    .send()
                    .await
                    .map_err(|e| broken(e.to_string()))?;
                let answer = reply(res, id).await.map_err(broken)?;
                if let Some(e) = answer["error"]["message"].as_str() {
                    return Err(broken(e.to_owned()));
                }
                results.push(answer["result"].clone());
            }
            Ok(results)
        }
        .await;
        if let Some(s) = &session {
            let mut d = self.http.delete(&self.url).header("mcp-session-id", s);
            if let Some(k) = &self.key {
                d = d.bearer_auth(k);
            }
            let _ = d.send().await;
        }
        results
    }
}

/// The JSON-RPC answer with `id`, from a JSON body or an event stream.
async fn reply(res: reqwest::Response, id: u64) -> Result<Value, String> {
    let status = res.status();
    let sse = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"));
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    if !sse {
        return serde_json::from_slice(&body).map_err(|e| e.to_string());
    }
    let events = contract::sse::SseDecoder::new()
        .push(&body)
        .map_err(|e| e.to_string())?;
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .find(|v| v["id"] == id)
        .ok_or_else(|| "no answer in the event stream".to_owned())
}
