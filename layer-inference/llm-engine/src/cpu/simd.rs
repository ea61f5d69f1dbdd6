//! SIMD kernels for [`super::quant`]: the dot products of a tile of weight rows with a
//! tile of activation rows (each weight chunk unpacked once for every token, each
//! activation block loaded once for every row), with AVX2, or AVX-512 with VNNI. Their
//! integer sums are exactly [`super::quant::dot_scalar`]'s; only the order of the float
//! additions differs from it — and it is the same for every tile shape and both
//! instruction sets, so a token's result does not depend on the batch it ran in.
//!
//! The one module of the engine with `unsafe`: `std::arch` intrinsics, entered only after
//! the CPU was seen to have the features, reading inside slices whose lengths were checked.
#![allow(unsafe_code)]

use super::quant::{Format, Q8Row, QK, dot_scalar, scale_min_k4};

/// Which kernels run on this CPU (decided once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 (F, BW, VL) with VNNI: the same arithmetic, fewer instructions, and four
    /// weight rows at a time (it has registers for sixteen accumulators).
    Avx512Vnni,
}

/// The kernels this CPU runs (`HOMELAB_ENGINE_SIMD=avx2` or `scalar` asks for less).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("HOMELAB_ENGINE_SIMD").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if cap == "scalar" || !(has!("avx2") && has!("fma")) {
                return Level::Scalar;
            }
            if cap != "avx2"
                && has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512vnni")
            {
                return Level::Avx512Vnni;
            }
            Level::Avx2
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = cap;
            Level::Scalar
        }
    })
}

/// Weight rows one kernel call takes at this level.
pub fn tile_rows() -> usize {
    match level() {
        Level::Avx512Vnni => 4,
        _ => 1,
    }
}

/// `out` as atomics, so that the threads of one matrix product can each write their own
/// elements of it through a shared reference (relaxed stores: plain stores on x86).
pub fn as_atomic(out: &mut [f32]) -> &[std::sync::atomic::AtomicU32] {
    // SAFETY: `AtomicU32` has the size and alignment of `u32`, hence of `f32`, and the
    // exclusive borrow of `out` is held for as long as the atomic view lives.
    unsafe { std::slice::from_raw_parts(out.as_mut_ptr().cast(), out.len()) }
}

