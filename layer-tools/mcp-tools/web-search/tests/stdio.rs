//! The binary over stdio: the handshake, the tool's schema, and a gateway that cannot be
//! reached answered as a tool error. (Searches through a real gateway: platform/homelab/tests/tools.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use testkit::mcp::{McpClient, McpStdio, is_error, text};

#[tokio::test]
async fn stdio_handshake_schema_and_an_unreachable_gateway() {
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_web-search"));
    let gateway = format!("http://{dead}");
    let mut c = McpStdio::spawn(
        bin,
        &["--stdio", "--gateway", &gateway],
        &[("RUST_LOG", "warn")],
    )
    .await;
    assert_eq!(c.server["serverInfo"]["name"], "web-search");
    let tools = c.list_tools().await;
    assert_eq!(tools.len(), 1);
    let schema = &tools[0]["inputSchema"];
    assert_eq!(schema["required"], json!(["query"]));
    assert_eq!(schema["properties"]["max_results"]["default"], 5);
    assert_eq!(schema["properties"]["max_results"]["maximum"], 20);
    let r = c.call("web_search", json!({"query": "otters"})).await;
    assert!(is_error(&r));
    assert!(text(&r).contains("could not be reached"), "{r}");
    // A malformed argument is a tool error the model can read, not a crash.
    let r = c.call("web_search", json!({"query": 5})).await;
    assert!(is_error(&r));
    assert!(text(&r).contains("expected a string"), "{r}");
    assert!(c.close().await.success());
}
