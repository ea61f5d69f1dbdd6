//! What Open WebUI 0.12.4 sends (recorded) passes through unchanged but for `model` — all at
//! once, as Open WebUI sends its background calls beside the streaming chat.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Gateway, handle, spec, target};
use docsdb::spec::Strategy;
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
