//! Context windows (a prompt too large for a target goes to the next one, or to the handle's
//! larger-context fallback, or gets a clear 400), the response cache, and where a row's token
//! counts came from — against real upstream servers on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Gateway, handle, spec, sse_data, target};
use docsdb::keys::{self, NewKey};
use docsdb::spec::{ModelSpec, Strategy};
use serde_json::{Value, json};
use testkit::upstream::{Behavior, ContextDialect, MockUpstream};

/// A chat whose messages are about `bytes` long.
fn chat(model: &str, bytes: usize) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "word ".repeat(bytes / 5)}]})
}

fn metric_value(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_prompt_too_large_for_a_target_goes_on_by_size_by_error_and_by_declared_fallback() {
    let big = MockUpstream::start("big").await;
    // Declares a window, never sees a prompt clearly over it.
    let declared = MockUpstream::start("declared").await;
    // Declares nothing; refuses prompts over 50 tokens as the real servers do.
    let refusing = MockUpstream::start_with(
        "refusing",
        Behavior {
            context_window: Some(50),
            ..Default::default()
        },
    )
    .await;
    // Its window comes from the models registry.
    let registered = MockUpstream::start("registered").await;

    let mut small = target("declared", &declared.base_url(), "m-small");
    small.context_length = Some(100);
    let second = |name: &str, url: &str| {
        let mut t = target(name, url, "m-big");
        t.priority = 1;
        t
    };
    // Sent without its tools (over `max_tools_bytes`), a request's tools take no room.
    let mut dropper = target("declared", &declared.base_url(), "m-small");
    dropper.context_length = Some(100);
    dropper.max_tools_bytes = Some(10);
    let mut with_fallback = handle(
        "small-only",
        Strategy::Priority,
        vec![target("refusing", &refusing.base_url(), "m-tiny")],
    );
    with_fallback.context_fallback = Some("large".into());
    let mut system = spec(vec![
        handle(
            "by-size",
            Strategy::Priority,
            vec![small, second("big", &big.base_url())],
        ),
        handle(
            "by-error",
            Strategy::Priority,
            vec![
                target("refusing", &refusing.base_url(), "m-tiny"),
                second("big", &big.base_url()),
            ],
        ),
        with_fallback,
        handle(
            "drops-tools",
            Strategy::Priority,
            vec![dropper, second("big", &big.base_url())],
        ),
        handle(
            "large",
            Strategy::Priority,
            vec![target("big", &big.base_url(), "m-big")],
        ),
        handle(
            "nothing-fits",
            Strategy::Priority,
            vec![target("refusing", &refusing.base_url(), "m-tiny")],
        ),
        handle(
            "registry",
            Strategy::Priority,
            vec![
                target("registered", &registered.base_url(), "m-registered"),
                second("big", &big.base_url()),
            ],
        ),
    ]);
    system.models.push(
        serde_json::from_value::<ModelSpec>(
            json!({"model_id": "m-registered", "context_length": 100}),
        )
        .unwrap(),
    );
    let gw = Gateway::start(system, |_| {}).await;

    // By size: 3,000 bytes is about 500 tokens even at six bytes each, over the declared 100:
    // the small target is not asked at all.
    let res = gw
        .post("/v1/chat/completions", None, &chat("by-size", 3000))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-homelab-target"], "big");
    assert_eq!(declared.hits(), 0);
    // A short prompt stays on the first target.
    let res = gw
        .post("/v1/chat/completions", None, &chat("by-size", 100))
        .await;
    assert_eq!(res.headers()["x-homelab-target"], "declared");
    assert_eq!(declared.hits(), 1);
    let mut with_tools = chat("drops-tools", 100);
    with_tools["tools"] = json!([{"type": "function", "function": {"name": "f", "description": "d ".repeat(1500), "parameters": {"type": "object"}}}]);
    let res = gw.post("/v1/chat/completions", None, &with_tools).await;
    assert_eq!(res.headers()["x-homelab-target"], "declared");
    assert_eq!(
        res.headers()["x-homelab-tools-dropped"]
            .to_str()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(declared.hits(), 2);
    // The models registry's window works the same way.
    let res = gw
        .post("/v1/chat/completions", None, &chat("registry", 3000))
        .await;
    assert_eq!(res.headers()["x-homelab-target"], "big");
    assert_eq!(registered.hits(), 0);

    // By the backend's error, in each server's words; the target's breaker stays closed
    // (five refusals, more than --breaker-failures, and it is still asked).
    for (i, dialect) in [
        ContextDialect::OpenAi,
        ContextDialect::LlamaServer,
        ContextDialect::Vllm,
        ContextDialect::OpenAi,
        ContextDialect::LlamaServer,
    ]
    .into_iter()
    .enumerate()
    {
        refusing.set(Behavior {
            context_window: Some(50),
            context_dialect: dialect,
            ..Default::default()
        });
        let res = gw
            .post("/v1/chat/completions", None, &chat("by-error", 400))
            .await;
        assert_eq!(res.status(), 200, "{dialect:?}");
        assert_eq!(res.headers()["x-homelab-target"], "big", "{dialect:?}");
        assert_eq!(res.headers()["x-homelab-attempts"], "2");
        assert_eq!(refusing.hits(), i + 1, "the refusing target is still tried");
    }

    // The handle's declared larger-context fallback.
    let res = gw
        .post("/v1/chat/completions", None, &chat("small-only", 400))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-homelab-target"], "big");
    assert_eq!(res.headers()["x-homelab-context-fallback"], "large");
    let res = gw
        .post("/v1/chat/completions", None, &chat("small-only", 50))
        .await;
    assert_eq!(res.headers()["x-homelab-target"], "refusing");
    assert!(res.headers().get("x-homelab-context-fallback").is_none());

    // Nowhere to go: a clear 400 with the backend's words.
    refusing.set(Behavior {
        context_window: Some(50),
        ..Default::default()
    });
    let res = gw
        .post("/v1/chat/completions", None, &chat("nothing-fits", 400))
        .await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "context_length_exceeded", "{err}");
    assert_eq!(err["error"]["param"], "messages");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`nothing-fits`"), "{msg}");
    assert!(msg.contains("maximum context length is 50"), "{msg}");

    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "homelab_gateway_skipped_targets_total{handle=\"by-size\",target=\"declared/m-small\",reason=\"context\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "homelab_gateway_fallbacks_total{handle=\"by-error\",target=\"refusing/m-tiny\",reason=\"context\"}"
        ),
        5.0
    );
    assert!(
        metrics.contains("homelab_gateway_circuit_state{target=\"refusing/m-tiny\"} 0"),
        "{metrics}"
    );
    let rows = gw.log_rows_at_least(12).await;
    let last = rows.last().unwrap();
    assert_eq!(last["handle"], "nothing-fits");
    assert_eq!(last["status"], 400);
    assert_eq!(last["error_type"], "context_length_exceeded");
}

