//! The agent's MCP servers, through the official Rust SDK (`rmcp`): started (stdio) or
//! reached (Streamable HTTP, and the older HTTP+SSE through [`crate::sse`]), their tools
//! listed (every page) and filtered by `allowed_tools`, calls routed to the server that owns
//! the tool, answers formatted as tiny-agents formats them.
//!
//! A server is first asked in the current, stateless revision (`server/discover`); one that
//! only knows the session-based revisions gets `initialize` instead. A server that cannot be
//! reached is left out with a warning (its tools are missing, the agent still runs) and tried
//! again on the next run; one whose connection breaks is reconnected on the next run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Map, Value, json};

use crate::agent_file::{ServerDef, Transport};

/// How long starting or reaching a server may take when its entry sets no `timeout` (a
/// first `npx`/`uvx` run downloads the server).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a tool call may take when the server's entry sets no `timeout`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The MCP revision asked for first (with `server/discover`), e.g. `2026-07-28`.
pub static LATEST_REVISION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| ProtocolVersion::LATEST.to_string());

type Client = RunningService<RoleClient, ClientConfig>;

/// One tool as the model sees it.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
    /// The index of the server that owns it.
    pub server: usize,
}

impl Tool {
    /// The tool in OpenAI's `tools` shape.
    pub fn openai(&self) -> Value {
        let mut f = Map::new();
        f.insert("name".into(), json!(self.name));
        if let Some(d) = &self.description {
            f.insert("description".into(), json!(d));
        }
        f.insert("parameters".into(), self.parameters.clone());
        json!({"type": "function", "function": f})
    }
}

/// What a tool call gave: the text the model reads, and whether it worked.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub content: String,
    pub ok: bool,
    /// The server that owns the tool — the name it gives itself, else its command line or
    /// URL — or `None` when no server has a tool of that name.
    pub server: Option<String>,
}

/// A server as its handshake left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// Its command line or URL.
    pub label: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// The name it gives itself (`serverInfo.name`).
    pub name: Option<String>,
    /// The MCP revision the handshake settled on (e.g. `2025-06-18`).
    pub protocol_version: Option<String>,
}

struct Server {
    def: ServerDef,
    label: String,
    connected: tokio::sync::Mutex<Option<Connected>>,
}

struct Connected {
    client: Client,
    tools: Vec<rmcp::model::Tool>,
    /// `serverInfo.name` and the negotiated revision.
    name: Option<String>,
    protocol_version: String,
}

impl Server {
    /// How the server is named in tool-call rows and logs: its own name, else its label.
    async fn shown(&self) -> String {
        self.connected
            .lock()
            .await
            .as_ref()
            .and_then(|c| c.name.clone())
            .unwrap_or_else(|| self.label.clone())
    }
}

