//! The weight formats the CPU kernels compute with directly (GGUF's block quantisations),
//! the activations they are multiplied with, and the scalar dot products that define the
//! arithmetic (the SIMD kernels in [`super::simd`] give the same integer sums).
//!
//! A weight row is `k` values stored as `k / block` blocks of the format; an activation row
//! is quantised once per matrix product to 8 bits in blocks of 32 (a scale per block, and the
//! sums of each 16 values, which the formats with an offset or a minimum need). Every
//! output is one row's dot product with one activation row, computed the same way whatever
//! else is in the batch: a token's logits do not depend on which other tokens ran with it.

use half::f16;

/// Values per activation block.
pub const QK: usize = 32;

/// A block-quantised weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    /// The format of a GGUF tensor type, if the kernels take it as it is.
    pub fn of(t: candle_core::quantized::GgmlDType) -> Option<Format> {
        use candle_core::quantized::GgmlDType as G;
        Some(match t {
            G::Q4_0 => Format::Q4_0,
            G::Q4_1 => Format::Q4_1,
            G::Q5_0 => Format::Q5_0,
            G::Q5_1 => Format::Q5_1,
            G::Q8_0 => Format::Q8_0,
            G::Q4K => Format::Q4K,
            G::Q5K => Format::Q5K,
            G::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// Bytes of a row of `k` values (`k` a multiple of the block).
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_values() * self.block_bytes()
    }
}

pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// 32 activations quantised to 8 bits: `x ≈ d × qs`, with `d × sum(qs)` and the sums of
/// each half (16 values), which the formats with an offset or a minimum need.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct QBlock {
    pub d: f32,
    pub dsum: f32,
    pub sums: [i16; 2],
    pub qs: [i8; 32],
}

impl QBlock {
    fn quantize(v: &[f32]) -> QBlock {
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, x) in qs.iter_mut().zip(v) {
            *q = (x * id).round().clamp(-127.0, 127.0) as i8;
        }
        let lo: i32 = qs[..16].iter().map(|&x| i32::from(x)).sum();
        let hi: i32 = qs[16..].iter().map(|&x| i32::from(x)).sum();
        QBlock {
            d,
            dsum: d * (lo + hi) as f32,
            sums: [lo as i16, hi as i16],
            qs,
        }
    }
}

/// Rows of activations quantised in blocks of 32 ([`QBlock`]).
#[derive(Debug, Default, Clone)]
pub struct Q8Rows {
    pub k: usize,
    pub rows: usize,
    pub blocks: Vec<QBlock>,
}

/// One row of [`Q8Rows`].
pub type Q8Row<'a> = &'a [QBlock];

impl Q8Rows {
    /// Quantises `x` (`rows` rows of `k` values, `k` a multiple of 32), reusing the buffer.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        debug_assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k));
        self.k = k;
        self.rows = x.len() / k;
        self.blocks.clear();
        self.blocks.extend(x.chunks_exact(QK).map(QBlock::quantize));
    }

    pub fn row(&self, r: usize) -> Q8Row<'_> {
        let nb = self.k / QK;
        &self.blocks[r * nb..(r + 1) * nb]
    }
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block (`s`: its 12 bytes).
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn sum32(a: &QBlock) -> i32 {
    i32::from(a.sums[0]) + i32::from(a.sums[1])
}

fn idot(w: &[u8; 32], a: &[i8]) -> i32 {
    w.iter()
        .zip(a)
        .map(|(&w, &a)| i32::from(w) * i32::from(a))
        .sum()
}

