//! Real client bodies survive parse → serialise unchanged.
//!
//! `openwebui-0.12.4-upstream-requests.jsonl` is what Open WebUI 0.12.4 sent to its OpenAI
//! upstream; `openai-python-sdk-requests.jsonl` is what the official OpenAI Python SDK sends,
//! recorded from the SDK against a local HTTP server (see `record_openai_sdk.py`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use contract::chat::ChatCompletionRequest;
use contract::completions::CompletionRequest;
use contract::embeddings::EmbeddingRequest;
use contract::search::SearchRequest;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn round_trip<T: DeserializeOwned + Serialize>(body: &Value) -> T {
    let text = serde_json::to_string(body).unwrap();
    let parsed: T =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("does not parse: {e}\n{text}"));
    let again = serde_json::to_value(&parsed).unwrap();
    assert_eq!(&again, body, "the round trip changed the body");
    parsed
}

fn check_request(path: &str, body: &Value) -> &'static str {
    let path = path.trim_start_matches("/v1");
    match path {
        "/chat/completions" => {
            let r: ChatCompletionRequest = round_trip(body);
            assert!(!r.messages.is_empty());
            "chat"
        }
        "/completions" => {
            round_trip::<CompletionRequest>(body);
            "completions"
        }
        "/embeddings" => {
            round_trip::<EmbeddingRequest>(body);
            "embeddings"
        }
        "/search" => {
            round_trip::<SearchRequest>(body);
            "search"
        }
        other => panic!("no request type for {other}"),
    }
}

#[test]
fn open_webui_bodies_round_trip() {
    let mut chats = 0;
    let mut with_tools = 0;
    for rec in fixture("openwebui-0.12.4-upstream-requests.jsonl") {
        let body = &rec["body"];
        if body.is_null() {
            continue;
        }
        let kind = check_request(rec["path"].as_str().unwrap(), body);
        if kind == "chat" {
            chats += 1;
            let r: ChatCompletionRequest = serde_json::from_value(body.clone()).unwrap();
            if r.tools.as_ref().is_some_and(|t| t.len() > 30) {
                with_tools += 1;
            }
        }
    }
    assert!(chats >= 10, "the fixture has the recorded chats ({chats})");
    assert!(
        with_tools >= 1,
        "some chats carry Open WebUI's ~36 tool definitions"
    );
}

#[test]
fn openai_python_sdk_bodies_round_trip() {
    let mut seen = std::collections::BTreeSet::new();
    for rec in fixture("openai-python-sdk-requests.jsonl") {
        let body = &rec["body"];
        if body.is_null() {
            continue;
        }
        seen.insert(check_request(rec["path"].as_str().unwrap(), body));
    }
    for kind in ["chat", "completions", "embeddings"] {
        assert!(seen.contains(kind), "the SDK fixture has a {kind} request");
    }
}

#[test]
fn unknown_fields_survive_everywhere() {
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}], "x_msg": 1}],
        "stream_options": {"include_usage": true, "x_opt": true},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}, "x_rf": 2},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "x_fn": 3}, "x_tool": 4}],
        "chat_template_kwargs": {"enable_thinking": false},
        "logit_bias": {"50256": -100},
        "top_k": 20
    });
    round_trip::<ChatCompletionRequest>(&body);
}
