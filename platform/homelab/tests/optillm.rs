//! The OptiLLM proxy under `homelab up`, behind and in front of the real gateway: a handle
//! routed to the proxy runs its approach with every backend call going through the gateway
//! (and its request log), and a handle that would send the proxy's own calls back to it is
//! refused at once instead of looping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use docsdb::spec::SystemSpec;
use homelab::up::{ToolsOptions, UpOptions};
use serde_json::{Value, json};
use testkit::upstream::MockUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_runs_an_approach_through_the_gateway_and_loops_are_refused() {
    let engine = MockUpstream::start("engine").await;
    let dir = tempfile::tempdir().unwrap();
    common::register_engine(dir.path(), &engine.base_url()).await;

    // A page web-fetch may read (loopback, allowed for this test).
    let page = common::bees_page().await;
    let (running, stop, task) = common::run_up(UpOptions {
        no_engine: true,
        optillm_port: Some(0),
        tools: ToolsOptions {
            enabled: true,
            allow_hosts: vec!["127.0.0.1".into()],
            ..Default::default()
        },
        ..UpOptions::on_loopback(dir.path())
    })
    .await;
    assert!(running.optillm.is_some());
    // Handles on the proxy's endpoint (registered by `up`): `re2-local` runs re2 over the
    // gateway's `local`; `bon-again` would call the gateway's `again`, which is the proxy.
    let db = docsdb::Db::open(&running.db_url).await.unwrap();
    let routes = SystemSpec {
        handles: vec![
            common::handle("re2-local", "optillm-proxy", "re2-local"),
            common::handle("bon-again", "optillm-proxy", "bon-again"),
            common::handle("again", "optillm-proxy", "again"),
            common::handle("readurls-local", "optillm-proxy", "readurls-local"),
        ],
        ..Default::default()
    };
    docsdb::apply::apply(&db, &routes, false).await.unwrap();
    let gw = format!("http://{}/v1/chat/completions", running.gateway);
    let http = reqwest::Client::new();
    let chat = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "What is 6 times 7?"}]});
    // The gateway picks the new handles up on its next table reload.
    let mut answer = Value::Null;
    for _ in 0..100 {
        let r = http
            .post(&gw)
            .header("x-request-id", "client-req-1")
            .json(&chat("re2-local"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            answer = r.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answer["choices"][0]["message"]["content"], "tok0 tok1 tok2",
        "{answer}"
    );
    let sent = engine.requests().last().unwrap().json();
    let user = sent["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        sent["messages"].as_array().unwrap().len(),
        1,
        "no empty system message"
    );
    assert_eq!(
        user, "What is 6 times 7?\nRead the question again: What is 6 times 7?",
        "a single stage keeps the real turns"
    );
    assert_eq!(sent["model"], "small-model");

    // readurls: the pages a message links to, read through the real web-fetch tool — whose
    // SSRF guard still refuses the cloud metadata address — then answered by `local`.
    let ask =
        format!("Summarise http://{page}/bees and http://169.254.169.254/latest/meta-data please");
    let r = http
        .post(&gw)
        .json(&json!({"model": "readurls-local", "messages": [{"role": "user", "content": ask}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let sent = engine.requests().last().unwrap().json();
    let user = sent["messages"][1]["content"].as_str().unwrap().to_owned();
    assert!(
        user.contains(&format!("http://{page}/bees [Content from {page}: "))
            && user.contains("Bees make honey and live in hives"),
        "{user}"
    );
    assert!(
        user.contains("http://169.254.169.254/latest/meta-data [Content from 169.254.169.254: Error fetching content:"),
        "{user}"
    );
    assert!(!user.contains("ami-id"));

    // The loop: refused by the proxy the moment its own call comes back.
    let r = http
        .post(&gw)
        .json(&chat("bon-again"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());

    // The gateway's log: the client's request and the proxy's call to `local` share the
    // client's request id.
    let mut rows = common::logged_handles(&db, "client-req-1", 2).await;
    rows.sort();
    assert_eq!(rows, ["local", "re2-local"]);
    db.close().await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
}
