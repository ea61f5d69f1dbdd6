//! The llama.cpp backend (`--features llama-cpp`; `cuda` for the Jetson): the same engine,
//! with llama.cpp computing the logits. Tokenizer, template, sampling and stop handling stay
//! ours, so both backends behave alike for the same seed and settings.
//!
//! Every sequence lives in one context with a unified KV cache: a step is one `llama_decode`
//! of a batch whose tokens carry their sequence ids, and a prefix is shared between
//! sequences by `llama_memory_seq_cp` (the cells are shared, not copied).

use std::num::NonZeroU32;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use crate::error::EngineError;
use crate::runner::{Feed, Runner};

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

    /// Bytes of KV per token position (f16 keys and values of every layer).
    fn bytes_per_cell(&self) -> usize {
        let heads = self.model.n_head().max(1) as usize;
        let head_dim = self.model.n_embd().max(0) as usize / heads;
        2 * self.model.n_layer() as usize * self.model.n_head_kv() as usize * head_dim * 2
    }

    /// One context for every sequence: room for `parallel` sequences of `context` tokens and
    /// for what the prefix cache keeps (up to `cache_bytes`, at most as much again), shared
    /// between sequences (a prefix is shared, not copied).
    pub fn runner(
        &self,
        context: usize,
        parallel: usize,
        cache_bytes: usize,
    ) -> Result<LlamaRunner<'_>, EngineError> {
        let per_cell = self.bytes_per_cell().max(1);
        let running = parallel * context;
        let cache_cells = (cache_bytes / per_cell).min(running);
        let n_ctx = u32::try_from(running + cache_cells).unwrap_or(u32::MAX);
        let n_batch = u32::try_from(CHUNK + parallel).unwrap_or(u32::MAX);
        let n_seq = (parallel + MAX_ENTRIES + PARKED).min(256);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx.max(1)))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_seq_max(n_seq as u32)
            .with_kv_unified(true)
            // Flash attention skips the cells of other sequences (masked out) instead of
            // multiplying by them: with every sequence and the cache in one KV, that is most.
            .with_flash_attention_policy(1)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = {
            let _one_at_a_time = self
                .create
                .lock()
                .map_err(|e| EngineError::Generate(e.to_string()))?;
            self.model
                .new_context(backend()?, params)
                .map_err(|e| EngineError::Load(format!("llama.cpp context: {e}")))?
        };
        Ok(LlamaRunner {
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_vocab: self.model.n_vocab().max(0) as usize,
            free_ids: (0..n_seq as i32).rev().collect(),
            cells: n_ctx as usize,
            per_cell,
            cached_tokens: 0,
            live_tokens: 0,
        })
    }
}

/// Prompt tokens fed per step.
const CHUNK: usize = 256;
/// Sequences the prefix cache may hold (each a llama.cpp sequence id).
const MAX_ENTRIES: usize = 32;
/// Sequence ids kept for sequences parked behind better requests.
const PARKED: usize = 8;

/// One sequence: its llama.cpp sequence id and the positions it holds.
#[derive(Debug)]
pub struct LlamaSeq {
    id: i32,
    len: usize,
}

/// Every sequence in one llama.cpp context, decoded together.
pub struct LlamaRunner<'a> {
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'a>,
    n_vocab: usize,
    free_ids: Vec<i32>,
    /// KV cells in the context.
    cells: usize,
    per_cell: usize,
    /// Positions held by cached sequences (an upper bound of their cells: a shared prefix
    /// is counted once per sequence), and by the others.
    cached_tokens: usize,
    live_tokens: usize,
}

fn gen_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Generate(format!("llama.cpp: {e}"))
}

impl LlamaRunner<'_> {
    fn drop_seq(&mut self, seq: &LlamaSeq) {
        let id = u32::try_from(seq.id).ok();
        let _ = self.ctx.clear_kv_cache_seq(id, None, None);
        self.free_ids.push(seq.id);
    }
}

impl Runner for LlamaRunner<'_> {
    type Seq = LlamaSeq;

    fn new_seq(&mut self) -> Result<LlamaSeq, EngineError> {
        let id = self.free_ids.pop().ok_or(EngineError::KvFull)?;
        Ok(LlamaSeq { id, len: 0 })
    }

    fn share(&mut self, src: &LlamaSeq, n: usize) -> Result<Option<LlamaSeq>, EngineError> {
        let mut seq = self.new_seq()?;
        let n = n.min(src.len);
        self.ctx
            .copy_kv_cache_seq(src.id, seq.id, Some(0), Some(n as u32))
            .map_err(gen_err)?;
        seq.len = n;
        self.live_tokens += n;
        Ok(Some(seq))
    }

    fn adopt(&mut self, src: LlamaSeq, n: usize) -> Result<LlamaSeq, LlamaSeq> {
        match self.share(&src, n) {
            Ok(Some(seq)) => {
                self.evict(src);
                Ok(seq)
            }
            _ => Err(src),
        }
    }

    fn fits(&self, new_tokens: usize) -> bool {
        self.live_tokens + self.cached_tokens + new_tokens <= self.cells
    }

    fn forward(&mut self, feeds: &mut [Feed<'_, LlamaSeq>]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.batch.clear();
        let mut wanted = Vec::new();
        for f in feeds.iter() {
            for (i, t) in f.tokens.iter().enumerate() {
                let last = i + 1 == f.tokens.len();
                self.batch
                    .add(
                        LlamaToken(*t as i32),
                        (f.seq.len + i) as i32,
                        &[f.seq.id],
                        f.logits && last,
                    )
                    .map_err(gen_err)?;
                if f.logits && last {
                    wanted.push(self.batch.n_tokens() - 1);
                }
            }
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            // Whatever part of the batch went in comes out again.
            for f in feeds.iter() {
                let _ = self.ctx.clear_kv_cache_seq(
                    u32::try_from(f.seq.id).ok(),
                    Some(f.seq.len as u32),
                    None,
                );
            }
            return Err(match e {
                llama_cpp_2::DecodeError::NoKvCacheSlot => EngineError::KvFull,
                e => gen_err(e),
            });
        }
        for f in feeds.iter_mut() {
            f.seq.len += f.tokens.len();
            self.live_tokens += f.tokens.len();
        }
        Ok(wanted
            .into_iter()
            .map(|i| {
                let l = self.ctx.get_logits_ith(i);
                l[..self.n_vocab.min(l.len())].to_vec()
            })
            .collect())
    }

    fn to_cache(&mut self, seq: &mut LlamaSeq) {
        self.live_tokens = self.live_tokens.saturating_sub(seq.len);
        self.cached_tokens += seq.len;
    }

    fn evict(&mut self, seq: LlamaSeq) {
        self.cached_tokens = self.cached_tokens.saturating_sub(seq.len);
        self.drop_seq(&seq);
    }

    fn discard(&mut self, seq: LlamaSeq) {
        self.live_tokens = self.live_tokens.saturating_sub(seq.len);
        self.drop_seq(&seq);
    }

    fn cached_bytes(&self) -> usize {
        self.cached_tokens * self.per_cell
    }

    fn chunk(&self) -> usize {
        CHUNK
    }

    fn max_entries(&self) -> usize {
        MAX_ENTRIES
    }
}