/// The servers of one agent.
pub struct Toolbox {
    servers: Vec<Arc<Server>>,
    /// Who owns each tool name, as of the last [`Toolbox::tools`].
    owners: std::sync::Mutex<HashMap<String, usize>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toolbox")
            .field(
                "servers",
                &self.servers.iter().map(|s| &s.label).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// rmcp's HTTP client brings its own reqwest, built without a TLS provider: it uses this
/// process's default, which is set here once (ring, as the rest of the workspace uses).
fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Toolbox {
    /// The servers of `defs`, not yet connected.
    pub fn new(defs: &[ServerDef], http: reqwest::Client) -> Self {
        tls_provider();
        Toolbox {
            servers: defs
                .iter()
                .map(|d| {
                    Arc::new(Server {
                        label: d.label(),
                        def: d.clone(),
                        connected: tokio::sync::Mutex::new(None),
                    })
                })
                .collect(),
            owners: std::sync::Mutex::new(HashMap::new()),
            http,
        }
    }

    /// Connects the servers not connected yet (side by side) and lists every tool, in server
    /// order; a tool name already taken by an earlier server is skipped with a warning (as
    /// the Python original does). `Err` entries: the servers that could not be reached.
    pub async fn tools(&self) -> (Vec<Tool>, Vec<crate::Error>) {
        let connects = self.servers.iter().map(|s| {
            let http = self.http.clone();
            async move {
                let mut guard = s.connected.lock().await;
                if guard.as_ref().is_some_and(|c| c.client.is_closed()) {
                    *guard = None;
                }
                if guard.is_none() {
                    *guard = Some(connect(&s.def, &s.label, http).await?);
                }
                Ok::<_, crate::Error>(())
            }
        });
        let results = futures_util::future::join_all(connects).await;
        let mut errors = Vec::new();
        let mut tools = Vec::new();
        let mut owners = HashMap::new();
        for (i, (s, r)) in self.servers.iter().zip(results).enumerate() {
            if let Err(e) = r {
                tracing::warn!(server = %s.label, error = %e, "left out: its tools are missing from this run");
                errors.push(e);
                continue;
            }
            let guard = s.connected.lock().await;
            let Some(c) = guard.as_ref() else { continue };
            for t in &c.tools {
                if s.def
                    .allowed_tools
                    .as_ref()
                    .is_some_and(|a| !a.iter().any(|n| n == t.name.as_ref()))
                {
                    continue;
                }
                if owners.contains_key(t.name.as_ref()) {
                    tracing::warn!(tool = %t.name, server = %s.label, "already defined by another server; skipped");
                    continue;
                }
                owners.insert(t.name.to_string(), i);
                tools.push(Tool {
                    name: t.name.to_string(),
                    description: t.description.as_ref().map(|d| d.to_string()),
                    parameters: Value::Object((*t.input_schema).clone()),
                    server: i,
                });
            }
        }
        if let Ok(mut o) = self.owners.lock() {
            *o = owners;
        }
        (tools, errors)
    }

    /// The server that owns `tool` (as [`Outcome::server`] names it), if any.
    pub async fn owner(&self, tool: &str) -> Option<String> {
        let owner = self.owners.lock().ok().and_then(|o| o.get(tool).copied());
        match owner.and_then(|i| self.servers.get(i)) {
            Some(s) => Some(s.shown().await),
            None => None,
        }
    }

    /// Every server in order, with what its handshake said.
    pub async fn servers(&self) -> Vec<ServerState> {
        let mut out = Vec::with_capacity(self.servers.len());
        for s in &self.servers {
            let guard = s.connected.lock().await;
            out.push(ServerState {
                label: s.label.clone(),
                connected: guard.as_ref().is_some_and(|c| !c.client.is_closed()),
                name: guard.as_ref().and_then(|c| c.name.clone()),
                protocol_version: guard.as_ref().map(|c| c.protocol_version.clone()),
            });
        }
        out
    }

    /// Calls `name` with `arguments` on the server that owns it. A tool that reports failure
    /// (`isError`) is an outcome with `ok: false` and the tool's own text; a call that fails
    /// is the original's "Error: MCP tool call failed with error message: …".
    pub async fn call(&self, name: &str, arguments: Map<String, Value>) -> Outcome {
        let owner = self.owners.lock().ok().and_then(|o| o.get(name).copied());
        let Some(server) = owner.and_then(|i| self.servers.get(i)) else {
            return Outcome {
                content: format!("Error: No session found for tool: {name}"),
                ok: false,
                server: None,
            };
        };
        let shown = server.shown().await;
        let fail = |m: String| Outcome {
            content: format!("Error: MCP tool call failed with error message: {m}"),
            ok: false,
            server: Some(shown.clone()),
        };
        let peer = {
            let guard = server.connected.lock().await;
            match guard.as_ref() {
                Some(c) => c.client.peer().clone(),
                None => return fail("the server is not connected".into()),
            }
        };
        let limit = server.def.timeout.unwrap_or(CALL_TIMEOUT);
        let call =
            peer.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments));
        match tokio::time::timeout(limit, call).await {
            Err(_) => fail(format!("no answer within {}", humanize(limit))),
            Ok(Err(e)) => {
                // A broken connection is made again on the next run.
                let mut guard = server.connected.lock().await;
                if guard.as_ref().is_some_and(|c| c.client.is_closed()) {
                    *guard = None;
                }
                fail(e.to_string())
            }
            Ok(Ok(result)) => {
                let v = serde_json::to_value(&result).unwrap_or(Value::Null);
                Outcome {
                    content: format_result(&v),
                    ok: v["isError"] != true,
                    server: Some(shown.clone()),
                }
            }
        }
    }

