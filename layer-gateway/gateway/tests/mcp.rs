//! The gateway's `/mcp` in front of the real web-fetch and web-search tool servers (their
//! binaries, built beside this test by `cargo test --workspace`; web-search
//! searching through this same gateway's `/v1/search`, SearXNG's double behind it), driven by
//! the official MCP Python SDK: prefixed tool names, calls through to the owning server, a key
//! limited to one server, the gateway's keys on `/mcp`, a tool-call row per call, and a server
//! that stops: its tools leave the list and come back with it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::Gateway;
use docsdb::spec::{Api, EndpointSpec, SystemSpec};
use serde_json::{Value, json};
use testkit::mcp::{McpClient, McpHttp};

const BEES: &str = "<html><head><title>Bees</title></head><body><main><article><h1>Bees</h1>\
<p>Honey bees make honey from the nectar of flowers and store it in wax combs. A colony \
of bees keeps the hive warm in winter by clustering together and shivering their wings.</p>\
</article></main></body></html>";

/// A tool server binary of the workspace on `addr`.
async fn tool_server(
    name: &str,
    addr: std::net::SocketAddr,
    args: &[&str],
    env: &[(&str, &str)],
) -> tokio::process::Child {
    common::service(&testkit::sibling_binary(name), addr, args, env).await
}

