//! all-MiniLM-L6-v2 on candle against sentence-transformers: the vectors the reference
//! produced for a fixed set of sentences (`fixtures/minilm_reference.json`, made with
//! `SentenceTransformer.encode` on the same model files) must come out with cosine ≥ 0.999
//! each, one at a time and batched (padding must not leak into the mean), with the same token
//! counts; an input beyond 256 tokens is cut as the reference cuts it.
//!
//! The model comes from its PyPI package (`testkit::models::minilm`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llm_engine::embed::{EmbedLimits, Embedder, Embeddings};
use testkit::models::{cosine, floats, minilm_reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_sentence_transformers() {
    let Some(dir) = testkit::models::minilm() else {
        return;
    };
    let reference = minilm_reference();
    let sentences: Vec<String> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let want: Vec<Vec<f32>> = reference["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let want_tokens: Vec<u64> = reference["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();

    let embedder = Embedder::load(&dir, Some("minilm-l6")).unwrap();
    assert_eq!(embedder.info.dimensions, 384);
    assert_eq!(embedder.info.max_tokens, 256);
    assert!(embedder.info.normalized);
    assert_eq!(embedder.info.parameters, 22_713_216, "{:?}", embedder.info);
    for (i, s) in sentences.iter().enumerate() {
        let e = embedder.encode(s).unwrap();
        assert_eq!(e.ids.len() as u64, want_tokens[i], "tokens of {s:?}");
        assert_eq!(e.truncated, want_tokens[i] == 256, "{s:?}");
    }

    // Batched through the worker (batch 4: mixed lengths share a batch) ...
    let service = Embeddings::start(
        Embedder::load(&dir, None).unwrap(),
        EmbedLimits {
            batch: 4,
            queue: 64,
        },
    );
    let out = service.embed(&sentences).await.unwrap();
    assert_eq!(out.vectors.len(), sentences.len());
    assert_eq!(out.tokens, want_tokens.iter().sum::<u64>());
    assert_eq!(out.truncated, 1);
    for (i, (got, want)) in out.vectors.iter().zip(&want).enumerate() {
        assert_eq!(got.len(), 384);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let c = cosine(got, want);
        assert!(c >= 0.999, "sentence {i} {:?}: cosine {c}", sentences[i]);
    }
    // ... and one at a time, concurrently: the same vectors.
    let singles = futures_util::future::join_all(
        sentences
            .iter()
            .map(|s| service.embed(std::slice::from_ref(s))),
    )
    .await;
    for (i, one) in singles.into_iter().enumerate() {
        let c = cosine(&one.unwrap().vectors[0], &want[i]);
        assert!(c >= 0.999, "sentence {i} alone: cosine {c}");
    }

    // Meaning: a paraphrase is nearer than an unrelated sentence.
    let (cat, rug, revenue) = (&out.vectors[2], &out.vectors[3], &out.vectors[4]);
    assert!(cosine(cat, rug) > cosine(cat, revenue) + 0.2);
}

#[test]
fn a_folder_that_is_not_a_model_is_named() {
    let err = Embedder::load(std::path::Path::new("/nonexistent/model"), None).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let err = Embedder::load(dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("only BERT"), "{err}");
}
