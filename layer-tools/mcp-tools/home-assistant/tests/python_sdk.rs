//! The official MCP Python SDK lists and calls the Home Assistant tools over Streamable HTTP
//! and over stdio.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use testkit::home_assistant::MockHomeAssistant;

#[tokio::test]
async fn python_sdk_over_http_and_stdio() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let ha = MockHomeAssistant::start(
        "tok",
        &[
            ("light.kitchen", "off", "Kitchen"),
            ("lock.door", "locked", "Door"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "read: {domains: [light]}\ncall: [{service: light.toggle, entities: [light.kitchen]}]\n",
    )
    .unwrap();
    let config = home_assistant::Config {
        bind: "127.0.0.1:0".into(),
        ha_url: ha.base_url(),
        ha_token_env: "UNUSED".into(),
        policy: policy.clone(),
        timeout: Duration::from_secs(5),
        max_entities: 50,
        mcp: mcp_kit::McpArgs::default(),
    };
    let shared = home_assistant::shared_with_token(&config, "tok".into()).unwrap();
    let app = home_assistant::app(shared, &mcp_kit::HttpOptions::default());
    let addr = testkit::spawn(app).await;
    let plan = json!({
        "calls": [
            {"tool": "ha_list_entities", "arguments": {}},
            {"tool": "ha_call_service", "arguments": {"domain": "light", "service": "toggle", "entity_id": "light.kitchen"}},
            {"tool": "ha_get_state", "arguments": {"entity_id": "lock.door"}},
        ],
        "servers": [
            {"name": "http", "http": format!("http://{addr}/mcp")},
            {"name": "stdio", "stdio": {
                "command": env!("CARGO_BIN_EXE_home-assistant"),
                "args": ["--stdio", "--ha-url", ha.base_url(), "--policy", policy.to_str().unwrap()],
                "env": {"HOMELAB_HA_TOKEN": "tok", "RUST_LOG": "warn"}}},
        ]
    });
    let report = testkit::mcp::python_sdk(&plan).await;
    for transport in ["http", "stdio"] {
        let r = &report[transport];
        let mut names: Vec<&str> = r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["ha_call_service", "ha_get_state", "ha_list_entities"],
            "{transport}"
        );
        // http runs first and toggles the light on; stdio then sees it on and toggles it off.
        let state = if transport == "http" { "off" } else { "on" };
        assert_eq!(
            r["calls"][0]["text"],
            format!("1 entities:\nlight.kitchen: {state} (Kitchen)\n"),
            "{transport}: {r}"
        );
        assert_eq!(r["calls"][1]["isError"], false, "{transport}: {r}");
        assert_eq!(r["calls"][2]["isError"], true, "{transport}: {r}");
        assert!(
            r["calls"][2]["text"]
                .as_str()
                .unwrap()
                .contains("reading lock.door is not allowed")
        );
    }
    let toggles = ha
        .calls()
        .iter()
        .filter(|(s, _)| s == "light.toggle")
        .count();
    assert_eq!(
        toggles, 2,
        "one toggle per transport reached Home Assistant"
    );
    assert_eq!(ha.state("light.kitchen").as_deref(), Some("off"));
}