    /// Closes every connection (stdio servers get their stdin closed, then are stopped).
    pub async fn close(&self) {
        for s in &self.servers {
            if let Some(c) = s.connected.lock().await.take() {
                let _ = c.client.cancel().await;
            }
        }
    }
}

fn humanize(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("homelab-tiny-agents", env!("CARGO_PKG_VERSION")),
    )
}

/// Starts or reaches one server and lists its tools.
async fn connect(
    def: &ServerDef,
    label: &str,
    http: reqwest::Client,
) -> Result<Connected, crate::Error> {
    let limit = def.timeout.unwrap_or(CONNECT_TIMEOUT);
    let fail = |reason: String| crate::Error::Server {
        server: label.to_owned(),
        reason,
    };
    let started = Instant::now();
    let client = tokio::time::timeout(limit, start(def, http))
        .await
        .map_err(|_| fail(format!("no answer within {}", humanize(limit))))?
        .map_err(fail)?;
    let left = limit
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    let tools = match tokio::time::timeout(left, client.peer().list_all_tools()).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let _ = client.cancel().await;
            return Err(fail(format!("tools/list failed: {e}")));
        }
        Err(_) => {
            let _ = client.cancel().await;
            return Err(fail(format!(
                "tools/list: no answer within {}",
                humanize(limit)
            )));
        }
    };
    let info = client.peer().peer_info();
    let name = info
        .as_ref()
        .and_then(|i| i.server_info.as_ref())
        .map(|s| s.name.clone())
        .filter(|n| !n.is_empty());
    let protocol_version = info
        .as_ref()
        .map(|i| i.protocol_version.to_string())
        .unwrap_or_default();
    tracing::info!(server = %label, name = ?name, protocol = %protocol_version, tools = tools.len(), "connected");
    Ok(Connected {
        client,
        tools,
        name,
        protocol_version,
    })
}

