//! Starts a real gateway on 127.0.0.1:0 over a fresh SQLite system-docs DB.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use docsdb::Db;
use docsdb::spec::{HandleSpec, Strategy, SystemSpec, TargetSpec};
use gateway::{AppState, Config};
use serde_json::Value;
use tokio::sync::oneshot;

pub struct Gateway {
    pub url: String,
    pub state: Arc<AppState>,
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), gateway::Error>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Registers `spec`, applies `tweak` to the config, starts the gateway.
    pub async fn start(spec: SystemSpec, tweak: impl FnOnce(&mut Config)) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
        let db = Db::open(&db_url).await.unwrap();
        docsdb::apply::apply(&db, &spec, false).await.unwrap();
        let mut config = Config::new(&db_url, "127.0.0.1:0");
        config.reload_interval = Duration::from_millis(100);
        config.breaker_cooldown = Duration::from_millis(300);
        tweak(&mut config);
        let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(config).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(gateway::serve_state(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Gateway {
            url,
            state,
            db,
            stop: Some(tx),
            done: Some(done),
            _dir: dir,
        }
    }

    /// Stops it the way SIGTERM does, and waits for the drain and the log flush.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap().unwrap();
        }
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder().no_gzip().build().unwrap()
    }

    /// Open WebUI's forwarded user headers (`ENABLE_FORWARD_USER_INFO_HEADERS=True`) for a
    /// user "Zoë Ünïcode" in chat `chat-7`, the name quoted as Open WebUI quotes it.
    pub fn open_webui_user() -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in [
            ("X-OpenWebUI-User-Name", "Zo%C3%AB %C3%9Cn%C3%AFcode"),
            (
                "X-OpenWebUI-User-Id",
                "3f6a1c0e-5d1b-4c4e-9d1a-1b2c3d4e5f60",
            ),
            ("X-OpenWebUI-User-Email", "zoe@example.org"),
            ("X-OpenWebUI-User-Role", "user"),
            ("X-OpenWebUI-Chat-Id", "chat-7"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        h
    }

    /// Whether a log row names the user of [`Gateway::open_webui_user`].
    pub fn names_open_webui_user(row: &Value) -> bool {
        row["user_name"] == "Zoë Ünïcode"
            && row["user_id"] == "3f6a1c0e-5d1b-4c4e-9d1a-1b2c3d4e5f60"
            && row["user_email"] == "zoe@example.org"
            && row["user_role"] == "user"
            && row["chat_id"] == "chat-7"
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut r = self.client().post(format!("{}{path}", self.url)).json(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().await.unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self.client().get(format!("{}/metrics", self.url)).send();
        res.await.unwrap().text().await.unwrap()
    }

    /// Request-log rows, oldest first, once there are at least `n` (they are written in the
    /// background; 5 s at most).
    pub async fn log_rows_at_least(&self, n: usize) -> Vec<Value> {
        log_rows_at_least(&self.db, n).await
    }

    /// Request-log rows, oldest first, as JSON objects.
    pub async fn log_rows(&self) -> Vec<Value> {
        log_rows(&self.db).await
    }
}

/// The request-log rows in `db`, once there are at least `n` (5 s at most).
pub async fn log_rows_at_least(db: &Db, n: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = log_rows(db).await;
        if rows.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rows
}

/// The request-log rows in `db`, oldest first, as JSON objects.
pub async fn log_rows(db: &Db) -> Vec<Value> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT request_id, key_name, route, handle, target, upstream_model, status, error_type, \
         attempts, prompt_tokens, completion_tokens, streamed, ttft_ms, latency_ms, generation_ms, \
         user_id, user_name, user_email, user_role, chat_id, request_bytes, response_bytes, \
         usage_source, cache_hit FROM request_log ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "request_id": r.get::<String, _>("request_id"),
                "key_name": r.get::<Option<String>, _>("key_name"),
                "route": r.get::<String, _>("route"),
                "handle": r.get::<Option<String>, _>("handle"),
                "target": r.get::<Option<String>, _>("target"),
                "upstream_model": r.get::<Option<String>, _>("upstream_model"),
                "status": r.get::<i64, _>("status"),
                "error_type": r.get::<Option<String>, _>("error_type"),
                "attempts": r.get::<i64, _>("attempts"),
                "prompt_tokens": r.get::<Option<i64>, _>("prompt_tokens"),
                "completion_tokens": r.get::<Option<i64>, _>("completion_tokens"),
                "streamed": r.get::<i64, _>("streamed") != 0,
                "ttft_ms": r.get::<Option<f64>, _>("ttft_ms"),
                "latency_ms": r.get::<f64, _>("latency_ms"),
                "generation_ms": r.get::<Option<f64>, _>("generation_ms"),
                "user_id": r.get::<Option<String>, _>("user_id"),
                "user_name": r.get::<Option<String>, _>("user_name"),
                "user_email": r.get::<Option<String>, _>("user_email"),
                "user_role": r.get::<Option<String>, _>("user_role"),
                "chat_id": r.get::<Option<String>, _>("chat_id"),
                "request_bytes": r.get::<Option<i64>, _>("request_bytes"),
                "response_bytes": r.get::<Option<i64>, _>("response_bytes"),
                "usage_source": r.get::<Option<String>, _>("usage_source"),
                "cache_hit": r.get::<i64, _>("cache_hit") != 0,
            })
        })
        .collect()
}

