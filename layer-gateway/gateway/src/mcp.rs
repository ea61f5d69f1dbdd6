//! `/mcp`: one MCP server (Streamable HTTP, through mcp-kit) for every tool server in the
//! registry — the endpoints of api `mcp`. Each server's tools are listed under a prefix made
//! from its endpoint name (`web-fetch` → `web_fetch__fetch`), and a call goes to the server
//! that owns the tool. The gateway's keys apply: `/mcp` needs a key where `/v1` does, a key's
//! `allowed_tools` limits it to some servers or tools, and its request limit counts each call.
//! Every call is a `tool_calls` row (caller `mcp`, the key, the server, the tool, duration,
//! ok or the error). A server that does not answer in `--mcp-list-timeout` is left out of the
//! list (its tools disappear, and come back when it does), not the whole list failed.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use docsdb::tool_calls::ToolCallRow;
use futures_util::future::join_all;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use crate::auth::Caller;
use crate::state::AppState;
use crate::table::ToolServer;

/// Between a server's prefix and its tool's name.
pub const SEPARATOR: &str = "__";

/// The name a tool is listed under.
pub fn listed_name(server: &ToolServer, tool: &str) -> String {
    format!("{}{SEPARATOR}{tool}", server.prefix)
}

/// A prefix from an endpoint name: what MCP allows in tool names (letters, digits, `_`).
pub fn prefix_of(endpoint: &str) -> String {
    endpoint
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Refuses `/mcp` to a caller without a valid key (where the gateway has keys), before the
/// MCP layer sees the request; the caller goes on in the request's extensions.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match crate::routes::caller(&state, req.headers()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The MCP server one session talks to.
#[derive(Clone)]
pub struct GatewayTools {
    state: Arc<AppState>,
}

impl GatewayTools {
    pub fn new(state: Arc<AppState>) -> Self {
        GatewayTools { state }
    }

    /// The caller [`authenticate`] found, and the request id, from the HTTP request under
    /// this MCP message.
    fn caller(ctx: &RequestContext<RoleServer>) -> (Caller, String) {
        let parts = ctx.extensions.get::<axum::http::request::Parts>();
        let caller = parts
            .and_then(|p| p.extensions.get::<Caller>().cloned())
            .unwrap_or(Caller::Anonymous);
        let request_id = parts
            .and_then(|p| p.extensions.get::<service_kit::request_id::RequestId>())
            .map_or_else(service_kit::request_id::generate, |r| r.0.clone());
        (caller, request_id)
    }

    fn client(&self, server: &ToolServer) -> mcp_kit::client::ToolClient {
        mcp_kit::client::ToolClient {
            http: self.state.client(self.state.config.connect_timeout),
            url: server.url.clone(),
            key: server.key.clone(),
            name: "homelab-gateway".into(),
        }
    }

    /// The tool servers `caller` may see.
    fn servers(&self, caller: &Caller) -> Vec<ToolServer> {
        self.state
            .table
            .load()
            .tool_servers
            .iter()
            .filter(|s| caller.allows_server(&s.name))
            .cloned()
            .collect()
    }
}

impl ServerHandler for GatewayTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "homelab-gateway",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Every tool of the homelab's tool servers, named SERVER__TOOL (web_fetch__fetch).",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (caller, _) = Self::caller(&ctx);
        let servers = self.servers(&caller);
        let wait = self.state.config.mcp_list_timeout;
        let lists = join_all(servers.iter().map(|s| {
            let client = self.client(s);
            async move { tokio::time::timeout(wait, client.list_tools()).await }
        }))
        .await;
        let mut tools = Vec::new();
        for (server, listed) in servers.iter().zip(lists) {
            let listed = match listed {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    tracing::warn!(server = %server.name, error = %e, "a tool server did not list its tools; left out");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(server = %server.name, "a tool server did not list its tools in time; left out");
                    continue;
                }
            };
            for t in listed {
                let Ok(mut tool) = serde_json::from_value::<Tool>(t) else {
                    continue;
                };
                if !caller.allows_tool(&server.name, &tool.name) {
                    continue;
                }
                tool.name = listed_name(server, &tool.name).into();
                tools.push(tool);
            }
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (caller, request_id) = Self::caller(&ctx);
        let name = request.name.to_string();
        let unknown = || {
            ErrorData::invalid_params(
                format!("no tool `{name}`; tools/list names the tools this key may call"),
                None,
            )
        };
        let (prefix, tool) = name.split_once(SEPARATOR).ok_or_else(unknown)?;
        let server = self
            .servers(&caller)
            .into_iter()
            .find(|s| s.prefix == prefix)
            .filter(|s| caller.allows_tool(&s.name, tool))
            .ok_or_else(unknown)?;
        if let Err(e) = crate::proxy::admit_key(&self.state, &caller) {
            return Err(ErrorData::invalid_request(e.to_string(), None));
        }
        let arguments = request
            .arguments
            .map(Value::Object)
            .unwrap_or_else(|| Value::Object(Default::default()));
        let started_ms = docsdb::now_ms();
        let started = Instant::now();
        let wait = self.state.config.mcp_call_timeout;
        let answer = tokio::time::timeout(wait, self.client(&server).call_raw(tool, arguments))
            .await
            .map_err(|_| format!("no answer in {} s", wait.as_secs_f64()))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|v| {
                serde_json::from_value::<CallToolResult>(v)
                    .map_err(|e| format!("the server's answer is not a tool result: {e}"))
            });
        let mut row = ToolCallRow {
            request_id,
            started_at_ms: started_ms,
            caller: "mcp".into(),
            key_name: caller.log_name(),
            server: Some(server.name.clone()),
            tool: tool.to_owned(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            ok: true,
            error: None,
        };
        let result = match answer {
            Ok(r) => {
                if r.is_error == Some(true) {
                    row.ok = false;
                    row = row.with_error(&text_of(&r));
                }
                r
            }
            Err(e) => {
                tracing::warn!(server = %server.name, %tool, error = %e, "a tool call failed");
                row.ok = false;
                row = row.with_error(&e);
                mcp_kit::tool_error(format!("the tool server `{}` failed: {e}", server.name))
            }
        };
        self.state.tool_log.log(row);
        Ok(result.into())
    }
}

/// A result's text parts, joined.
fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}
