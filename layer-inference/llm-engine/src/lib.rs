//! The embedded inference engine of homelab-llm.
//!
//! - [`gguf`]: the metadata and tensor table of GGUF files (what a model is, how large, how
//!   much memory it will want), read without the weights.
//! - [`ir`]: the files of an OpenVINO IR folder (model, tokenizer GGUF, weight type).
//! - [`tokenizer`]: the tokenizer built from the vocabulary in the file.
//! - [`template`]: the chat template from the file, rendered with minijinja.
//! - [`sampling`]: the sampler settings a request ends up with (its own, else the model
//!   file's, else llama.cpp's defaults) and the sampler.
//! - [`queue`]: the priority queue in front of the sequences, and yielding to better requests.
//! - [`embed`]: sentence embeddings (BERT in sentence-transformers' layout) on candle, batched
//!   on one worker thread.
//! - [`cpu`]: the pure-Rust backend (`candle`): quantised kernels, KV blocks, the batched
//!   transformer.
//! - [`engine`]: loading (candle; llama.cpp with the `llama-cpp` feature; OpenVINO with
//!   `openvino`) and requests in and events out.
//! - `step`: the loop that runs every sequence in one forward pass per step, with sampling,
//!   stop tokens and strings, limits, and the prefix cache (`prefix`) behind a backend's
//!   `runner`.

pub mod cpu;
pub mod embed;
pub mod engine;
mod error;
pub mod gguf;
pub mod ir;
#[cfg(feature = "llama-cpp")]
mod llama;
#[cfg(feature = "openvino")]
pub mod openvino;
mod prefix;
pub mod queue;
mod runner;
pub mod sampling;
mod step;
pub mod template;
pub mod tokenizer;

pub use engine::{
    Backend, Engine, EngineConfig, Event, Finish, HAS_LLAMA_CPP, HAS_OPENVINO, Input, Params,
    Timings, default_prefix_cache_mb, use_openvino_library,
};
pub use error::EngineError;
pub use queue::{Priority, QueueSnapshot, RequestState};
pub use sampling::{SamplerDefaults, SamplerRequest, SamplerSettings};
