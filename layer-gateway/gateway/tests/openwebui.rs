//! What Open WebUI 0.12.4 sends (recorded) passes through unchanged but for `model` — all at
//! once, as Open WebUI sends its background calls beside the streaming chat.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Gateway, handle, spec, target};
use docsdb::spec::{Strategy, TargetSpec};
use testkit::upstream::MockUpstream;

#[tokio::test]
async fn every_recorded_request_passes_unchanged_but_for_model() {
    let up = MockUpstream::start("real").await;
    let gw = Gateway::start(
        spec(vec![handle(
            "mock-gpt",
            Strategy::Priority,
            vec![target("real", &up.base_url(), "qwen-real")],
        )]),
        |_| {},
    )
    .await;
    let records = testkit::openwebui::records();
    let mut expected = Vec::new();
    let mut calls = Vec::new();
    for rec in &records {
        let method = rec["method"].as_str().unwrap();
        let path = rec["path"].as_str().unwrap().to_owned();
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in rec["headers"].as_object().unwrap() {
            if k.eq_ignore_ascii_case("content-length") {
                continue;
            }
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.as_str().unwrap().parse().unwrap(),
            );
        }
        let client = gw.client();
        let url = format!("{}{path}", gw.url);
        if method == "GET" {
            calls.push(tokio::spawn(async move {
                let r = client.get(url).headers(headers).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap(), false)
            }));
            continue;
        }
        let body = serde_json::to_string(&rec["body"]).unwrap();
        let stream = rec["body"]["stream"] == true;
        let mut want = body.replacen("\"model\":\"mock-gpt\"", "\"model\":\"qwen-real\"", 1);
        assert_ne!(want, body, "the fixture names the handle mock-gpt");
        if stream {
            // The one addition: usage is asked for, to count tokens (and hidden from the client).
            want.insert_str(
                want.len() - 1,
                ",\"stream_options\":{\"include_usage\":true}",
            );
        }
        expected.push(want);
        let tools = rec["body"]["tools"].is_array();
        calls.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            if stream {
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                if tools {
                    assert!(
                        text.contains("\"tool_calls\"") && text.contains("get_weather"),
                        "tool calls stream back"
                    );
                }
                assert!(
                    !text.contains("\"usage\""),
                    "usage hidden: Open WebUI did not ask"
                );
            }
            (status, text, stream)
        }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        let (status, text, _) = c.await.unwrap();
        statuses.push(status);
        if text.starts_with("{\"object\":\"list\"") {
            assert!(text.contains("\"id\":\"mock-gpt\""), "{text}");
        }
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mut got: Vec<String> = up
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "byte for byte but for model");
    }
    assert!(
        up.requests()
            .iter()
            .all(|r| r.headers.get("accept-encoding").is_none())
    );
}

/// With `ENABLE_FORWARD_USER_INFO_HEADERS=True` Open WebUI names its user and chat on every
/// call: each request-log row keeps them — answered, streamed or refused — beside the key.
#[tokio::test]
async fn forwarded_user_headers_are_kept_in_the_request_log() {
    let up = MockUpstream::start("real").await;
    let mut gw = Gateway::start(
        spec(vec![handle(
            "mock-gpt",
            Strategy::Priority,
            vec![target("real", &up.base_url(), "qwen-real")],
        )]),
        |_| {},
    )
    .await;
    let chat = |stream: bool, model: &str| {
        serde_json::json!({
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": "hello"}],
        })
    };
    for (body, status) in [
        (chat(false, "mock-gpt"), 200),
        (chat(true, "mock-gpt"), 200),
        (chat(false, "no-such-handle"), 404),
    ] {
        let res = gw
            .client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .headers(Gateway::open_webui_user())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        let _ = res.text().await.unwrap();
    }
    // The same request without the headers names nobody.
    let res = gw
        .post("/v1/chat/completions", None, &chat(false, "mock-gpt"))
        .await;
    assert_eq!(res.status(), 200);
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows[..3] {
        assert!(Gateway::names_open_webui_user(r), "{r}");
    }
    assert_eq!(rows[2]["status"], 404);
    assert!(rows[3]["user_id"].is_null() && rows[3]["chat_id"].is_null());
}

