//! Weight matrices and their products with a batch of activation rows, on every core.
//!
//! The work is split by groups of weight rows: a thread takes a group (a few KB, held in its
//! L1 cache) and multiplies it with every row of the batch, four at a time, so that a weight
//! is read from memory once per batch, not once per token: that is what makes a prefill chunk
//! or a batch of decoding sequences cost little more than one token.

use std::sync::atomic::Ordering;

use super::quant::{Format, Q8Row, Q8Rows, dequantize_row};
use super::simd::{as_atomic, dot as qdot, tile_rows};

/// Weight rows handed to a thread at a time.
const ROWS_PER_ITEM: usize = 16;

/// A weight matrix of `rows` rows of `k` values, each row one output.
#[derive(Debug)]
pub enum Weight {
    /// Block-quantised rows, as the file stores them.
    Quant {
        format: Format,
        rows: usize,
        k: usize,
        data: Vec<u8>,
    },
    /// Plain floats (the file's F32/F16/BF16 tensors, and quantisations the kernels do not
    /// take, dequantised at load).
    Dense {
        rows: usize,
        k: usize,
        data: Vec<f32>,
    },
}

/// A quantised matrix's rows, for the kernels.
struct QuantRows<'a> {
    format: Format,
    data: &'a [u8],
    row_bytes: usize,
    /// Rows in all (the outputs' stride).
    n: usize,
}

impl QuantRows<'_> {
    fn row(&self, j: usize) -> &[u8] {
        &self.data[j * self.row_bytes..(j + 1) * self.row_bytes]
    }

    /// `rows` times the `C` activation rows from token `t0`, into `out`: as many weight rows
    /// at a time as the kernels take, then one at a time.
    fn times<const C: usize>(
        &self,
        rows: std::ops::Range<usize>,
        a: [Q8Row<'_>; C],
        t0: usize,
        out: &[std::sync::atomic::AtomicU32],
    ) {
        let store = |j: usize, r: &[f32; C]| {
            for (i, v) in r.iter().enumerate() {
                out[(t0 + i) * self.n + j].store(v.to_bits(), Ordering::Relaxed);
            }
        };
        // One token (a decode step) runs faster one weight row at a time.
        let four = tile_rows() == 4 && C > 1;
        let mut j = rows.start;
        while j < rows.end {
            if four && j + 4 <= rows.end {
                let w = [
                    self.row(j),
                    self.row(j + 1),
                    self.row(j + 2),
                    self.row(j + 3),
                ];
                let mut r = [[0f32; C]; 4];
                qdot(self.format, &w, &a, &mut r);
                for (i, r) in r.iter().enumerate() {
                    store(j + i, r);
                }
                j += 4;
            } else {
                let mut r = [[0f32; C]; 1];
                qdot(self.format, &[self.row(j)], &a, &mut r);
                store(j, &r[0]);
                j += 1;
            }
        }
    }
}

/// Runs `f` on every item in `0..n`, spread over the engine's threads.
pub fn parallel(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 {
        (0..n).for_each(f);
        return;
    }
    candle_core::utils::barrier_pool().execute_chunked(n, |range| range.for_each(&f));
}

/// `a · b` over floats (16 running sums, so that it vectorises).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

impl Weight {
    pub fn rows(&self) -> usize {
        match self {
            Weight::Quant { rows, .. } | Weight::Dense { rows, .. } => *rows,
        }
    }

    pub fn k(&self) -> usize {
        match self {
            Weight::Quant { k, .. } | Weight::Dense { k, .. } => *k,
        }
    }

    /// Whether a product with it needs the input quantised.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Weight::Quant { .. })
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Quant { data, .. } => data.len(),
            Weight::Dense { data, .. } => data.len() * 4,
        }
    }

    /// Row `r` as floats (an embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Quant {
                format, k, data, ..
            } => {
                let rb = format.row_bytes(*k);
                dequantize_row(*format, &data[r * rb..(r + 1) * rb], out);
            }
            Weight::Dense { k, data, .. } => out.copy_from_slice(&data[r * k..(r + 1) * k]),
        }
    }

    /// `y` (`m` rows of `self.rows()`) = `x` (`m` rows of `k`) times the transposed weights;
    /// `xq` is `x` quantised (read only for quantised weights).
    pub fn matmul(&self, x: &[f32], xq: &Q8Rows, y: &mut [f32]) {
        let n = self.rows();
        let k = self.k();
        let m = x.len() / k;
        debug_assert_eq!(y.len(), m * n);
        let out = as_atomic(y);
        let items = n.div_ceil(ROWS_PER_ITEM);
        match self {
            Weight::Quant { format, data, .. } => {
                debug_assert_eq!(xq.rows, m);
                let q = QuantRows {
                    format: *format,
                    data,
                    row_bytes: format.row_bytes(k),
                    n,
                };
                parallel(items, |item| {
                    let rows = item * ROWS_PER_ITEM..n.min((item + 1) * ROWS_PER_ITEM);
                    // Four tokens at a time, then what is left.
                    let mut t = 0;
                    while t < m {
                        match m - t {
                            1 => q.times::<1>(rows.clone(), [xq.row(t)], t, out),
                            2 => q.times::<2>(rows.clone(), [xq.row(t), xq.row(t + 1)], t, out),
                            3 => q.times::<3>(
                                rows.clone(),
                                [xq.row(t), xq.row(t + 1), xq.row(t + 2)],
                                t,
                                out,
                            ),
                            _ => q.times::<4>(
                                rows.clone(),
                                [xq.row(t), xq.row(t + 1), xq.row(t + 2), xq.row(t + 3)],
                                t,
                                out,
                            ),
                        }
                        t += 4;
                    }
                });
            }
            Weight::Dense { data, .. } => {
                parallel(items, |item| {
                    for j in item * ROWS_PER_ITEM..n.min((item + 1) * ROWS_PER_ITEM) {
                        let w = &data[j * k..(j + 1) * k];
                        for t in 0..m {
                            let v = dot_f32(w, &x[t * k..(t + 1) * k]);
                            out[t * n + j].store(v.to_bits(), Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    }
}
