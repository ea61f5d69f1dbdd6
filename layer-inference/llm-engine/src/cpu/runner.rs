//! The CPU backend as the step loop drives it: the model and its KV blocks.

use super::kv::{KvPool, SeqKv};
use super::model::{self, Model};
use crate::error::EngineError;
use crate::runner::{Feed, Runner};

/// Prompt tokens fed per step: large enough that a prefill chunk reads each weight once for
/// many tokens, small enough that the sequences decoding beside it wait little.
const CHUNK: usize = 64;

/// The model and the KV of every sequence and of the prefix cache.
pub struct CpuRunner {
    pub model: Model,
    pool: KvPool,
}

impl CpuRunner {
    pub fn new(model: Model) -> Self {
        let pool = model.new_pool();
        CpuRunner { model, pool }
    }
}

impl Runner for CpuRunner {
    type Seq = SeqKv;

    fn new_seq(&mut self) -> Result<SeqKv, EngineError> {
        Ok(SeqKv::default())
    }

    fn share(&mut self, src: &SeqKv, n: usize) -> Result<Option<SeqKv>, EngineError> {
        Ok(Some(self.pool.share_prefix(&src.blocks, n.min(src.len))))
    }

    fn adopt(&mut self, src: SeqKv, n: usize) -> Result<SeqKv, SeqKv> {
        let seq = self.pool.share_prefix(&src.blocks, n.min(src.len));
        self.evict(src);
        Ok(seq)
    }

    fn forward(&mut self, feeds: &mut [Feed<'_, SeqKv>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut fs: Vec<model::Feed<'_>> = feeds
            .iter_mut()
            .map(|f| model::Feed {
                seq: &mut *f.seq,
                tokens: f.tokens,
                logits: f.logits,
            })
            .collect();
        self.model.forward(&mut self.pool, &mut fs)
    }

    fn to_cache(&mut self, seq: &mut SeqKv) {
        for &id in &seq.blocks {
            self.pool.retain_cached(id);
            self.pool.release(id);
        }
    }

    fn evict(&mut self, seq: SeqKv) {
        for id in seq.blocks {
            self.pool.release_cached(id);
        }
    }

    fn discard(&mut self, mut seq: SeqKv) {
        self.pool.release_seq(&mut seq);
    }

    fn cached_bytes(&self) -> usize {
        self.pool.cached_blocks() * self.pool.block_bytes()
    }

    fn chunk(&self) -> usize {
        CHUNK
    }
}
