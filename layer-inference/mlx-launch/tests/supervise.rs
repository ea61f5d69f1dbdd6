//! mlx-launch with real child processes: our own orin-llm-server binary on the random-weight
//! fixture stands in for `mlx_lm.server` (which needs Apple silicon), started through the same
//! command template. Start on demand, reuse, the memory budget, idle stop, a crashed child, a
//! child that never answers, and the requests `mlx_lm.server` would silently get wrong.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use mlx_launch::Config;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

struct Launcher {
    url: String,
    db: docsdb::Db,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), mlx_launch::Error>>>,
}

impl Launcher {
    /// Registers models `(id, memory MiB)` on host `studio` and starts mlx-launch over them.
    async fn start(models: &[(&str, u64)], tweak: impl FnOnce(&mut Config)) -> Launcher {
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
        let db = docsdb::Db::open(&db_url).await.unwrap();
        let fixture = fixture().display().to_string();
        let spec: docsdb::spec::SystemSpec = serde_json::from_value(json!({
            "hosts": [{"name": "studio"}, {"name": "elsewhere"}],
            "models": models.iter().map(|(id, mib)| json!({
                "model_id": id, "host": "studio", "format": "gguf",
                "source_path": fixture, "memory_footprint_bytes": mib * MIB,
            })).chain([json!({
                "model_id": "not-here", "host": "elsewhere", "format": "gguf", "source_path": fixture,
            })]).collect::<Vec<_>>(),
        }))
        .unwrap();
        docsdb::apply::apply(&db, &spec, false).await.unwrap();
        let mut config = Config::new(&db_url, "127.0.0.1:0");
        config.host = Some("studio".into());
        config.formats = vec!["gguf".into()];
        config.command = format!(
            "{} --model {{path}} --bind 127.0.0.1:{{port}} --model-id {{model_id}} --context 256",
            testkit::sibling_binary("orin-llm-server").display()
        );
        config.upstream_model = "{model_id}".into();
        config.memory_budget = 250 * MIB;
        config.start_timeout = Duration::from_secs(60);
        config.stop_timeout = Duration::from_secs(5);
        tweak(&mut config);
        let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(mlx_launch::serve_on(listener, config, async move {
            let _ = rx.await;
        }));
        Launcher {
            url,
            db,
            http: reqwest::Client::new(),
            _dir: dir,
            stop: Some(tx),
            done: Some(done),
        }
    }

