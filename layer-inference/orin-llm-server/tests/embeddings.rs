//! `/v1/embeddings` with the real all-MiniLM-L6-v2 (from its PyPI package) beside a chat
//! model, over real HTTP: the official OpenAI Python SDK (which asks for base64) gets the
//! vectors sentence-transformers gives for the same sentences; usage counts the tokens; an
//! input past the model's 256 tokens is cut and the answer says so; and every bad request gets
//! a 400 that names the field, without touching the model.
//!
//! Outside CI, a machine without pip or the SDK skips this with a note; with `CI=true` it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use serde_json::{Value, json};
use testkit::models::{cosine, floats, minilm_reference};

fn tiny_chat_model() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

async fn start(embedding: Option<std::path::PathBuf>, max_inputs: usize) -> String {
    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = orin_llm_server::Config::new(tiny_chat_model(), "127.0.0.1:0");
    config.engine.embedding_model = embedding;
    config.engine.embedding_model_id = Some("minilm-l6".into());
    config.engine.embedding_max_inputs = max_inputs;
    tokio::spawn(orin_llm_server::serve_on(
        listener,
        config,
        std::future::pending(),
    ));
    testkit::wait_healthy(&url, "orin-llm-server").await;
    url
}

async fn post(url: &str, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/embeddings"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, res.json().await.unwrap(), headers)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_gets_reference_vectors_and_bad_requests_are_named() {
    let Some(dir) = testkit::models::minilm() else {
        return;
    };
    let url = start(Some(dir), 16).await;
    let models: Value = reqwest::get(format!("{url}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let embed = &models["data"][1];
    assert_eq!(embed["id"], "minilm-l6", "{models}");
    assert_eq!(embed["type"], "embedding");
    assert_eq!(embed["dimensions"], 384);
    assert_eq!(embed["max_input_tokens"], 256);

    let reference = minilm_reference();
    let sentences = reference["sentences"].as_array().unwrap().clone();
    let want: Vec<Vec<f32>> = reference["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let want_tokens: u64 = reference["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .sum();

    // Plain HTTP, floats.
    let (status, v, headers) = post(&url, &json!({"model": "minilm-l6", "input": sentences})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm-l6");
    assert_eq!(v["usage"]["prompt_tokens"], want_tokens);
    assert_eq!(v["usage"]["total_tokens"], want_tokens);
    assert_eq!(headers["x-homelab-truncated-inputs"], "1");
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["index"], i);
        let c = cosine(&floats(&d["embedding"]), &want[i]);
        assert!(c >= 0.999, "sentence {i}: cosine {c}");
    }

    // The official SDK (base64 on the wire, decoded by the SDK).
    let sdk = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if sdk {
        let script = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none")
sentences = json.loads(sys.stdin.read())
r = client.embeddings.create(model="minilm-l6", input=sentences)
print(json.dumps({"vectors": [d.embedding for d in r.data], "tokens": r.usage.prompt_tokens}))
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script, &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            child.stdin.as_mut().unwrap(),
            Value::Array(sentences.clone()).to_string().as_bytes(),
        )
        .unwrap();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["tokens"], want_tokens);
        for (i, v) in got["vectors"].as_array().unwrap().iter().enumerate() {
            let c = cosine(&floats(v), &want[i]);
            assert!(c >= 0.999, "SDK, sentence {i}: cosine {c}");
        }
    } else {
        assert!(
            !in_ci(),
            "CI=true but python3 with the openai package is missing"
        );
        eprintln!("note: no openai package; the SDK part is skipped");
    }

    // Bad requests: a 400 naming the field.
    let too_many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    for (body, param, says) in [
        (
            json!({"model": "minilm-l6", "input": [1, 2, 3]}),
            "input",
            "token ids",
        ),
        (
            json!({"model": "minilm-l6", "input": [[1], [2]]}),
            "input",
            "token ids",
        ),
        (
            json!({"model": "minilm-l6", "input": []}),
            "input",
            "must not be empty",
        ),
        (
            json!({"model": "minilm-l6", "input": too_many}),
            "input",
            "at most 16",
        ),
        (
            json!({"model": "minilm-l6", "input": "x", "dimensions": 256}),
            "dimensions",
            "384",
        ),
        (
            json!({"model": "tiny-random-gpt2tok-f16", "input": "x"}),
            "model",
            "chat model",
        ),
    ] {
        let (status, v, _) = post(&url, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/embeddings"))
        .header("content-type", "application/json")
        .body("{\"model\": \"minilm-l6\", \"input\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "homelab_engine_embedding_tokens_total {}",
            if sdk { 2 * want_tokens } else { want_tokens }
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_an_embedding_model_says_so() {
    let url = start(None, 16).await;
    let (status, v, _) = post(&url, &json!({"model": "minilm-l6", "input": "x"})).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--embedding-model")
    );
}