/// `out[r][t]` = the dot product of the weight row `w[r]` (format `f`) with `a[t]`. Every
/// level, and every `R` and `C`, computes each output with the same operations in the same
/// order: a token's result does not depend on its batch (nor on the CPU's vector width).
pub fn dot<const R: usize, const C: usize>(
    f: Format,
    w: &[&[u8]; R],
    a: &[Q8Row<'_>; C],
    out: &mut [[f32; C]; R],
) {
    dot_at(level(), f, w, a, out);
}

/// [`dot`] with the kernels of `at` (at most what this CPU has: [`level`]).
pub fn dot_at<const R: usize, const C: usize>(
    at: Level,
    f: Format,
    w: &[&[u8]; R],
    a: &[Q8Row<'_>; C],
    out: &mut [[f32; C]; R],
) {
    let at = match (at, level()) {
        (_, Level::Scalar) | (Level::Scalar, _) => Level::Scalar,
        (Level::Avx512Vnni, Level::Avx512Vnni) => Level::Avx512Vnni,
        _ => Level::Avx2,
    };
    let blocks = a[0].len();
    assert!(
        w.iter().all(|w| w.len() >= f.row_bytes(blocks * QK))
            && a.iter().all(|r| r.len() == blocks),
        "weight rows against {blocks} activation blocks"
    );
    match at {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has these features (`level`); every `w[r]` holds the row's blocks
        // and every `a[t]` the same number of activation blocks (checked above); the kernels
        // read within those.
        Level::Avx2 => unsafe { x86::dot_avx2(f, w, a, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx512Vnni => unsafe { x86::dot_vnni(f, w, a, out) },
        _ => {
            for r in 0..R {
                for t in 0..C {
                    out[r][t] = dot_scalar(f, w[r], a[t]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::cpu::quant::QBlock;

    /// What differs between the instruction sets: the same integer sums either way.
    trait Isa {
        /// Sums of unsigned `codes` times signed activations, four bytes to each i32 lane.
        unsafe fn udot(codes: __m256i, act: __m256i) -> __m256i;
        /// Bit j of the 32-bit word at `p` as 16 in byte j (else 0).
        unsafe fn bits_as_16(p: *const u8) -> __m256i;
    }

    struct Avx2;
    struct Vnni;

    impl Isa for Avx2 {
        #[inline(always)]
        unsafe fn udot(codes: __m256i, act: __m256i) -> __m256i {
            unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(codes, act), _mm256_set1_epi16(1)) }
        }

        #[inline(always)]
        unsafe fn bits_as_16(p: *const u8) -> __m256i {
            unsafe {
                let x32 = std::ptr::read_unaligned(p.cast::<u32>());
                let shuf = _mm256_set_epi64x(
                    0x0303030303030303,
                    0x0202020202020202,
                    0x0101010101010101,
                    0,
                );
                let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32 as i32), shuf);
                let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
                let set = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
                _mm256_and_si256(set, _mm256_set1_epi8(16))
            }
        }
    }

    impl Isa for Vnni {
        #[inline(always)]
        unsafe fn udot(codes: __m256i, act: __m256i) -> __m256i {
            unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, act) }
        }

        #[inline(always)]
        unsafe fn bits_as_16(p: *const u8) -> __m256i {
            unsafe {
                let x32 = std::ptr::read_unaligned(p.cast::<u32>());
                _mm256_maskz_mov_epi8(x32, _mm256_set1_epi8(16))
            }
        }
    }

    /// The kernel for format `f`, compiled for each format (its unpacking known at compile
    /// time, not decided per block).
    macro_rules! per_format {
        ($isa:ty, $f:expr, $w:expr, $a:expr, $out:expr) => {
            match $f {
                Format::Q4_0 => tile::<$isa, Q4_0, R, C>($w, $a, $out),
                Format::Q4_1 => tile::<$isa, Q4_1, R, C>($w, $a, $out),
                Format::Q5_0 => tile::<$isa, Q5_0, R, C>($w, $a, $out),
                Format::Q5_1 => tile::<$isa, Q5_1, R, C>($w, $a, $out),
                Format::Q8_0 => tile::<$isa, Q8_0, R, C>($w, $a, $out),
                Format::Q4K => tile::<$isa, Q4K, R, C>($w, $a, $out),
                Format::Q5K => tile::<$isa, Q5K, R, C>($w, $a, $out),
                Format::Q6K => tile::<$isa, Q6K, R, C>($w, $a, $out),
            }
        };
    }

    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q5_0: u8 = 2;
    const Q5_1: u8 = 3;
    const Q8_0: u8 = 4;
    const Q4K: u8 = 5;
    const Q5K: u8 = 6;
    const Q6K: u8 = 7;

    const fn format_of(f: u8) -> Format {
        match f {
            Q4_0 => Format::Q4_0,
            Q4_1 => Format::Q4_1,
            Q5_0 => Format::Q5_0,
            Q5_1 => Format::Q5_1,
            Q8_0 => Format::Q8_0,
            Q4K => Format::Q4K,
            Q5K => Format::Q5K,
            _ => Format::Q6K,
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2<const R: usize, const C: usize>(
        f: Format,
        w: &[&[u8]; R],
        a: &[Q8Row<'_>; C],
        out: &mut [[f32; C]; R],
    ) {
        unsafe { per_format!(Avx2, f, w, a, out) }
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_vnni<const R: usize, const C: usize>(
        f: Format,
        w: &[&[u8]; R],
        a: &[Q8Row<'_>; C],
        out: &mut [[f32; C]; R],
    ) {
        unsafe { per_format!(Vnni, f, w, a, out) }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        unsafe { half::f16::from_bits(std::ptr::read_unaligned(p.cast::<u16>())).to_f32() }
    }

    /// 32 unsigned 4-bit codes from 16 bytes: low nibbles first, then high nibbles.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        unsafe {
            let x = _mm_loadu_si128(p.cast());
            let hi = _mm_srli_epi16(x, 4);
            _mm256_and_si256(_mm256_set_m128i(hi, x), _mm256_set1_epi8(0xF))
        }
    }

    /// One 32-value chunk of a weight row: its codes (Q8_0: the signed bytes), its scale,
    /// what multiplies the activations' `dsum` (offsets, minimums), and Q6_K's two scales.
    struct Chunk {
        codes: __m256i,
        scale: f32,
        off: f32,
        q6: (i16, i16),
    }

    #[inline(always)]
    unsafe fn chunk<I: Isa>(f: Format, bp: *const u8, c: usize) -> Chunk {
        unsafe {
            let none = (0, 0);
            match f {
                Format::Q4_0 => {
                    let dw = f16_at(bp);
                    Chunk {
                        codes: nibbles(bp.add(2)),
                        scale: dw,
                        off: -8.0 * dw,
                        q6: none,
                    }
                }
                Format::Q4_1 => Chunk {
                    codes: nibbles(bp.add(4)),
                    scale: f16_at(bp),
                    off: f16_at(bp.add(2)),
                    q6: none,
                },
                Format::Q5_0 => {
                    let dw = f16_at(bp);
                    Chunk {
                        codes: _mm256_or_si256(nibbles(bp.add(6)), I::bits_as_16(bp.add(2))),
                        scale: dw,
                        off: -16.0 * dw,
                        q6: none,
                    }
                }
                Format::Q5_1 => Chunk {
                    codes: _mm256_or_si256(nibbles(bp.add(8)), I::bits_as_16(bp.add(4))),
                    scale: f16_at(bp),
                    off: f16_at(bp.add(2)),
                    q6: none,
                },
                Format::Q8_0 => Chunk {
                    codes: _mm256_loadu_si256(bp.add(2).cast()),
                    scale: f16_at(bp),
                    off: 0.0,
                    q6: none,
                },
                Format::Q4K | Format::Q5K => {
                    let (d, dmin) = (f16_at(bp), f16_at(bp.add(2)));
                    let qs_at = if f == Format::Q4K { 16 } else { 48 };
                    let q = _mm256_loadu_si256(bp.add(qs_at + 32 * (c / 2)).cast());
                    let q = if c.is_multiple_of(2) {
                        q
                    } else {
                        _mm256_srli_epi16(q, 4)
                    };
                    let mut codes = _mm256_and_si256(q, _mm256_set1_epi8(0xF));
                    if f == Format::Q5K {
                        let qh = _mm256_loadu_si256(bp.add(16).cast());
                        let bit = _mm256_and_si256(
                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(c as i32)),
                            _mm256_set1_epi8(1),
                        );
                        codes = _mm256_or_si256(codes, _mm256_slli_epi16(bit, 4));
                    }
                    let (sc, m) = scale_min_k4(c, std::slice::from_raw_parts(bp.add(4), 12));
                    Chunk {
                        codes,
                        scale: d * f32::from(sc),
                        off: -(dmin * f32::from(m)),
                        q6: none,
                    }
                }
                Format::Q6K => {
                    let (n, q) = (c / 4, c % 4);
                    let ql = _mm256_loadu_si256(bp.add(64 * n + 32 * (q % 2)).cast());
                    let ql = if q < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
                    let ql = _mm256_and_si256(ql, _mm256_set1_epi8(0xF));
                    let qh = _mm256_loadu_si256(bp.add(128 + 32 * n).cast());
                    let qh = _mm256_and_si256(
                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128((2 * q) as i32)),
                        _mm256_set1_epi8(3),
                    );
                    Chunk {
                        codes: _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4)),
                        scale: f16_at(bp.add(208)),
                        off: 0.0,
                        q6: (
                            i16::from(*bp.add(192 + 2 * c) as i8),
                            i16::from(*bp.add(192 + 2 * c + 1) as i8),
                        ),
                    }
                }
            }
        }
    }

    /// The integer sums of one chunk with one activation block, as 8 i32 lanes.
    #[inline(always)]
    unsafe fn sums<I: Isa>(f: Format, ch: &Chunk, act: __m256i) -> __m256i {
        unsafe {
            match f {
                // Signed weights: |w| times the activations with w's sign.
                Format::Q8_0 => {
                    let aw = _mm256_sign_epi8(ch.codes, ch.codes);
                    I::udot(aw, _mm256_sign_epi8(act, ch.codes))
                }
                // A scale per 16 values: lanes 0-3 hold the first 16, lanes 4-7 the rest.
                Format::Q6K => {
                    let (s0, s1) = (i32::from(ch.q6.0), i32::from(ch.q6.1));
                    let scales = _mm256_set_epi32(s1, s1, s1, s1, s0, s0, s0, s0);
                    _mm256_mullo_epi32(I::udot(ch.codes, act), scales)
                }
                _ => I::udot(ch.codes, act),
            }
        }
    }

    /// `R` weight rows times `C` activation rows: each chunk of a row unpacked once for
    /// every token, each activation block loaded once for every row.
    #[inline(always)]
    unsafe fn tile<I: Isa, const F: u8, const R: usize, const C: usize>(
        w: &[&[u8]; R],
        a: &[Q8Row<'_>; C],
        out: &mut [[f32; C]; R],
    ) {
        let f = const { format_of(F) };
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            // What is added outside the vectors: the offsets and minimums.
            let mut extra = [[0f32; C]; R];
            let ap: [*const QBlock; C] = std::array::from_fn(|t| a[t].as_ptr());
            let wp: [*const u8; R] = std::array::from_fn(|r| w[r].as_ptr());
            let bb = f.block_bytes();
            let chunks = f.block_values() / QK;
            let nb = a[0].len() / chunks;
            for b in 0..nb {
                for c in 0..chunks {
                    let ch: [Chunk; R] =
                        std::array::from_fn(|r| chunk::<I>(f, wp[r].add(b * bb), c));
                    for t in 0..C {
                        let x = ap[t].add(b * chunks + c);
                        let act = _mm256_loadu_si256((*x).qs.as_ptr().cast());
                        for r in 0..R {
                            let s = _mm256_cvtepi32_ps(sums::<I>(f, &ch[r], act));
                            let scale = _mm256_set1_ps(ch[r].scale * (*x).d);
                            acc[r][t] = _mm256_fmadd_ps(s, scale, acc[r][t]);
                            if f == Format::Q6K {
                                let off = i32::from(ch[r].q6.0) * i32::from((*x).sums[0])
                                    + i32::from(ch[r].q6.1) * i32::from((*x).sums[1]);
                                extra[r][t] -= 32.0 * ch[r].scale * (*x).d * off as f32;
                            } else {
                                extra[r][t] += ch[r].off * (*x).dsum;
                            }
                        }
                    }
                }
            }
            for r in 0..R {
                for t in 0..C {
                    out[r][t] = hsum(acc[r][t]) + extra[r][t];
                }
            }
        }
    }
}
