//! The KV cache of the CPU backend: fixed blocks of [`BLOCK`] token positions (keys and
//! values of every layer, as f16), shared between sequences by reference counts.
//!
//! A sequence owns a list of blocks. The full blocks of a cached prefix are shared as they
//! are (a block once full is never written again); where a shared prefix ends inside a block,
//! that block's first positions are copied into a new one of the sequence's own. So the
//! block a sequence writes into is always its own, and a prefix cached once serves every
//! sequence that starts with it. A block is freed when neither a sequence nor the prefix
//! cache refers to it; the blocks the cache refers to are what its memory budget counts.

use half::f16;

/// Token positions per block.
pub const BLOCK: usize = 32;

pub type BlockId = u32;

/// Freed block buffers kept for reuse rather than returned to the allocator.
const SPARE: usize = 32;

/// The blocks of every sequence and of the prefix cache.
#[derive(Debug)]
pub struct KvPool {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Halves per block: layers × (K, V) × heads × positions × head_dim.
    block_len: usize,
    blocks: Vec<Option<Box<[f16]>>>,
    seq_refs: Vec<u32>,
    cache_refs: Vec<u32>,
    free_ids: Vec<BlockId>,
    spare: Vec<Box<[f16]>>,
    live: usize,
    cached: usize,
}

/// One sequence's KV: its blocks and how many positions they hold.
#[derive(Debug, Default, Clone)]
pub struct SeqKv {
    pub blocks: Vec<BlockId>,
    pub len: usize,
}

impl KvPool {
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        KvPool {
            layers,
            kv_heads,
            head_dim,
            block_len: layers * 2 * kv_heads * BLOCK * head_dim,
            blocks: Vec::new(),
            seq_refs: Vec::new(),
            cache_refs: Vec::new(),
            free_ids: Vec::new(),
            spare: Vec::new(),
            live: 0,
            cached: 0,
        }
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> usize {
        self.block_len * 2
    }

    /// Bytes of KV per token position.
    pub fn bytes_per_token(&self) -> usize {
        self.block_bytes() / BLOCK
    }

    /// Blocks allocated now.
    pub fn live_blocks(&self) -> usize {
        self.live
    }

    /// Blocks the prefix cache refers to.
    pub fn cached_blocks(&self) -> usize {
        self.cached
    }

    fn alloc(&mut self) -> BlockId {
        let buf = self
            .spare
            .pop()
            .unwrap_or_else(|| vec![f16::ZERO; self.block_len].into_boxed_slice());
        self.live += 1;
        match self.free_ids.pop() {
            Some(id) => {
                let i = id as usize;
                self.blocks[i] = Some(buf);
                self.seq_refs[i] = 1;
                self.cache_refs[i] = 0;
                id
            }
            None => {
                self.blocks.push(Some(buf));
                self.seq_refs.push(1);
                self.cache_refs.push(0);
                (self.blocks.len() - 1) as BlockId
            }
        }
    }

    fn free_if_unused(&mut self, id: BlockId) {
        let i = id as usize;
        if self.seq_refs[i] == 0
            && self.cache_refs[i] == 0
            && let Some(buf) = self.blocks[i].take()
        {
            self.live -= 1;
            self.free_ids.push(id);
            if self.spare.len() < SPARE {
                self.spare.push(buf);
            }
        }
    }

    /// A sequence takes a reference to `id`.
    pub fn retain(&mut self, id: BlockId) {
        self.seq_refs[id as usize] += 1;
    }

    /// A sequence drops its reference to `id`.
    pub fn release(&mut self, id: BlockId) {
        let r = &mut self.seq_refs[id as usize];
        *r = r.saturating_sub(1);
        self.free_if_unused(id);
    }

    /// The prefix cache takes a reference to `id`.
    pub fn retain_cached(&mut self, id: BlockId) {
        let r = &mut self.cache_refs[id as usize];
        if *r == 0 {
            self.cached += 1;
        }
        *r += 1;
    }

    /// The prefix cache drops its reference to `id`.
    pub fn release_cached(&mut self, id: BlockId) {
        let r = &mut self.cache_refs[id as usize];
        if *r == 1 {
            self.cached -= 1;
        }
        *r = r.saturating_sub(1);
        self.free_if_unused(id);
    }

    /// Drops every reference `seq` holds.
    pub fn release_seq(&mut self, seq: &mut SeqKv) {
        for id in std::mem::take(&mut seq.blocks) {
            self.release(id);
        }
        seq.len = 0;
    }

