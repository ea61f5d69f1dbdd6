//! The llama.cpp backend (`--features llama-cpp`; `cuda` for the Jetson): the same engine,
//! with llama.cpp computing the logits. Tokenizer, template, sampling and stop handling stay
//! ours, so both backends behave alike for the same seed and settings.

use std::num::NonZeroU32;
use std::sync::{Mutex, OnceLock};

use candle_core::{Device, Tensor};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use crate::error::EngineError;

/// llama.cpp may be initialised once per process.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            LlamaBackend::init()
                .map(|mut b| {
                    b.void_logs();
                    b
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp: {e}")))
}

/// A model loaded by llama.cpp.
pub struct LlamaWeights {
    model: LlamaModel,
    /// Creating contexts of one model concurrently is unsound in llama.cpp: one at a time.
    create: Mutex<()>,
    threads: i32,
}

impl LlamaWeights {
    /// Loads the model; `threads` 0 means every core.
    pub fn load(path: &std::path::Path, threads: usize) -> Result<Self, EngineError> {
        let b = backend()?;
        let model = LlamaModel::load_from_file(b, path, &LlamaModelParams::default())
            .map_err(|e| EngineError::Load(format!("llama.cpp: {e}")))?;
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let threads = i32::try_from(threads).unwrap_or(i32::MAX);
        Ok(LlamaWeights {
            model,
            create: Mutex::new(()),
            threads,
        })
    }

    /// A sequence with its own KV cache of `n_ctx` tokens.
    pub fn session(&self, n_ctx: usize) -> Result<LlamaSession<'_>, EngineError> {
        let n = u32::try_from(n_ctx).unwrap_or(u32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n.max(1)))
            .with_n_batch(n.max(1))
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = {
            let _one_at_a_time = self
                .create
                .lock()
                .map_err(|e| EngineError::Generate(e.to_string()))?;
            self.model
                .new_context(backend()?, params)
                .map_err(|e| EngineError::Generate(format!("llama.cpp context: {e}")))?
        };
        Ok(LlamaSession {
            ctx,
            batch: LlamaBatch::new(n_ctx.max(1), 1),
            n_vocab: self.model.n_vocab().max(0) as usize,
        })
    }
}

/// One sequence on llama.cpp.
pub struct LlamaSession<'a> {
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'a>,
    n_vocab: usize,
}

impl LlamaSession<'_> {
    fn logits(&self, i: i32) -> Result<Tensor, EngineError> {
        let l = self.ctx.get_logits_ith(i);
        Ok(Tensor::from_slice(
            &l[..self.n_vocab.min(l.len())],
            self.n_vocab.min(l.len()),
            &Device::Cpu,
        )?)
    }

    /// Feeds `tokens` from position `start`; returns the logits after the last one.
    pub fn feed(&mut self, tokens: &[u32], start: usize) -> Result<Tensor, EngineError> {
        self.batch.clear();
        for (i, t) in tokens.iter().enumerate() {
            self.batch
                .add(
                    LlamaToken(*t as i32),
                    (start + i) as i32,
                    &[0],
                    i + 1 == tokens.len(),
                )
                .map_err(|e| EngineError::Generate(e.to_string()))?;
        }
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| EngineError::Generate(e.to_string()))?;
        self.logits(self.batch.n_tokens() - 1)
    }
}
