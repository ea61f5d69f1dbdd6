//! What the gateway does for a backend that is alive but slow to answer — loading its model —
//! and what it tells the backend and the log: the priority of Open WebUI's background tasks,
//! the time to the first token and the generation span. (A real engine that is busy is
//! behind the gateway in `platform/homelab/tests/busy.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Gateway, handle, spec, sse_data, target};
use docsdb::spec::Strategy;
use serde_json::{Value, json};
use testkit::upstream::{Behavior, MockUpstream};

#[tokio::test]
async fn a_loading_backend_is_waited_for_not_failed() {
    let up = MockUpstream::start_with(
        "engine",
        Behavior {
            loading_for: Some(6),
            ..Default::default()
        },
    )
    .await;
    let gw = Gateway::start(
        spec(vec![handle(
            "local",
            Strategy::Priority,
            vec![target("engine", &up.base_url(), "m")],
        )]),
        |c| c.breaker_failures = 2,
    )
    .await;
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "local", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 200, "answered once loaded");
    assert_eq!(up.hits(), 7, "asked again until it answered");
    // Loading is not failing: the breaker (2 failures) stayed closed, one attempt is logged.
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "local", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut gw = gw;
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert_eq!(rows[0]["attempts"], 1, "{rows:?}");

    // A backend that keeps loading past the wait: 503 that says so.
    let slow = MockUpstream::start_with(
        "engine",
        Behavior {
            loading_for: Some(usize::MAX),
            ..Default::default()
        },
    )
    .await;
    let gw = Gateway::start(
        spec(vec![handle(
            "local",
            Strategy::Priority,
            vec![target("engine", &slow.base_url(), "m")],
        )]),
        |c| c.loading_wait = Duration::from_millis(600),
    )
    .await;
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "local", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let v: Value = res.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still loading"),
        "{v}"
    );
    assert!(slow.hits() >= 2);
}

#[tokio::test]
async fn open_webui_background_tasks_go_with_background_priority() {
    let up = MockUpstream::start("engine").await;
    let gw = Gateway::start(
        spec(vec![handle(
            "local",
            Strategy::Priority,
            vec![target("engine", &up.base_url(), "m")],
        )]),
        |_| {},
    )
    .await;
    let bodies = testkit::openwebui::bodies_for("local");
    // Title, chat, follow-ups, tags, as Open WebUI sent them.
    for body in &bodies[testkit::openwebui::TITLE..=testkit::openwebui::TAGS] {
        let res = gw.post("/v1/chat/completions", None, body).await;
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await;
    }
    let got: Vec<Option<String>> = up
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get("x-homelab-priority")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    let bg = Some("background".to_owned());
    assert_eq!(got, [bg.clone(), None, bg.clone(), bg]);

    // The client's own header wins, and a bad one is refused before any backend sees it.
    let title = bodies[testkit::openwebui::TITLE].clone();
    let send = |p: &'static str| {
        gw.client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .header("x-homelab-priority", p)
            .json(&title)
            .send()
    };
    assert_eq!(send("interactive").await.unwrap().status(), 200);
    let last = up.requests().pop().unwrap();
    assert_eq!(last.headers["x-homelab-priority"], "interactive");
    let res = send("asap").await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("`asap`"));
    assert_eq!(up.hits(), 5);
}

#[tokio::test]
async fn time_to_first_token_and_generation_span_are_measured_not_guessed() {
    // A stream of 6 chunks 30 ms apart, and a plain answer without `timings`.
    let up = MockUpstream::start_with(
        "engine",
        Behavior {
            chunks: 6,
            chunk_delay: Duration::from_millis(30),
            ..Default::default()
        },
    )
    .await;
    let mut gw = Gateway::start(
        spec(vec![handle(
            "local",
            Strategy::Priority,
            vec![target("engine", &up.base_url(), "m")],
        )]),
        |_| {},
    )
    .await;
    let body =
        json!({"model": "local", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let events = sse_data(gw.post("/v1/chat/completions", None, &body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let plain = json!({"model": "local", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        gw.post("/v1/chat/completions", None, &plain).await.status(),
        200
    );
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    let streamed = &rows[0];
    let span = streamed["generation_ms"].as_f64().unwrap();
    assert!(
        span >= 6.0 * 30.0,
        "from the first data event to the last: {streamed}"
    );
    assert!(span <= streamed["latency_ms"].as_f64().unwrap());
    assert_eq!(streamed["completion_tokens"], 6);
    // A plain answer without timings has no span: no rate is made up from it.
    assert_eq!(rows[1]["generation_ms"], Value::Null, "{}", rows[1]);
    assert!(rows[1]["ttft_ms"].as_f64().is_some());
}
