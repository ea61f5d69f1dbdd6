//! ov-llm-server over real HTTP on an IR derived from the random-weight fixture (OpenVINO
//! from the PyPI wheels): the OpenAI surface, greedy text equal to orin-llm-server's candle
//! backend on the same GGUF, the model registered and recorded loaded in the system-docs
//! DB, and a clear error for a folder that is not an IR.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

/// Starts a server; its base URL once `/health` is 200 (or the last `/health` body).
async fn start(
    mut config_for: impl FnMut(&str) -> ov_llm_server::Config,
) -> (String, Result<(), Value>) {
    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = config_for("127.0.0.1:0");
    tokio::spawn(ov_llm_server::serve_on(
        listener,
        config,
        std::future::pending(),
    ));
    let mut last = Value::Null;
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("{url}/health")).await {
            let ok = r.status() == 200;
            last = r.json().await.unwrap_or(Value::Null);
            if ok {
                return (url, Ok(()));
            }
            if last.to_string().contains("failed to load") {
                return (url, Err(last));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (url, Err(last))
}

async fn chat(url: &str, stream: bool) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({
            "model": "any",
            "messages": [{"role": "user", "content": "Tell me about otters."}],
            "max_tokens": 10,
            "temperature": 0,
            "stream": stream,
            "stream_options": {"include_usage": true}
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_an_ir_like_the_engine_serves_the_gguf() {
    let Some(libs) = testkit::openvino::wheel_libs() else {
        return;
    };
    llm_engine::openvino::load_library_from(Some(libs)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ir = testkit::openvino::derive_ir(&fixture(), &dir.path().join("tiny-ov"));

    let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let (url, ready) = start(|bind| {
        let mut c = ov_llm_server::Config::new(&ir, bind);
        c.engine.precision = Some("f32".into());
        c.engine.context = 256;
        c.engine.db = Some(db_url.clone());
        c.engine.host = Some("mini".into());
        c
    })
    .await;
    ready.unwrap();
    // Registered as an IR of this host and recorded loaded.
    let db = docsdb::Db::open(&db_url).await.unwrap();
    let rows = docsdb::read::model_inventory(&mut db.pool().acquire().await.unwrap())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (row.model_id.as_str(), row.host.as_deref()),
        ("tiny-ov", Some("mini"))
    );
    assert_eq!(row.format.as_deref(), Some("openvino-ir"));
    assert_eq!(row.quantization.as_deref(), Some("f16"), "the IR's weights");
    assert_eq!(row.context_length, Some(512));
    let on_disk: u64 = std::fs::read_dir(&ir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(row.size_on_disk_bytes, Some(on_disk as i64));
    assert!(row.loaded);
    assert_eq!(row.loaded_by.as_deref(), Some("ov-llm-server"));
    let models: Value = reqwest::get(format!("{url}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-ov", "{models}");

    let r = chat(&url, false).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let ov_text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(v["usage"]["completion_tokens"], 10, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let r = chat(&url, true).await;
    let sse = r.text().await.unwrap();
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    assert!(sse.contains("\"usage\""), "{sse}");

    // The same GGUF on the candle backend, through the same server code.
    let (curl, ready) = start(|bind| {
        let mut c = ov_llm_server::Config::new(fixture(), bind);
        c.engine.backend = Some(llm_engine::Backend::Candle);
        c.engine.context = 256;
        c
    })
    .await;
    ready.unwrap();
    let v: Value = chat(&curl, false).await.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        ov_text.as_str(),
        "OpenVINO and candle disagree"
    );

    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("homelab_engine_completion_tokens_total 20"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_folder_that_is_not_an_ir_is_a_clear_503() {
    let Some(libs) = testkit::openvino::wheel_libs() else {
        return;
    };
    llm_engine::openvino::load_library_from(Some(libs)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(), dir.path().join("m.gguf")).unwrap();
    let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let (url, ready) = start(|bind| {
        let mut c = ov_llm_server::Config::new(dir.path(), bind);
        c.engine.db = Some(db_url.clone());
        c
    })
    .await;
    let body = ready.expect_err("a folder without openvino_model.xml does not load");
    let db = docsdb::Db::open(&db_url).await.unwrap();
    let rows = docsdb::read::model_inventory(&mut db.pool().acquire().await.unwrap())
        .await
        .unwrap();
    assert!(
        rows.is_empty(),
        "a model that did not load is not registered: {rows:?}"
    );
    assert!(
        body.to_string().contains("not an OpenVINO IR model"),
        "{body}"
    );
    let r = chat(&url, false).await;
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn a_missing_library_is_a_clear_503_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(), dir.path().join("m.gguf")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ov-llm-server"))
        .args([
            "--model",
            dir.path().to_str().unwrap(),
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .env(
            "OPENVINO_LIB_PATH",
            dir.path().join("no-such-libopenvino_c.so"),
        )
        .env("RUST_LOG", "warn")
        .env_remove("HOMELAB_DB")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let mut body = String::new();
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(&url).await {
            assert_eq!(r.status(), 503);
            body = r.text().await.unwrap();
            if body.contains("failed to load") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        body.contains("cannot load") && body.contains("no-such-libopenvino_c.so"),
        "{body}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server stays up and says why"
    );
    let _ = child.kill().await;
}