    /// A new sequence that starts with the first `n` positions of `src` (shared full blocks,
    /// a copy of the block where `n` ends inside one).
    pub fn share_prefix(&mut self, src: &[BlockId], n: usize) -> SeqKv {
        let full = n / BLOCK;
        let mut blocks: Vec<BlockId> = src[..full].to_vec();
        for &id in &blocks {
            self.retain(id);
        }
        let rest = n % BLOCK;
        if rest > 0 {
            let copy = self.alloc();
            let (from, to) = (src[full] as usize, copy as usize);
            let per = BLOCK * self.head_dim;
            let used = rest * self.head_dim;
            // Both buffers exist: `from` is referenced by `src`, `copy` was just allocated.
            if let (Some(a), Some(mut b)) = (self.blocks[from].take(), self.blocks[to].take()) {
                for part in 0..self.layers * 2 * self.kv_heads {
                    b[part * per..part * per + used]
                        .copy_from_slice(&a[part * per..part * per + used]);
                }
                self.blocks[from] = Some(a);
                self.blocks[to] = Some(b);
            }
            blocks.push(copy);
        }
        SeqKv { blocks, len: n }
    }

    /// Makes room in `seq` for `n` more positions (new blocks of its own).
    pub fn grow(&mut self, seq: &mut SeqKv, n: usize) {
        let need = (seq.len + n).div_ceil(BLOCK);
        while seq.blocks.len() < need {
            let id = self.alloc();
            seq.blocks.push(id);
        }
    }

    fn offset(&self, layer: usize, kv: usize, head: usize) -> usize {
        ((layer * 2 + kv) * self.kv_heads + head) * BLOCK * self.head_dim
    }

    /// Writes the keys and values (`kv_heads × head_dim` each) of position `pos` of the
    /// sequence with `blocks`, in `layer`.
    pub fn write(&mut self, blocks: &[BlockId], layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let id = blocks[pos / BLOCK] as usize;
        debug_assert!(
            self.seq_refs[id] == 1 && self.cache_refs[id] == 0,
            "a shared block is never written"
        );
        let (hd, heads) = (self.head_dim, self.kv_heads);
        let at =
            |kv: usize, h: usize| ((layer * 2 + kv) * heads + h) * BLOCK * hd + (pos % BLOCK) * hd;
        if let Some(buf) = self.blocks[id].as_mut() {
            for h in 0..heads {
                let (ko, vo) = (at(0, h), at(1, h));
                f16_from(&mut buf[ko..ko + hd], &k[h * hd..(h + 1) * hd]);
                f16_from(&mut buf[vo..vo + hd], &v[h * hd..(h + 1) * hd]);
            }
        }
    }

    /// The keys (`kv` 0) or values (1) of `head` in `layer` of block `id`: `BLOCK × head_dim`.
    pub fn part(&self, id: BlockId, layer: usize, kv: usize, head: usize) -> &[f16] {
        let o = self.offset(layer, kv, head);
        match &self.blocks[id as usize] {
            Some(b) => &b[o..o + BLOCK * self.head_dim],
            None => &[],
        }
    }
}

fn f16_from(dst: &mut [f16], src: &[f32]) {
    use half::slice::HalfFloatSliceExt;
    dst.convert_from_f32_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_blocks_live_until_the_last_reference_and_the_cache_counts_its_own() {
        let mut p = KvPool::new(1, 1, 2);
        let mut a = SeqKv::default();
        p.grow(&mut a, BLOCK + 3);
        for pos in 0..BLOCK + 3 {
            p.write(&a.blocks, 0, pos, &[pos as f32, 1.0], &[2.0, pos as f32]);
        }
        a.len = BLOCK + 3;
        assert_eq!(p.live_blocks(), 2);
        // The cache keeps `a`'s blocks; `a` ends.
        for &id in &a.blocks {
            p.retain_cached(id);
        }
        let a_blocks = a.blocks.clone();
        p.release_seq(&mut a);
        assert_eq!((p.live_blocks(), p.cached_blocks()), (2, 2));
        // `b` starts with BLOCK + 2 of them: the full block shared, the second copied.
        let b = p.share_prefix(&a_blocks, BLOCK + 2);
        assert_eq!(b.blocks[0], a_blocks[0]);
        assert_ne!(b.blocks[1], a_blocks[1]);
        assert_eq!(p.live_blocks(), 3);
        let copied = p.part(b.blocks[1], 0, 0, 0);
        assert_eq!(copied[0].to_f32(), BLOCK as f32);
        assert_eq!(copied[2].to_f32(), BLOCK as f32 + 1.0);
        assert_eq!(
            copied[4].to_f32(),
            0.0,
            "positions past the prefix are not copied"
        );
        // The cache lets go: the shared block stays for `b`, the other goes.
        for &id in &a_blocks {
            p.release_cached(id);
        }
        assert_eq!((p.live_blocks(), p.cached_blocks()), (2, 0));
    }
}
