//! What the agent tests share: agent folders in temporary directories, the Python MCP test
//! server (tests/mcp_server.py, built on the official MCP SDK) over stdio, SSE or Streamable
//! HTTP, and runs of an agent against the scripted testkit upstream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::upstream::MockUpstream;
use tiny_agents::agent::{Agent, Event, Limits, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_server.py")
}

/// The test server started by the agent over stdio.
pub fn stdio_server() -> Value {
    json!({"type": "stdio", "command": "python3", "args": [script().display().to_string()]})
}

/// An agent folder holding `agent` (and `prompt` as PROMPT.md).
pub fn folder(name: &str, agent: &Value, prompt: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("agent.json"),
        serde_json::to_vec_pretty(agent).unwrap(),
    )
    .unwrap();
    if let Some(p) = prompt {
        std::fs::write(dir.join("PROMPT.md"), p).unwrap();
    }
    (root, dir)
}

/// A free loopback port (for the Python servers, which bind their own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test server over `sse` or `http` on its own port, up and answering.
pub async fn http_server(kind: &str) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new("python3")
        .arg(script())
        .arg(kind)
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let path = if kind == "sse" { "sse" } else { "mcp" };
            return (child, format!("http://127.0.0.1:{port}/{path}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the {kind} test server did not come up");
}

/// The agent at `dir`, its model calls going to `up`.
pub fn agent(dir: &Path, up: &MockUpstream, limits: Limits) -> Agent {
    let mut def = tiny_agents::agent_file::load(dir).unwrap();
    def.resolve_inputs(|_| None);
    let run = tiny_agents::RunLimits {
        endpoint: up.base_url(),
        max_turns: limits.max_turns,
        max_tool_calls: limits.max_tool_calls,
        deadline: limits.deadline,
        ..Default::default()
    };
    tiny_agents::build_agent(def, &run, reqwest::Client::new(), None)
}

/// Runs `agent` on `history` + the user's `prompt`; the outcome and the events.
pub async fn run(agent: &Agent, history: &mut Vec<Value>, prompt: &str) -> (Outcome, Vec<Event>) {
    history.push(json!({"role": "user", "content": prompt}));
    let (tx, mut rx) = mpsc::channel(1024);
    let outcome = agent
        .run(history, "run-1", &tx, &CancellationToken::new())
        .await
        .unwrap();
    drop(tx);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    (outcome, events)
}

/// The testkit upstream answering chat requests with `turns`, in order.
pub async fn scripted(turns: Vec<testkit::upstream::Turn>) -> MockUpstream {
    MockUpstream::start_with(
        "scripted",
        testkit::upstream::Behavior {
            turns,
            ..Default::default()
        },
    )
    .await
}

/// The chat requests the upstream received, as JSON.
pub fn chats(up: &MockUpstream) -> Vec<Value> {
    up.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.json())
        .collect()
}

/// The tool messages of a request's history.
pub fn tool_messages(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}

/// Every `tool_call_id` an assistant message asked for has its tool message.
pub fn every_call_answered(messages: &[Value]) {
    let asked: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for id in asked {
        assert!(
            messages
                .iter()
                .any(|m| m["role"] == "tool" && m["tool_call_id"] == id),
            "{id} has no answer in {messages:#?}"
        );
    }
}
