//! The official Anthropic Python SDK against a real gateway's `/v1/messages` (`pip install
//! anthropic`) in front of the test upstream: plain, streamed, a tool-use round trip (plain and
//! streamed), count_tokens, errors. Outside CI a machine without the SDK skips this with a
//! note; with `CI=true` it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_anthropic_sdk_works_against_the_gateway() {
    if !common::python_module("anthropic") {
        return;
    }
    let (gw, plain, scripted) = common::chat_and_tools().await;
    let stdout =
        common::python_script("anthropic_sdk_compat.py", &[&gw.url, "sk-master-test"]).await;
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");

    // What the backend got: the system prompt, and the tool result as a tool message
    // answering the call.
    let first = plain.requests()[0].json();
    assert_eq!(
        first["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(first["max_tokens"], 50);
    let round = scripted.requests()[1].json();
    let msgs = round["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "call_w1", "{round}");
    assert_eq!(
        msgs[2],
        json!({"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"})
    );
    assert_eq!(round["tools"][0]["function"]["name"], "get_weather");
    // Every request is a request-log row of the messages route, refusals included.
    let rows = gw.log_rows_at_least(9).await;
    assert!(rows.iter().all(|r| r["route"] == "messages"), "{rows:?}");
    assert_eq!(rows.len(), 9, "{rows:?}");
    let handles: Vec<&str> = rows.iter().filter_map(|r| r["handle"].as_str()).collect();
    assert_eq!(
        handles.iter().filter(|h| **h == "tools").count(),
        3,
        "{rows:?}"
    );
    assert!(handles.contains(&"no-such-handle"), "{rows:?}");
}

/// A handle whose target is an Anthropic endpoint (api flavour `anthropic`): the request goes
/// to its `/v1/messages` as it is, with the key from the endpoint's `auth_env` as
/// `x-api-key`, and its answer comes back as it is; where that endpoint is down, a chat
/// target behind it answers, translated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_endpoint_gets_messages_as_they_are() {
    use docsdb::spec::{Api, EndpointSpec, Strategy, SystemSpec, TargetSpec};
    if !common::python_module("anthropic") {
        return;
    }
    let anthropic = testkit::anthropic::AnthropicUpstream::start("sk-ant-test").await;
    let local = testkit::upstream::MockUpstream::start("local").await;
    let mut api = EndpointSpec::new("claude-api", &anthropic.base_url(), Api::Anthropic);
    api.auth_env = Some("HOMELAB_TEST_ANTHROPIC_KEY".into());
    let gone = EndpointSpec::new("gone-api", &common::dead_port_url().await, Api::Anthropic);
    let mut then_local = common::target("local", &local.base_url(), "llama");
    then_local.priority = 1;
    let spec = SystemSpec {
        endpoints: vec![api, gone],
        handles: vec![
            common::handle(
                "claude",
                Strategy::Priority,
                vec![TargetSpec::on_endpoint("claude-api", "claude-sonnet-4-5")],
            ),
            common::handle(
                "claude-or-local",
                Strategy::Priority,
                vec![
                    TargetSpec::on_endpoint("gone-api", "claude-sonnet-4-5"),
                    then_local,
                ],
            ),
            common::handle(
                "local",
                Strategy::Priority,
                vec![common::target("local", &local.base_url(), "llama")],
            ),
        ],
        ..Default::default()
    };
    let gw =
        common::Process::start(&spec, &[], &[("HOMELAB_TEST_ANTHROPIC_KEY", "sk-ant-test")]).await;
    let stdout = common::python_script("anthropic_native_compat.py", &[&gw.url]).await;
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");

    // The Anthropic endpoint got the request as the client sent it, with its own key and
    // the upstream model.
    let got = anthropic.received();
    assert_eq!(got.len(), 3, "{got:?}");
    for r in &got {
        assert_eq!(r.headers["x-api-key"], "sk-ant-test");
        assert!(r.headers.contains_key("anthropic-version"));
        assert!(!r.headers.contains_key("authorization"));
        assert_eq!(r.body["model"], "claude-sonnet-4-5");
        assert!(r.body.get("stream_options").is_none(), "{}", r.body);
    }
    assert_eq!(got[2].body["tools"][0]["type"], "web_search_20250305");
    // A chat completion is not what an Anthropic endpoint offers.
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err = res.json::<serde_json::Value>().await.unwrap();
    assert_eq!(err["error"]["code"], "model_not_supported", "{err}");
    assert_eq!(
        local.hits(),
        1,
        "only the fallback reached the chat upstream"
    );

    // Rows: the native ones with the Anthropic usage, the fallback on its chat target.
    let rows = common::log_rows_at_least(&gw.db, 6).await;
    assert_eq!(rows.len(), 6, "{rows:#?}");
    let native: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["target"] == "claude-api")
        .collect();
    assert_eq!(native.len(), 3, "{rows:#?}");
    assert!(
        native
            .iter()
            .all(|r| r["route"] == "messages" && r["status"] == 200)
    );
    for r in &native[..2] {
        assert_eq!(
            (&r["prompt_tokens"], &r["completion_tokens"]),
            (&json!(12), &json!(4)),
            "{r}"
        );
    }
    assert!(
        rows.iter()
            .any(|r| r["target"] == "local" && r["route"] == "messages" && r["status"] == 200),
        "{rows:#?}"
    );
    gw.stop().await;
}
