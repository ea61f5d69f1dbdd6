//! The agents under `homelab up`: the example web researcher, served by tiny-agents and
//! reached through the gateway like any model, reads a page through the real web-fetch tool
//! (which speaks the current MCP revision) and answers; its model calls are in the gateway's
//! request log under the client's request id.

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
    assert_eq!(models, ["agent:web-researcher"]);
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
        handles: vec![common::handle(
            "agent:web-researcher",
            "tiny-agents",
            "agent:web-researcher",
        )],
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
        names.starts_with(&["task_complete", "ask_question"]),
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
    db.close().await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}
