//! Pass-through, streaming, fallback, retries, the breaker, timeouts and the request log,
//! against upstream test servers speaking the OpenAI API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::time::Duration;

use common::{Gateway, dead_port_url, handle, spec, sse_data, target};
use docsdb::spec::Strategy;
use futures_util::StreamExt;
use serde_json::{Value, json};
use testkit::upstream::{Behavior, MockUpstream};

#[tokio::test]
async fn body_passes_byte_for_byte_except_model() {
    let up = MockUpstream::start("a").await;
    let mut t = target("a", &up.base_url(), "qwen2.5:7b");
    t.params = Some(serde_json::from_value(json!({"temperature": 0.2, "top_k": 40})).unwrap());
    let mut gw = Gateway::start(
        spec(vec![handle("chat", Strategy::Priority, vec![t])]),
        |_| {},
    )
    .await;
    // Odd spacing, an unknown field, a nested "model", a client temperature.
    let body = "{ \"messages\":[{\"role\":\"user\",\"content\":\"say \\\"model\\\"\"}] ,\n \"model\" : \"chat\", \"x_vendor\": {\"model\": \"keep\"}, \"temperature\": 0.9 }";
    let res = gw
        .client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .header("x-request-id", "rid-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-homelab-handle"], "chat");
    assert_eq!(res.headers()["x-homelab-target"], "a");
    assert_eq!(res.headers()["x-homelab-attempts"], "1");
    assert_eq!(res.headers()["x-request-id"], "rid-1");
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["model"], "qwen2.5:7b",
        "the upstream saw the upstream model name"
    );
    let got = &up.requests()[0];
    let expected = body
        .replace("\"model\" : \"chat\"", "\"model\" : \"qwen2.5:7b\"")
        .replace(" }", " ,\"top_k\":40}");
    assert_eq!(
        std::str::from_utf8(&got.body).unwrap(),
        expected,
        "only model changed; top_k filled in, temperature kept"
    );
    assert_eq!(got.headers["x-request-id"], "rid-1");
    assert!(
        got.headers.get("authorization").is_none(),
        "the client's key is not forwarded"
    );
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], "rid-1");
    assert_eq!(rows[0]["target"], "a");
    assert_eq!(rows[0]["upstream_model"], "qwen2.5:7b");
    assert_eq!(rows[0]["prompt_tokens"], 7);
    assert_eq!(rows[0]["completion_tokens"], 3);
    assert_eq!(rows[0]["streamed"], false);
}

#[tokio::test]
async fn streaming_arrives_incrementally_and_usage_is_counted_but_hidden() {
    let up = MockUpstream::start_with(
        "a",
        Behavior {
            chunks: 4,
            hold_after: Some(2),
            ..Default::default()
        },
    )
    .await;
    let mut gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![target("a", &up.base_url(), "m")],
        )]),
        |_| {},
    )
    .await;
    let res = gw
        .post("/v1/chat/completions", None, &json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    // The upstream holds after two events; they must reach us before it goes on. A gateway
    // that buffered the answer would never deliver them and this would time out.
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data:").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("chunks held back")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    up.release();
    while let Some(c) = body.next().await {
        seen.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
    }
    let mut d = contract::sse::SseDecoder::new();
    let events: Vec<String> = d
        .push(seen.as_bytes())
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "the client did not ask for usage: {events:?}"
    );
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 ");
    // We asked the upstream for usage on the client's behalf.
    assert_eq!(
        up.requests()[0].json()["stream_options"]["include_usage"],
        true
    );
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert_eq!(
        (
            rows[0]["streamed"].clone(),
            rows[0]["completion_tokens"].clone()
        ),
        (json!(true), json!(4))
    );
    assert_eq!(rows[0]["error_type"], Value::Null);
    assert!(rows[0]["ttft_ms"].as_f64().is_some());
}

#[tokio::test]
async fn usage_chunk_reaches_clients_that_ask() {
    let up = MockUpstream::start("a").await;
    let gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![target("a", &up.base_url(), "m")],
        )]),
        |_| {},
    )
    .await;
    let res = gw
        .post("/chat/completions", None, &json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true}, "messages": []}))
        .await;
    let events = sse_data(res).await;
    let usage: Vec<&String> = events.iter().filter(|e| e.contains("\"usage\"")).collect();
    assert_eq!(usage.len(), 1, "{events:?}");
    assert!(usage[0].contains("\"choices\":[]"));
}

