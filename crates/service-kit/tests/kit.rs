//! The shared service pieces, on a real server on 127.0.0.1:0 with a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Extension;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use service_kit::body::{JsonBody, RawJson};
use service_kit::request_id::RequestId;
use service_kit::routes::Routes;
use service_kit::server::{self, ShutdownPlan, flush_hook};
use tokio::sync::oneshot;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Typed {
    model: String,
    n: u32,
}

struct Running {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), service_kit::Error>>,
    ready: Arc<AtomicBool>,
    flushed_after: Arc<AtomicUsize>,
    finished_requests: Arc<AtomicUsize>,
}

async fn start(body_limit: u64, drain: Duration) -> Running {
    let ready = Arc::new(AtomicBool::new(true));
    let finished = Arc::new(AtomicUsize::new(0));
    let flushed_after = Arc::new(AtomicUsize::new(usize::MAX));
    let r = ready.clone();
    let f = finished.clone();
    let app = Router::new()
        .route(
            "/echo",
            post(|JsonBody(v): JsonBody<Value>| async move { Json(v) }),
        )
        .route(
            "/typed",
            post(|JsonBody(t): JsonBody<Typed>| async move { t.model }),
        )
        .route(
            "/raw",
            post(|RawJson(b): RawJson| async move { b.len().to_string() }),
        )
        .route(
            "/rid",
            get(|Extension(id): Extension<RequestId>| async move { id.0 }),
        )
        .route(
            "/slow",
            get(
                move |axum::extract::Query(q): axum::extract::Query<Value>| {
                    let f = f.clone();
                    async move {
                        let ms = q["ms"].as_str().and_then(|s| s.parse().ok()).unwrap_or(300);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        f.fetch_add(1, Ordering::SeqCst);
                        "done"
                    }
                },
            ),
        )
        .merge(
            Routes::new()
                .health(move |()| {
                    let ok = r.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            Ok(())
                        } else {
                            Err("model still loading".into())
                        }
                    }
                })
                .into_router(),
        );
    let app = server::with_common_layers(app, body_limit);
    let listener = server::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let fa = flushed_after.clone();
    let fin = finished.clone();
    let plan = ShutdownPlan::new(
        async move {
            let _ = rx.await;
        },
        drain,
    )
    .on_shutdown(flush_hook(move || async move {
        // Record how many slow requests had completed when the hook ran.
        fa.store(fin.load(Ordering::SeqCst), Ordering::SeqCst);
    }));
    let done = tokio::spawn(server::serve(listener, app, plan));
    Running {
        base,
        stop: Some(tx),
        done,
        ready,
        flushed_after,
        finished_requests: finished,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    assert_eq!(
        res.headers().get("content-type").unwrap().to_str().unwrap(),
        "application/json"
    );
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn health_and_readiness() {
    let s = start(1 << 20, Duration::from_secs(5)).await;
    let c = client();
    let r = c.get(format!("{}/health", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    s.ready.store(false, Ordering::SeqCst);
    let r = c
        .get(format!("{}/health/ready", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["reason"],
        "model still loading"
    );
    // Liveness does not depend on readiness.
    assert_eq!(
        c.get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.ready.store(true, Ordering::SeqCst);
    assert_eq!(
        c.get(format!("{}/health/ready", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn request_ids_are_kept_generated_or_replaced() {
    let s = start(1 << 20, Duration::from_secs(5)).await;
    let c = client();
    let r = c
        .get(format!("{}/rid", s.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(
        r.text().await.unwrap(),
        "abc-123",
        "the handler sees the same id"
    );

    let r = c.get(format!("{}/rid", s.base)).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    assert_eq!(r.text().await.unwrap(), generated);

    let long = "x".repeat(500);
    let r = c
        .get(format!("{}/rid", s.base))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    let replaced = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(replaced, long);
    assert_eq!(replaced.len(), 32);
    // Errors carry the id too.
    let r = c
        .get(format!("{}/nope", s.base))
        .header("x-request-id", "e-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "e-1");
}

#[tokio::test]
async fn body_limit_is_413_in_openai_shape_with_or_without_length() {
    let s = start(1024, Duration::from_secs(5)).await;
    let c = client();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let r = c
        .post(format!("{}/echo", s.base))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("1024"));

    // Chunked, no Content-Length: the limit is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(100).map(|c| Ok(c.to_vec())).collect();
    let r = c
        .post(format!("{}/raw", s.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (status, _) = error_of(r).await;
    assert_eq!(status, 413);

    let r = c
        .post(format!("{}/raw", s.base))
        .header("content-type", "application/json")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "7");
}

#[tokio::test]
async fn bad_bodies_and_paths_get_openai_errors() {
    let s = start(1 << 20, Duration::from_secs(5)).await;
    let c = client();
    let post = |path: &str, ct: &str, body: &'static str| {
        c.post(format!("{}{path}", s.base))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (st, b) = error_of(
        post("/echo", "application/json", "{not json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(b["error"]["type"], "invalid_request_error");

    let (st, b) = error_of(post("/echo", "text/plain", "{}").await.unwrap()).await;
    assert_eq!(st, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );

    let (st, b) = error_of(
        post("/typed", "application/json", r#"{"model":"m","n":"two"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(b["error"]["param"], "n");

    let (st, _) = error_of(
        post("/typed", "application/json; charset=utf-8", r#"{"n":1}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 400, "a missing field is a 400");

    let ok = post(
        "/typed",
        "application/json; charset=utf-8",
        r#"{"model":"m","n":1}"#,
    )
    .await
    .unwrap();
    assert_eq!(ok.text().await.unwrap(), "m");

    let (st, b) = error_of(
        c.get(format!("{}/v1/nothing", s.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((st, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, _) = error_of(c.delete(format!("{}/echo", s.base)).send().await.unwrap()).await;
    assert_eq!(st, 405);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_flushes() {
    let mut s = start(1 << 20, Duration::from_secs(30)).await;
    let c = client();
    let url = format!("{}/slow?ms=400", s.base);
    let in_flight =
        tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() });
    // Let the request reach the handler before the signal.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    assert_eq!(
        in_flight.await.unwrap(),
        "done",
        "the in-flight request completed"
    );
    s.done.await.unwrap().unwrap();
    assert_eq!(s.finished_requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.flushed_after.load(Ordering::SeqCst),
        1,
        "the flush hook ran after the in-flight request finished"
    );
    // The listener is closed.
    assert!(
        client()
            .get(format!("{}/health", s.base))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn drain_timeout_cuts_stuck_requests_and_still_flushes() {
    let mut s = start(1 << 20, Duration::from_millis(200)).await;
    let url = format!("{}/slow?ms=60000", s.base);
    let stuck = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    // Bounded so a regression fails instead of hanging; the drain timeout is 0.2 s.
    tokio::time::timeout(Duration::from_secs(20), s.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        s.flushed_after.load(Ordering::SeqCst),
        0,
        "the hook ran; the stuck request never finished"
    );
    stuck.abort();
}

#[cfg(target_os = "linux")]
#[test]
fn notify_ready_sends_ready_to_the_systemd_socket() {
    let dir = tempfile_dir();
    let path = dir.join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    service_kit::server::notify_ready_to(path.as_os_str()).unwrap();
    let mut buf = [0u8; 32];
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kit-notify-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn tasks_stop_their_loops_finish_their_work_and_report_what_outlives_the_wait() {
    use service_kit::tasks::Tasks;
    let tasks = Tasks::new();
    // A loop that would run forever ends at shutdown.
    tasks.spawn_loop("forever", std::future::pending());
    // Work in progress is finished, not cut off.
    let done = Arc::new(AtomicBool::new(false));
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let d = done.clone();
    tasks.spawn(async move {
        let _ = wait.await;
        d.store(true, Ordering::SeqCst);
    });
    let t = tasks.clone();
    let shutdown =
        tokio::spawn(async move { t.shutdown(std::time::Duration::from_secs(60)).await });
    go.send(()).unwrap();
    assert!(shutdown.await.unwrap(), "every task ended");
    assert!(done.load(Ordering::SeqCst));

    // Work that never ends is reported once the wait is over.
    let stuck = Tasks::new();
    stuck.spawn(std::future::pending());
    assert!(!stuck.shutdown(std::time::Duration::from_millis(20)).await);
}
