//! Runs `homelab up` in process until the test says stop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use homelab::up::{Running, UpOptions, up};

/// What is running, the way to stop it, and the task to wait for.
pub type Started = (
    Running,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Starts `up` with these options; returns once everything listens.
pub async fn run_up(opts: UpOptions) -> Started {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        up(
            &opts,
            async move {
                let _ = stop_rx.await;
            },
            move |r| {
                let _ = ready_tx.send(r.clone());
            },
        )
        .await
        .unwrap();
    });
    let running = tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .unwrap()
        .unwrap();
    (running, stop_tx, task)
}

/// GETs `url` as JSON until `done` says so (at most `tries` times, 100 ms apart); the last
/// answer.
pub async fn poll_json(
    url: &str,
    tries: usize,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..tries {
        last = reqwest::get(url).await.unwrap().json().await.unwrap();
        if done(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// The workspace's root folder.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo metadata --no-deps` of the workspace (offline), as JSON.
pub fn workspace_metadata() -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A registry of one OpenAI-compatible endpoint named `engine` at `base_url` and `handles`
/// on it (a stand-in engine for tests).
pub fn engine_registry(
    base_url: &str,
    handles: Vec<docsdb::spec::HandleSpec>,
) -> docsdb::spec::SystemSpec {
    docsdb::spec::SystemSpec {
        endpoints: vec![docsdb::spec::EndpointSpec {
            name: "engine".into(),
            service: None,
            base_url: base_url.to_owned(),
            api: docsdb::spec::Api::Openai,
            auth_env: None,
            offers: None,
        }],
        handles,
        ..Default::default()
    }
}

/// A handle with one target: `model` on `endpoint`.
#[allow(dead_code)]
pub fn handle(name: &str, endpoint: &str, model: &str) -> docsdb::spec::HandleSpec {
    docsdb::spec::HandleSpec {
        context_fallback: None,
        cache_ttl_ms: None,
        handle: name.into(),
        description: None,
        strategy: docsdb::spec::Strategy::Priority,
        targets: vec![docsdb::spec::TargetSpec::on_endpoint(endpoint, model)],
    }
}

/// Registers, in the system-docs DB `up` will open in `data_dir`, a stand-in engine at
/// `base_url` with the handle `local` on its model `small-model`.
#[allow(dead_code)]
pub async fn register_engine(data_dir: &std::path::Path, base_url: &str) {
    let db_url = format!("sqlite://{}/system-docs.db", data_dir.display());
    let db = docsdb::Db::open(&db_url).await.unwrap();
    let spec = engine_registry(base_url, vec![handle("local", "engine", "small-model")]);
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    db.close().await;
}

/// The handles of the request log's successful rows with `request_id`, once there are at
/// least `n` of them (the log is written in the background), in log order.
#[allow(dead_code)]
pub async fn logged_handles(db: &docsdb::Db, request_id: &str, n: usize) -> Vec<String> {
    use sqlx::Row;
    let mut rows = Vec::new();
    for _ in 0..50 {
        rows = sqlx::query(
            "SELECT handle FROM request_log WHERE request_id = $1 AND status = 200 ORDER BY id",
        )
        .bind(request_id)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<Option<String>, _>("handle").unwrap_or_default())
        .collect::<Vec<String>>();
        if rows.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rows
}

/// A page web-fetch may read (on loopback, allowed by the tests that use it): `/bees`; its
/// address.
///
/// It listens on the same address every run where that port is free, so that a model reads
/// the same prompt each time: a small model's next step can turn on any digit of it.
#[allow(dead_code)]
pub async fn bees_page() -> std::net::SocketAddr {
    const PORT: u16 = 47_311;
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", PORT)).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/bees",
        axum::routing::get(|| async {
            (
                [("content-type", "text/html; charset=utf-8")],
                "<html><head><title>Bees</title></head><body><article><h1>Bees</h1><p>Bees make honey and live in hives of many thousands.</p></article></body></html>",
            )
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The `max_tools_bytes` of `handle`'s (first) target.
pub async fn tools_cap(db: &docsdb::Db, handle: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT ht.max_tools_bytes FROM handle_targets ht JOIN handles h ON h.id = ht.handle_id \
         WHERE h.name = $1 ORDER BY ht.position LIMIT 1",
    )
    .bind(handle)
    .fetch_one(db.pool())
    .await
    .unwrap()
}

/// The random-weight engine fixture (`llm-engine/tests/fixtures`).
#[allow(dead_code)]
pub fn engine_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../layer-inference/llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

/// orin-llm-server on the fixture, listening on `ip` with `tweak` applied to its config,
/// once it answers `/health`; its base URL.
#[allow(dead_code)]
pub async fn engine_on(ip: &str, tweak: impl FnOnce(&mut orin_llm_server::Config)) -> String {
    let bind = format!("{ip}:0");
    let listener = service_kit::server::bind(&bind).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = orin_llm_server::Config::new(engine_fixture(), &bind);
    tweak(&mut config);
    tokio::spawn(orin_llm_server::serve_on(
        listener,
        config,
        std::future::pending(),
    ));
    testkit::wait_healthy(&url, &format!("the engine on {ip}")).await;
    url
}
