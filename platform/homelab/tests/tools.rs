//! `homelab up` with the tool servers: web-fetch and web-search run and are registered (so the
//! monitor probes them), web-search answers through the gateway's /v1/search from a SearXNG
//! double and leaves a request-log row, the gateway's /mcp serves both servers' tools, and the
//! official MCP Python SDK drives web-search over Streamable HTTP and over stdio.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use homelab::up::{Running, ToolsOptions, UpOptions};
use serde_json::json;
use sqlx::Row;
use testkit::mcp::{McpClient, McpHttp, is_error, text};
use testkit::searxng::MockSearxng;

async fn start(data: &std::path::Path, searxng: &str) -> common::Started {
    common::run_up(UpOptions {
        no_engine: true,
        tools: ToolsOptions {
            enabled: true,
            searxng: Some(searxng.to_owned()),
            ..Default::default()
        },
        ..UpOptions::on_loopback(data)
    })
    .await
}

fn tool_url(r: &Running, name: &str) -> String {
    r.tools
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not running: {:?}", r.tools))
        .1
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_tools_and_search_goes_through_the_gateway() {
    let sx = MockSearxng::start(30).await;
    let dir = tempfile::tempdir().unwrap();
    let (running, stop, task) = start(dir.path(), &sx.base_url()).await;
    let names: Vec<&str> = running.tools.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["web-fetch", "web-search"],
        "home-assistant only when configured"
    );
    let banner = homelab::up::banner(&running);
    assert!(
        banner.contains(&tool_url(&running, "web-search")),
        "{banner}"
    );

    // Registered in the system-docs DB: services of the tools layer with MCP endpoints.
    let db = docsdb::Db::open(&running.db_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT s.name, s.layer, e.api, e.base_url FROM services s JOIN endpoints e ON e.service_id = s.id \
         WHERE s.layer = 'tools' ORDER BY s.name",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get("name"), r.get("api"), r.get("base_url")))
        .collect();
    assert_eq!(
        got,
        [
            (
                "web-fetch".into(),
                "mcp".into(),
                tool_url(&running, "web-fetch")
            ),
            (
                "web-search".into(),
                "mcp".into(),
                tool_url(&running, "web-search")
            ),
        ]
    );

    // A search through the MCP server → the gateway → SearXNG.
    let mut s = McpHttp::connect(tool_url(&running, "web-search"), None).await;
    let tools = s.list_tools().await;
    assert_eq!(tools[0]["name"], "web_search");
    let props = &tools[0]["inputSchema"]["properties"];
    assert_eq!(props["max_results"]["default"], 5);
    assert!(
        props["time_range"].is_object() && props["language"].is_object(),
        "{props}"
    );
    let r = s
        .call(
            "web_search",
            json!({"query": "otters", "max_results": 3, "time_range": "week", "language": "de"}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    let t = text(&r);
    assert!(t.starts_with("Results for \"otters\" (3):\n\n1. "), "{t}");
    assert!(t.contains("\n3. ") && !t.contains("\n4. "), "{t}");
    assert!(t.contains("   Snippet 0 about otters."), "{t}");
    let q = sx.requests().last().unwrap().clone();
    for (k, v) in [
        ("q", "otters"),
        ("format", "json"),
        ("time_range", "week"),
        ("language", "de"),
    ] {
        assert!(q.contains(&(k.into(), v.into())), "SearXNG got {q:?}");
    }
    let r = s.call("web_search", json!({"query": "  "})).await;
    assert!(
        is_error(&r) && text(&r).contains("query must not be empty"),
        "{r}"
    );
    let r = s
        .call("web_search", json!({"query": "x", "max_results": 50}))
        .await;
    assert!(is_error(&r) && text(&r).contains("between 1 and 20"), "{r}");

    // The gateway logged the search like any other call.
    let mut logged = 0;
    for _ in 0..100 {
        logged = sqlx::query(
            "SELECT COUNT(*) AS n FROM request_log WHERE route = 'search' AND status = 200",
        )
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get::<i64, _>("n");
        if logged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(logged, 1, "one search row in the request log");

    // The gateway's /mcp serves both servers' tools under one URL, and its calls go through.
    let all = format!("http://{}/mcp", running.gateway);
    assert!(banner.contains(&all), "{banner}");
    let mut g = McpHttp::connect(&all, None).await;
    let names: Vec<String> = g
        .list_tools()
        .await
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    assert!(
        names.contains(&"web_fetch__fetch".to_owned())
            && names.contains(&"web_search__web_search".to_owned()),
        "{names:?}"
    );
    let r = g
        .call(
            "web_search__web_search",
            json!({"query": "otters", "max_results": 2}),
        )
        .await;
    assert!(!is_error(&r) && text(&r).contains("(2):"), "{r}");

    // The monitor probes the tool servers.
    let mon = format!("http://{}", running.monitor);
    let status = common::poll_json(&format!("{mon}/api/services/web-fetch"), 300, |s| {
        s["service"]["status"] == "up"
    })
    .await;
    assert_eq!(status["service"]["status"], "up", "{status}");
    assert_eq!(status["service"]["layer"], "tools");

    // The official MCP Python SDK: over HTTP to the running server, and over stdio to the
    // binary pointed at the same gateway.
    if testkit::mcp::python_sdk_available() {
        let bin = testkit::sibling_binary("web-search").display().to_string();
        let plan = json!({
            "calls": [{"tool": "web_search", "arguments": {"query": "rust mcp", "max_results": 2}}],
            "servers": [
                {"name": "http", "http": tool_url(&running, "web-search")},
                {"name": "stdio", "stdio": {"command": bin, "args": ["--stdio", "--gateway", format!("http://{}", running.gateway)], "env": {"RUST_LOG": "warn"}}},
            ]
        });
        let report = testkit::mcp::python_sdk(&plan).await;
        for transport in ["http", "stdio"] {
            let r = &report[transport];
            assert_eq!(r["tools"][0]["name"], "web_search", "{transport}: {r}");
            let call = &r["calls"][0];
            assert_eq!(call["isError"], false, "{transport}: {call}");
            assert!(
                call["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("Results for \"rust mcp\" (2):"),
                "{transport}: {call}"
            );
        }
    }

    let _ = stop.send(());
    task.await.unwrap();
}
