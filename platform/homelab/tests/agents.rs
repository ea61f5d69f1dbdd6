//! The agents under `homelab up`: the example web researcher, served by tiny-agents and
//! reached through the gateway like any model, reads a page through the real web-fetch tool
//! (which speaks the current MCP revision) and answers; its model calls are in the gateway's
//! request log and its tool call among the tool calls, under the client's request id. The
//! stack doctor reads the stack's state from the real monitor's MCP tools.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use docsdb::spec::SystemSpec;
use homelab::up::{ToolsOptions, UpOptions};
use serde_json::{Value, json};
use testkit::upstream::{Behavior, MockUpstream, Turn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_researcher_reads_a_page_through_web_fetch() {
    let page = common::bees_page().await;
    let url = format!("http://{page}/bees");
    let engine = MockUpstream::start_with(
        "engine",
        Behavior {
            turns: vec![
                Turn::call("call_f", "fetch", &json!({"url": url}).to_string()),
                Turn::text("Bees make honey."),
                Turn::text("(abandoned)"),
                // The stack doctor's run.
                Turn::call("call_s", "stack_status", "{}"),
                Turn::text("Everything is up."),
                Turn::text("(abandoned)"),
            ],
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    common::register_engine(dir.path(), &engine.base_url()).await;

    let (running, stop, task) = common::run_up(UpOptions {
        no_engine: true,
        agents_port: Some(0),
        tools: ToolsOptions {
            enabled: true,
            allow_hosts: vec!["127.0.0.1".into()],
            ..Default::default()
        },
        ..UpOptions::on_loopback(dir.path())
    })
    .await;
    let (_, models) = running.agents.clone().expect("the agents run");
    assert_eq!(models, ["agent:web-researcher", "agent:stack-doctor"]);
    // The example was written with the addresses of this run's tool servers.
    let written =
        std::fs::read_to_string(dir.path().join("agents/web-researcher/agent.json")).unwrap();
    for (name, mcp) in &running.tools {
        if name == "web-fetch" || name == "web-search" {
            assert!(written.contains(mcp.as_str()), "{written}");
        }
    }
    // Without the engine `up` registers no agent handles; route one as a user would.
    let db = docsdb::Db::open(&running.db_url).await.unwrap();
    let routes = SystemSpec {
        handles: models
            .iter()
            .map(|m| common::handle(m, "tiny-agents", m))
            .collect(),
        ..Default::default()
    };
    docsdb::apply::apply(&db, &routes, false).await.unwrap();

    let gw = format!("http://{}/v1/chat/completions", running.gateway);
    let http = reqwest::Client::new();
    let ask = json!({"model": "agent:web-researcher", "messages": [{"role": "user", "content": format!("What do bees make? Read {url}")}]});
    let mut answer = Value::Null;
    for _ in 0..100 {
        let r = http
            .post(&gw)
            .header("x-request-id", "agent-run-1")
            .json(&ask)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            answer = r.json().await.unwrap();
            break;
        }
        // The gateway picks the handle up on its next table reload.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = &answer["choices"][0]["message"];
    assert_eq!(m["content"], "Bees make honey.", "{answer}");
    let reasoning = m["reasoning_content"].as_str().unwrap();
    assert!(reasoning.contains("calling fetch("), "{reasoning}");
    assert!(reasoning.contains("fetch answered"), "{reasoning}");
    // The page's text reached the model in the tool message.
    let second = engine.requests()[1].json();
    let tool = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .contains("Bees make honey and live in hives"),
        "{tool}"
    );
    // The agent's tools were offered: the exit tools, search, fetch.
    let first = engine.requests()[0].json();
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.ends_with(&["task_complete", "ask_question"]),
        "{names:?}"
    );
    assert!(
        names.contains(&"fetch") && names.contains(&"web_search"),
        "{names:?}"
    );

    // The request log: the client's request to the agent and the agent's three model calls
    // share the client's request id.
    let mut rows = common::logged_handles(&db, "agent-run-1", 4).await;
    rows.sort();
    assert_eq!(rows, ["agent:web-researcher", "local", "local", "local"]);
    // The tool call is a row, under the same id, named by the server's own name; the
    // monitor shows it.
    let calls = tool_calls(&db, "agent-run-1", 1).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let c = &calls[0];
    assert_eq!(
        (
            c.caller.as_str(),
            c.tool.as_str(),
            c.server.as_deref(),
            c.ok
        ),
        ("agent:web-researcher", "fetch", Some("web-fetch"), true)
    );
    let tools: Value = http
        .get(format!("http://{}/api/tools", running.monitor))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tools["tools"][0]["tool"], "fetch", "{tools}");
    assert_eq!(tools["calls"][0]["request_id"], "agent-run-1", "{tools}");

    // The stack doctor: its stack_status call reaches the monitor's MCP endpoint, whose
    // report (read from the system-docs DB) reaches the model.
    let ask = json!({"model": "agent:stack-doctor", "messages": [{"role": "user", "content": "What is wrong with my homelab?"}]});
    let r = http
        .post(&gw)
        .header("x-request-id", "doctor-run-1")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], "Everything is up.",
        "{answer}"
    );
    let doctor = engine.requests()[4].json();
    let report = doctor["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    for want in [
        "Overall: ",
        "\nServices (",
        "- gateway (gateway layer",
        "- web-fetch (tools layer",
    ] {
        assert!(report.contains(want), "missing {want:?} in:\n{report}");
    }
    // The doctor was offered the exit tools and the monitor's three, nothing else.
    let offered = engine.requests()[3].json();
    let mut names: Vec<&str> = offered["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "ask_question",
            "recent_errors",
            "service_details",
            "stack_status",
            "task_complete"
        ]
    );
    let calls = tool_calls(&db, "doctor-run-1", 1).await;
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.tool.as_str(), c.server.as_deref(), c.ok))
            .collect::<Vec<_>>(),
        [("stack_status", Some("system-monitor"), true)]
    );

    // web-fetch settles on the current revision with the agents' MCP client.
    let def: tiny_agents::agent_file::AgentDef = {
        let folder = tempfile::tempdir().unwrap();
        let fetch_url = &running
            .tools
            .iter()
            .find(|(n, _)| n == "web-fetch")
            .unwrap()
            .1;
        std::fs::write(
            folder.path().join("agent.json"),
            json!({"model": "local", "servers": [{"type": "http", "url": fetch_url}]}).to_string(),
        )
        .unwrap();
        tiny_agents::agent_file::load(folder.path()).unwrap()
    };
    let toolbox = tiny_agents::tools::Toolbox::new(&def.servers, reqwest::Client::new());
    let (found, failed) = toolbox.tools().await;
    assert!(failed.is_empty() && found.iter().any(|t| t.name == "fetch"));
    let state = toolbox.servers().await;
    assert_eq!(state[0].name.as_deref(), Some("web-fetch"));
    assert_eq!(
        state[0].protocol_version.as_deref(),
        Some(tiny_agents::tools::LATEST_REVISION.as_str())
    );
    toolbox.close().await;
    db.close().await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}

/// The tool calls logged under `request_id`, once there are at least `n` (they are written
/// in the background), oldest first.
async fn tool_calls(
    db: &docsdb::Db,
    request_id: &str,
    n: usize,
) -> Vec<docsdb::tool_calls::ToolCallRow> {
    let mut rows = Vec::new();
    for _ in 0..50 {
        rows = docsdb::tool_calls::recent(db, 100, Some(request_id))
            .await
            .unwrap();
        if rows.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rows.reverse();
    rows
}
