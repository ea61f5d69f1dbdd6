#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! The monitor against real HTTP services it probes, a real webhook receiver, and real
//! SQLite and Postgres DBs.

#[path = "../../../crates/docsdb/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use docsdb::Db;
use docsdb::health::Check;
use docsdb::request_log::RequestLogRow;
use docsdb::spec::{HostSpec, Layer, Lifecycle, ServiceSpec, SystemSpec};
use serde_json::Value;

/// A real HTTP service with a /health route, which the test can stop and start again on
/// the same port.
struct Svc {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Svc {
    async fn start() -> Svc {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        Svc {
            addr,
            task: Some(serve_health(l)),
        }
    }
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
    async fn restart(&mut self) {
        let l = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(serve_health(l));
    }
}

fn serve_health(l: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let app = Router::new().route("/health", get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    })
}

/// Collects webhook deliveries; refuses the first one of each kind with a 500 so that
/// retries are exercised.
#[derive(Clone, Default)]
struct Receiver {
    json: Arc<Mutex<Vec<Value>>>,
    ntfy: Arc<Mutex<Vec<(String, String)>>>,
    refused: Arc<Mutex<u32>>,
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let (j, n, refused) = (r.json.clone(), r.ntfy.clone(), r.refused.clone());
    let refused2 = refused.clone();
    let app = Router::new()
        .route(
            "/hook",
            post(move |body: axum::Json<Value>| {
                let j = j.clone();
                let refused = refused.clone();
                async move {
                    let mut n = refused.lock().unwrap();
                    if *n == 0 {
                        *n += 1;
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    j.lock().unwrap().push(body.0);
                    axum::http::StatusCode::OK
                }
            }),
        )
        .route(
            "/ntfy",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let n = n.clone();
                let _ = &refused2;
                async move {
                    let title = headers
                        .get("title")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    n.lock().unwrap().push((title, body));
                    axum::http::StatusCode::OK
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (r, url)
}

fn service(
    name: &str,
    layer: Layer,
    base_url: Option<String>,
    health: Option<&str>,
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        layer,
        host: Some("mini".into()),
        kind: Default::default(),
        base_url,
        health_path: health.map(str::to_owned),
        unit: None,
        lifecycle: Lifecycle::Active,
        description: None,
        probe_interval_ms: None,
        fail_threshold: None,
        docs: Vec::new(),
    }
}

/// A service probed at `svc`'s `/health`.
fn probed(name: &str, layer: Layer, svc: &Svc) -> ServiceSpec {
    service(
        name,
        layer,
        Some(format!("http://{}", svc.addr)),
        Some("/health"),
    )
}

fn host() -> HostSpec {
    HostSpec {
        name: "mini".into(),
        description: None,
        address: None,
        os: Some("linux".into()),
        arch: Some("x86_64".into()),
        accelerator: None,
        memory_bytes: Some(docsdb::spec::ByteSize(16 << 30)),
    }
}

struct Monitor {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), system_monitor::Error>>,
}

impl Monitor {
    async fn start(db: &Db, tweak: impl FnOnce(&mut system_monitor::Config)) -> Monitor {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let mut config = system_monitor::Config::new(db.url(), "127.0.0.1:0");
        config.probe_interval = Duration::from_millis(100);
        config.probe_timeout = Duration::from_secs(2);
        config.fail_threshold = 2;
        tweak(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(system_monitor::serve_with_db(
            l,
            config,
            db.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Monitor {
            url,
            stop: Some(tx),
            task,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn text(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `/api/status` until `service` shows `want` (10 s at most).
    async fn wait_status(&self, service: &str, want: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            let (_, v) = self.get("/api/status").await;
            if let Some(s) = v["services"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["service"] == service))
            {
                if s["status"] == want {
                    return s.clone();
                }
                last = s.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{service} never became {want}; last: {last}");
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn probes_alerts_and_the_api(db: Db) {
    let mut echo = Svc::start().await;
    let (hooks, hook_url) = receiver().await;
    let spec = SystemSpec {
        hosts: vec![host()],
        services: vec![
            probed("echo", Layer::Inference, &echo),
            service("silent", Layer::Tools, None, None),
            ServiceSpec {
                lifecycle: Lifecycle::Planned,
                ..service(
                    "later",
                    Layer::Data,
                    Some("http://127.0.0.1:9".into()),
                    Some("/h"),
                )
            },
        ],
        ..Default::default()
    };
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    let mon = Monitor::start(&db, |c| {
        c.webhooks = vec![format!("{hook_url}/hook")];
        c.ntfy = vec![format!("{hook_url}/ntfy")];
    })
    .await;

    let up = mon.wait_status("echo", "up").await;
    assert_eq!(up["layer"], "inference");
    assert_eq!(up["host"], "mini");
    assert_eq!(up["last_status_code"], 200);
    assert!(up["since_ms"].as_i64().is_some());
    let (_, st) = mon.get("/api/status").await;
    let by = |n: &str| {
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by("silent")["status"],
        "unknown",
        "no health URL: never probed"
    );
    assert_eq!(by("later")["status"], "planned");
    assert_eq!(st["status"], "ok");

    // Stop it: degraded after one failed probe, down after two, one alert per sink.
    echo.stop();
    let down = mon.wait_status("echo", "down").await;
    // The same, spoken (Shortcuts' /status): the planned service is left out.
    assert_eq!(
        mon.text("/api/status?format=text").await,
        "1 problem: echo is down. silent has not been checked yet."
    );
    let (code, _) = mon.get("/api/status?format=xml").await;
    assert_eq!(code, 400);
    assert!(down["failures_in_row"].as_i64().unwrap() >= 2);
    assert!(
        down["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{down}"
    );
    let (_, st) = mon.get("/api/status").await;
    assert_eq!(st["status"], "down");
    assert_eq!(st["counts"]["down"], 1);
    let alert = wait_for("the down alert", || {
        hooks.json.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(alert["service"], "echo");
    assert_eq!(alert["to"], "down");
    assert_eq!(alert["event"], "service_status_changed");
    assert!(alert["message"].as_str().unwrap().contains("echo is down"));
    assert_eq!(
        *hooks.refused.lock().unwrap(),
        1,
        "the first delivery was refused and retried"
    );
    let (title, body) = wait_for("the ntfy alert", || {
        hooks.ntfy.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(title, "homelab: echo down");
    assert!(body.contains("echo is down"), "{body}");

    // Back up: one recovery alert; no alert for the degraded step on the way down.
    echo.restart().await;
    mon.wait_status("echo", "up").await;
    let recovered = wait_for("the recovery alert", || {
        hooks.json.lock().unwrap().get(1).cloned()
    })
    .await;
    assert_eq!(recovered["from"], "down");
    assert_eq!(recovered["to"], "up");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(hooks.json.lock().unwrap().len(), 2, "once per change");
    assert_eq!(hooks.ntfy.lock().unwrap().len(), 2);

    assert_eq!(
        mon.text("/api/status?format=text").await,
        "1 of 2 services up. silent has not been checked yet."
    );
    // One service's detail: recent checks, both kinds, newest first.
    let (code, detail) = mon.get("/api/services/echo").await;
    assert_eq!(code, 200);
    let checks = detail["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["ok"] == false));
    assert_eq!(checks[0]["ok"], true);
    assert!(!detail["hourly"].as_array().unwrap().is_empty());
    let (code, err) = mon.get("/api/services/nope").await;
    assert_eq!(code, 404);
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));

    // The page shows every service with its status; metrics say the same.
    let page = mon.text("/").await;
    assert!(
        page.contains(r#"data-service="echo" data-status="up""#),
        "{page}"
    );
    assert!(page.contains(r#"data-service="silent" data-status="unknown""#));
    assert!(page.contains("<svg class=\"bars\""));
    let metrics = mon.text("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("homelab_service_up{") && l.contains("service=\"echo\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(" 1.0") || line.ends_with(" 1"), "{line}");
    assert!(
        metrics.contains("homelab_monitor_alerts_sent_total 4"),
        "{metrics}"
    );

    let (_, hosts) = mon.get("/api/hosts").await;
    assert_eq!(hosts["hosts"][0]["host"], "mini");
    assert_eq!(hosts["hosts"][0]["services"], 3);
    let (_, handles) = mon.get("/api/handles").await;
    assert!(handles["handles"].as_array().unwrap().is_empty());

    // One handle's callers: Open WebUI's users (named in its forwarded headers) and the
    // devices' keys, each apart.
    add_chat_handle(&db).await;
    let now = docsdb::now_ms();
    let row = |i: i64, key: &str, user: Option<&str>| RequestLogRow {
        request_id: format!("u{i}"),
        started_at_ms: now - 1000 - i,
        key_name: Some(key.into()),
        route: "chat".into(),
        handle: Some("chat".into()),
        target: Some("t".into()),
        upstream_model: Some("m".into()),
        status: 200,
        error_type: None,
        attempts: 1,
        latency_ms: 10.0,
        ttft_ms: None,
        prompt_tokens: Some(7),
        completion_tokens: Some(3),
        streamed: false,
        request_bytes: None,
        response_bytes: None,
        usage_source: None,
        cache_hit: false,
        generation_ms: None,
        user: docsdb::request_log::EndUser {
            id: user.map(|u| format!("id-{u}")),
            name: user.map(str::to_owned),
            email: user.map(|u| format!("{u}@example.org")),
            role: user.map(|_| "user".to_owned()),
            chat_id: user.map(|_| format!("chat-{}", i % 2)),
        },
    };
    let rows = vec![
        row(1, "open-webui", Some("ann")),
        row(2, "open-webui", Some("ann")),
        row(3, "open-webui", Some("ann")),
        row(4, "open-webui", Some("<b>bo</b>")),
        row(5, "iphone", None),
    ];
    docsdb::request_log::insert_batch(&db, &rows).await.unwrap();
    let (code, one) = mon.get("/api/handles/chat").await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["handle"]["requests_24h"], 5);
    let callers = one["callers"].as_array().unwrap();
    assert_eq!(callers.len(), 3, "{one}");
    assert_eq!(callers[0]["user_name"], "ann");
    assert_eq!(callers[0]["key_name"], "open-webui");
    assert_eq!(callers[0]["requests_24h"], 3);
    assert_eq!(callers[0]["chats_24h"], 2);
    assert_eq!(callers[0]["prompt_tokens_24h"], 21);
    assert_eq!(callers[0]["user_email"], "ann@example.org");
    let (code, err) = mon.get("/api/handles/nope").await;
    assert_eq!(code, 404);
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));
    let page = mon.text("/").await;
    assert_eq!(
        page.matches(r#"<tr class="caller" data-handle="chat">"#)
            .count(),
        3
    );
    assert!(page.contains("ann &lt;ann@example.org&gt;"));
    assert!(page.contains("&lt;b&gt;bo&lt;/b&gt;"), "names are escaped");
    mon.shutdown().await;
    echo.stop();
}

/// The views' rules, from rows written straight into the DB.
async fn view_rules(db: Db) {
    let spec = SystemSpec {
        hosts: vec![host()],
        services: vec![
            service(
                "a",
                Layer::Gateway,
                Some("http://127.0.0.1:9".into()),
                Some("/health"),
            ),
            service(
                "b",
                Layer::Gateway,
                Some("http://127.0.0.1:9".into()),
                Some("/health"),
            ),
        ],
        ..Default::default()
    };
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    docsdb::monitor::write_settings(&db, 3, 15_000)
        .await
        .unwrap();
    let now = docsdb::now_ms();
    let ok = |ms: f64| Check {
        ok: true,
        status_code: Some(200),
        latency_ms: Some(ms),
        error: None,
    };
    let bad = Check {
        ok: false,
        status_code: None,
        latency_ms: None,
        error: Some("cannot connect".into()),
    };
    // a: 100 good probes with latencies 1..=100 ms, then failures.
    for i in 1..=100 {
        docsdb::health::record(&db, "a", now - 130_000 + i * 1000, &ok(i as f64))
            .await
            .unwrap();
    }
    let status = |db: Db, name: &'static str| async move {
        docsdb::monitor::service(&db, name).await.unwrap().unwrap()
    };
    let a = status(db.clone(), "a").await;
    assert_eq!(a.status, "up");
    assert_eq!(a.since_ms, Some(now - 130_000 + 1000));
    assert_eq!(a.latency_p50_ms, Some(50.0));
    assert_eq!(a.latency_p95_ms, Some(95.0));
    assert_eq!(a.uptime_1h, Some(1.0));

    docsdb::health::record(&db, "a", now - 25_000, &bad)
        .await
        .unwrap();
    let a = status(db.clone(), "a").await;
    assert_eq!((a.status.as_str(), a.failures_in_row), ("degraded", 1));
    assert_eq!(a.since_ms, Some(now - 25_000));
    docsdb::health::record(&db, "a", now - 20_000, &bad)
        .await
        .unwrap();
    docsdb::health::record(&db, "a", now - 15_000, &bad)
        .await
        .unwrap();
    let a = status(db.clone(), "a").await;
    assert_eq!((a.status.as_str(), a.failures_in_row), ("down", 3));
    assert_eq!(
        a.since_ms,
        Some(now - 25_000),
        "down since the first failure"
    );
    assert_eq!(a.checks_24h, 103);
    assert!((a.uptime_24h.unwrap() - 100.0 / 103.0).abs() < 1e-9);

    // A per-service threshold overrides the setting.
    sqlx::query("UPDATE services SET fail_threshold = 5 WHERE name = 'a'")
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(status(db.clone(), "a").await.status, "degraded");

    // b was probed ten minutes ago, then nobody looked: unknown, and marked stale.
    docsdb::health::record(&db, "b", now - 600_000, &ok(3.0))
        .await
        .unwrap();
    let b = status(db.clone(), "b").await;
    assert_eq!(b.status, "unknown");
    assert!(b.stale);
    assert_eq!(b.last_ok, Some(true));

    // Handle traffic: 100 requests with latencies 1..=100 ms, 10 failed.
    let rows: Vec<RequestLogRow> = (1..=100)
        .map(|i| RequestLogRow {
            request_id: format!("r{i}"),
            started_at_ms: now - 10_000 - i,
            key_name: None,
            route: "/v1/chat/completions".into(),
            handle: Some("chat".into()),
            target: Some("t".into()),
            upstream_model: Some("m".into()),
            status: if i % 10 == 0 { 502 } else { 200 },
            error_type: None,
            attempts: 1,
            latency_ms: i as f64,
            ttft_ms: Some(0.0),
            prompt_tokens: Some(10),
            // Failures generate nothing; every tenth success has no measured span (a plain
            // answer without timings); the rest generated 2 tokens in half their latency.
            completion_tokens: Some(match i % 10 {
                0 => 0,
                5 => 3,
                _ => 2,
            }),
            streamed: true,
            request_bytes: None,
            response_bytes: None,
            usage_source: None,
            cache_hit: false,
            generation_ms: (i % 10 != 5).then(|| i as f64 / 2.0),
            user: Default::default(),
        })
        .collect();
    docsdb::request_log::insert_batch(&db, &rows).await.unwrap();
    add_chat_handle(&db).await;
    let h = &docsdb::monitor::handles(&db).await.unwrap()[0];
    assert_eq!((h.requests_1h, h.errors_1h, h.requests_24h), (100, 10, 100));
    assert_eq!(h.error_rate_1h, Some(0.1));
    assert_eq!(h.p50_latency_ms_24h, Some(50.0));
    assert_eq!(h.p95_latency_ms_24h, Some(95.0));
    assert_eq!(h.prompt_tokens_24h, 1000);
    assert_eq!(h.completion_tokens_24h, 190);
    // The rate counts only requests with a measured span: 80 × 2 tokens over their spans.
    let gen_s: f64 = (1..=100)
        .filter(|i| i % 10 != 0 && i % 10 != 5)
        .map(|i| f64::from(i) / 2.0)
        .sum::<f64>()
        / 1000.0;
    assert!((h.tokens_per_s_24h.unwrap() - 160.0 / gen_s).abs() < 1e-6);
    let errors = docsdb::monitor::errors(&db, 100).await.unwrap();
    assert_eq!(errors.iter().filter(|e| e.source == "request").count(), 10);
    assert_eq!(errors.iter().filter(|e| e.source == "health").count(), 3);
}

fn request(id: String, at_ms: i64, status: u16, latency_ms: f64) -> RequestLogRow {
    RequestLogRow {
        request_id: id,
        started_at_ms: at_ms,
        key_name: None,
        route: "/v1/chat/completions".into(),
        handle: Some("chat".into()),
        target: None,
        upstream_model: None,
        status,
        error_type: None,
        attempts: 1,
        latency_ms,
        ttft_ms: Some(20.0),
        prompt_tokens: Some(5),
        completion_tokens: Some(8),
        streamed: false,
        request_bytes: None,
        response_bytes: None,
        usage_source: None,
        cache_hit: false,
        generation_ms: Some(latency_ms - 20.0).filter(|g| *g > 0.0),
        user: Default::default(),
    }
}

/// Registers one service, `a`, whose health URL nothing answers (the tests write its checks).
async fn register_a(db: &Db) {
    let spec = SystemSpec {
        hosts: vec![host()],
        services: vec![service(
            "a",
            Layer::Gateway,
            Some("http://127.0.0.1:9".into()),
            Some("/health"),
        )],
        ..Default::default()
    };
    docsdb::apply::apply(db, &spec, false).await.unwrap();
}

/// A handle `chat` without targets, for request-log rows to be counted against.
async fn add_chat_handle(db: &Db) {
    sqlx::query(
        "INSERT INTO handles (name, strategy, created_at_ms, updated_at_ms) \
         VALUES ('chat', 'priority', 0, 0)",
    )
    .execute(db.pool())
    .await
    .unwrap();
}

async fn count(db: &Db, sql: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(sql)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

/// Complete hours fold into rollups; rows past the retention leave the raw tables and still
/// count in the views; late rows count before and after they are folded.
async fn rollup_and_retention(db: Db) {
    register_a(&db).await;
    let hour = docsdb::monitor::HOUR_MS;
    let now = docsdb::now_ms();
    let three_days_ago = (now - 72 * hour).div_euclid(hour) * hour;
    for i in 0..60 {
        let check = Check {
            ok: i % 6 != 0, // 10 failures
            status_code: Some(200),
            latency_ms: Some(f64::from(i)),
            error: None,
        };
        docsdb::health::record(&db, "a", three_days_ago + i64::from(i) * 60_000, &check)
            .await
            .unwrap();
    }
    // In the current hour: never folded yet.
    let ok = Check {
        ok: true,
        status_code: Some(200),
        latency_ms: Some(1.0),
        error: None,
    };
    docsdb::health::record(&db, "a", now, &ok).await.unwrap();
    let rows: Vec<RequestLogRow> = (0..30)
        .map(|i| request(format!("old{i}"), three_days_ago + i * 1000, 200, 100.0))
        .collect();
    docsdb::request_log::insert_batch(&db, &rows).await.unwrap();
    let before = docsdb::monitor::service(&db, "a").await.unwrap().unwrap();
    assert_eq!(before.uptime_7d, Some(51.0 / 61.0));

    let r = docsdb::monitor::rollup(&db, now, now - 48 * hour)
        .await
        .unwrap();
    assert_eq!(
        (r.health_rows, r.health_hours, r.health_pruned),
        (60, 1, 60)
    );
    assert_eq!(
        (r.request_rows, r.request_hours, r.request_pruned),
        (30, 1, 30)
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM health_checks").await,
        1,
        "only the recent check stays"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM request_log").await, 0);
    assert_eq!(
        count(
            &db,
            "SELECT CAST(checks * 1000 + failures AS BIGINT) FROM health_rollups"
        )
        .await,
        60_010
    );
    assert_eq!(
        count(
            &db,
            "SELECT CAST(requests * 1000 + completion_tokens AS BIGINT) FROM request_rollups"
        )
        .await,
        30_240
    );
    assert_eq!(
        count(
            &db,
            "SELECT CAST(SUM(samples) AS BIGINT) FROM health_latency_buckets"
        )
        .await,
        50,
        "one histogram sample per successful probe"
    );
    // The 7-day uptime still counts the folded checks; the hourly history shows the hour.
    let after = docsdb::monitor::service(&db, "a").await.unwrap().unwrap();
    assert_eq!(after.uptime_7d, before.uptime_7d);
    let hourly = docsdb::monitor::hourly(&db, now - 96 * hour, None)
        .await
        .unwrap();
    let old = hourly.iter().find(|h| h.hour_ms == three_days_ago).unwrap();
    assert_eq!((old.checks, old.failures), (60, 10));
    let mean = (1..60).filter(|i| i % 6 != 0).sum::<i32>() as f64 / 50.0;
    assert!((old.latency_ms.unwrap() - mean).abs() < 1e-9);

    // Again: nothing left to fold or delete.
    assert_eq!(
        docsdb::monitor::rollup(&db, now, now - 48 * hour)
            .await
            .unwrap(),
        docsdb::monitor::RollupReport::default()
    );
    // A late row for a folded hour counts at once, then merges into its rollup.
    let late = Check {
        ok: false,
        status_code: None,
        latency_ms: None,
        error: Some("late".into()),
    };
    docsdb::health::record(&db, "a", three_days_ago + 5, &late)
        .await
        .unwrap();
    let unfolded = docsdb::monitor::service(&db, "a").await.unwrap().unwrap();
    assert_eq!(unfolded.uptime_7d, Some(51.0 / 62.0));
    let r = docsdb::monitor::rollup(&db, now, now - 48 * hour)
        .await
        .unwrap();
    assert_eq!((r.health_rows, r.health_pruned), (1, 1));
    assert_eq!(
        count(
            &db,
            "SELECT CAST(checks * 1000 + failures AS BIGINT) FROM health_rollups"
        )
        .await,
        61_011
    );
    let folded = docsdb::monitor::service(&db, "a").await.unwrap().unwrap();
    assert_eq!(folded.uptime_7d, unfolded.uptime_7d);
}

fn close(a: Option<f64>, b: Option<f64>, rel: f64) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12),
        (None, None) => true,
        _ => false,
    }
}

/// Thirty hours of probes and requests read the same from raw rows as after their complete
/// hours are folded: counts and means exactly, percentiles within the buckets' 1 %. Rows sit
/// 90 s away from every window's edge, so the few seconds between the reads move nothing.
async fn folded_hours_read_as_raw_rows(db: Db) {
    register_a(&db).await;
    add_chat_handle(&db).await;
    let now = docsdb::now_ms();
    let mut rows = Vec::new();
    for k in 0..600_i64 {
        let at = now - 90_000 - k * 180_000;
        let check = Check {
            ok: k % 7 != 0,
            status_code: Some(200),
            latency_ms: Some(1.0 + (k * 37 % 200) as f64 * 1.5),
            error: None,
        };
        docsdb::health::record(&db, "a", at, &check).await.unwrap();
        let mut r = request(
            format!("r{k}"),
            at,
            if k % 11 == 0 { 500 } else { 200 },
            100.0 + (k * 53 % 900) as f64,
        );
        r.ttft_ms = (k % 4 != 0).then_some((k % 50) as f64);
        r.completion_tokens = Some((k % 5) as u64);
        rows.push(r);
    }
    docsdb::request_log::insert_batch(&db, &rows).await.unwrap();
    let read = |db: Db| async move {
        (
            docsdb::monitor::service(&db, "a").await.unwrap().unwrap(),
            docsdb::monitor::handles(&db).await.unwrap().remove(0),
            docsdb::monitor::hourly(&db, 0, None).await.unwrap(),
        )
    };
    let (s0, h0, hours0) = read(db.clone()).await;
    assert_eq!(s0.checks_24h, 480, "24 h of probes every 3 minutes");
    assert_eq!(h0.requests_24h, 480);

    let r = docsdb::monitor::rollup(&db, now, now - 30 * 24 * docsdb::monitor::HOUR_MS)
        .await
        .unwrap();
    assert!(r.health_hours >= 29 && r.request_hours >= 29, "{r:?}");
    assert_eq!((r.health_pruned, r.request_pruned), (0, 0));
    let (s1, h1, hours1) = read(db.clone()).await;

    assert_eq!(
        (s1.checks_24h, s1.uptime_1h, s1.uptime_24h, s1.uptime_7d),
        (s0.checks_24h, s0.uptime_1h, s0.uptime_24h, s0.uptime_7d)
    );
    for (a, b) in [
        (s0.latency_p50_ms, s1.latency_p50_ms),
        (s0.latency_p95_ms, s1.latency_p95_ms),
        (h0.p50_latency_ms_24h, h1.p50_latency_ms_24h),
        (h0.p95_latency_ms_24h, h1.p95_latency_ms_24h),
    ] {
        assert!(close(a, b, 0.01), "{a:?} vs {b:?}");
        assert!(a.is_some());
    }
    assert_eq!(
        (
            h1.requests_1h,
            h1.errors_1h,
            h1.requests_24h,
            h1.errors_24h,
            h1.prompt_tokens_24h,
            h1.completion_tokens_24h,
            h1.last_request_at_ms
        ),
        (
            h0.requests_1h,
            h0.errors_1h,
            h0.requests_24h,
            h0.errors_24h,
            h0.prompt_tokens_24h,
            h0.completion_tokens_24h,
            h0.last_request_at_ms
        )
    );
    for (a, b) in [
        (h0.avg_latency_ms_1h, h1.avg_latency_ms_1h),
        (h0.avg_ttft_ms_24h, h1.avg_ttft_ms_24h),
        (h0.tokens_per_s_24h, h1.tokens_per_s_24h),
    ] {
        assert!(close(a, b, 1e-9), "{a:?} vs {b:?}");
    }
    assert_eq!(hours0.len(), hours1.len());
    for (a, b) in hours0.iter().zip(&hours1) {
        assert_eq!(
            (a.hour_ms, a.checks, a.failures),
            (b.hour_ms, b.checks, b.failures)
        );
        assert!(close(a.latency_ms, b.latency_ms, 1e-9));
    }

    // A request logged late for a folded hour counts before and after the next fold.
    let late = request("late".into(), now - 5 * docsdb::monitor::HOUR_MS, 200, 50.0);
    docsdb::request_log::insert_batch(&db, &[late])
        .await
        .unwrap();
    let h2 = docsdb::monitor::handles(&db).await.unwrap().remove(0);
    assert_eq!(h2.requests_24h, h0.requests_24h + 1);
    let r = docsdb::monitor::rollup(&db, now, 0).await.unwrap();
    assert_eq!((r.request_rows, r.request_hours), (1, 1));
    let h3 = docsdb::monitor::handles(&db).await.unwrap().remove(0);
    assert_eq!(h3.requests_24h, h2.requests_24h);
    assert!(close(h3.avg_latency_ms_24h, h2.avg_latency_ms_24h, 1e-9));
}

on_both!(
    probes_alerts_and_the_api,
    view_rules,
    rollup_and_retention,
    folded_hours_read_as_raw_rows
);

#[tokio::test]
async fn a_retention_under_a_day_is_refused() {
    let t = common::sqlite().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = system_monitor::Config::new(&t.url, "127.0.0.1:0");
    config.retention = Duration::from_secs(3600);
    let err = system_monitor::serve_with_db(l, config, t.db.clone(), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("25h"), "{err}");
    t.cleanup().await;
}

#[tokio::test]
async fn shutdown_finishes_an_alert_being_retried() {
    let t = common::sqlite().await;
    let mut echo = Svc::start().await;
    let (hooks, hook_url) = receiver().await;
    let spec = SystemSpec {
        hosts: vec![host()],
        services: vec![probed("echo", Layer::Inference, &echo)],
        ..Default::default()
    };
    docsdb::apply::apply(&t.db, &spec, false).await.unwrap();
    let mon = Monitor::start(&t.db, |c| {
        c.webhooks = vec![format!("{hook_url}/hook")];
        c.common.drain_timeout = Duration::from_secs(20);
    })
    .await;
    mon.wait_status("echo", "up").await;
    echo.stop();
    // The receiver refuses the first delivery: the alert now waits for its retry.
    wait_for("the first delivery", || {
        (*hooks.refused.lock().unwrap() == 1).then_some(())
    })
    .await;
    assert!(hooks.json.lock().unwrap().is_empty());
    // Shutting down now does not cut the retry off: it is delivered before serve returns.
    mon.shutdown().await;
    let got = hooks.json.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["service"], "echo");
    assert_eq!(got[0]["to"], "down");
    t.cleanup().await;
}

/// Debian's chromium, or `HOMELAB_CHROMIUM`. `None` (with a note) outside CI when there is
/// none; with `CI=true` a missing browser fails the test (`.ci/run` installs it).
fn chromium() -> Option<std::path::PathBuf> {
    let candidates = std::env::var_os("HOMELAB_CHROMIUM")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(Into::into));
    for c in candidates {
        if c.exists() {
            return Some(c);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true but no chromium: install Debian's chromium or set HOMELAB_CHROMIUM");
    }
    eprintln!("note: no chromium found; skipping the browser test");
    None
}

/// Runs headless chromium on `url` with `args`, in a fresh profile, and returns its stdout.
async fn headless(browser: &std::path::Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium did not finish within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dashboard in a real browser: an up service, a down one and one never probed, each with
/// its status in the DOM the browser built, the handle table with traffic, and a screenshot
/// under `target/` for a person to look at.
#[tokio::test]
async fn the_page_renders_in_a_headless_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let t = common::sqlite().await;
    let echo = Svc::start().await;
    let mut gone = Svc::start().await;
    gone.stop();
    let spec = SystemSpec {
        hosts: vec![host()],
        services: vec![
            probed("echo", Layer::Inference, &echo),
            probed("gone", Layer::Tools, &gone),
            service("silent", Layer::Data, None, None),
        ],
        handles: vec![docsdb::spec::HandleSpec {
            context_fallback: None,
            cache_ttl_ms: None,
            handle: "chat".into(),
            description: None,
            strategy: Default::default(),
            targets: vec![docsdb::spec::TargetSpec {
                endpoint: None,
                base_url: Some(format!("http://{}/v1", echo.addr)),
                ..docsdb::spec::TargetSpec::on_endpoint("", "m")
            }],
        }],
        ..Default::default()
    };
    docsdb::apply::apply(&t.db, &spec, false).await.unwrap();
    let now = docsdb::now_ms();
    let rows: Vec<RequestLogRow> = (0..40)
        .map(|i| RequestLogRow {
            request_id: format!("r{i}"),
            started_at_ms: now - 1_000 * i,
            key_name: None,
            route: "/v1/chat/completions".into(),
            handle: Some("chat".into()),
            target: Some("t".into()),
            upstream_model: Some("m".into()),
            status: if i % 10 == 0 { 502 } else { 200 },
            error_type: None,
            attempts: 1,
            latency_ms: 100.0 + i as f64,
            ttft_ms: Some(20.0),
            prompt_tokens: Some(10),
            completion_tokens: Some(20),
            streamed: true,
            request_bytes: None,
            response_bytes: None,
            usage_source: None,
            cache_hit: false,
            generation_ms: Some(80.0),
            user: Default::default(),
        })
        .collect();
    docsdb::request_log::insert_batch(&t.db, &rows)
        .await
        .unwrap();
    let mon = Monitor::start(&t.db, |_| {}).await;
    mon.wait_status("echo", "up").await;
    mon.wait_status("gone", "down").await;

    let dom = headless(&browser, &mon.url, &["--dump-dom"]).await;
    for (service, status) in [("echo", "up"), ("gone", "down"), ("silent", "unknown")] {
        let row = format!(r#"data-service="{service}" data-status="{status}""#);
        assert!(dom.contains(&row), "{row} not in the DOM:\n{dom}");
    }
    assert!(
        dom.contains(r#"id="overall" class="pill down" data-status="down""#),
        "overall status in the DOM:\n{dom}"
    );
    assert!(dom.contains(r#"data-handle="chat""#), "handle row:\n{dom}");
    assert!(dom.contains("<svg"), "inline SVG charts:\n{dom}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("system-monitor-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        &mon.url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400",
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1280, "the screenshot has the window's width");
    eprintln!("screenshot: {}", shot.display());
    mon.shutdown().await;
    t.cleanup().await;
}

/// The stack doctor's tools over `/mcp`, with the official MCP Python SDK: a service down, a
/// failed request and a failed tool call are all in `stack_status`; `/api/tools` and the page
/// show the tool calls.
#[tokio::test]
async fn the_stack_doctor_tools_over_mcp() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let t = common::sqlite().await;
    let db = &t.db;
    let mut echo = Svc::start().await;
    let spec = SystemSpec {
        hosts: vec![host()],
        services: vec![
            probed("echo", Layer::Inference, &echo),
            service("silent", Layer::Tools, None, None),
        ],
        ..Default::default()
    };
    docsdb::apply::apply(db, &spec, false).await.unwrap();
    add_chat_handle(db).await;
    let now = docsdb::now_ms();
    let mut failed = request("req-502".into(), now - 5_000, 502, 40.0);
    failed.error_type = Some("upstream_error".into());
    failed.target = Some("mini-ov".into());
    docsdb::request_log::insert_batch(
        db,
        &[request("req-ok".into(), now - 6_000, 200, 30.0), failed],
    )
    .await
    .unwrap();
    let tool = |ok: bool, ms: f64| docsdb::tool_calls::ToolCallRow {
        request_id: "run-7".into(),
        started_at_ms: now - 4_000,
        caller: "agent:web-researcher".into(),
        key_name: None,
        server: Some("web-fetch".into()),
        tool: "fetch".into(),
        duration_ms: ms,
        ok,
        error: None,
    };
    docsdb::tool_calls::insert_batch(
        db,
        &[
            tool(true, 120.0),
            tool(false, 80.0).with_error(
                "Error: MCP tool call failed with error message: the host is not on the allow-list",
            ),
        ],
    )
    .await
    .unwrap();
    // Probes a second apart: the MCP client takes seconds to start, and the details must
    // still show the last good probe among the last ten when it asks.
    let mon = Monitor::start(db, |c| c.probe_interval = Duration::from_secs(1)).await;
    mon.wait_status("echo", "up").await;
    echo.stop();
    mon.wait_status("echo", "down").await;

    let plan = serde_json::json!({
        "calls": [
            {"tool": "stack_status", "arguments": {}},
            {"tool": "service_details", "arguments": {"name": "echo"}},
            {"tool": "service_details", "arguments": {"name": "nope"}},
            {"tool": "recent_errors", "arguments": {"limit": 5}},
            {"tool": "recent_errors", "arguments": {"limit": 0}},
        ],
        "servers": [{"name": "monitor", "http": format!("{}/mcp", mon.url)}],
    });
    let report = testkit::mcp::python_sdk(&plan).await;
    let r = &report["monitor"];
    let mut names: Vec<&str> = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["recent_errors", "service_details", "stack_status"],
        "{r}"
    );
    let call = |i: usize| {
        let c = &r["calls"][i];
        (
            c["isError"] == true,
            c["text"].as_str().unwrap_or("").to_owned(),
        )
    };
    let (err, status) = call(0);
    assert!(!err, "{status}");
    for want in [
        "Overall: down. 1 problem: echo is down. silent has not been checked yet.",
        "\n- echo (inference layer, host mini): down since ",
        "failed probes in a row; last error: ",
        "- chat: 2 requests, 1 failed",
        "- fetch on web-fetch: 1 of 2 calls failed",
        "request to chat (target mini-ov) answered 502: upstream_error [request req-502]",
        "tool call fetch on web-fetch: Error: MCP tool call failed with error message: the host is not on the allow-list [request run-7]",
    ] {
        assert!(status.contains(want), "missing {want:?} in:\n{status}");
    }
    // Problems first: echo before silent (unknown).
    assert!(status.find("- echo").unwrap() < status.find("- silent").unwrap());
    let (err, details) = call(1);
    assert!(!err, "{details}");
    assert!(
        details.starts_with("- echo (inference layer, host mini): down"),
        "{details}"
    );
    assert!(
        details.contains("Last probes, newest first:\n- "),
        "{details}"
    );
    assert!(details.contains(": failed"), "{details}");
    assert!(details.contains(": ok, status 200"), "{details}");
    let (err, unknown) = call(2);
    assert!(err);
    assert_eq!(
        unknown,
        "No service is named `nope`. The services are: echo, silent."
    );
    // The probes failing again and again are one line, beside the request and the tool call.
    let (err, errors) = call(3);
    assert!(!err, "{errors}");
    assert!(errors.lines().count() <= 5, "{errors}");
    assert!(errors.contains("health probe of echo"), "{errors}");
    assert!(errors.contains("tool call fetch on web-fetch"), "{errors}");
    assert!(errors.contains(" times, the first "), "{errors}");
    assert!(errors.contains("[request req-502]"), "{errors}");
    let (err, refused) = call(4);
    assert!(err);
    assert_eq!(refused, "limit must be between 1 and 50 (got 0)");

    let (code, tools) = mon.get("/api/tools?request_id=run-7").await;
    assert_eq!(code, 200);
    assert_eq!(tools["tools"][0]["tool"], "fetch");
    assert_eq!(tools["tools"][0]["calls_24h"], 2);
    assert_eq!(tools["tools"][0]["errors_24h"], 1);
    assert_eq!(tools["calls"].as_array().unwrap().len(), 2);
    let (_, none) = mon.get("/api/tools?request_id=other").await;
    assert_eq!(none["calls"], serde_json::json!([]));
    let page = mon.text("/").await;
    assert!(
        page.contains(
            r#"<tr class="tool" data-tool="fetch"><td>fetch</td><td>web-fetch</td><td>2</td>"#
        ),
        "{page}"
    );
    mon.shutdown().await;
}