/// The unsigned values of the 32-value chunk `c` of a block (the 4-bit or 5-bit or 6-bit
/// codes before their offset), as the SIMD kernels see them.
pub(crate) fn chunk_codes(f: Format, blk: &[u8], c: usize) -> [u8; 32] {
    let mut w = [0u8; 32];
    match f {
        Format::Q4_0 | Format::Q4_1 => {
            let qs = &blk[if f == Format::Q4_0 { 2 } else { 4 }..];
            for j in 0..16 {
                w[j] = qs[j] & 0xF;
                w[j + 16] = qs[j] >> 4;
            }
        }
        Format::Q5_0 | Format::Q5_1 => {
            let o = if f == Format::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
            let qs = &blk[o + 4..];
            for j in 0..16 {
                w[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                w[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
        }
        Format::Q8_0 => {
            // Signed: returned as the raw bytes; the Q8_0 dot reads them as i8.
            w.copy_from_slice(&blk[2..34]);
        }
        Format::Q4K => {
            let qs = &blk[16 + 32 * (c / 2)..];
            for j in 0..32 {
                w[j] = if c.is_multiple_of(2) {
                    qs[j] & 0xF
                } else {
                    qs[j] >> 4
                };
            }
        }
        Format::Q5K => {
            let qh = &blk[16..48];
            let ql = &blk[48 + 32 * (c / 2)..];
            let bit = 1u8 << c;
            for j in 0..32 {
                let lo = if c.is_multiple_of(2) {
                    ql[j] & 0xF
                } else {
                    ql[j] >> 4
                };
                w[j] = lo | if qh[j] & bit != 0 { 16 } else { 0 };
            }
        }
        Format::Q6K => {
            let (n, q) = (c / 4, c % 4);
            let ql = &blk[64 * n + 32 * (q % 2)..];
            let qh = &blk[128 + 32 * n..];
            for j in 0..32 {
                let lo = if q < 2 { ql[j] & 0xF } else { ql[j] >> 4 };
                w[j] = lo | (((qh[j] >> (2 * q)) & 3) << 4);
            }
        }
    }
    w
}

/// The dot product of one weight row (`k` values in format `f`) with one activation row:
/// the scalar definition of what every kernel computes.
pub fn dot_scalar(f: Format, w: &[u8], a: Q8Row<'_>) -> f32 {
    let bb = f.block_bytes();
    let nb = a.len() * QK / f.block_values();
    let mut acc = 0f32;
    for b in 0..nb {
        let blk = &w[b * bb..(b + 1) * bb];
        match f {
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => {
                let dw = f16_at(blk, 0);
                let q = chunk_codes(f, blk, 0);
                let qa = &a[b].qs;
                let s = match f {
                    Format::Q4_0 => idot(&q, qa) - 8 * sum32(&a[b]),
                    Format::Q5_0 => idot(&q, qa) - 16 * sum32(&a[b]),
                    _ => q
                        .iter()
                        .zip(qa)
                        .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                        .sum(),
                };
                acc += dw * a[b].d * s as f32;
            }
            Format::Q4_1 | Format::Q5_1 => {
                let (dw, mw) = (f16_at(blk, 0), f16_at(blk, 2));
                let q = chunk_codes(f, blk, 0);
                let s = idot(&q, &a[b].qs);
                acc += dw * a[b].d * s as f32 + mw * a[b].d * sum32(&a[b]) as f32;
            }
            Format::Q4K | Format::Q5K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                for c in 0..8 {
                    let ab = b * 8 + c;
                    let (sc, m) = scale_min_k4(c, &blk[4..16]);
                    let q = chunk_codes(f, blk, c);
                    let s = idot(&q, &a[ab].qs);
                    acc += d * f32::from(sc) * a[ab].d * s as f32
                        - dmin * f32::from(m) * a[ab].d * sum32(&a[ab]) as f32;
                }
            }
            Format::Q6K => {
                let d = f16_at(blk, 208);
                let sc = |g: usize| i32::from(blk[192 + g] as i8);
                for c in 0..8 {
                    let ab = b * 8 + c;
                    let q = chunk_codes(f, blk, c);
                    let qa = &a[ab].qs;
                    let lo: i32 = (0..16).map(|j| i32::from(q[j]) * i32::from(qa[j])).sum();
                    let hi: i32 = (16..32).map(|j| i32::from(q[j]) * i32::from(qa[j])).sum();
                    let s = sc(2 * c) * (lo - 32 * i32::from(a[ab].sums[0]))
                        + sc(2 * c + 1) * (hi - 32 * i32::from(a[ab].sums[1]));
                    acc += d * a[ab].d * s as f32;
                }
            }
        }
    }
    acc
}

/// Dequantises one row (`k` values in format `f`) into `out`.
pub fn dequantize_row(f: Format, w: &[u8], out: &mut [f32]) {
    let bb = f.block_bytes();
    let bv = f.block_values();
    for (b, out) in out.chunks_exact_mut(bv).enumerate() {
        let blk = &w[b * bb..(b + 1) * bb];
        match f {
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => {
                let d = f16_at(blk, 0);
                let q = chunk_codes(f, blk, 0);
                for (o, &q) in out.iter_mut().zip(&q) {
                    *o = d * match f {
                        Format::Q4_0 => f32::from(q) - 8.0,
                        Format::Q5_0 => f32::from(q) - 16.0,
                        _ => f32::from(q as i8),
                    };
                }
            }
            Format::Q4_1 | Format::Q5_1 => {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let q = chunk_codes(f, blk, 0);
                for (o, &q) in out.iter_mut().zip(&q) {
                    *o = d * f32::from(q) + m;
                }
            }
            Format::Q4K | Format::Q5K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                for c in 0..8 {
                    let (sc, m) = scale_min_k4(c, &blk[4..16]);
                    let q = chunk_codes(f, blk, c);
                    for (o, &q) in out[c * 32..c * 32 + 32].iter_mut().zip(&q) {
                        *o = d * f32::from(sc) * f32::from(q) - dmin * f32::from(m);
                    }
                }
            }
            Format::Q6K => {
                let d = f16_at(blk, 208);
                for c in 0..8 {
                    let q = chunk_codes(f, blk, c);
                    for (j, o) in out[c * 32..c * 32 + 32].iter_mut().enumerate() {
                        let sc = f32::from(blk[192 + 2 * c + j / 16] as i8);
                        *o = d * sc * (f32::from(q[j]) - 32.0);
                    }
                }
            }
        }
    }
}
