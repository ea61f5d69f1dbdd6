//! The MCP transports: the Streamable HTTP handshake and its checks (Origin, Host, bearer
//! token, session cap), and the same tool over stdio from the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{Value, json};
use testkit::mcp::{McpClient, McpHttp, McpStdio, PROTOCOL, is_error, messages, text};

fn init_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}})
}

#[tokio::test]
async fn handshake_session_and_tool_schema() {
    let url = common::start(&common::config(|_| {}), &common::opts()).await;
    let mut c = McpHttp::connect(&url, None).await;
    assert!(
        c.session.as_deref().is_some_and(|s| !s.is_empty()),
        "Mcp-Session-Id issued"
    );
    assert_eq!(c.server["protocolVersion"], PROTOCOL);
    assert_eq!(c.server["serverInfo"]["name"], "web-fetch");
    assert!(c.server["capabilities"]["tools"].is_object());

    let tools = c.list_tools().await;
    assert_eq!(tools.len(), 1);
    let t = &tools[0];
    assert_eq!(t["name"], "fetch");
    let schema = &t["inputSchema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["url"]));
    assert_eq!(schema["properties"]["url"]["type"], "string");
    assert_eq!(schema["properties"]["max_length"]["default"], 5000);
    assert_eq!(schema["properties"]["start_index"]["default"], 0);
    assert_eq!(schema["properties"]["raw"]["default"], false);
    assert!(schema["properties"]["url"]["description"].is_string());
    assert_eq!(t["annotations"]["readOnlyHint"], true);

    // An unknown tool is a protocol error; a session id the server never issued is refused.
    let r = c
        .request("tools/call", json!({"name": "nope", "arguments": {}}))
        .await;
    assert!(r["error"]["code"].is_i64(), "{r}");
    let mut bogus = McpHttp::new(&url, None);
    bogus.session = Some("not-a-session".into());
    let res = bogus
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}}))
        .await;
    assert_eq!(res.status(), 404);

    // DELETE ends the session.
    let res = c
        .http
        .delete(&url)
        .header("mcp-session-id", c.session.clone().unwrap())
        .header("mcp-protocol-version", PROTOCOL)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = c
        .post(&json!({"jsonrpc": "2.0", "id": 10, "method": "tools/list", "params": {}}))
        .await;
    assert_eq!(res.status(), 404);

    // /health for the monitor.
    let health = url.replace("/mcp", "/health");
    assert_eq!(reqwest::get(&health).await.unwrap().status(), 200);
}

#[tokio::test]
async fn origin_and_host_are_checked_against_rebinding() {
    let mut opts = common::opts();
    opts.allow_origins = vec!["http://chat.lan:8080".into()];
    let url = common::start(&common::config(|_| {}), &opts).await;
    let http = reqwest::Client::new();
    let post = |origin: Option<&str>, host: Option<&str>| {
        let mut r = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&init_body());
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.send()
    };
    assert_eq!(
        post(Some("http://evil.example"), None)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(Some("http://chat.lan:8080"), None)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(None, None).await.unwrap().status(),
        200,
        "non-browser clients send no Origin"
    );
    // A rebinding attack arrives with the attacker's name in Host.
    assert_eq!(
        post(None, Some("attacker.example")).await.unwrap().status(),
        403
    );
    assert_eq!(post(None, Some("localhost")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn bearer_token_and_session_cap() {
    let mut opts = common::opts();
    opts.token = Some("s3cret-token".into());
    opts.max_sessions = 1;
    let url = common::start(&common::config(|_| {}), &opts).await;

    let anon = McpHttp::new(&url, None).post(&init_body()).await;
    assert_eq!(anon.status(), 401);
    assert_eq!(anon.headers()["www-authenticate"], "Bearer");
    let v: Value = anon.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Bearer"),
        "{v}"
    );
    let wrong = McpHttp::new(&url, Some("guess")).post(&init_body()).await;
    assert_eq!(wrong.status(), 401);

    let mut c = McpHttp::connect(&url, Some("s3cret-token")).await;
    assert_eq!(c.list_tools().await.len(), 1);
    // One session is the cap: the next initialize is refused, the open session still works.
    let second = McpHttp::new(&url, Some("s3cret-token"))
        .post(&init_body())
        .await;
    assert_eq!(second.status(), 503);
    assert_eq!(c.list_tools().await.len(), 1);
    // /health needs no token (the monitor probes it).
    assert_eq!(
        reqwest::get(url.replace("/mcp", "/health"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_and_one_under_it_works() {
    let mut opts = common::opts();
    opts.body_limit = 64 * 1024;
    let url = common::start(&common::config(|_| {}), &opts).await;
    let chunked = |body: Vec<Vec<u8>>| {
        let chunks = futures_util::stream::iter(body.into_iter().map(Ok::<_, std::io::Error>));
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
    };
    // 1 MiB of spaces, sent without a length.
    let big = chunked(vec![vec![b' '; 16 * 1024]; 64]).await.unwrap();
    assert_eq!(big.status(), 413);
    let v: Value = big.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large", "{v}");
    // The same transport under the limit: an initialize in two chunks is answered.
    let init = init_body().to_string().into_bytes();
    let (a, b) = init.split_at(init.len() / 2);
    let ok = chunked(vec![a.to_vec(), b.to_vec()]).await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn stateless_requests_of_the_newest_protocol_get_json() {
    // A client on the newest protocol sends no initialize: each request carries its
    // protocol metadata, and a plain request gets a plain JSON answer.
    let url = common::start(&common::config(|_| {}), &common::opts()).await;
    let res = reqwest::Client::new()
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .json(
            &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {}}}}),
        )
        .send()
        .await
        .unwrap();
    let status = res.status();
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    let body = res.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let msgs = messages(&ct, &body);
    assert!(ct.starts_with("application/json"), "{ct}: {body}");
    assert_eq!(msgs[0]["result"]["tools"][0]["name"], "fetch", "{body}");
}

#[tokio::test]
async fn stdio_transport_of_the_binary() {
    let site = common::site().await;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_web-fetch"));
    let mut c = McpStdio::spawn(
        bin,
        &["--stdio", "--allow-host", "127.0.0.1"],
        &[("RUST_LOG", "warn")],
    )
    .await;
    assert_eq!(c.server["serverInfo"]["name"], "web-fetch");
    let tools = c.list_tools().await;
    assert_eq!(tools[0]["name"], "fetch");
    let r = c
        .call("fetch", json!({"url": format!("http://{site}/data.json")}))
        .await;
    assert!(!is_error(&r), "{r}");
    assert!(text(&r).contains(r#""otters":3"#));
    let r = c
        .call("fetch", json!({"url": "http://169.254.169.254/"}))
        .await;
    assert!(is_error(&r));
    let status = c.close().await;
    assert!(status.success(), "{status}");
}
