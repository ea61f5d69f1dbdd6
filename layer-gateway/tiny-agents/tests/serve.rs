//! `tiny-agents serve` over real HTTP: agents as models, streamed and not, tool activity as
//! `reasoning_content`, errors in OpenAI's shape; and the official OpenAI Python SDK.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};
use testkit::upstream::{Behavior, MockUpstream, Turn};

/// Serves the agents at `dirs` with model calls going to `up`.
async fn serve(
    dirs: Vec<PathBuf>,
    up: &MockUpstream,
    edit: impl FnOnce(&mut tiny_agents::Config),
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = tiny_agents::Config::new(dirs, "127.0.0.1:0");
    config.run.endpoint = up.base_url();
    edit(&mut config);
    tiny_agents::check(&config).unwrap();
    tokio::spawn(tiny_agents::serve_on(
        listener,
        config,
        std::future::pending(),
    ));
    addr
}

fn helper() -> (tempfile::TempDir, PathBuf) {
    folder(
        "helper",
        &json!({"model": "local", "description": "answers with tools", "servers": [stdio_server()]}),
        Some("You help."),
    )
}

fn tool_turns() -> Vec<Turn> {
    vec![
        Turn::call("call_a", "echo", r#"{"text": "bees"}"#),
        Turn::text("Bees make honey."),
    ]
}

/// The `data:` payloads of an event stream.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn agents_are_models_and_answer_plain() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(tool_turns()).await;
    let (_root, dir) = helper();
    let addr = serve(vec![dir], &up, |_| {}).await;
    let http = reqwest::Client::new();
    let models: Value = http
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "agent:helper");
    assert_eq!(models["data"][0]["description"], "answers with tools");

    let res = http
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("x-request-id", "client-run-7")
        .json(&json!({"model": "agent:helper", "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What do bees make?"}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"], "Bees make honey.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["model"], "agent:helper");
    let reasoning = m["reasoning_content"].as_str().unwrap();
    assert!(
        reasoning.contains("calling echo({\"text\": \"bees\"})…"),
        "{reasoning}"
    );
    assert!(
        reasoning.contains("echo answered (10 characters"),
        "{reasoning}"
    );
    // The agent's prompt first, the client's system message after it, in one message.
    let first = &chats(&up)[0];
    assert_eq!(
        first["messages"][0]["content"],
        "You help.\n\nAnswer briefly."
    );
    assert_eq!(first["messages"][1]["role"], "user");
    // The client's request id went with every model call.
    assert!(
        up.requests()
            .iter()
            .all(|r| r.headers["x-request-id"] == "client-run-7")
    );
}

