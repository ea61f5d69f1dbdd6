//! OpenTelemetry traces (the `otlp` feature): a span per request with a child span per
//! attempt, exported over OTLP/HTTP (JSON) to a collector that cannot run here — a receiver
//! speaking the collector's `POST /v1/traces` wire protocol stands in — and the W3C trace
//! context passed to the backends, traced or not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use common::{Gateway, handle, spec, target};
use docsdb::spec::Strategy;
use serde_json::{Value, json};
use testkit::upstream::{Behavior, MockUpstream};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: keeps every span it is sent.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/json");
                    let req: Value = serde_json::from_slice(&body).unwrap();
                    for rs in req["resourceSpans"].as_array().unwrap() {
                        let service = &rs["resource"]["attributes"][0];
                        assert_eq!(service["key"], "service.name");
                        assert_eq!(service["value"]["stringValue"], "homelab-gateway");
                        for ss in rs["scopeSpans"].as_array().unwrap() {
                            kept.lock()
                                .unwrap()
                                .extend(ss["spans"].as_array().unwrap().iter().cloned());
                        }
                    }
                    axum::Json(json!({}))
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Collector { url, spans }
    }

    /// Waits (up to 15 s) for the spans of trace `trace_id`, until `n` have come.
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        for _ in 0..150 {
            let got: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["traceId"] == trace_id)
                .cloned()
                .collect();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("fewer than {n} spans of trace {trace_id} arrived");
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map_or(&Value::Null, |a| &a["value"])
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_request_and_its_attempts_are_spans_of_the_clients_trace() {
    let collector = Collector::start().await;
    let failing = MockUpstream::start_with(
        "failing",
        Behavior {
            fail_status: Some(500),
            ..Default::default()
        },
    )
    .await;
    let good = MockUpstream::start("good").await;
    let mut second = target("good", &good.base_url(), "m-good");
    second.priority = 1;
    let system = spec(vec![handle(
        "traced",
        Strategy::Priority,
        vec![target("failing", &failing.base_url(), "m-bad"), second],
    )]);
    let endpoint = collector.url.clone();
    let gw = Gateway::start(system, move |c| c.otlp_endpoint = Some(endpoint)).await;
    let client = gw.client();

    let res = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "vendor=1")
        .json(&chat("traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let spans = collector.trace(TRACE, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["parentSpanId"], PARENT);
    assert_eq!(server["name"], "chat traced");
    assert_eq!(
        attr(server, "gen_ai.request.model")["stringValue"],
        "traced"
    );
    assert_eq!(attr(server, "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(server, "homelab.attempts")["intValue"], "2");
    assert_eq!(
        attr(server, "gen_ai.response.model")["stringValue"],
        "m-good"
    );
    assert!(attr(server, "gen_ai.usage.input_tokens")["intValue"].is_string());
    assert_eq!(server["status"]["code"], 0);
    let nanos = |s: &Value, key: &str| s[key].as_str().unwrap().parse::<u64>().unwrap();
    let start = |s: &Value| nanos(s, "startTimeUnixNano");
    let end = |s: &Value| nanos(s, "endTimeUnixNano");
    let mut attempts: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    attempts.sort_by_key(|s| start(s));
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a["parentSpanId"], server["spanId"]);
        assert!(start(a) >= start(server) && end(a) <= end(server));
    }
    assert_eq!(attempts[0]["name"], "chat m-bad");
    assert_eq!(attempts[0]["status"]["code"], 2);
    assert!(
        attempts[0]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    assert_eq!(attr(attempts[0], "homelab.outcome")["stringValue"], "error");
    assert_eq!(attempts[1]["status"]["code"], 0);
    assert_eq!(attr(attempts[1], "homelab.outcome")["stringValue"], "ok");
    assert_eq!(
        attr(attempts[1], "http.response.status_code")["intValue"],
        "200"
    );

    // Each backend was sent its own attempt's span as the parent, and the client's state.
    for (up, span) in [(&failing, attempts[0]), (&good, attempts[1])] {
        let r = up.requests().pop().unwrap();
        let sent = r.headers["traceparent"].to_str().unwrap().to_owned();
        assert_eq!(
            sent,
            format!("00-{TRACE}-{}-01", span["spanId"].as_str().unwrap())
        );
        assert_eq!(r.headers["tracestate"], "vendor=1");
    }

    // A trace the client does not sample is not recorded; one without a traceparent is a
    // root of its own.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("traceparent", format!("00-{unsampled}-{PARENT}-00"))
        .json(&chat("traced"))
        .send()
        .await
        .unwrap();
    let res = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&chat("no-such-handle"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let root = loop {
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "chat no-such-handle")
            .cloned();
        if let Some(s) = found {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(root.get("parentSpanId").is_none());
    assert_eq!(attr(&root, "error.type")["stringValue"], "model_not_found");
    // A 4xx is the client's: the span itself did not fail.
    assert_eq!(root["status"]["code"], 0);
    assert!(
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .all(|s| s["traceId"] != unsampled)
    );
    // Counted once the collector has answered.
    metric_reaches(
        &gw,
        "homelab_gateway_trace_spans_total{result=\"exported\"} 4",
    )
    .await;
}

/// Waits (up to 15 s) for `/metrics` to hold `line`.
async fn metric_reaches(gw: &Gateway, line: &str) {
    for _ in 0..150 {
        if gw.metrics().await.contains(line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {line} in\n{}", gw.metrics().await);
}

/// A gateway exporting to `endpoint` (if any), with one upstream behind handle `plain`.
async fn plain_gateway(endpoint: Option<String>) -> (MockUpstream, Gateway) {
    let up = MockUpstream::start("up").await;
    let system = spec(vec![handle(
        "plain",
        Strategy::Priority,
        vec![target("up", &up.base_url(), "m")],
    )]);
    let gw = Gateway::start(system, move |c| c.otlp_endpoint = endpoint).await;
    (up, gw)
}

#[tokio::test]
async fn without_export_the_clients_trace_context_reaches_the_backend_as_it_came() {
    let (up, gw) = plain_gateway(None).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let res = gw
        .client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("traceparent", &tp)
        .json(&chat("plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let r = up.requests().pop().unwrap();
    assert_eq!(r.headers["traceparent"], tp.as_str());
    assert!(!gw.metrics().await.contains("trace_spans"));
}

#[tokio::test]
async fn spans_a_collector_does_not_take_are_counted_as_failed() {
    let (_up, gw) = plain_gateway(Some(common::dead_port_url().await)).await;
    let res = gw.post("/v1/chat/completions", None, &chat("plain")).await;
    assert_eq!(
        res.status(),
        200,
        "a collector that is down costs requests nothing"
    );
    metric_reaches(
        &gw,
        "homelab_gateway_trace_spans_total{result=\"failed\"} 2",
    )
    .await;
}