    async fn chat(&self, model: &str, extra: Value) -> reqwest::Response {
        let mut body = json!({
            "model": model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4,
            "temperature": 0,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.http
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn status(&self) -> Value {
        self.http
            .get(format!("{}/status", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn running(&self) -> Vec<String> {
        self.status().await["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["model_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// What the system-docs DB's inventory says is loaded on the studio.
    async fn loaded(&self) -> Vec<String> {
        let mut conn = self.db.pool().acquire().await.unwrap();
        let mut ids: Vec<String> = docsdb::read::model_inventory(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.loaded)
            .map(|r| {
                assert_eq!(r.loaded_by.as_deref(), Some("mlx-launch"));
                r.model_id
            })
            .collect();
        ids.sort();
        ids
    }

    async fn pid(&self, model: &str) -> u64 {
        let s = self.status().await;
        s["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["model_id"] == model)
            .unwrap_or_else(|| panic!("{model} not running: {s}"))["pid"]
            .as_u64()
            .unwrap()
    }

    /// Stops it as SIGTERM does; its children must be gone afterwards.
    async fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap().unwrap();
    }
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_demand_reuses_and_lists_from_the_registry() {
    let mut l = Launcher::start(&[("tiny-a", 100), ("tiny-b", 100)], |_| {}).await;

    let models: Value = reqwest::get(format!("{}/v1/models", l.url))
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
    assert_eq!(
        ids,
        ["tiny-a", "tiny-b"],
        "this host's models only, from the registry"
    );
    assert_eq!(models["data"][0]["loaded"], false);
    assert!(
        l.running().await.is_empty(),
        "nothing starts before it is asked for"
    );

    // Three requests at once for a model that is not running: one child starts.
    let (a, b, c) = tokio::join!(
        l.chat("tiny-a", json!({})),
        l.chat("tiny-a", json!({})),
        l.chat("tiny-a", json!({}))
    );
    for r in [a, b, c] {
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion", "{v}");
        assert!(
            v["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
            "{v}"
        );
    }
    assert_eq!(l.status().await["starts"], 1);
    let pid = l.pid("tiny-a").await;

    // Reused: same process; streamed answers pass through as SSE.
    let r = l.chat("tiny-a", json!({"stream": true})).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("data: {") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    assert_eq!(l.pid("tiny-a").await, pid);
    assert_eq!(l.status().await["starts"], 1);
    let models: Value = reqwest::get(format!("{}/v1/models", l.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["loaded"], true);

    l.shutdown().await;
    assert!(!alive(pid), "children stop with the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_stops_the_least_recently_used() {
    // 250 MiB: two 100 MiB models fit, a third stops the least recently used.
    let mut l = Launcher::start(
        &[("m1", 100), ("m2", 100), ("m3", 100), ("huge", 300)],
        |_| {},
    )
    .await;
    assert_eq!(l.chat("m1", json!({})).await.status(), 200);
    assert_eq!(l.chat("m2", json!({})).await.status(), 200);
    assert_eq!(l.chat("m1", json!({})).await.status(), 200); // m2 is now the least recent
    let m2 = l.pid("m2").await;
    assert_eq!(l.chat("m3", json!({})).await.status(), 200);
    assert_eq!(l.running().await, ["m1", "m3"]);
    assert_eq!(l.status().await["memory_used_bytes"], 200 * MIB);
    assert!(!alive(m2), "the evicted child exited");
    assert_eq!(l.loaded().await, ["m1", "m3"], "the inventory follows");
    let hosts = docsdb::monitor::hosts(&l.db).await.unwrap();
    let studio = hosts.iter().find(|h| h.host == "studio").unwrap();
    assert_eq!(
        (studio.loaded_models, studio.loaded_bytes),
        (2, (200 * MIB) as i64)
    );

    let r = l.chat("huge", json!({})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the memory budget"),
        "{v}"
    );
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_children_stop() {
    let mut l = Launcher::start(&[("tiny", 100)], |c| {
        c.idle_timeout = Duration::from_millis(500)
    })
    .await;
    assert_eq!(l.chat("tiny", json!({})).await.status(), 200);
    let pid = l.pid("tiny").await;
    let mut running = l.running().await;
    for _ in 0..100 {
        if running.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        running = l.running().await;
    }
    assert!(running.is_empty(), "still running: {running:?}");
    assert!(!alive(pid));
    assert!(l.loaded().await.is_empty());
    assert_eq!(l.status().await["stops"], 1);
    // Asked again, it starts again.
    assert_eq!(l.chat("tiny", json!({})).await.status(), 200);
    assert_eq!(l.status().await["starts"], 2);
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_child_is_restarted_and_the_request_served() {
    let mut l = Launcher::start(&[("tiny", 100)], |_| {}).await;
    assert_eq!(l.chat("tiny", json!({})).await.status(), 200);
    let pid = l.pid("tiny").await;
    let killed = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert!(killed.is_ok());
    let r = l.chat("tiny", json!({})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let new = l.pid("tiny").await;
    assert_ne!(new, pid);
    assert_eq!(l.status().await["starts"], 2);
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_answers_or_cannot_start_is_a_clear_503() {
    let mut l = Launcher::start(&[("mute", 100), ("quits", 100), ("missing", 100)], |c| {
        c.start_timeout = Duration::from_secs(1);
        c.model_commands = vec![
            "mute=sleep 60".into(),
            "quits=sh -c 'echo cannot load weights >&2; exit 3'".into(),
            "missing=/nonexistent/mlx_lm.server --port {port}".into(),
        ];
    })
    .await;
    for (model, want) in [
        ("mute", "did not become ready within 1s"),
        ("quits", "cannot load weights"),
        ("missing", "/nonexistent/mlx_lm.server"),
    ] {
        let r = l.chat(model, json!({})).await;
        assert_eq!(r.status(), 503, "{model}");
        let v: Value = r.json().await.unwrap();
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{model}: {m}");
    }
    assert!(
        l.running().await.is_empty(),
        "no half-started child is kept"
    );
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_mlx_lm_server_would_get_wrong_is_refused() {
    let mut l = Launcher::start(&[("tiny", 100)], |_| {}).await;
    for (extra, want) in [
        (json!({"n": 2}), "n = 2 is not supported"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format is not supported",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
    ] {
        let r = l.chat("tiny", extra.clone()).await;
        assert_eq!(r.status(), 400, "{extra}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{extra}: {v}"
        );
    }
    let r = l.chat("not-here", json!({})).await;
    assert_eq!(
        r.status(),
        404,
        "a model of another host is not served here"
    );
    let r = l.chat("nope", json!({})).await;
    assert_eq!(r.status(), 404);
    assert!(l.running().await.is_empty(), "refusals start nothing");
    // n = 1 and response_format text are fine.
    assert_eq!(
        l.chat("tiny", json!({"n": 1, "response_format": {"type": "text"}}))
            .await
            .status(),
        200
    );
    l.shutdown().await;
}
