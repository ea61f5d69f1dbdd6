//! `homelab up` end to end, in process, on port 0s and a temp data folder: a chat through the
//! gateway to the local engine (the random-weight fixture), plain and streamed, and the
//! request-log rows it leaves, and the engine's model recorded loaded while it runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Started;
use homelab::up::UpOptions;
use serde_json::{Value, json};
use sqlx::Row;

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../layer-inference/llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

async fn start(data: &std::path::Path) -> Started {
    start_with(data, false).await
}

async fn start_with(data: &std::path::Path, no_engine: bool) -> Started {
    common::run_up(UpOptions {
        model: (!no_engine).then(fixture),
        no_engine,
        ..UpOptions::on_loopback(data)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_a_chat_through_the_gateway_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stop, task) = start(dir.path()).await;
    let gw = format!("http://{}", r.gateway);
    let c = reqwest::Client::new();
    // The engine loads in the background; the gateway answers 503 until it is up.
    let body = json!({"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0});
    let mut answer = None;
    for _ in 0..200 {
        let res = c
            .post(format!("{gw}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            answer = Some(res.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = answer.expect("a chat answer through the gateway");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny-random-gpt2tok-f16");
    // Offered tools reach the prompt (this template knows none: they go into the system
    // prompt). The fixture's 512-token context cannot hold them: a clear 400 says how long
    // the prompt became; with `tool_choice: "none"` nothing is offered.
    let mut with_tools = body.clone();
    with_tools["tools"] = json!([{"type": "function", "function": {"name": "fetch", "description": "Reads a web page", "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}}}]);
    let res = c
        .post(format!("{gw}/v1/chat/completions"))
        .json(&with_tools)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let refused: Value = res.json().await.unwrap();
    assert_eq!(
        refused["error"]["code"], "context_length_exceeded",
        "{refused}"
    );
    let plain = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let grown: u64 = refused["error"]["message"]
        .as_str()
        .unwrap()
        .split("the prompt has ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{refused}"));
    assert!(
        grown > plain + 100,
        "{grown} tokens with the tools, {plain} without"
    );
    with_tools["tool_choice"] = json!("none");
    let none: Value = c
        .post(format!("{gw}/v1/chat/completions"))
        .json(&with_tools)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        none["usage"]["prompt_tokens"], v["usage"]["prompt_tokens"],
        "tool_choice none offers nothing: {none}"
    );
    let models: Value = c
        .get(format!("{gw}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["default", "local", "tasks"]);

    let mut s = body.clone();
    s["model"] = json!("default");
    s["stream"] = json!(true);
    let text = c
        .post(format!("{gw}/v1/chat/completions"))
        .json(&s)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "usage hidden from a client that did not ask"
    );

    // The monitor runs too and soon shows every service it started as up.
    let mon = format!("http://{}", r.monitor);
    let status = common::poll_json(&format!("{mon}/api/status"), 100, |s| {
        s["status"] == "ok" && s["counts"]["up"] == 3
    })
    .await;
    assert_eq!(status["status"], "ok", "{status}");
    assert_eq!(status["counts"]["up"], 3, "{status}");
    let page = reqwest::get(&mon).await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"data-service="local-engine" data-status="up""#));
    // The engine recorded its model loaded; the monitor's inventory shows it.
    let models = common::poll_json(&format!("{mon}/api/models"), 100, |m| {
        m["models"][0]["loaded"] == true
    })
    .await;
    assert_eq!(
        models["models"][0]["model_id"], "tiny-random-gpt2tok-f16",
        "{models}"
    );
    assert_eq!(models["models"][0]["loaded_by"], "local-engine", "{models}");

    stop.send(()).unwrap();
    task.await.unwrap();
    let db = docsdb::Db::open(&r.db_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT handle, target, status, streamed, completion_tokens FROM request_log WHERE status = 200 ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        3,
        "every answered request was logged before exit"
    );
    assert_eq!(rows[0].get::<String, _>("handle"), "local");
    assert_eq!(rows[0].get::<String, _>("target"), "local-engine");
    assert_eq!(rows[2].get::<i64, _>("streamed"), 1);
    assert!(
        rows[2].get::<Option<i64>, _>("completion_tokens").is_some(),
        "tokens counted from the stream"
    );
    let services = docsdb::health::statuses(&db).await.unwrap();
    let names: Vec<&str> = services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(names, ["gateway", "system-monitor", "local-engine"]);
    // A model the catalogue does not know gets a chat UI's worth of tools at most.
    let cap = common::tools_cap(&db, "local").await;
    assert_eq!(cap, Some(homelab::up::LOCAL_MAX_TOOLS_BYTES));
    let mut conn = db.pool().acquire().await.unwrap();
    let inventory = docsdb::read::model_inventory(&mut conn).await.unwrap();
    drop(conn);
    assert!(
        inventory.iter().all(|m| !m.loaded),
        "not loaded once stopped: {inventory:?}"
    );
    db.close().await;

    // A second run reuses what the first made.
    let (r2, stop2, task2) = start(dir.path()).await;
    assert_eq!(r2.model_id, r.model_id);
    stop2.send(()).unwrap();
    task2.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_without_the_engine_runs_the_gateway_over_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stop_tx, task) = start_with(dir.path(), true).await;
    assert!(r.engine.is_none() && r.model_id.is_none());
    let health = reqwest::get(format!("http://{}/health/ready", r.gateway))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let models: Value = reqwest::get(format!("http://{}/v1/models", r.gateway))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"], json!([]), "no engine, no handles");
    assert!(!dir.path().join("models").exists(), "nothing was pulled");
    stop_tx.send(()).unwrap();
    task.await.unwrap();

    // An operator's probe settings on a service `up` registers survive the next `up`.
    let db = docsdb::Db::open(&r.db_url).await.unwrap();
    sqlx::query(
        "UPDATE services SET probe_interval_ms = 60000, fail_threshold = 5 WHERE name = 'gateway'",
    )
    .execute(db.pool())
    .await
    .unwrap();
    db.close().await;
    let (r, stop_tx, task) = start_with(dir.path(), true).await;
    let db = docsdb::Db::open(&r.db_url).await.unwrap();
    let row = sqlx::query(
        "SELECT probe_interval_ms, fail_threshold FROM services WHERE name = 'gateway'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        (
            row.try_get::<i64, _>("probe_interval_ms").unwrap(),
            row.try_get::<i64, _>("fail_threshold").unwrap()
        ),
        (60_000, 5)
    );
    db.close().await;
    stop_tx.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_in_ups_list_is_registered_and_answers_its_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let (r, stop, task) = common::run_up(UpOptions {
        model: Some(fixture()),
        tools: homelab::up::ToolsOptions {
            enabled: true,
            ..Default::default()
        },
        vector_db_port: Some(0),
        ..UpOptions::on_loopback(dir.path())
    })
    .await;
    assert!(
        homelab::up::banner(&r)
            .contains(&format!("vector store   http://{}", r.vector_db.unwrap()))
    );
    let db = docsdb::Db::open(&r.db_url).await.unwrap();
    let rows = sqlx::query("SELECT name, base_url, health_path FROM services ORDER BY name")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|row| row.get("name")).collect();
    assert_eq!(
        names,
        [
            "gateway",
            "local-engine",
            "system-monitor",
            "vector-db",
            "web-fetch",
            "web-search"
        ],
        "what up runs is what the registry says"
    );
    for row in &rows {
        let url = format!(
            "{}{}",
            row.get::<String, _>("base_url"),
            row.get::<String, _>("health_path")
        );
        let res = reqwest::get(&url).await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
    }
    // Each server's endpoint but the gateway's and the monitor's is registered beside it.
    let endpoints: Vec<String> = sqlx::query_scalar("SELECT name FROM endpoints ORDER BY name")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(endpoints, ["local-engine", "web-fetch", "web-search"]);
    db.close().await;
    stop.send(()).unwrap();
    task.await.unwrap();
}