#[tokio::test]
async fn falls_back_in_priority_order_and_retries_refused_connections() {
    let failing = MockUpstream::start_with(
        "fail",
        Behavior {
            fail_status: Some(500),
            ..Default::default()
        },
    )
    .await;
    let ok = MockUpstream::start("ok").await;
    let dead = dead_port_url().await;
    let mut t_dead = target("dead", &dead, "m");
    t_dead.priority = 0;
    let mut t_fail = target("fail", &failing.base_url(), "m");
    t_fail.priority = 1;
    let mut t_ok = target("ok", &ok.base_url(), "m");
    t_ok.priority = 2;
    // Listed out of order: priority decides.
    let gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![t_ok, t_fail, t_dead],
        )]),
        |c| {
            c.retries = 1;
            c.breaker_failures = 100;
        },
    )
    .await;
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "chat", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-homelab-target"], "ok");
    // dead: 2 attempts (a refused connection is retried once), fail: 1 (a 500 is not), ok: 1.
    assert_eq!(res.headers()["x-homelab-attempts"], "4");
    assert_eq!(failing.hits(), 1);
    assert_eq!(ok.hits(), 1);
    // The retry and each attempt's outcome, in the metrics.
    let metrics = gw.metrics().await;
    for line in [
        "homelab_gateway_retries_total{handle=\"chat\",target=\"dead/m\"} 1",
        "homelab_gateway_upstream_attempts_total{handle=\"chat\",target=\"dead/m\",outcome=\"error\"} 2",
        "homelab_gateway_upstream_attempts_total{handle=\"chat\",target=\"fail/m\",outcome=\"error\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
}

#[tokio::test]
async fn a_429_falls_back_and_a_400_is_passed_through() {
    let limited = MockUpstream::start_with(
        "limited",
        Behavior {
            fail_status: Some(429),
            ..Default::default()
        },
    )
    .await;
    let ok = MockUpstream::start("ok").await;
    let mut second = target("ok", &ok.base_url(), "m");
    second.priority = 1;
    let gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![target("limited", &limited.base_url(), "m"), second],
        )]),
        |_| {},
    )
    .await;
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "chat", "messages": []}),
        )
        .await;
    assert_eq!(res.headers()["x-homelab-target"], "ok");

    limited.set(Behavior {
        fail_status: Some(400),
        ..Default::default()
    });
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "chat", "messages": []}),
        )
        .await;
    assert_eq!(
        res.status(),
        400,
        "a client error is the client's answer, not a reason to fall back"
    );
    assert_eq!(res.headers()["x-homelab-target"], "limited");
}

#[tokio::test]
async fn breaker_opens_skips_the_target_and_a_probe_closes_it() {
    let flaky = MockUpstream::start_with(
        "flaky",
        Behavior {
            fail_status: Some(503),
            ..Default::default()
        },
    )
    .await;
    let backup = MockUpstream::start("backup").await;
    let mut b = target("backup", &backup.base_url(), "m");
    b.priority = 1;
    let gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![target("flaky", &flaky.base_url(), "m"), b],
        )]),
        |c| {
            c.breaker_failures = 2;
            c.breaker_cooldown = Duration::from_millis(300);
        },
    )
    .await;
    let req = json!({"model": "chat", "messages": []});
    for _ in 0..2 {
        assert_eq!(
            gw.post("/v1/chat/completions", None, &req).await.status(),
            200
        );
    }
    assert_eq!(flaky.hits(), 2);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("homelab_gateway_circuit_state{target=\"flaky/m\"} 1"),
        "{metrics}"
    );
    // Open: the flaky target is skipped, not tried, and the skip is counted.
    let res = gw.post("/v1/chat/completions", None, &req).await;
    assert_eq!(res.headers()["x-homelab-attempts"], "1");
    assert_eq!(flaky.hits(), 2);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "homelab_gateway_skipped_targets_total{handle=\"chat\",target=\"flaky/m\",reason=\"circuit_open\"} 1"
        ),
        "{metrics}"
    );
    // It recovers; after the cooldown one probe goes to it and closes the breaker.
    flaky.set(Behavior::default());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let res = gw.post("/v1/chat/completions", None, &req).await;
    assert_eq!(res.headers()["x-homelab-target"], "flaky");
    let res = gw.post("/v1/chat/completions", None, &req).await;
    assert_eq!(res.headers()["x-homelab-target"], "flaky", "closed again");
    assert_eq!(flaky.hits(), 4);
}