/// A target on a base URL, named `name`.
pub fn target(name: &str, base_url: &str, model: &str) -> TargetSpec {
    let mut t = TargetSpec::on_endpoint(name, model);
    t.base_url = Some(base_url.to_owned());
    t
}

/// A handle with these targets.
pub fn handle(name: &str, strategy: Strategy, targets: Vec<TargetSpec>) -> HandleSpec {
    HandleSpec {
        description: Some(format!("{name} handle")),
        strategy,
        ..HandleSpec::new(name, targets)
    }
}

pub fn spec(handles: Vec<HandleSpec>) -> SystemSpec {
    SystemSpec {
        handles,
        ..Default::default()
    }
}

/// Reads an SSE response into its `data:` payloads.
pub async fn sse_data(res: reqwest::Response) -> Vec<String> {
    let text = res.text().await.unwrap();
    let mut d = contract::sse::SseDecoder::new();
    let mut ev = d.push(text.as_bytes()).unwrap();
    ev.extend(d.finish());
    ev.into_iter().map(|e| e.data).collect()
}

/// A port nothing listens on.
pub async fn dead_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/v1")
}

/// Whether `python3` can import `module` (see [`testkit::python::has_module`]).
pub fn python_module(module: &str) -> bool {
    testkit::python::has_module(module)
}

/// Runs `tests/SCRIPT` with `args`; what it printed, once it succeeded.
pub async fn python_script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    testkit::python::run_file(&path, args).await
}

/// A gateway (master key `sk-master-test`) with two handles: `chat` on the plain test
/// upstream ("tok0 tok1 tok2 "), `tools` on a scripted one — a `get_weather` call for Paris,
/// then "It is sunny.", then the call again — and both upstreams.
pub async fn chat_and_tools() -> (
    Gateway,
    testkit::upstream::MockUpstream,
    testkit::upstream::MockUpstream,
) {
    use testkit::upstream::{Behavior, MockUpstream, Turn};
    let plain = MockUpstream::start("a").await;
    let weather = || Turn::call("call_w1", "get_weather", r#"{"city": "Paris"}"#);
    let scripted = MockUpstream::start_with(
        "b",
        Behavior {
            turns: vec![weather(), Turn::text("It is sunny."), weather()],
            ..Default::default()
        },
    )
    .await;
    let gw = Gateway::start(
        spec(vec![
            handle(
                "chat",
                Strategy::Priority,
                vec![target("a", &plain.base_url(), "m")],
            ),
            handle(
                "tools",
                Strategy::Priority,
                vec![target("b", &scripted.base_url(), "t")],
            ),
        ]),
        |c| c.master_key = Some("sk-master-test".into()),
    )
    .await;
    (gw, plain, scripted)
}

/// Waits until `{url}/health` answers (10 s at most), else fails naming `what`.
pub async fn wait_healthy(url: &str, what: &str) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not start at {url}");
}

/// A free loopback address.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A service binary listening on `addr` (`--bind`), with `args` and `env` (and never the
/// machine's `HOMELAB_MASTER_KEY`), once it answers `/health`; killed when dropped.
pub async fn service(
    program: &std::path::Path,
    addr: std::net::SocketAddr,
    args: &[&str],
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let child = tokio::process::Command::new(program)
        .args(["--bind", &addr.to_string()])
        .args(args)
        .env_remove("HOMELAB_MASTER_KEY")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(&format!("http://{addr}"), &program.display().to_string()).await;
    child
}

/// The gateway binary in a process of its own over a fresh SQLite DB holding `spec` (for
/// what an in-process gateway cannot show: its own memory, its environment).
pub struct Process {
    pub url: String,
    pub pid: u32,
    pub db: Db,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts it with `args` and `env`, and waits until it answers `/health`.
    pub async fn start(spec: &SystemSpec, args: &[&str], env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
        let db = Db::open(&db_url).await.unwrap();
        docsdb::apply::apply(&db, spec, false).await.unwrap();
        let addr = free_addr();
        let db_args = ["--db", db_url.as_str(), "--reload-interval", "100ms"];
        let args: Vec<&str> = db_args.iter().chain(args).copied().collect();
        let child = service(env!("CARGO_BIN_EXE_gateway").as_ref(), addr, &args, env).await;
        let pid = child.id().unwrap();
        let url = format!("http://{addr}");
        Process {
            url,
            pid,
            db,
            child,
            _dir: dir,
        }
    }

    /// Its peak and current resident memory, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
