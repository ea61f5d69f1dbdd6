//! The server on the random-weight fixture, over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

async fn start(model: std::path::PathBuf) -> String {
    start_with(model, |_| {}).await
}

async fn start_with(
    model: std::path::PathBuf,
    set: impl FnOnce(&mut orin_llm_server::Config),
) -> String {
    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = orin_llm_server::Config::new(model, "127.0.0.1:0");
    set(&mut config);
    tokio::spawn(orin_llm_server::serve_on(
        listener,
        config,
        std::future::pending(),
    ));
    url
}

async fn ready(url: &str) {
    for _ in 0..200 {
        if reqwest::get(format!("{url}/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never became healthy");
}

async fn post(url: &str, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_plain_and_streamed_with_usage() {
    let url = start(fixture()).await;
    ready(&url).await;
    let models: Value = reqwest::get(format!("{url}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-random-gpt2tok-f16");
    assert_eq!(models["data"][0]["context_length"], 512);
    assert_eq!(models["data"][0]["quantization"], "F16");
    assert!(models["data"][0]["size_on_disk_bytes"].as_u64().unwrap() > 200_000);

    let body = json!({"model": "anything", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0});
    let v: Value = post(&url, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "length" || finish == "stop");
    let ct = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(ct <= 6);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap() + ct
    );

    let mut s = body.clone();
    s["stream"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let res = post(&url, "/v1/chat/completions", &s).await;
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text = res.text().await.unwrap();
    let mut d = contract::sse::SseDecoder::new();
    let events: Vec<String> = d
        .push(text.as_bytes())
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"].as_u64().unwrap(),
        ct,
        "greedy: the same tokens streamed"
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

/// Sends a chat request with an id and a priority; the raw response.
async fn send(url: &str, id: &str, priority: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-request-id", id)
        .header("x-homelab-priority", priority)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn state_of(url: &str, id: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/v1/queue/{id}")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_engine_says_so_and_serves_the_chat_first() {
    let url = start_with(fixture(), |c| {
        c.engine.sse_keepalive = Duration::from_millis(100);
        // One sequence, so that the second request has to wait.
        c.engine.parallel = 1;
    })
    .await;
    ready(&url).await;
    // A raw prompt that runs to the limit on the fixture, as background work.
    let long = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 480, "temperature": 0});
    let first = tokio::spawn({
        let (url, long) = (url.clone(), long.clone());
        async move {
            let r = send(&url, "bg-1", "background", &long).await;
            let done = std::time::Instant::now();
            (r.json::<Value>().await.unwrap(), done)
        }
    });
    loop {
        let (status, s) = state_of(&url, "bg-1").await;
        if status == 200 && s["state"] == "generating" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A second background request waits behind it: a streamed answer starts at once, with
    // comments until its first token.
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let mut second = send(&url, "bg-2", "background", &streamed).await;
    assert_eq!(second.status(), 200);
    let opening = second.chunk().await.unwrap().unwrap();
    assert_eq!(&opening[..], b": queued, 0 ahead\n\n");
    let (status, s) = state_of(&url, "bg-2").await;
    assert_eq!(status, 200);
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(s["ahead"], 0, "{s}");
    let q: Value = reqwest::get(format!("{url}/v1/queue"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (q["running"].as_u64(), q["waiting"].as_u64()),
        (Some(1), Some(1)),
        "{q}"
    );
    let health: Value = reqwest::get(format!("{url}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["slots_processing"], 1, "{health}");
    assert_eq!(health["queue"]["waiting"], 1, "{health}");

    // A chat arrives: the running background request yields to it.
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0});
    let c = send(&url, "chat-1", "interactive", &chat).await;
    let chat_done = std::time::Instant::now();
    assert_eq!(c.status(), 200);
    let cv: Value = c.json().await.unwrap();
    assert!(cv["timings"]["queue_ms"].as_f64().is_some(), "{cv}");

    let mut rest = Vec::from(&opening[..]);
    while let Some(b) = second.chunk().await.unwrap() {
        rest.extend_from_slice(&b);
    }
    let second_done = std::time::Instant::now();
    let (v, first_done) = first.await.unwrap();
    assert!(
        chat_done < first_done && chat_done < second_done,
        "the chat came first"
    );
    let t = &v["timings"];
    assert!(
        t["parked_ms"].as_f64().unwrap() > 0.0,
        "the first yielded: {v}"
    );
    assert_eq!(t["predicted_n"], v["usage"]["completion_tokens"], "{v}");
    assert!(t["predicted_per_second"].as_f64().unwrap() > 0.0, "{v}");
    let text = String::from_utf8(rest).unwrap();
    let mut d = contract::sse::SseDecoder::new();
    let events = d.push(text.as_bytes()).unwrap();
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    assert!(
        last["timings"]["queue_ms"].as_f64().unwrap() > 0.0,
        "{last}"
    );
    let first_data: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(
        first_data["choices"][0]["delta"]["role"], "assistant",
        "the role chunk comes with the first token"
    );

    // Nobody is left in the queue; an unknown id and a bad priority are clear errors.
    let (status, s) = state_of(&url, "bg-1").await;
    assert_eq!(status, 404, "{s}");
    let r = send(&url, "x", "urgent", &chat).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("urgent"),
        "{e}"
    );
    let r = post(
        &url,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 2}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "top_p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_sampling_comes_from_the_defaults_it_shows() {
    let url = start(fixture()).await;
    ready(&url).await;
    let models: Value = reqwest::get(format!("{url}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &models["data"][0]["sampling_defaults"];
    assert_eq!(d["temperature"], 0.8, "{models}");
    assert_eq!(d["top_k"], 40);
    assert_eq!(d["min_p"], 0.05);
    assert_eq!(d["repeat_last_n"], 64);
    assert_eq!(
        models["data"][0]["sampling_defaults_from_model_file"],
        json!([])
    );
    // top_k 1 is greedy whatever the temperature: the same text as temperature 0.
    let ask = |extra: Value| {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 12, "seed": 1});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let text = |v: Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let greedy = text(
        post(
            &url,
            "/v1/chat/completions",
            &ask(json!({"temperature": 0})),
        )
        .await
        .json()
        .await
        .unwrap(),
    );
    let top1 = text(
        post(
            &url,
            "/v1/chat/completions",
            &ask(json!({"top_k": 1, "temperature": 1.5})),
        )
        .await
        .json()
        .await
        .unwrap(),
    );
    assert_eq!(greedy, top1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_limits_and_refusals() {
    let url = start(fixture()).await;
    ready(&url).await;
    let ask = |seed: u64| json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10, "temperature": 0.8, "seed": seed});
    let a: Value = post(&url, "/v1/chat/completions", &ask(3))
        .await
        .json()
        .await
        .unwrap();
    let b: Value = post(&url, "/v1/chat/completions", &ask(3))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"],
        "same seed, same text"
    );

    let r = post(
        &url,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [], "n": 2}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "n");

    let long = "word ".repeat(3000);
    let r = post(
        &url,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("512"),
        "{v}"
    );

    let v: Value = post(
        &url,
        "/v1/completions",
        &json!({"model": "m", "prompt": "Once", "max_tokens": 4, "temperature": 0}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4);

    let m = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("homelab_engine_requests_total 3"),
        "three generations ran (the refused ones did not): {m}"
    );
    assert!(m.contains("homelab_engine_queue_depth 0"));
    assert!(
        m.contains("homelab_engine_time_to_first_token_seconds_count 3"),
        "{m}"
    );
}

#[tokio::test]
async fn health_is_503_until_the_model_loads_and_says_why_it_failed() {
    let dir = std::env::temp_dir().join(format!("orin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("broken.gguf");
    std::fs::write(&bad, b"not a model").unwrap();
    let url = start(bad).await;
    let mut last = None;
    for _ in 0..100 {
        let r = reqwest::get(format!("{url}/health")).await.unwrap();
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        if v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed to load")
        {
            last = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = last.expect("the load failure is reported");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a GGUF file"),
        "{v}"
    );
    let r = post(
        &url,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 503);
}

async fn inventory(db: &docsdb::Db) -> Vec<docsdb::read::InventoryRow> {
    let mut conn = db.pool().acquire().await.unwrap();
    docsdb::read::model_inventory(&mut conn).await.unwrap()
}

/// With `--db` the server registers its model on this host and records it loaded while it
/// serves (a footprint the registry already had is kept), replacing the row a previous run
/// left, and clears its row at stop — leaving another server's model on the host alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_its_model_and_records_it_loaded_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let db = docsdb::Db::open(&url).await.unwrap();
    let yaml = "hosts:\n  - name: jetson\n    memory_bytes: 8 GiB\n\
        models:\n  - model_id: tiny-random-gpt2tok-f16\n    host: jetson\n    memory_footprint_bytes: 300 MiB\n    source_path: pypi:fixture\n\
        \x20 - model_id: sibling\n    host: jetson\n    memory_footprint_bytes: 1 GiB\n";
    let spec = docsdb::formats::system_yaml::parse(yaml, "system.yaml").unwrap();
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    // A previous run died with the model loaded; another server on the host, under the same
    // service name, serves `sibling`.
    for (model, bytes) in [("tiny-random-gpt2tok-f16", 1), ("sibling", 1 << 30)] {
        assert!(
            docsdb::residency::mark_loaded(&db, "jetson", model, "orin-llm-server", bytes)
                .await
                .unwrap()
        );
    }

    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = orin_llm_server::Config::new(fixture(), "127.0.0.1:0");
    config.engine.db = Some(url.clone());
    config.engine.host = Some("jetson".into());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(orin_llm_server::serve_on(
        listener,
        config,
        stop.clone().cancelled_owned(),
    ));
    ready(&base).await;

    let rows = inventory(&db).await;
    let row = rows
        .iter()
        .find(|r| r.model_id == "tiny-random-gpt2tok-f16")
        .unwrap();
    assert!(row.loaded, "{row:?}");
    assert_eq!(row.loaded_by.as_deref(), Some("orin-llm-server"));
    assert_eq!(row.format.as_deref(), Some("gguf"));
    assert_eq!(row.quantization.as_deref(), Some("F16"));
    assert_eq!(row.context_length, Some(512));
    let file_size = std::fs::metadata(fixture()).unwrap().len() as i64;
    assert_eq!(row.size_on_disk_bytes, Some(file_size));
    assert_eq!(row.memory_footprint_bytes, Some(300 << 20), "kept");
    assert_eq!(
        row.host_loaded_bytes,
        (300 << 20) + (1 << 30),
        "this model at its registered footprint, and the sibling"
    );
    assert_eq!(
        row.host_free_bytes,
        Some((8 << 30) - (300 << 20) - (1 << 30))
    );
    let sibling = rows.iter().find(|r| r.model_id == "sibling").unwrap();
    assert!(
        sibling.loaded,
        "another server's row is left alone: {sibling:?}"
    );
    let registered = docsdb::read::models(&mut db.pool().acquire().await.unwrap())
        .await
        .unwrap();
    let m = &registered
        .iter()
        .find(|(_, m)| m.model_id == "tiny-random-gpt2tok-f16")
        .unwrap()
        .1;
    assert_eq!(m.source_path.as_deref(), Some("pypi:fixture"), "kept");
    assert_eq!(m.family.as_deref(), Some("llama"));
    let cache = std::fs::canonicalize(fixture()).unwrap();
    assert_eq!(m.cache_path.as_deref(), Some(&*cache.display().to_string()));

    stop.cancel();
    server.await.unwrap().unwrap();
    let rows = inventory(&db).await;
    let loaded: Vec<&str> = rows
        .iter()
        .filter(|r| r.loaded)
        .map(|r| r.model_id.as_str())
        .collect();
    assert_eq!(loaded, ["sibling"], "this model's row cleared at stop");
}

/// On an empty registry the server registers this machine and the model, with a footprint
/// estimated from the file and the served context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_the_host_and_an_estimate_on_an_empty_registry() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = orin_llm_server::Config::new(fixture(), "127.0.0.1:0");
    config.engine.db = Some(url.clone());
    config.engine.service_name = Some("local-engine".into());
    tokio::spawn(orin_llm_server::serve_on(
        listener,
        config,
        std::future::pending(),
    ));
    ready(&base).await;
    let db = docsdb::Db::open(&url).await.unwrap();
    let rows = inventory(&db).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        row.host.as_deref(),
        Some(&*docsdb::register::host_name(None))
    );
    assert!(row.loaded);
    assert_eq!(row.loaded_by.as_deref(), Some("local-engine"));
    let file_size = std::fs::metadata(fixture()).unwrap().len() as i64;
    let footprint = row.memory_footprint_bytes.unwrap();
    assert!(footprint > file_size, "{footprint} {file_size}");
    assert_eq!(row.host_loaded_bytes, footprint);
    if cfg!(target_os = "linux") {
        assert!(row.host_memory_bytes.unwrap() > footprint);
    }
}

/// A metric's value in the `/metrics` text.
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prefix_is_read_once_and_reported_as_cached_tokens() {
    let url = start(fixture()).await;
    ready(&url).await;
    let system = "You are a careful assistant. Answer every question with one short sentence.";
    let ask = |q: &str, stream: bool| {
        json!({"model": "m", "max_tokens": 4, "temperature": 0, "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]})
    };
    let first: Value = post(&url, "/v1/chat/completions", &ask("Hi?", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    assert_eq!(first["timings"]["cache_n"], 0);
    // Another question after the same system prompt: the prompt up to the question is
    // reused, and OpenAI's usage says how much (plain and streamed).
    let second: Value = post(&url, "/v1/chat/completions", &ask("What now?", false))
        .await
        .json()
        .await
        .unwrap();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached >= 15 && cached < prompt, "{second}");
    assert_eq!(second["timings"]["cache_n"], cached);
    let res = post(&url, "/v1/chat/completions", &ask("What now?", true)).await;
    let text = res.text().await.unwrap();
    let usage: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap()["usage"]
        .clone();
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"],
        prompt - 1,
        "the same prompt again: all but its last token ({usage})"
    );
    assert_eq!(
        metric(&url, "homelab_engine_prefix_cache_lookups_total").await,
        3.0
    );
    assert_eq!(
        metric(&url, "homelab_engine_prefix_cache_hits_total").await,
        2.0
    );
    assert_eq!(
        metric(&url, "homelab_engine_prefix_cache_tokens_reused_total").await,
        (cached + prompt - 1) as f64
    );
    assert!(metric(&url, "homelab_engine_prefix_cache_bytes").await > 0.0);
    assert!(metric(&url, "homelab_engine_prefix_cache_budget_bytes").await > 0.0);
}
