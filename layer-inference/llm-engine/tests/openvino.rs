//! The OpenVINO backend on the random-weight fixture: the IR is derived from the GGUF at test
//! time with OpenVINO GenAI's Python wheel (`pip install openvino openvino-genai
//! openvino-tokenizers`, which .ci/run does), the C library is the `openvino` wheel's, and the
//! greedy text must be the candle backend's on the same GGUF.

#![cfg(feature = "openvino")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use llm_engine::template::TemplateMessage;
use llm_engine::{Backend, Engine, EngineConfig, Event, Input, Params, SamplerRequest};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

async fn greedy(cfg: &EngineConfig) -> String {
    let engine = std::sync::Arc::new(Engine::load(cfg).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let input = Input::Chat(vec![TemplateMessage {
        role: "user".into(),
        content: "Tell me about otters.".into(),
    }]);
    let params = Params {
        max_tokens: Some(12),
        sampling: SamplerRequest::greedy(),
        ..Default::default()
    };
    let e = engine.clone();
    let job = tokio::spawn(async move { e.generate(input, params, tx).await });
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                completion_tokens, ..
            } => assert!(completion_tokens > 0),
            Event::Queued { .. } => {}
        }
    }
    job.await.unwrap().unwrap();
    text
}

#[tokio::test]
async fn openvino_ir_generates_what_candle_generates() {
    let Some(libs) = testkit::openvino::wheel_libs() else {
        return;
    };
    llm_engine::openvino::load_library_from(Some(libs)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ir = testkit::openvino::derive_ir(&fixture(), dir.path());

    let mut ov = EngineConfig::new(&ir);
    ov.backend = Backend::OpenVino;
    ov.context = 256;
    // f32, as candle computes: random weights leave near-ties that bf16 would break otherwise.
    ov.precision = Some("f32".into());
    let mut candle = EngineConfig::new(fixture());
    candle.context = 256;
    let (a, b) = (greedy(&ov).await, greedy(&candle).await);
    assert!(!a.is_empty());
    assert_eq!(a, b, "OpenVINO and candle disagree on the same weights");

    // The served name defaults to the folder's; errors are clear.
    let engine = Engine::load(&ov).unwrap();
    assert_eq!(engine.backend, Backend::OpenVino);
    let mut bad = ov.clone();
    bad.model_path = dir.path().join("missing");
    let e = Engine::load(&bad).unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    let mut bad = ov.clone();
    bad.device = "NOSUCHDEVICE".into();
    assert!(Engine::load(&bad).is_err());
    let mut bf16 = ov.clone();
    bf16.precision = None;
    assert!(
        !greedy(&bf16).await.is_empty(),
        "the device's own precision runs too"
    );
    std::fs::remove_file(dir.path().join("tiny-random-gpt2tok-f16.gguf")).unwrap();
    let e = Engine::load(&ov).unwrap_err().to_string();
    assert!(e.contains("has no .gguf"), "{e}");
}
