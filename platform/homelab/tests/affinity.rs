//! Prefix affinity across machines: a handle with two engines (orin-llm-server on the
//! random-weight fixture, on the loopback addresses 127.0.0.2 and 127.0.0.3 as two hosts)
//! behind the gateway, weighted at random. Every turn of one conversation goes to the engine
//! that served its first (which reads only the new part of each turn: its prefix is cached
//! there), and new conversations are spread over both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

mod common;

use docsdb::spec::{EndpointSpec, HandleSpec, Strategy, SystemSpec, TargetSpec};
use serde_json::{Value, json};

/// An engine on `ip`; its base URL.
async fn engine(ip: &str) -> String {
    common::engine_on(ip, |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_conversation_stays_on_one_engine_and_new_ones_spread() {
    let (a, b) = (engine("127.0.0.2").await, engine("127.0.0.3").await);
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let db = docsdb::Db::open(&db_url).await.unwrap();
    let endpoint = |name: &str, url: &str| EndpointSpec {
        name: name.into(),
        service: None,
        base_url: format!("{url}/v1"),
        api: docsdb::spec::Api::Openai,
        auth_env: None,
        offers: None,
    };
    let spec = SystemSpec {
        endpoints: vec![endpoint("mini", &a), endpoint("orin", &b)],
        handles: vec![HandleSpec {
            strategy: Strategy::Weighted,
            ..HandleSpec::new(
                "chat",
                vec![
                    TargetSpec::on_endpoint("mini", "m"),
                    TargetSpec::on_endpoint("orin", "m"),
                ],
            )
        }],
        ..Default::default()
    };
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    let config = gateway::Config::new(&db_url, "127.0.0.1:0");
    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let gw = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let state = gateway::AppState::new(config).await.unwrap();
    tokio::spawn(gateway::serve_state(
        listener,
        state,
        std::future::pending(),
    ));

    let client = reqwest::Client::new();
    let mut served: HashMap<String, usize> = HashMap::new();
    for conv in 0..16 {
        let mut messages = vec![
            json!({"role": "system", "content": "You answer in a few words."}),
            json!({"role": "user", "content": format!("Conversation {conv}: hello there, how are you?")}),
        ];
        let mut engines = Vec::new();
        for turn in 0..4 {
            let res = client
                .post(&gw)
                .json(&json!({"model": "chat", "messages": messages, "max_tokens": 6, "temperature": 0}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            engines.push(
                res.headers()["x-homelab-target"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
            let v: Value = res.json().await.unwrap();
            let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap();
            let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
            if turn > 0 {
                // The engine holds everything up to the previous answer.
                assert!(
                    cached * 2 > prompt,
                    "conversation {conv} turn {turn}: {cached} of {prompt} cached"
                );
            }
            messages.push(
                json!({"role": "assistant", "content": v["choices"][0]["message"]["content"]}),
            );
            messages.push(json!({"role": "user", "content": format!("And then what happened in turn {turn}?")}));
        }
        assert!(
            engines.iter().all(|e| *e == engines[0]),
            "conversation {conv} moved: {engines:?}"
        );
        *served.entry(engines[0].clone()).or_default() += 1;
    }
    assert_eq!(
        served.len(),
        2,
        "new conversations go to both engines: {served:?}"
    );
}
