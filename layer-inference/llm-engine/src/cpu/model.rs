//! The transformer of the CPU backend: GGUF `llama` (Llama, SmolLM, Mistral) and `qwen2`
//! models, run as one forward pass over a batch of sequences.
//!
//! A batch is any mix of sequences, each feeding some tokens at its own position (one for a
//! decoding sequence, a chunk for one being prefilled): the matrix products take every token
//! of the batch at once (each weight read once), the attention runs per sequence over its own
//! KV blocks ([`super::kv`]). Each token's arithmetic is the same whatever else is in the
//! batch and whether its prefix was cached or just computed, so batching and prefix reuse
//! change no token.

use std::sync::atomic::Ordering;

use super::kv::{BLOCK, BlockId, KvPool, SeqKv};
use super::matmul::{Weight, dot_f32, parallel};
use super::quant::Q8Rows;
use super::simd::as_atomic;
use crate::error::EngineError;

/// The architectures this backend runs (`general.architecture`).
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// Query tokens of one sequence handled together in the attention (each KV block is
/// converted once for them).
const TILE: usize = 16;

/// Which pairs of a head's values RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rope {
    /// Neighbours (2i, 2i+1): llama-family GGUF files.
    Norm,
    /// Halves (i, i + d/2): Qwen2.
    Neox,
}

/// The model's shape, from the file's metadata.
#[derive(Debug, Clone)]
pub struct Hparams {
    pub arch: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub vocab: usize,
    pub(super) rope: Rope,
}

pub(super) struct Layer {
    pub(super) attn_norm: Vec<f32>,
    pub(super) q: Weight,
    pub(super) k: Weight,
    pub(super) v: Weight,
    pub(super) q_bias: Option<Vec<f32>>,
    pub(super) k_bias: Option<Vec<f32>>,
    pub(super) v_bias: Option<Vec<f32>>,
    pub(super) o: Weight,
    pub(super) ffn_norm: Vec<f32>,
    pub(super) gate: Weight,
    pub(super) up: Weight,
    pub(super) down: Weight,
}

/// A loaded model.
pub struct Model {
    pub hp: Hparams,
    pub(super) embed: Weight,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Vec<f32>,
    /// `None`: the output shares the embedding's weights.
    pub(super) output: Option<Weight>,
    /// cos and sin of every (position, pair), `max_pos × head_dim / 2`.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    pub(super) max_pos: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("hp", &self.hp)
            .finish_non_exhaustive()
    }
}

/// One sequence's part of a forward pass: `tokens` fed at its next positions.
pub struct Feed<'a> {
    pub seq: &'a mut SeqKv,
    pub tokens: &'a [u32],
    /// Whether the logits after its last token are wanted.
    pub logits: bool,
}

