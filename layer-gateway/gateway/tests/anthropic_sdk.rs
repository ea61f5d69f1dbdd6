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
