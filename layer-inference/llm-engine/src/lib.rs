//! The embedded inference engine of homelab-llm.
//!
//! - [`gguf`]: the metadata and tensor table of GGUF files (what a model is, how large, how
//!   much memory it will want), read without the weights.
//! - [`ir`]: the files of an OpenVINO IR folder (model, tokenizer GGUF, weight type).
//! - [`tokenizer`]: the tokenizer built from the vocabulary in the file.
//! - [`template`]: the chat template from the file, rendered with minijinja.
//! - [`engine`]: loading (candle, pure Rust; llama.cpp with the `llama-cpp` feature), the request queue and parallel sequences, and
//!   the token loop with sampling, seeds, stop strings and limits.

pub mod engine;
mod error;
pub mod gguf;
pub mod ir;
#[cfg(feature = "llama-cpp")]
mod llama;
#[cfg(feature = "openvino")]
pub mod openvino;
pub mod template;
pub mod tokenizer;

pub use engine::{
    Backend, Engine, EngineConfig, Event, Finish, HAS_LLAMA_CPP, HAS_OPENVINO, Input, Params,
    use_openvino_library,
};
pub use error::EngineError;