impl Model {
    /// An empty KV cache for this model.
    pub fn new_pool(&self) -> KvPool {
        KvPool::new(self.hp.layers, self.hp.kv_heads, self.hp.head_dim)
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|w| w.bytes())
                    .sum::<usize>()
            })
            .sum();
        l + self.embed.bytes() + self.output.as_ref().map_or(0, Weight::bytes)
    }

    fn rms_norm(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        let h = self.hp.hidden;
        for (x, out) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
            let scale = 1.0 / (dot_f32(x, x) / h as f32 + self.hp.eps).sqrt();
            for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
                *o = x * scale * w;
            }
        }
    }

    fn rope(&self, x: &mut [f32], heads: usize, positions: &[usize]) {
        let hd = self.hp.head_dim;
        let half = hd / 2;
        for (row, &p) in x.chunks_exact_mut(heads * hd).zip(positions) {
            let (cos, sin) = (&self.cos[p * half..], &self.sin[p * half..]);
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = match self.hp.rope {
                        Rope::Norm => (2 * i, 2 * i + 1),
                        Rope::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }

    /// Runs `feeds` through the model: their KV is written and their lengths advance. Returns
    /// the logits after the last token of each feed that wants them, in feed order.
    pub fn forward(
        &self,
        pool: &mut KvPool,
        feeds: &mut [Feed<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let rows = self.place(pool, feeds)?;
        let mut x = self.embed_tokens(feeds, rows.positions.len())?;
        let mut s = Scratch::new(self, rows.positions.len());
        for (li, l) in self.layers.iter().enumerate() {
            self.layer(li, l, pool, &mut x, &rows, &mut s);
        }
        for (f, &(_, n, _)) in feeds.iter_mut().zip(&rows.spans) {
            f.seq.len += n;
        }
        Ok(self.logits(feeds, &rows.spans, &x, &mut s.xq))
    }

    /// Where each fed token goes; the KV grown to hold them.
    fn place(&self, pool: &mut KvPool, feeds: &mut [Feed<'_>]) -> Result<Rows, EngineError> {
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(feeds.len());
        for f in feeds.iter_mut() {
            if f.seq.len + f.tokens.len() > self.max_pos {
                return Err(EngineError::Generate(format!(
                    "position {} is past the context of {}",
                    f.seq.len + f.tokens.len(),
                    self.max_pos
                )));
            }
            spans.push((positions.len(), f.tokens.len(), f.seq.len));
            positions.extend(f.seq.len..f.seq.len + f.tokens.len());
            pool.grow(f.seq, f.tokens.len());
        }
        let tables = feeds.iter().map(|f| f.seq.blocks.clone()).collect();
        Ok(Rows {
            positions,
            spans,
            tables,
        })
    }

    /// The embeddings of the `t` fed tokens, one row each.
    fn embed_tokens(&self, feeds: &[Feed<'_>], t: usize) -> Result<Vec<f32>, EngineError> {
        let (h, vocab) = (self.hp.hidden, self.hp.vocab);
        let mut x = vec![0f32; t * h];
        let ids = feeds.iter().flat_map(|f| f.tokens.iter());
        for (row, &id) in ids.enumerate() {
            if id as usize >= vocab {
                return Err(EngineError::Generate(format!(
                    "token {id} is outside the vocabulary of {vocab}"
                )));
            }
            self.embed
                .row_f32(id as usize, &mut x[row * h..(row + 1) * h]);
        }
        Ok(x)
    }

    /// Layer `li` over every fed row of `x`: attention (its K and V written into each
    /// sequence's blocks), then the feed-forward network; each added to `x`.
    fn layer(
        &self,
        li: usize,
        l: &Layer,
        pool: &mut KvPool,
        x: &mut [f32],
        rows: &Rows,
        s: &mut Scratch,
    ) {
        let Rows {
            positions,
            spans,
            tables,
        } = rows;
        let hp = &self.hp;
        let (h, kvw) = (hp.hidden, hp.kv_heads * hp.head_dim);
        self.rms_norm(x, &l.attn_norm, &mut s.xn);
        quantize_for(&mut s.xq, &s.xn, h, &[&l.q, &l.k, &l.v]);
        l.q.matmul(&s.xn, &s.xq, &mut s.q);
        l.k.matmul(&s.xn, &s.xq, &mut s.k);
        l.v.matmul(&s.xn, &s.xq, &mut s.v);
        add_bias(&mut s.q, l.q_bias.as_deref());
        add_bias(&mut s.k, l.k_bias.as_deref());
        add_bias(&mut s.v, l.v_bias.as_deref());
        self.rope(&mut s.q, hp.heads, positions);
        self.rope(&mut s.k, hp.kv_heads, positions);
        for (fi, &(r0, n, p0)) in spans.iter().enumerate() {
            for i in 0..n {
                let r = r0 + i;
                pool.write(
                    &tables[fi],
                    li,
                    p0 + i,
                    &s.k[r * kvw..(r + 1) * kvw],
                    &s.v[r * kvw..(r + 1) * kvw],
                );
            }
        }
        self.attention(pool, li, &s.q, spans, tables, &mut s.att);
        quantize_for(&mut s.xq, &s.att, hp.heads * hp.head_dim, &[&l.o]);
        l.o.matmul(&s.att, &s.xq, &mut s.tmp);
        add(x, &s.tmp);
        self.rms_norm(x, &l.ffn_norm, &mut s.xn);
        quantize_for(&mut s.xq, &s.xn, h, &[&l.gate, &l.up]);
        l.gate.matmul(&s.xn, &s.xq, &mut s.g);
        l.up.matmul(&s.xn, &s.xq, &mut s.u);
        for (g, u) in s.g.iter_mut().zip(&s.u) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        quantize_for(&mut s.xq, &s.g, s.ffn, &[&l.down]);
        l.down.matmul(&s.g, &s.xq, &mut s.tmp);
        add(x, &s.tmp);
    }

    /// The logits of the last token of each feed that wants them, in one product.
    fn logits(
        &self,
        feeds: &[Feed<'_>],
        spans: &[Span],
        x: &[f32],
        xq: &mut Q8Rows,
    ) -> Vec<Vec<f32>> {
        let h = self.hp.hidden;
        let wanted: Vec<usize> = feeds
            .iter()
            .zip(spans)
            .filter(|(f, _)| f.logits)
            .map(|(_, &(r0, n, _))| r0 + n - 1)
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut last = Vec::with_capacity(wanted.len() * h);
        for r in &wanted {
            last.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        let mut normed = vec![0f32; last.len()];
        self.rms_norm(&last, &self.norm, &mut normed);
        let out = self.output.as_ref().unwrap_or(&self.embed);
        quantize_for(xq, &normed, h, &[out]);
        let vocab = out.rows();
        let mut logits = vec![0f32; wanted.len() * vocab];
        out.matmul(&normed, xq, &mut logits);
        logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect()
    }

    /// Causal attention of every query row over its sequence's KV blocks, into `out`.
    fn attention(
        &self,
        pool: &KvPool,
        layer: usize,
        q: &[f32],
        spans: &[Span],
        tables: &[Vec<BlockId>],
        out: &mut [f32],
    ) {
        let hp = &self.hp;
        let hd = hp.head_dim;
        let group = hp.heads / hp.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        // Work items: (feed, KV head, first row of a tile of that feed's rows).
        let mut items = Vec::new();
        for (fi, &(_, n, _)) in spans.iter().enumerate() {
            for kvh in 0..hp.kv_heads {
                for t0 in (0..n).step_by(TILE) {
                    items.push((fi, kvh, t0));
                }
            }
        }
        let out = as_atomic(out);
        let qw = hp.heads * hd;
        parallel(items.len(), |it| {
            let (fi, kvh, t0) = items[it];
            let (r0, n, p0) = spans[fi];
            let rows = t0..n.min(t0 + TILE);
            let tile = rows.len();
            let last_pos = p0 + rows.end - 1;
            let mut kbuf = vec![0f32; BLOCK * hd];
            let mut vbuf = vec![0f32; BLOCK * hd];
            let mut acc = vec![0f32; tile * group * hd];
            let mut m = vec![f32::NEG_INFINITY; tile * group];
            let mut s = vec![0f32; tile * group];
            let mut scores = [0f32; BLOCK];
            for (b, &id) in tables[fi].iter().enumerate().take(last_pos / BLOCK + 1) {
                let start = b * BLOCK;
                let valid = BLOCK.min(last_pos + 1 - start);
                to_f32(
                    &pool.part(id, layer, 0, kvh)[..valid * hd],
                    &mut kbuf[..valid * hd],
                );
                to_f32(
                    &pool.part(id, layer, 1, kvh)[..valid * hd],
                    &mut vbuf[..valid * hd],
                );
                for (i, r) in rows.clone().enumerate() {
                    let pos = p0 + r;
                    if pos < start {
                        continue;
                    }
                    let n_keys = BLOCK.min(pos + 1 - start);
                    for j in 0..group {
                        let head = kvh * group + j;
                        let qrow = &q[(r0 + r) * qw + head * hd..(r0 + r) * qw + (head + 1) * hd];
                        let mut bmax = f32::NEG_INFINITY;
                        for (key, sc) in scores.iter_mut().enumerate().take(n_keys) {
                            *sc = dot_f32(qrow, &kbuf[key * hd..(key + 1) * hd]) * scale;
                            bmax = bmax.max(*sc);
                        }
                        let st = i * group + j;
                        let new_m = m[st].max(bmax);
                        let corr = (m[st] - new_m).exp();
                        let a = &mut acc[st * hd..(st + 1) * hd];
                        if corr != 1.0 {
                            s[st] *= corr;
                            a.iter_mut().for_each(|x| *x *= corr);
                        }
                        for (key, &sc) in scores.iter().enumerate().take(n_keys) {
                            let e = (sc - new_m).exp();
                            s[st] += e;
                            for (x, vv) in a.iter_mut().zip(&vbuf[key * hd..(key + 1) * hd]) {
                                *x += e * vv;
                            }
                        }
                        m[st] = new_m;
                    }
                }
            }
            for (i, r) in rows.enumerate() {
                for j in 0..group {
                    let head = kvh * group + j;
                    let st = i * group + j;
                    let inv = 1.0 / s[st];
                    let o = (r0 + r) * qw + head * hd;
                    for d in 0..hd {
                        out[o + d].store((acc[st * hd + d] * inv).to_bits(), Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

fn to_f32(src: &[half::f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// Quantises `x` into `xq` if any of `ws` needs it.
fn quantize_for(xq: &mut Q8Rows, x: &[f32], k: usize, ws: &[&Weight]) {
    if ws.iter().any(|w| w.is_quantized()) {
        xq.quantize(x, k);
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            for (x, b) in row.iter_mut().zip(b) {
                *x += b;
            }
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// A feed's rows in the batch: (first row, tokens, first position).
type Span = (usize, usize, usize);

/// Where a forward pass's tokens go.
struct Rows {
    /// Each fed token's position in its sequence.
    positions: Vec<usize>,
    /// Each feed's rows.
    spans: Vec<Span>,
    /// Each feed's KV blocks.
    tables: Vec<Vec<BlockId>>,
}

/// One forward pass's buffers, a row per fed token.
struct Scratch {
    xn: Vec<f32>,
    xq: Q8Rows,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    /// The feed-forward network's width.
    ffn: usize,
}

impl Scratch {
    fn new(m: &Model, t: usize) -> Self {
        let hp = &m.hp;
        let (qw, kvw) = (hp.heads * hp.head_dim, hp.kv_heads * hp.head_dim);
        let ffn = m.layers.first().map_or(0, |l| l.gate.rows());
        Scratch {
            xn: vec![0f32; t * hp.hidden],
            xq: Q8Rows::default(),
            q: vec![0f32; t * qw],
            k: vec![0f32; t * kvw],
            v: vec![0f32; t * kvw],
            att: vec![0f32; t * qw],
            tmp: vec![0f32; t * hp.hidden],
            g: vec![0f32; t * ffn],
            u: vec![0f32; t * ffn],
            ffn,
        }
    }
}
