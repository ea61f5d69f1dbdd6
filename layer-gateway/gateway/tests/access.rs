//! Keys, limits, hot reload, error answers, search, metrics and the request log on shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Gateway, handle, spec, target};
use docsdb::keys::{self, NewKey};
use docsdb::spec::{Api, EndpointSpec, Strategy, SystemSpec};
use serde_json::{Value, json};
use testkit::searxng::MockSearxng;
use testkit::upstream::MockUpstream;

async fn two_handles(up: &MockUpstream) -> SystemSpec {
    spec(vec![
        handle(
            "chat",
            Strategy::Priority,
            vec![target("a", &up.base_url(), "m")],
        ),
        handle(
            "big",
            Strategy::Priority,
            vec![target("a", &up.base_url(), "m-big")],
        ),
    ])
}

async fn error(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn master_and_virtual_keys_guard_every_v1_call() {
    let up = MockUpstream::start("a").await;
    let gw = Gateway::start(two_handles(&up).await, |c| {
        c.master_key = Some("sk-master".into())
    })
    .await;
    let (laptop, secret) = keys::create(
        &gw.db,
        &NewKey {
            name: "laptop".into(),
            allowed_handles: Some(vec!["chat".into()]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    gw.state.reload(true).await.unwrap();
    let body = json!({"model": "chat", "messages": []});

    let (st, v) = error(gw.post("/v1/chat/completions", None, &body).await).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (st, _) = error(
        gw.post("/v1/chat/completions", Some("sk-wrong"), &body)
            .await,
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(
        gw.post("/v1/chat/completions", Some("sk-master"), &body)
            .await
            .status(),
        200
    );
    assert_eq!(
        gw.post("/v1/chat/completions", Some(&secret), &body)
            .await
            .status(),
        200
    );

    // The key may not use `big`: it does not exist for this key.
    let (st, v) = error(
        gw.post(
            "/v1/chat/completions",
            Some(&secret),
            &json!({"model": "big", "messages": []}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let models: Value = gw
        .client()
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&secret)
        .send()
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
    assert_eq!(ids, ["chat"]);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["owned_by"], "homelab");
    let all: Value = gw
        .client()
        .get(format!("{}/models", gw.url))
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let r = gw
        .client()
        .get(format!("{}/v1/models/big", gw.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = gw
        .client()
        .get(format!("{}/v1/models/chat", gw.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "chat");

    // Revoked: refused without a restart (the reloader notices within its interval).
    keys::revoke(&gw.db, &laptop.name).await.unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if gw
            .post("/v1/chat/completions", Some(&secret), &body)
            .await
            .status()
            == 401
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a revoked key stops working without a restart");
    // Reload on demand needs the master key.
    let r = gw
        .client()
        .post(format!("{}/admin/reload", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = gw
        .client()
        .post(format!("{}/admin/reload", gw.url))
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["handles"], 2);
}

#[tokio::test]
async fn rpm_tpm_and_budget_limits_answer_429() {
    let up = MockUpstream::start("a").await;
    let gw = Gateway::start(two_handles(&up).await, |c| {
        c.master_key = Some("sk-master".into())
    })
    .await;
    let (_, rpm_key) = keys::create(
        &gw.db,
        &NewKey {
            name: "rpm".into(),
            rpm: Some(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_, tpm_key) = keys::create(
        &gw.db,
        &NewKey {
            name: "tpm".into(),
            tpm: Some(10),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_, budget_key) = keys::create(
        &gw.db,
        &NewKey {
            name: "budget".into(),
            token_budget: Some(15),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    gw.state.reload(true).await.unwrap();
    let body = json!({"model": "chat", "messages": []});

    for _ in 0..2 {
        assert_eq!(
            gw.post("/v1/chat/completions", Some(&rpm_key), &body)
                .await
                .status(),
            200
        );
    }
    let res = gw.post("/v1/chat/completions", Some(&rpm_key), &body).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limit_exceeded"
    );

    // Each answer costs 7 + 3 = 10 tokens: the first uses the minute's 10, the next waits.
    assert_eq!(
        gw.post("/v1/chat/completions", Some(&tpm_key), &body)
            .await
            .status(),
        200
    );
    let res = gw.post("/v1/chat/completions", Some(&tpm_key), &body).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));

    // A budget of 15: two answers (20 tokens) spend it.
    for _ in 0..2 {
        assert_eq!(
            gw.post("/v1/chat/completions", Some(&budget_key), &body)
                .await
                .status(),
            200
        );
    }
    let (st, v) = error(
        gw.post("/v1/chat/completions", Some(&budget_key), &body)
            .await,
    )
    .await;
    assert_eq!(
        (st, v["error"]["type"].as_str()),
        (429, Some("insufficient_quota"))
    );
}

#[tokio::test]
async fn registry_changes_are_picked_up_without_a_restart() {
    let up = MockUpstream::start("a").await;
    let gw = Gateway::start(two_handles(&up).await, |_| {}).await;
    let added = spec(vec![handle(
        "fresh",
        Strategy::Priority,
        vec![target("a", &up.base_url(), "m-fresh")],
    )]);
    docsdb::apply::apply(&gw.db, &added, false).await.unwrap();
    let mut found = false;
    for _ in 0..100 {
        let r = gw
            .post(
                "/v1/chat/completions",
                None,
                &json!({"model": "fresh", "messages": []}),
            )
            .await;
        if r.status() == 200 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "a new handle is routed within the reload interval");
    assert_eq!(up.requests().last().unwrap().json()["model"], "m-fresh");
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_are_logged() {
    let up = MockUpstream::start("a").await;
    let mut gw = Gateway::start(two_handles(&up).await, |c| c.common.body_limit = 4096).await;
    let c = gw.client();
    let url = format!("{}/v1/chat/completions", gw.url);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body("{\"model\": \"chat\","),
            400,
            "invalid JSON",
        ),
        (c.post(&url).json(&json!({"messages": []})), 400, "model"),
        (
            c.post(&url).header("content-type", "text/plain").body("{}"),
            400,
            "application/json",
        ),
        (
            c.post(&url).json(&json!({"model": "nope", "messages": []})),
            404,
            "nope",
        ),
        (
            c.post(&url)
                .json(&json!({"model": "chat", "pad": "x".repeat(5000)})),
            413,
            "4096",
        ),
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body("[1,2]"),
            400,
            "object",
        ),
    ];
    for (req, status, needle) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{needle}");
        let v: Value = res.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
    // Chunked (no Content-Length): the limit is enforced while reading, and logged once.
    let big = format!("{{\"model\":\"chat\",\"pad\":\"{}\"}}", "x".repeat(5000));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(512).map(|c| Ok(c.to_vec())).collect();
    let res = c
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(up.hits(), 0, "nothing bad went upstream");
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    let statuses: Vec<i64> = rows.iter().map(|r| r["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [400, 400, 400, 404, 413, 400, 413]);
}

#[tokio::test]
async fn shutdown_flushes_every_request_log_row() {
    let up = MockUpstream::start("a").await;
    let mut gw = Gateway::start(two_handles(&up).await, |c| c.log_batch = 1000).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let c = gw.client();
        let url = format!("{}/v1/chat/completions", gw.url);
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .header("x-request-id", format!("req-{i}"))
                .json(&json!({"model": "chat", "messages": []}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert_eq!(
        rows.len(),
        60,
        "every row is written before the gateway exits"
    );
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60);
}

#[tokio::test]
async fn metrics_and_health() {
    let up = MockUpstream::start("a").await;
    let gw = Gateway::start(two_handles(&up).await, |_| {}).await;
    gw.post(
        "/v1/chat/completions",
        None,
        &json!({"model": "chat", "messages": []}),
    )
    .await;
    // A stream, read to its end, and a request refused before any target.
    let streamed = gw
        .post(
            "/v1/chat/completions",
            None,
            &json!({"model": "chat", "messages": [], "stream": true}),
        )
        .await;
    assert!(streamed.text().await.unwrap().contains("[DONE]"));
    gw.post(
        "/v1/chat/completions",
        None,
        &json!({"model": "nope", "messages": []}),
    )
    .await;
    let c = gw.client();
    assert_eq!(
        c.get(format!("{}/health", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = c
        .get(format!("{}/health/ready", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let m = gw.metrics().await;
    for name in [
        "homelab_gateway_requests_total{route=\"chat\",handle=\"chat\",status=\"200\"} 2",
        "homelab_gateway_request_duration_seconds_bucket",
        "homelab_gateway_time_to_first_token_seconds_bucket",
        "homelab_gateway_tokens_total{handle=\"chat\",target=\"a/m\",kind=\"prompt\"} 14",
        "homelab_gateway_upstream_attempts_total{handle=\"chat\",target=\"a/m\",outcome=\"ok\"} 2",
        "homelab_gateway_in_flight_requests{handle=\"chat\"} 0",
        "homelab_gateway_request_log_rows_dropped_total 0",
        "homelab_gateway_circuit_state{target=\"a/m\"} 0",
        "# EOF",
    ] {
        assert!(m.contains(name), "missing {name}:\n{m}");
    }
    // The gateway's own time: one observation per request that reached a target (the
    // refused one did not), and a share of the requests' whole time.
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}:\n{m}"))
    };
    assert_eq!(
        value("homelab_gateway_overhead_seconds_count{route=\"chat\"}"),
        2.0
    );
    // The stream's gaps between tokens: one fewer than its data events.
    let gaps =
        value("homelab_gateway_time_between_tokens_seconds_count{handle=\"chat\",target=\"a/m\"}");
    assert!(gaps >= 2.0, "{gaps}");
    let own = value("homelab_gateway_overhead_seconds_sum{route=\"chat\"}");
    let whole =
        value("homelab_gateway_request_duration_seconds_sum{route=\"chat\",handle=\"chat\"}");
    assert!(own > 0.0 && own < whole, "own {own} s of {whole} s");
}

#[tokio::test]
async fn search_pages_trims_and_filters_through_searxng() {
    let sx = MockSearxng::start(45).await;
    let other = MockSearxng::start(3).await;
    let s = SystemSpec {
        endpoints: vec![
            EndpointSpec {
                name: "searxng".into(),
                service: None,
                base_url: sx.base_url(),
                api: Api::Searxng,
                auth_env: None,
                offers: None,
            },
            EndpointSpec {
                name: "news".into(),
                service: None,
                base_url: other.base_url(),
                api: Api::Searxng,
                auth_env: None,
                offers: None,
            },
        ],
        ..Default::default()
    };
    let mut gw = Gateway::start(s, |_| {}).await;

    let res = gw
        .post(
            "/v1/search",
            None,
            &json!({"query": "rust sse", "max_results": 25}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["object"], "search");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 25, "trimmed to max_results across two pages");
    assert_eq!(results[0]["snippet"], "Snippet 0 about rust sse.");
    assert_eq!(results[0]["date"], "2025-06-01T00:00:00");
    assert_eq!(results[1]["date"], Value::Null);
    let pages: Vec<String> = sx
        .requests()
        .iter()
        .map(|q| q.iter().find(|(k, _)| k == "pageno").unwrap().1.clone())
        .collect();
    assert_eq!(pages, ["1", "2"]);
    assert!(sx.requests()[0].contains(&("format".into(), "json".into())));

    let v: Value = gw
        .post(
            "/v1/search",
            None,
            &json!({"query": "rust", "max_results": 3, "search_domain_filter": ["docs.rs"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let q = sx
        .requests()
        .last()
        .unwrap()
        .iter()
        .find(|(k, _)| k == "q")
        .unwrap()
        .1
        .clone();
    assert_eq!(q, "rust site:docs.rs");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["url"].as_str().unwrap().starts_with("https://docs.rs/"))
    );

    let v: Value = gw
        .post(
            "/v1/search/news",
            None,
            &json!({"query": "x", "max_results": 10}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["results"].as_array().unwrap().len(),
        3,
        "fewer results than asked when the source runs out"
    );
    let (st, _) = error(
        gw.post("/v1/search/nope", None, &json!({"query": "x"}))
            .await,
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = error(
        gw.post("/v1/search", None, &json!({"query": "x", "max_results": 0}))
            .await,
    )
    .await;
    assert_eq!(st, 400);

    // Open WebUI's external engine: `{query, count}` in, a bare array of link/title/snippet
    // out (what `search_external` in open_webui/retrieval/web/external.py reads).
    let res = gw
        .client()
        .post(format!("{}/v1/search/openwebui", gw.url))
        .headers(Gateway::open_webui_user())
        .json(&json!({"query": "rust sse", "count": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let arr = v.as_array().expect("a bare JSON array");
    assert_eq!(arr.len(), 5);
    let keys: Vec<&String> = arr[0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["link", "title", "snippet"]);
    assert!(arr[0]["link"].as_str().unwrap().starts_with("https://"));
    assert_eq!(arr[0]["snippet"], "Snippet 0 about rust sse.");
    // A count past the limit is held to it; the source has 45.
    let v: Value = gw
        .post(
            "/v1/search/openwebui",
            None,
            &json!({"query": "rust", "count": 100000}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 45);
    for bad in [
        json!({"query": "x", "count": 0}),
        json!({"count": 3}),
        json!({"query": " "}),
    ] {
        let (st, e) = error(gw.post("/v1/search/openwebui", None, &bad).await).await;
        assert_eq!(st, 400, "{bad} → {e}");
    }
    gw.shutdown().await;
    let rows = gw.log_rows().await;
    assert!(rows.iter().all(|r| r["route"] == "search"));
    assert_eq!(rows[0]["handle"], "searxng");
    assert_eq!(
        rows.iter()
            .filter(|r| Gateway::names_open_webui_user(r))
            .count(),
        1,
        "the search Open WebUI made for its user names the user: {rows:?}"
    );
    assert!(rows[0]["user_id"].is_null(), "no headers, no user");
    assert!(
        rows.iter().filter(|r| r["status"] == 400).count() >= 4,
        "refusals are logged too"
    );
}

#[test]
fn refuses_a_public_bind_without_a_key() {
    let mut c = gateway::Config::new("sqlite::memory:", "0.0.0.0:4000");
    assert!(gateway::check_bind(&c).is_err());
    c.allow_unauthenticated = true;
    assert!(gateway::check_bind(&c).is_ok());
    c.allow_unauthenticated = false;
    c.master_key = Some("k".into());
    assert!(gateway::check_bind(&c).is_ok());
    assert!(
        gateway::check_bind(&gateway::Config::new("sqlite::memory:", "127.0.0.1:4000")).is_ok()
    );
}
