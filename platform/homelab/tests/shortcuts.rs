//! The Shortcuts endpoints under `homelab up`, through the real gateway: the device's key
//! goes through unchanged (the gateway's request log names the device), a web page is read
//! through the real web-fetch tool and summarised, `/status` speaks the monitor's sentence,
//! and the service is registered in the interface layer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use docsdb::spec::{HandleSpec, Strategy, TargetSpec};
use homelab::up::{ToolsOptions, UpOptions};
use serde_json::json;
use sqlx::Row;
use testkit::upstream::{Behavior, MockUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_asks_through_the_gateway_with_its_own_key() {
    let up = MockUpstream::start_with(
        "engine",
        Behavior {
            reply: Some(vec!["## Bees\n\n".into(), "They make **honey**.".into()]),
            ..Behavior::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A registry with a `default` handle on the stand-in engine, and a key for the phone.
    let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let db = docsdb::Db::open(&db_url).await.unwrap();
    let spec = common::engine_registry(
        &up.base_url(),
        vec![HandleSpec {
            context_fallback: None,
            cache_ttl_ms: None,
            handle: "default".into(),
            description: None,
            strategy: Strategy::Priority,
            targets: vec![TargetSpec::on_endpoint("engine", "bee-model")],
        }],
    );
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    let (_, phone_key) = docsdb::keys::create(
        &db,
        &docsdb::keys::NewKey {
            name: "iphone".into(),
            allowed_handles: None,
            allowed_tools: None,
            rpm: None,
            tpm: None,
            token_budget: None,
        },
    )
    .await
    .unwrap();
    db.close().await;

    // A page web-fetch may read (loopback, allowed for this test).
    let page = common::bees_page().await;

    let (running, stop, task) = common::run_up(UpOptions {
        no_engine: true,
        tools: ToolsOptions {
            enabled: true,
            allow_hosts: vec!["127.0.0.1".into()],
            ..Default::default()
        },
        shortcuts_port: Some(0),
        ..UpOptions::on_loopback(dir.path())
    })
    .await;
    let base = format!("http://{}", running.shortcuts.expect("shortcuts run"));
    let banner = homelab::up::banner(&running);
    assert!(banner.contains(&base), "{banner}");
    let http = reqwest::Client::new();

    // Ask, as the "Ask homelab" shortcut does: JSON with the dictated text.
    let res = http
        .post(format!("{base}/ask"))
        .bearer_auth(&phone_key)
        .json(&json!({"text": "Tell me about bees"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "Bees. They make honey.");
    // The gateway keeps the device's key to itself; the engine sees the handle's model.
    let sent = up.requests().last().unwrap().clone();
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(sent.json()["model"], "bee-model");

    // Summarise a page, read through web-fetch.
    let res = http
        .post(format!("{base}/summarise"))
        .bearer_auth(&phone_key)
        .header("content-type", "text/plain")
        .body(format!("http://{page}/bees"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let sent = up.requests().last().unwrap().json();
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("Bees make honey and live in hives"),
        "the page reached the model: {user}"
    );

    // The gateway's log names the phone for both.
    let db = docsdb::Db::open(&running.db_url).await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..100 {
        keys = sqlx::query("SELECT key_name FROM request_log WHERE route = 'chat' ORDER BY id")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<Option<String>, _>("key_name"))
            .collect();
        if keys.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys, [Some("iphone".to_owned()), Some("iphone".to_owned())]);

    // Registered in the interface layer, so the monitor probes it.
    let layer: String = sqlx::query("SELECT layer FROM services WHERE name = 'shortcuts'")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("layer");
    assert_eq!(layer, "interface");
    db.close().await;

    // Status: one sentence from the monitor.
    let status = http
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        status.ends_with('.') && (status.contains("up") || status.contains("problem")),
        "{status}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}
