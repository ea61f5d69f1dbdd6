//! The gateway in front of a busy local engine (orin-llm-server on the random-weight
//! fixture, one sequence): a queued request is waited for rather than timed out as a dead
//! backend, a chat goes before background work, and when the gateway does give up it says
//! the backend is busy and how busy. The request log gets the engine's own generation time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use docsdb::spec::{HandleSpec, Strategy, TargetSpec};
use serde_json::{Value, json};
use sqlx::Row;

/// An engine with one sequence and `queue` places; its base URL.
async fn engine(queue: usize) -> String {
    common::engine_on("127.0.0.1", |c| {
        c.engine.queue = queue;
        c.engine.parallel = 1;
    })
    .await
}

/// A handle on the endpoint `engine`, with its own timeouts.
fn handle(name: &str, first_byte_ms: i64, total_ms: Option<i64>) -> HandleSpec {
    HandleSpec {
        context_fallback: None,
        cache_ttl_ms: None,
        handle: name.into(),
        description: None,
        strategy: Strategy::Priority,
        targets: vec![TargetSpec {
            first_byte_timeout_ms: Some(first_byte_ms),
            timeout_ms: total_ms,
            ..TargetSpec::on_endpoint("engine", "m")
        }],
    }
}

struct Gw {
    url: String,
    db: docsdb::Db,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), gateway::Error>>,
    _dir: tempfile::TempDir,
}

async fn gateway(engine: &str, handles: Vec<HandleSpec>) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let db = docsdb::Db::open(&db_url).await.unwrap();
    let spec = common::engine_registry(&format!("{engine}/v1"), handles);
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    let mut config = gateway::Config::new(&db_url, "127.0.0.1:0");
    config.retries = 0;
    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = gateway::AppState::new(config).await.unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(gateway::serve_state(listener, state, async move {
        let _ = rx.await;
    }));
    Gw {
        url,
        db,
        stop,
        done,
        _dir: dir,
    }
}

/// Background work straight to the engine: a raw prompt that runs to its 480-token limit.
fn background(engine: &str, ids: std::ops::Range<usize>) -> Vec<tokio::task::JoinHandle<u16>> {
    ids.map(|i| {
        let url = format!("{engine}/v1/completions");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("x-homelab-priority", "background")
                .header("x-request-id", format!("bg-{i}"))
                .json(
                    &json!({"model": "m", "prompt": "hello", "max_tokens": 480, "temperature": 0}),
                )
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    })
    .collect()
}

/// Requests waiting in the engine's queue.
async fn waiting(engine: &str) -> u64 {
    let q: Value = reqwest::get(format!("{engine}/v1/queue"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    q["waiting"].as_u64().unwrap()
}

async fn until_generating(engine: &str, id: &str) {
    for _ in 0..2000 {
        let r = reqwest::get(format!("{engine}/v1/queue/{id}"))
            .await
            .unwrap();
        if r.status() == 200 && r.json::<Value>().await.unwrap()["state"] == "generating" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{id} never started");
}

async fn chat(gw: &Gw, model: &str, priority: Option<&str>, max_tokens: u32) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "temperature": 0}));
    if let Some(p) = priority {
        r = r.header("x-homelab-priority", p);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_waited_for_and_a_chat_goes_first() {
    let engine = engine(16).await;
    // First-byte timeouts far below the time the work takes: before, each of these was a
    // 504 "did not answer in time".
    let gw = gateway(
        &engine,
        vec![handle("local", 100, None), handle("short", 100, Some(150))],
    )
    .await;
    let mut bg = background(&engine, 0..5);
    until_generating(&engine, "bg-0").await;

    // A chat arrives behind five background requests: served first, answered in full.
    let res = chat(&gw, "local", None, 40).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["timings"]["parked_ms"].is_number(),
        "from the engine: {v}"
    );
    let chat_tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        bg.iter().filter(|t| t.is_finished()).count() < 5,
        "background work was still going when the chat was answered"
    );

    // Background work that cannot start before the request's total deadline (six or more
    // requests of 480 tokens wait ahead of it, hundreds of milliseconds of work even on the
    // fixture): the gateway says why.
    let n = waiting(&engine).await as usize;
    bg.extend(background(&engine, bg.len()..bg.len() + 8 - n.min(8)));
    let mut ahead = 0;
    for _ in 0..500 {
        ahead = waiting(&engine).await;
        if ahead >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ahead >= 6, "only {ahead} waiting");
    let res = chat(&gw, "short", Some("background"), 40).await;
    assert_eq!(res.status(), 504);
    let e: Value = res.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`short` is busy (1 generating"), "{msg}");
    assert!(!msg.contains("127.0.0.1"), "no backend address: {msg}");

    for t in bg {
        assert_eq!(t.await.unwrap(), 200);
    }
    let Gw { db, stop, done, .. } = gw;
    stop.send(()).unwrap();
    done.await.unwrap().unwrap();
    let rows = sqlx::query(
        "SELECT handle, status, attempts, error_type, completion_tokens, generation_ms, latency_ms \
         FROM request_log ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<i64, _>("status"), 200);
    assert_eq!(rows[0].get::<i64, _>("attempts"), 1);
    assert_eq!(
        rows[0].get::<Option<i64>, _>("completion_tokens"),
        Some(chat_tokens as i64)
    );
    let g = rows[0].get::<Option<f64>, _>("generation_ms");
    if chat_tokens > 1 {
        let g = g.expect("the engine's own generation time");
        assert!(g > 0.0 && g < rows[0].get::<f64, _>("latency_ms"));
    }
    assert_eq!(rows[1].get::<i64, _>("status"), 504);
    assert_eq!(
        rows[1].get::<Option<String>, _>("error_type").as_deref(),
        Some("busy")
    );
    // The handle's rate comes from measured spans only: a real figure, not a million.
    let stats = docsdb::monitor::handles(&db).await.unwrap();
    let local = stats.iter().find(|h| h.handle == "local").unwrap();
    if let Some(rate) = local.tokens_per_s_24h {
        assert!(rate < 100_000.0, "{rate}");
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_a_busy_backend() {
    let engine = engine(0).await;
    let gw = gateway(&engine, vec![handle("local", 60_000, None)]).await;
    let bg = background(&engine, 0..1);
    until_generating(&engine, "bg-0").await;
    // No place in the queue for background work: 503, busy, retry soon.
    let res = chat(&gw, "local", Some("background"), 5).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "server_busy", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`local` is busy (1 generating, 0 waiting)"),
        "{e}"
    );
    assert_eq!(bg.into_iter().next().unwrap().await.unwrap(), 200);
    gw.stop.send(()).unwrap();
}