#[tokio::test]
async fn a_stream_shows_tool_activity_as_reasoning_and_ends_with_done() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(tool_turns()).await;
    let (_root, dir) = helper();
    let addr = serve(vec![dir], &up, |_| {}).await;
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(
            &json!({"model": "helper", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "What do bees make?"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let body = res.text().await.unwrap();
    let evs = events(&body);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    let mut reasoning = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(d) = c["choices"].get(0).map(|c| &c["delta"]) {
            // Never a role a client rejects.
            assert!(d["role"].is_null() || d["role"] == "assistant", "{c}");
            content.push_str(d["content"].as_str().unwrap_or(""));
            reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(content, "Bees make honey.");
    assert!(reasoning.starts_with("calling echo("), "{reasoning}");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|c| &c["finish_reason"]))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    // The backend reported no usage: none is made up.
    assert!(chunks.iter().all(|c| c["usage"].is_null()), "{body}");
}

#[tokio::test]
async fn a_run_cut_by_a_limit_says_so() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(vec![Turn::call("c1", "echo", r#"{"text":"x"}"#)]).await;
    let (_root, dir) = helper();
    let addr = serve(vec![dir], &up, |c| c.run.max_turns = 1).await;
    let v: Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "\n\n[The agent stopped after 1 turns (--max-turns).]"
    );
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let up = scripted(Vec::new()).await;
    let (_r1, one) = folder("one", &json!({"model": "local"}), None);
    let (_r2, two) = folder("two", &json!({"model": "local"}), None);
    let addr = serve(vec![one, two], &up, |c| c.api_key = Some("sekrit".into())).await;
    let http = reqwest::Client::new();
    let post = |body: Value, key: Option<&str>| {
        let mut r = http
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let hi = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": "agent:one", "messages": hi}),
            None,
            401,
            "invalid_api_key",
        ),
        (
            json!({"model": "agent:one", "messages": hi}),
            Some("wrong"),
            401,
            "invalid_api_key",
        ),
        (
            json!({"model": "agent:nobody", "messages": hi}),
            Some("sekrit"),
            404,
            "model_not_found",
        ),
        (json!({"messages": hi}), Some("sekrit"), 400, ""),
        (json!({"model": "agent:one"}), Some("sekrit"), 400, ""),
        (
            json!({"model": "agent:one", "messages": []}),
            Some("sekrit"),
            400,
            "",
        ),
        (
            json!({"model": "agent:one", "messages": [{"role": "wizard", "content": "x"}]}),
            Some("sekrit"),
            400,
            "",
        ),
        (
            json!({"model": "agent:one", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
            Some("sekrit"),
            400,
            "",
        ),
        (
            json!({"model": "agent:one", "messages": hi, "stream": "yes"}),
            Some("sekrit"),
            400,
            "",
        ),
    ];
    for (body, key, status, code) in cases {
        let res = post(body.clone(), key).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{body}");
        let v: Value = res.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{v}");
        if !code.is_empty() {
            assert_eq!(v["error"]["code"], code, "{v}");
        }
    }
    // Nothing reached the model.
    assert_eq!(up.hits(), 0);
    // Models need the key too.
    let res = http
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn the_endpoint_down_is_a_502_before_any_stream() {
    let up = MockUpstream::start_with(
        "down",
        Behavior {
            fail_status: Some(500),
            ..Default::default()
        },
    )
    .await;
    let (_root, dir) = folder("plain", &json!({"model": "local"}), None);
    let addr = serve(vec![dir], &up, |_| {}).await;
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({"stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("500"),
        "{v}"
    );
}

#[tokio::test]
async fn serve_refuses_what_it_cannot_run_before_listening() {
    let (_root, dir) = folder("loose", &json!({"model": "local"}), None);
    let mut c = tiny_agents::Config::new(vec![dir.clone()], "0.0.0.0:4005");
    assert!(
        tiny_agents::check(&c)
            .unwrap_err()
            .to_string()
            .contains("without an API key")
    );
    c.bind = "127.0.0.1:4005".into();
    c.agents.push(dir);
    assert!(
        tiny_agents::check(&c)
            .unwrap_err()
            .to_string()
            .contains("two agents are named `loose`")
    );
    let (_root, bad) = folder(
        "bad",
        &json!({"model": "local", "servers": [{"type": "stdio"}]}),
        None,
    );
    let c = tiny_agents::Config::new(vec![bad], "127.0.0.1:4005");
    let e = tiny_agents::check(&c).unwrap_err().to_string();
    assert!(e.ends_with("agent.json: servers[0].command: required: the program to start (\"npx\", \"uvx\", a path)"), "{e}");
}

#[tokio::test]
async fn the_openai_python_sdk_chats_with_an_agent() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    // Each run: the tool turn, the answer, the turn after it (abandoned: no tool call).
    let run = || [tool_turns(), vec![Turn::text("unused")]].concat();
    let up = scripted([run(), run()].concat()).await;
    let (_root, dir) = helper();
    let addr = serve(vec![dir], &up, |c| c.api_key = Some("sdk-key".into())).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("BASE_URL", format!("http://{addr}/v1"))
        .env("API_KEY", "sdk-key")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("5 checks passed"), "{stdout}");
}