#[tokio::test]
async fn deterministic_answers_are_cached_per_handle_within_ttl_and_bound() {
    let up = MockUpstream::start("up").await;
    let mut cached = handle(
        "cached",
        Strategy::Priority,
        vec![target("up", &up.base_url(), "m")],
    );
    cached.cache_ttl_ms = Some(60_000);
    let mut short = handle(
        "short",
        Strategy::Priority,
        vec![target("up", &up.base_url(), "m")],
    );
    short.cache_ttl_ms = Some(300);
    let plain = handle(
        "plain",
        Strategy::Priority,
        vec![target("up", &up.base_url(), "m")],
    );
    let gw = Gateway::start(spec(vec![cached, short, plain]), |c| {
        c.master_key = Some("sk-master".into());
        c.cache_max_bytes = 64 * 1024;
    })
    .await;
    let (_, key) = keys::create(
        &gw.db,
        &NewKey {
            name: "budget".into(),
            token_budget: Some(20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    gw.state.reload(true).await.unwrap();
    let ask = |body: Value| {
        let gw = &gw;
        let key = key.clone();
        async move { gw.post("/v1/chat/completions", Some(&key), &body).await }
    };
    let greedy = json!({"model": "cached", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]});

    // A miss, then a hit with the same bytes; the upstream was asked once.
    let first = ask(greedy.clone()).await;
    assert_eq!(first.headers()["x-cache"], "miss");
    let first_body = first.bytes().await.unwrap();
    for _ in 0..5 {
        let res = ask(greedy.clone()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-cache"], "hit");
        assert_eq!(res.headers()["x-homelab-target"], "up");
        assert!(res.headers().contains_key("age"));
        assert_eq!(res.bytes().await.unwrap(), first_body);
    }
    assert_eq!(up.hits(), 1);

    // The budget (20 tokens; each answer is 7 + 3): the first answer spent 10, the five hits
    // nothing, so one more real answer fits and then the key is spent.
    let other = json!({"model": "cached", "temperature": 0, "messages": [{"role": "user", "content": "other"}]});
    let res = ask(other.clone()).await;
    assert_eq!(res.status(), 200, "a different body is a miss");
    assert_eq!(res.headers()["x-cache"], "miss");
    assert_eq!(up.hits(), 2);
    let res = ask(json!({"model": "plain", "messages": []})).await;
    assert_eq!(
        res.status(),
        429,
        "the budget is spent by real answers only"
    );

    let gw_master = |body: Value| {
        let gw = &gw;
        async move {
            gw.post("/v1/chat/completions", Some("sk-master"), &body)
                .await
        }
    };
    // Sampled requests and streams are never cached; a seed makes a request deterministic.
    let sampled = json!({"model": "cached", "temperature": 0.7, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let res = gw_master(sampled.clone()).await;
        assert!(res.headers().get("x-cache").is_none());
    }
    assert_eq!(up.hits(), 4);
    let stream = json!({"model": "cached", "temperature": 0, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let res = gw_master(stream.clone()).await;
        assert!(res.headers().get("x-cache").is_none());
        assert_eq!(sse_data(res).await.last().unwrap(), "[DONE]");
    }
    assert_eq!(up.hits(), 6);
    let seeded = json!({"model": "cached", "seed": 42, "temperature": 1, "messages": [{"role": "user", "content": "hi"}]});
    gw_master(seeded.clone()).await;
    assert_eq!(gw_master(seeded.clone()).await.headers()["x-cache"], "hit");
    assert_eq!(up.hits(), 7);
    // `Cache-Control: no-cache` asks the backend again (and keeps the new answer).
    let res = gw
        .client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth("sk-master")
        .header("cache-control", "no-cache")
        .json(&seeded)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-cache"], "miss");
    assert_eq!(up.hits(), 8);
    // A handle without a TTL caches nothing.
    let plain_greedy = json!({"model": "plain", "temperature": 0, "messages": []});
    gw_master(plain_greedy.clone()).await;
    assert!(
        gw_master(plain_greedy)
            .await
            .headers()
            .get("x-cache")
            .is_none()
    );
    assert_eq!(up.hits(), 10);
    // Embeddings are deterministic.
    for expect in ["miss", "hit"] {
        let res = gw
            .post(
                "/v1/embeddings",
                Some("sk-master"),
                &json!({"model": "cached", "input": "hello"}),
            )
            .await;
        assert_eq!(res.headers()["x-cache"], expect);
    }
    assert_eq!(up.hits(), 11);

    // Expiry: the short handle keeps answers 300 ms.
    let short = json!({"model": "short", "temperature": 0, "messages": []});
    assert_eq!(gw_master(short.clone()).await.headers()["x-cache"], "miss");
    assert_eq!(gw_master(short.clone()).await.headers()["x-cache"], "hit");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gw_master(short.clone()).await.headers()["x-cache"], "miss");
    assert_eq!(up.hits(), 13);

    // The bound: 200 distinct ~1 KB requests through a 64 KiB cache; the oldest are gone.
    let long = |i: usize| json!({"model": "cached", "temperature": 0, "messages": [{"role": "user", "content": format!("{i} {}", "x".repeat(1000))}]});
    for i in 0..200 {
        assert_eq!(gw_master(long(i)).await.headers()["x-cache"], "miss");
    }
    let metrics = gw.metrics().await;
    let bytes = metric_value(&metrics, "homelab_gateway_cache_bytes ");
    assert!(bytes > 0.0 && bytes <= 65536.0, "{bytes}");
    assert_eq!(gw_master(long(0)).await.headers()["x-cache"], "miss");
    assert_eq!(gw_master(long(199)).await.headers()["x-cache"], "hit");
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "homelab_gateway_cache_requests_total{handle=\"cached\",result=\"hit\"}"
        ) >= 8.0,
        "{metrics}"
    );

    // The log: hits are rows of their own, marked, with the answer's tokens.
    // Every request so far has its row (224 of them).
    let rows = gw.log_rows_at_least(224).await;
    assert_eq!(rows.len(), 224);
    let hits: Vec<&Value> = rows.iter().filter(|r| r["cache_hit"] == true).collect();
    assert_eq!(hits.len(), 9, "eight of `cached`, one of `short`");
    assert_eq!(hits[0]["attempts"], 0);
    assert_eq!(hits[0]["target"], "up");
    assert_eq!(hits[0]["prompt_tokens"], 7);
    assert_eq!(hits[0]["usage_source"], "backend");
}

#[tokio::test]
async fn tokens_a_backend_does_not_report_are_counted_and_marked() {
    let up = MockUpstream::start_with(
        "quiet",
        Behavior {
            no_usage: true,
            chunks: 5,
            ..Default::default()
        },
    )
    .await;
    let gw = Gateway::start(
        spec(vec![handle(
            "chat",
            Strategy::Priority,
            vec![target("quiet", &up.base_url(), "m")],
        )]),
        |_| {},
    )
    .await;
    let body = chat("chat", 400);
    assert_eq!(
        gw.post("/v1/chat/completions", None, &body).await.status(),
        200
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let res = gw.post("/v1/chat/completions", None, &streamed).await;
    sse_data(res).await;
    up.set(Behavior::default());
    assert_eq!(
        gw.post("/v1/chat/completions", None, &body).await.status(),
        200
    );

    let rows = gw.log_rows_at_least(3).await;
    // About 400 bytes of messages: about 100 tokens at four bytes each.
    for row in &rows[..2] {
        assert_eq!(row["usage_source"], "gateway", "{row}");
        let prompt = row["prompt_tokens"].as_i64().unwrap();
        assert!((90..=120).contains(&prompt), "{row}");
    }
    assert!(rows[0]["completion_tokens"].as_i64().unwrap() > 0);
    // The stream's data events (role, five pieces, finish; `[DONE]` is not one).
    assert_eq!(rows[1]["completion_tokens"], 7);
    assert_eq!(rows[2]["usage_source"], "backend");
    assert_eq!(rows[2]["prompt_tokens"], 7);
}