/// Open WebUI sends its tool definitions with every chat. A target with `max_tools_bytes`
/// gets them only when they fit: `drop` sends the chat without them (and says so in a
/// header), `refuse` passes it to the next target, and with no target left the client gets a
/// 400 that names the limit — not an obscure failure of a small backend.
#[tokio::test]
async fn tools_over_a_targets_limit_are_dropped_or_refused() {
    use docsdb::spec::OverTools;
    let small = MockUpstream::start("small").await;
    let big = MockUpstream::start("big").await;
    let dead = common::dead_port_url().await;
    let limited = |over: OverTools| {
        let mut t = target("small", &small.base_url(), "tiny");
        t.max_tools_bytes = Some(1000);
        t.over_tools = over;
        t
    };
    let mut gw = Gateway::start(
        spec(vec![
            handle("drops", Strategy::Priority, vec![limited(OverTools::Drop)]),
            handle(
                "refuses",
                Strategy::Priority,
                vec![limited(OverTools::Refuse)],
            ),
            handle(
                "falls-back",
                Strategy::Priority,
                vec![
                    limited(OverTools::Refuse),
                    target("big", &big.base_url(), "large"),
                ],
            ),
            // The big target first, but down: its circuit opens.
            handle(
                "big-is-down",
                Strategy::Priority,
                vec![
                    target("down", &dead, "large"),
                    TargetSpec {
                        priority: 1,
                        ..limited(OverTools::Refuse)
                    },
                ],
            ),
        ]),
        |_| {},
    )
    .await;
    // What Open WebUI sent with tools on (recorded), to each handle.
    let recorded = testkit::openwebui::records()
        .into_iter()
        .find(|r| r["body"]["tools"].is_array() && r["body"]["stream"] == true)
        .expect("a recorded chat with tools");
    let tools_len = serde_json::to_vec(&recorded["body"]["tools"])
        .unwrap()
        .len();
    assert!(tools_len > 1000, "the recorded tools are over the limit");
    let with_model = |model: &str| {
        let mut b = recorded["body"].clone();
        b["model"] = model.into();
        b
    };

    let res = gw
        .post("/v1/chat/completions", None, &with_model("drops"))
        .await;
    assert_eq!(res.status(), 200);
    let dropped: usize = res.headers()["x-homelab-tools-dropped"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped > 1000, "the header says how much was left out");
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let sent: serde_json::Value =
        serde_json::from_slice(&small.requests().last().unwrap().body).unwrap();
    assert!(
        sent.get("tools").is_none() && sent.get("tool_choice").is_none(),
        "{sent}"
    );
    assert_eq!(
        sent["messages"], recorded["body"]["messages"],
        "the chat itself unchanged"
    );
    assert_eq!(sent["model"], "tiny");

    let res = gw
        .post("/v1/chat/completions", None, &with_model("refuses"))
        .await;
    assert_eq!(res.status(), 400);
    let e: serde_json::Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");
    assert_eq!(e["error"]["param"], "tools");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("small/tiny takes 1000 bytes") && msg.contains("`refuses`"),
        "{msg}"
    );

    let before = small.requests().len();
    let res = gw
        .post("/v1/chat/completions", None, &with_model("falls-back"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-homelab-target"], "big");
    assert!(res.headers().get("x-homelab-tools-dropped").is_none());
    let _ = res.text().await.unwrap();
    let sent: serde_json::Value =
        serde_json::from_slice(&big.requests().last().unwrap().body).unwrap();
    assert!(sent["tools"].is_array(), "the big target gets the tools");
    // Without tools the small target serves, as its priority says.
    let plain = serde_json::json!({
        "model": "falls-back",
        "messages": [{"role": "user", "content": "hi"}],
    });
    let res = gw.post("/v1/chat/completions", None, &plain).await;
    assert_eq!(res.headers()["x-homelab-target"], "small");
    assert_eq!(small.requests().len(), before + 1);
    // A target skipped because it is down is not a target too small for the tools: with the
    // big one's circuit open, a request with tools is told the backends are unavailable.
    let plain = |model: &str| serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..3 {
        let r = gw
            .post("/v1/chat/completions", None, &plain("big-is-down"))
            .await;
        assert_eq!(r.status(), 200, "served by the small one meanwhile");
    }
    let res = gw
        .post("/v1/chat/completions", None, &with_model("big-is-down"))
        .await;
    assert_eq!(res.status(), 503, "{:?}", res.text().await);
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert_eq!(rows[1]["status"], 400);
    assert_eq!(rows[1]["error_type"], "tools_too_large");
}