#[tokio::test]
async fn first_byte_timeout_falls_back_and_all_down_is_503() {
    let slow = MockUpstream::start_with(
        "slow",
        Behavior {
            delay: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await;
    let fast = MockUpstream::start("fast").await;
    let mut s = target("slow", &slow.base_url(), "m");
    s.first_byte_timeout_ms = Some(200);
    let mut f = target("fast", &fast.base_url(), "m");
    f.priority = 1;
    let mut only_slow = s.clone();
    only_slow.endpoint = Some("slow".into());
    let dead = target("dead", &dead_port_url().await, "m");
    let gw = Gateway::start(
        spec(vec![
            handle("chat", Strategy::Priority, vec![s, f]),
            handle("slow-only", Strategy::Priority, vec![only_slow]),
            handle("down", Strategy::Priority, vec![dead]),
        ]),
        |c| c.retries = 0,
    )
    .await;
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "chat", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-homelab-target"], "fast");

    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "slow-only", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 504);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");

    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "down", "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        !msg.contains("127.0.0.1"),
        "backend addresses stay in the log: {msg}"
    );
}

#[tokio::test]
async fn a_stream_that_dies_ends_with_an_error_event_and_is_logged_failed() {
    let up = MockUpstream::start_with(
        "a",
        Behavior {
            chunks: 5,
            die_after: Some(2),
            chunk_delay: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await;
    let mut gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![target("a", &up.base_url(), "m")],
        )]),
        |_| {},
    )
    .await;
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "chat", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let events = sse_data(res).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_error", "{events:?}");
    assert!(
        !events.last().unwrap().contains("127.0.0.1"),
        "the backend is not named to the client"
    );
    assert!(
        events.iter().any(|e| e.contains("tok1")),
        "what arrived before the failure was delivered"
    );
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert_eq!(rows[0]["error_type"], "upstream_stream_error");
}

#[tokio::test]
async fn a_stream_that_goes_quiet_hits_the_idle_timeout() {
    let up = MockUpstream::start_with(
        "a",
        Behavior {
            chunks: 3,
            hold_after: Some(2),
            ..Default::default()
        },
    )
    .await;
    let mut t = target("a", &up.base_url(), "m");
    t.idle_timeout_ms = Some(300);
    let mut gw = Gateway::start(
        spec(vec![handle("chat", Strategy::Priority, vec![t])]),
        |_| {},
    )
    .await;
    let res = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "chat", "stream": true, "messages": []}),
        )
        .await;
    let events = sse_data(res).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    up.release();
    gw.shutdown().await;
    assert_eq!(gw.log_rows().await[0]["error_type"], "upstream_timeout");
}

#[tokio::test]
async fn compressed_upstream_bodies_reach_the_client_intact() {
    let up = MockUpstream::start_with(
        "gz",
        Behavior {
            gzip: true,
            ..Default::default()
        },
    )
    .await;
    let gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![target("gz", &up.base_url(), "m")],
        )]),
        |_| {},
    )
    .await;
    let res = gw
        .client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("accept-encoding", "gzip, deflate, br")
        .json(&json!({"model": "chat", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-encoding"],
        "gzip",
        "passed with its header, not decoded twice"
    );
    let raw = res.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_string(&mut text)
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(
        up.requests()[0].headers.get("accept-encoding").is_none(),
        "we do not ask upstreams to compress"
    );
}

#[tokio::test]
async fn strategies_spread_load() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let mut ta = target("a", &a.base_url(), "m");
    ta.weight = 3;
    let tb = target("b", &b.base_url(), "m");
    let gw = Gateway::start(
        spec(vec![handle("w", Strategy::Weighted, vec![ta, tb])]),
        |_| {},
    )
    .await;
    for _ in 0..80 {
        assert_eq!(
            gw.post(
                "/v1/chat/completions",
                None,
                &json!({"model": "w", "messages": []})
            )
            .await
            .status(),
            200
        );
    }
    assert_eq!(a.hits() + b.hits(), 80);
    assert!(
        a.hits() > b.hits(),
        "weight 3 beats weight 1: {} vs {}",
        a.hits(),
        b.hits()
    );
    assert!(b.hits() > 0);
}

#[tokio::test]
async fn completions_and_embeddings_pass_through() {
    let up = MockUpstream::start("a").await;
    let gw = Gateway::start(
        spec(vec![handle(
            "emb",
            Strategy::Priority,
            vec![target("a", &up.base_url(), "nomic")],
        )]),
        |_| {},
    )
    .await;
    let v: Value = gw
        .post(
            "/v1/embeddings",
            None,
            &json!({"model": "emb", "input": ["x", "y"], "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["model"], "nomic");
    let v: Value = gw
        .post(
            "/completions",
            None,
            &json!({"model": "emb", "prompt": "Once"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(up.requests()[1].path, "/v1/completions");
}
