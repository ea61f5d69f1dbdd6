//! The CPU backend's transformer on the real default model (SmolLM2-135M, from its PyPI
//! package): its logits against candle's own llama, and batching and prefix sharing against
//! running each sequence alone from scratch (the same bits).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use llm_engine::cpu::kv::{KvPool, SeqKv};
use llm_engine::cpu::model::{Feed, Model};

fn load() -> Option<(Model, std::path::PathBuf)> {
    let path = testkit::models::smollm2()?;
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    Some((Model::load(&ct, &mut f, 2048).unwrap(), path))
}

/// Token ids of a chat-shaped text (any ids in the vocabulary do).
fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 1 + (i * 7919 + salt * 104_729) % 49_000)
        .collect()
}

fn run_alone(m: &Model, pool: &mut KvPool, tokens: &[u32], chunk: usize) -> (SeqKv, Vec<f32>) {
    let mut seq = SeqKv::default();
    let mut logits = Vec::new();
    for c in tokens.chunks(chunk) {
        logits = m
            .forward(
                pool,
                &mut [Feed {
                    seq: &mut seq,
                    tokens: c,
                    logits: true,
                }],
            )
            .unwrap()
            .remove(0);
    }
    (seq, logits)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap()
}

#[test]
fn logits_agree_with_candles_llama() {
    let Some((m, path)) = load() else { return };
    let tokens = prompt(40, 1);
    let mut pool = m.new_pool();
    let (_, ours) = run_alone(&m, &mut pool, &tokens, 16);
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut theirs_model = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    let input = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let theirs = theirs_model
        .forward(&input, 0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(ours.len(), theirs.len());
    let cos = testkit::models::cosine(&ours, &theirs);
    assert!(cos > 0.995, "cosine {cos}");
    assert_eq!(argmax(&ours), argmax(&theirs));
}

#[test]
fn a_batch_and_a_shared_prefix_give_the_same_bits_as_each_sequence_alone() {
    let Some((m, _)) = load() else { return };
    let mut pool = m.new_pool();
    let a = prompt(70, 2);
    let mut b = a[..45].to_vec();
    b.extend(prompt(20, 3));
    let (_, alone_a) = run_alone(&m, &mut pool, &a, 64);
    let (_, alone_b) = run_alone(&m, &mut pool, &b, 8);
    // A in chunks of 16, and B sharing A's first 45 positions, in one batch with A's decode.
    let (mut sa, _) = run_alone(&m, &mut pool, &a[..69], 16);
    let mut sb = pool.share_prefix(&sa.blocks, 45);
    let out = m
        .forward(
            &mut pool,
            &mut [
                Feed {
                    seq: &mut sa,
                    tokens: &a[69..],
                    logits: true,
                },
                Feed {
                    seq: &mut sb,
                    tokens: &b[45..],
                    logits: true,
                },
            ],
        )
        .unwrap();
    assert_eq!(out[0], alone_a, "A in a batch");
    assert_eq!(out[1], alone_b, "B from a shared prefix, in a batch");
    let live = pool.live_blocks();
    pool.release_seq(&mut sa);
    pool.release_seq(&mut sb);
    assert!(pool.live_blocks() < live);
}
