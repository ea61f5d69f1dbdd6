//! The pure-Rust CPU backend (`--backend candle`: candle reads the GGUF file; the kernels,
//! the KV cache and the batched forward pass are ours).
//!
//! - [`quant`]: the block formats, 8-bit activations and the scalar dot products.
//! - [`simd`]: the same dot products on tiles, with AVX2 or AVX-512 VNNI (the engine's
//!   only `unsafe`).
//! - [`matmul`]: weight matrices times a batch of rows, on every core.
//! - [`kv`]: the KV cache in shared, reference-counted blocks.
//! - [`model`]: the transformer (llama, qwen2) over a batch of sequences; `load` reads it
//!   from the GGUF file.

pub mod kv;
mod load;
pub mod matmul;
pub mod model;
pub mod quant;
pub mod runner;
pub mod simd;

#[cfg(test)]
mod tests;
