//! A minimal MCP client for tests, over Streamable HTTP ([`McpHttp`]) and stdio
//! ([`McpStdio`]). It speaks protocol version 2025-06-18 (sessions, `Mcp-Session-Id`) and keeps
//! the raw responses reachable, so tests can check headers and framing, not just results.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The protocol version these clients ask for.
pub const PROTOCOL: &str = "2025-06-18";

fn initialize(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "homelab-testkit", "version": "0"}
        }
    })
}

/// The JSON-RPC messages of a response body: one JSON object, or the `data:` of SSE events.
pub fn messages(content_type: &str, body: &str) -> Vec<Value> {
    if content_type.starts_with("text/event-stream") {
        body.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    return None;
                }
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        serde_json::from_str(body).into_iter().collect()
    }
}

/// A session over Streamable HTTP.
pub struct McpHttp {
    pub http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
    pub token: Option<String>,
    /// The `initialize` result.
    pub server: Value,
    next_id: u64,
}

impl McpHttp {
    /// A client that has not initialized (for tests of the handshake itself).
    pub fn new(url: impl Into<String>, token: Option<&str>) -> Self {
        McpHttp {
            http: reqwest::Client::new(),
            url: url.into(),
            session: None,
            token: token.map(str::to_owned),
            server: Value::Null,
            next_id: 1,
        }
    }

    /// Initializes a session (initialize + notifications/initialized).
    pub async fn connect(url: impl Into<String>, token: Option<&str>) -> Self {
        let mut c = Self::new(url, token);
        let resp = c.post(&initialize(0)).await;
        assert_eq!(resp.status(), 200, "initialize failed");
        c.session = resp
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let (ct, body) = split(resp).await;
        let msg = messages(&ct, &body)
            .into_iter()
            .find(|m| m.get("id").is_some())
            .expect("an initialize response");
        c.server = msg["result"].clone();
        let resp = c
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(resp.status(), 202, "notifications/initialized not accepted");
        c
    }

    /// POSTs one message with the session's headers; the raw response.
    pub async fn post(&self, body: &Value) -> reqwest::Response {
        let mut req = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL)
            .json(body);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("the MCP server is reachable")
    }
}

/// What both clients do once connected.
#[allow(async_fn_in_trait)] // test support: callers are never generic over Send
pub trait McpClient {
    /// Sends a request; the JSON-RPC response (with `result` or `error`).
    async fn request(&mut self, method: &str, params: Value) -> Value;

    /// `tools/list` → the tools.
    async fn list_tools(&mut self) -> Vec<Value> {
        let r = self.request("tools/list", json!({})).await;
        r["result"]["tools"].as_array().cloned().unwrap_or_default()
    }

    /// `tools/call` → the result (`content`, `isError`); a protocol error fails the test.
    async fn call(&mut self, name: &str, arguments: Value) -> Value {
        let r = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        assert!(r.get("error").is_none(), "protocol error: {r}");
        r["result"].clone()
    }
}

impl McpClient for McpHttp {
    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let resp = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert_eq!(resp.status(), 200, "{method} failed");
        let (ct, body) = split(resp).await;
        messages(&ct, &body)
            .into_iter()
            .find(|m| m["id"] == json!(id))
            .unwrap_or_else(|| panic!("no response to {method} in {body}"))
    }
}

async fn split(resp: reqwest::Response) -> (String, String) {
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (ct, resp.text().await.unwrap())
}

/// The text of a tool result's first content block.
pub fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Whether a tool result is an error result.
pub fn is_error(result: &Value) -> bool {
    result["isError"] == json!(true)
}

/// A server spawned as a child process, spoken to over its stdin and stdout.
pub struct McpStdio {
    pub child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    pub server: Value,
    next_id: u64,
}

impl McpStdio {
    /// Spawns `program args...` and initializes.
    pub async fn spawn(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the MCP server");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut c = McpStdio {
            child,
            stdin,
            lines,
            server: Value::Null,
            next_id: 0,
        };
        c.send(&initialize(0)).await;
        let init = c.read_response(0).await;
        c.server = init["result"].clone();
        c.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        c
    }

    /// Writes one message (one line).
    pub async fn send(&mut self, msg: &Value) {
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn read_response(&mut self, id: u64) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .expect("the server answers within a minute")
                .unwrap()
                .expect("the server's stdout stays open");
            let msg: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout carries only JSON-RPC ({e}): {line}"));
            if msg["id"] == json!(id) {
                return msg;
            }
        }
    }

    /// Closes stdin (the client leaves) and waits for the server to exit.
    pub async fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin);
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server exits when stdin closes")
            .unwrap()
    }
}

impl McpClient for McpStdio {
    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.read_response(id).await
    }
}

/// Whether `python3` with the `mcp` package is here. Under `CI=true` its absence is a
/// failure, since `.ci/run` installs it; elsewhere the caller skips.
#[allow(clippy::print_stderr)] // a note in the test output
pub fn python_sdk_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but python3 with the mcp package is missing (pip install mcp)");
        }
        eprintln!("note: python3 -c 'import mcp' failed; skipping the MCP SDK test");
    }
    ok
}

/// Runs `python/mcp_compat.py` with this plan (see the script); its JSON report.
pub async fn python_sdk(plan: &Value) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/mcp_compat.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(plan).unwrap())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the SDK run ends within 3 minutes")
        .unwrap();
    assert!(
        out.status.success(),
        "the MCP Python SDK run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the SDK run printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