async fn tool_names(url: &str, key: &str) -> Vec<String> {
    let mut s = McpHttp::connect(url, Some(key)).await;
    s.list_tools()
        .await
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_for_every_tool_server() {
    let site =
        testkit::spawn(Router::new().route("/bees", get(|| async { axum::response::Html(BEES) })))
            .await;
    let searxng = testkit::searxng::MockSearxng::start(30).await;
    let (fetch_addr, search_addr) = (common::free_addr(), common::free_addr());
    let spec = SystemSpec {
        endpoints: vec![
            EndpointSpec::new("web-fetch", &format!("http://{fetch_addr}/mcp"), Api::Mcp),
            EndpointSpec::new("web-search", &format!("http://{search_addr}/mcp"), Api::Mcp),
            EndpointSpec::new("searxng", &searxng.base_url(), Api::Searxng),
        ],
        ..Default::default()
    };
    let gw = Gateway::start(spec, |c| {
        c.master_key = Some("sk-master-test".into());
        c.mcp_list_timeout = Duration::from_secs(2);
    })
    .await;
    let (_, fetch_only) = docsdb::keys::create(
        &gw.db,
        &docsdb::keys::NewKey {
            name: "reader".into(),
            allowed_tools: Some(vec!["web-fetch".into()]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    gw.state.reload(true).await.unwrap();
    let fetch_args = ["--allow-host", "127.0.0.1/32"];
    let mut fetch_server = tool_server("web-fetch", fetch_addr, &fetch_args, &[]).await;
    // web-search asks this gateway's /v1/search, with the master key.
    let _search_server = tool_server(
        "web-search",
        search_addr,
        &["--gateway", &gw.url],
        &[("HOMELAB_GATEWAY_KEY", "sk-master-test")],
    )
    .await;
    let mcp_url = format!("{}/mcp", gw.url);

    // The gateway's keys guard /mcp.
    let res = reqwest::Client::new()
        .post(&mcp_url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let page = format!("http://{site}/bees");
    if testkit::mcp::python_sdk_available() {
        let header = |k: &str| json!({"Authorization": format!("Bearer {k}")});
        let plan = json!({"servers": [
            {"name": "master", "http": mcp_url, "headers": header("sk-master-test"), "calls": [
                {"tool": "web_fetch__fetch", "arguments": {"url": page}},
                {"tool": "web_search__web_search", "arguments": {"query": "honey bees"}},
            ]},
            {"name": "reader", "http": mcp_url, "headers": header(&fetch_only), "calls": [
                {"tool": "web_fetch__fetch", "arguments": {"url": page}},
                {"tool": "web_search__web_search", "arguments": {"query": "honey bees"}},
            ]},
        ]});
        let report = testkit::mcp::python_sdk(&plan).await;
        let names = |who: &str| -> Vec<String> {
            report[who]["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let all = names("master");
        assert!(all.contains(&"web_fetch__fetch".to_owned()), "{all:?}");
        assert!(
            all.contains(&"web_search__web_search".to_owned()),
            "{all:?}"
        );
        assert!(
            all.iter()
                .all(|n| n.starts_with("web_fetch__") || n.starts_with("web_search__"))
        );
        let master = &report["master"]["calls"];
        assert_eq!(master[0]["isError"], false, "{report}");
        assert!(
            master[0]["text"]
                .as_str()
                .unwrap()
                .contains("Honey bees make honey"),
            "{report}"
        );
        assert_eq!(master[1]["isError"], false, "{report}");
        assert!(!master[1]["text"].as_str().unwrap().is_empty());
        // The key limited to web-fetch sees and calls only its tools.
        let reader = names("reader");
        assert!(
            reader.iter().all(|n| n.starts_with("web_fetch__")),
            "{reader:?}"
        );
        assert!(reader.contains(&"web_fetch__fetch".to_owned()));
        let calls = &report["reader"]["calls"];
        assert!(
            calls[0]["text"].as_str().unwrap().contains("Honey bees"),
            "{report}"
        );
        assert!(
            calls[1]["error"]
                .as_str()
                .unwrap()
                .contains("web_search__web_search"),
            "{report}"
        );
    }

    // Each call is a tool-call row: caller `mcp`, the key, the owning server, the tool.
    let mut s = McpHttp::connect(&mcp_url, Some("sk-master-test")).await;
    let r = s
        .call(
            "web_fetch__fetch",
            json!({"url": format!("http://{site}/nowhere")}),
        )
        .await;
    assert!(testkit::mcp::is_error(&r), "{r}");
    let python = testkit::mcp::python_sdk_available();
    let rows = wait_for_tool_rows(&gw, if python { 4 } else { 1 }).await;
    let last = rows.last().unwrap();
    assert_eq!(
        (
            last["caller"].as_str(),
            last["key_name"].as_str(),
            last["server"].as_str(),
            last["tool"].as_str(),
            last["ok"].as_bool()
        ),
        (
            Some("mcp"),
            Some("master"),
            Some("web-fetch"),
            Some("fetch"),
            Some(false)
        ),
        "{rows:#?}"
    );
    if python {
        assert_eq!(rows.len(), 4, "{rows:#?}");
        assert!(
            rows.iter()
                .any(|r| r["key_name"] == "reader" && r["ok"] == true)
        );
        assert!(
            rows.iter()
                .any(|r| r["server"] == "web-search" && r["ok"] == true)
        );
    }

    // web-fetch stops: its tools leave the list, the rest stays; it comes back: so do they.
    fetch_server.kill().await.unwrap();
    let mut gone = Vec::new();
    for _ in 0..50 {
        gone = tool_names(&mcp_url, "sk-master-test").await;
        if !gone.iter().any(|n| n.starts_with("web_fetch__")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !gone.iter().any(|n| n.starts_with("web_fetch__")),
        "{gone:?}"
    );
    assert!(
        gone.contains(&"web_search__web_search".to_owned()),
        "{gone:?}"
    );
    let mut s = McpHttp::connect(&mcp_url, Some("sk-master-test")).await;
    let r = s
        .request(
            "tools/call",
            json!({"name": "web_fetch__fetch", "arguments": {"url": page}}),
        )
        .await;
    assert!(
        testkit::mcp::is_error(&r["result"]),
        "a call to a stopped server is a tool error: {r}"
    );
    let _fetch_again = tool_server("web-fetch", fetch_addr, &fetch_args, &[]).await;
    let back = tool_names(&mcp_url, "sk-master-test").await;
    assert!(back.contains(&"web_fetch__fetch".to_owned()), "{back:?}");
}

/// The tool-call rows, once there are at least `n` (written in the background).
async fn wait_for_tool_rows(gw: &Gateway, n: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = docsdb::tool_calls::recent(&gw.db, 50, None)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        if rows.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rows
}
