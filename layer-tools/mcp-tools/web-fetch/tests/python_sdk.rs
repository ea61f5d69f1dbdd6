//! The official MCP Python SDK lists and calls `fetch` over Streamable HTTP and over stdio.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::json;

#[tokio::test]
async fn python_sdk_over_http_and_stdio() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let site = common::site().await;
    let url = common::start(&common::config(|_| {}), &common::opts()).await;
    let calls = json!([
        {"tool": "fetch", "arguments": {"url": format!("http://{site}/article")}},
        {"tool": "fetch", "arguments": {"url": "http://169.254.169.254/latest/meta-data/"}},
    ]);
    let plan = json!({
        "calls": calls,
        "servers": [
            {"name": "http", "http": url},
            {"name": "stdio", "stdio": {
                "command": env!("CARGO_BIN_EXE_web-fetch"),
                "args": ["--stdio", "--allow-host", "127.0.0.1"],
                "env": {"RUST_LOG": "warn"}}},
        ]
    });
    let report = testkit::mcp::python_sdk(&plan).await;
    for transport in ["http", "stdio"] {
        let r = &report[transport];
        assert_eq!(r["tools"][0]["name"], "fetch", "{transport}: {r}");
        assert_eq!(r["tools"][0]["inputSchema"]["required"], json!(["url"]));
        let ok = &r["calls"][0];
        assert_eq!(ok["isError"], false, "{transport}: {ok}");
        assert!(
            ok["text"]
                .as_str()
                .unwrap()
                .contains("River otters are semi-aquatic"),
            "{transport}: {ok}"
        );
        let refused = &r["calls"][1];
        assert_eq!(refused["isError"], true, "{transport}: {refused}");
        assert!(
            refused["text"].as_str().unwrap().contains("cloud-metadata"),
            "{transport}: {refused}"
        );
    }
}