/// The modern handshake first, falling back to `initialize` (on a fresh transport, since a
/// failed probe may leave an HTTP session or a stdio process in any state).
async fn start(def: &ServerDef, http: reqwest::Client) -> Result<Client, String> {
    match &def.transport {
        Transport::Stdio { .. } => modern_then_initialize(|| child(def)).await,
        Transport::Http { url, headers } => {
            modern_then_initialize(|| streamable(url, headers)).await
        }
        Transport::Sse { url, headers } => {
            let transport = crate::sse::SseTransport::connect(http, url, headers).await?;
            client_config()
                .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// `server/discover` on a transport from `make`; `initialize` on a fresh one if that fails.
async fn modern_then_initialize<T, E, A>(
    make: impl Fn() -> Result<T, String>,
) -> Result<Client, String>
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let modern = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::LATEST],
        legacy_version: None,
    };
    match client_config().serve_with_lifecycle(make()?, modern).await {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::debug!(error = %e, "server/discover failed; trying initialize");
            client_config()
                .serve_with_lifecycle(make()?, ClientLifecycleMode::Initialize)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

fn child(def: &ServerDef) -> Result<TokioChildProcess, String> {
    let Transport::Stdio {
        command,
        args,
        env,
        cwd,
    } = &def.transport
    else {
        return Err("not a stdio server".into());
    };
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args).envs(env);
    // Its own process group: Ctrl-C in the terminal interrupts the run, not the server.
    #[cfg(unix)]
    cmd.process_group(0);
    if let Some(c) = cwd {
        cmd.current_dir(c);
    }
    let (process, _) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start `{command}`: {e}"))?;
    Ok(process)
}

fn streamable(
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<
    impl rmcp::transport::Transport<RoleClient, Error = impl std::error::Error + Send + Sync + 'static>
    + 'static,
    String,
> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    let mut custom = HashMap::new();
    for (k, v) in headers {
        // rmcp sends the bearer token itself, without its "Bearer " prefix.
        if k.eq_ignore_ascii_case("authorization") {
            let token = v.strip_prefix("Bearer ").unwrap_or(v).trim();
            if !token.is_empty() {
                config = config.auth_header(token.to_owned());
            }
            continue;
        }
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
        let value = http::HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
        custom.insert(name, value);
    }
    Ok(StreamableHttpClientTransport::from_config(
        config.custom_headers(custom),
    ))
}

/// A tool's answer as tiny-agents puts it in the tool message: text parts joined by
/// newlines, binary parts described, `[No content]` when there is none.
pub fn format_result(result: &Value) -> String {
    let parts = result["content"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if parts.is_empty() {
        return "[No content]".into();
    }
    let binary = |kind: &str, mime: &Value, data: &Value| {
        format!(
            "[Binary Content: {kind} {}, {} bytes]\nThe task is complete and the content accessible to the User",
            mime.as_str().unwrap_or("None"),
            base64_size(data.as_str().unwrap_or(""))
        )
    };
    let mut out = Vec::new();
    for p in parts {
        match p["type"].as_str() {
            Some("text") => out.push(p["text"].as_str().unwrap_or("").to_owned()),
            Some("image") => out.push(binary("Image", &p["mimeType"], &p["data"])),
            Some("audio") => out.push(binary("Audio", &p["mimeType"], &p["data"])),
            Some("resource") => {
                let r = &p["resource"];
                if let Some(t) = r["text"].as_str() {
                    out.push(t.to_owned());
                } else if let Some(b) = r["blob"].as_str() {
                    out.push(format!(
                        "[Binary Content ({}): {}, {} bytes]\nThe task is complete and the content accessible to the User",
                        r["uri"].as_str().unwrap_or(""),
                        r["mimeType"].as_str().unwrap_or("None"),
                        base64_size(b)
                    ));
                }
            }
            _ => {}
        }
    }
    out.join("\n")
}

/// The decoded size of base64 text (after a `data:…,` prefix, if any).
fn base64_size(s: &str) -> usize {
    let s = s.split_once(',').map_or(s, |(_, b)| b);
    let padding = if s.ends_with("==") {
        2
    } else {
        usize::from(s.ends_with('='))
    };
    (s.len() * 3 / 4).saturating_sub(padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_as_the_original_writes_them() {
        assert_eq!(format_result(&json!({"content": []})), "[No content]");
        assert_eq!(
            format_result(
                &json!({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
            ),
            "a\nb"
        );
        assert_eq!(
            format_result(
                &json!({"content": [{"type": "image", "mimeType": "image/png", "data": "aGVsbG8="}]})
            ),
            "[Binary Content: Image image/png, 5 bytes]\nThe task is complete and the content accessible to the User"
        );
        assert_eq!(
            format_result(
                &json!({"content": [{"type": "resource", "resource": {"uri": "file:///a", "mimeType": "application/pdf", "blob": "data:x;base64,aGk="}}]})
            ),
            "[Binary Content (file:///a): application/pdf, 2 bytes]\nThe task is complete and the content accessible to the User"
        );
        assert_eq!(
            format_result(
                &json!({"content": [{"type": "resource", "resource": {"uri": "file:///a", "text": "inside"}}]})
            ),
            "inside"
        );
    }
}
