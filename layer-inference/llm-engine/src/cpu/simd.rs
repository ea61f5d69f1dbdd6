//! AVX2 kernels for [`super::quant`]: the dot products of one weight row with up to four
//! activation rows at once (the weight codes are unpacked once and used for every row).
//! Their integer sums are exactly [`super::quant::dot_scalar`]'s; only the order of the
//! float additions differs. The same kernel serves every batch size, so a token's result
//! does not depend on the batch it ran in.
//!
//! The one module of the engine with `unsafe`: `std::arch` intrinsics, entered only after
//! the CPU was seen to have AVX2 and FMA, reading inside slices whose lengths were checked.
#![allow(unsafe_code)]

use super::quant::{Format, Q8Row, QK, dot_scalar, scale_min_k4};

/// Whether the AVX2 kernels run on this CPU (decided once).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::env::var_os("HOMELAB_ENGINE_NO_SIMD").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out` as atomics, so that the threads of one matrix product can each write their own
/// elements of it through a shared reference (relaxed stores: plain stores on x86).
pub fn as_atomic(out: &mut [f32]) -> &[std::sync::atomic::AtomicU32] {
    // SAFETY: `AtomicU32` has the size and alignment of `u32`, hence of `f32`, and the
    // exclusive borrow of `out` is held for as long as the atomic view lives.
    unsafe { std::slice::from_raw_parts(out.as_mut_ptr().cast(), out.len()) }
}

/// `out[t]` = the dot product of the weight row `w` (format `f`) with `a[t]`.
pub fn dot<const N: usize>(f: Format, w: &[u8], a: &[Q8Row<'_>; N], out: &mut [f32; N]) {
    let blocks = a[0].len();
    assert!(
        w.len() >= f.row_bytes(blocks * QK) && a.iter().all(|r| r.len() == blocks),
        "a weight row of {} bytes against {blocks} activation blocks",
        w.len()
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present; `w` holds the row's blocks and every `a[t]` the
        // same number of activation blocks (checked above); the kernel reads within those.
        unsafe { x86::dot(f, w, a, out) };
        return;
    }
    for t in 0..N {
        out[t] = dot_scalar(f, w, a[t]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::cpu::quant::QBlock;

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

    /// Bit j of the 32-bit word at `p` as 16 in byte j (else 0).
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

    #[inline(always)]
    unsafe fn act(b: *const QBlock) -> __m256i {
        unsafe { _mm256_loadu_si256((*b).qs.as_ptr().cast()) }
    }

    /// Sums of `codes` (unsigned) times the activations, as 8 i32 lanes.
    #[inline(always)]
    unsafe fn udot(codes: __m256i, act: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(codes, act), _mm256_set1_epi16(1)) }
    }

    /// Sums of signed bytes `w` times the activations, as 8 i32 lanes.
    #[inline(always)]
    unsafe fn sdot(w: __m256i, act: __m256i) -> __m256i {
        unsafe {
            let aw = _mm256_sign_epi8(w, w);
            let sa = _mm256_sign_epi8(act, w);
            _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), _mm256_set1_epi16(1))
        }
    }

    #[inline(always)]
    unsafe fn fma(acc: &mut __m256, sums: __m256i, scale: f32) {
        unsafe {
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(scale), *acc);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot<const N: usize>(
        f: Format,
        w: &[u8],
        a: &[Q8Row<'_>; N],
        out: &mut [f32; N],
    ) {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            // What is added outside the vectors: the offsets and minimums.
            let mut extra = [0f32; N];
            let ap: [*const QBlock; N] = std::array::from_fn(|t| a[t].as_ptr());
            let bb = f.block_bytes();
            let nb = a[0].len() * QK / f.block_values();
            let wp = w.as_ptr();
            for b in 0..nb {
                let bp = wp.add(b * bb);
                match f {
                    Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 => {
                        let dw = f16_at(bp);
                        let (codes, off) = match f {
                            Format::Q4_0 => (nibbles(bp.add(2)), -8.0 * dw),
                            Format::Q4_1 => (nibbles(bp.add(4)), f16_at(bp.add(2))),
                            Format::Q5_0 => (
                                _mm256_or_si256(nibbles(bp.add(6)), bits_as_16(bp.add(2))),
                                -16.0 * dw,
                            ),
                            _ => (
                                _mm256_or_si256(nibbles(bp.add(8)), bits_as_16(bp.add(4))),
                                f16_at(bp.add(2)),
                            ),
                        };
                        for t in 0..N {
                            let x = ap[t].add(b);
                            fma(&mut acc[t], udot(codes, act(x)), dw * (*x).d);
                            extra[t] += off * (*x).dsum;
                        }
                    }
                    Format::Q8_0 => {
                        let wq = _mm256_loadu_si256(bp.add(2).cast());
                        let dw = f16_at(bp);
                        for t in 0..N {
                            let x = ap[t].add(b);
                            fma(&mut acc[t], sdot(wq, act(x)), dw * (*x).d);
                        }
                    }
                    Format::Q4K | Format::Q5K => {
                        let (d, dmin) = (f16_at(bp), f16_at(bp.add(2)));
                        let scales = std::slice::from_raw_parts(bp.add(4), 12);
                        let qs_at = if f == Format::Q4K { 16 } else { 48 };
                        let qh = _mm256_loadu_si256(bp.add(16).cast());
                        for p in 0..4 {
                            let q = _mm256_loadu_si256(bp.add(qs_at + 32 * p).cast());
                            let lo = _mm256_and_si256(q, _mm256_set1_epi8(0xF));
                            let hi =
                                _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0xF));
                            for (c, mut codes) in [(2 * p, lo), (2 * p + 1, hi)] {
                                if f == Format::Q5K {
                                    let bit = _mm256_and_si256(
                                        _mm256_srl_epi16(qh, _mm_cvtsi32_si128(c as i32)),
                                        _mm256_set1_epi8(1),
                                    );
                                    codes = _mm256_or_si256(codes, _mm256_slli_epi16(bit, 4));
                                }
                                let (sc, m) = scale_min_k4(c, scales);
                                let (dsc, dm) = (d * f32::from(sc), dmin * f32::from(m));
                                for t in 0..N {
                                    let x = ap[t].add(b * 8 + c);
                                    fma(&mut acc[t], udot(codes, act(x)), dsc * (*x).d);
                                    extra[t] -= dm * (*x).dsum;
                                }
                            }
                        }
                    }
                    Format::Q6K => {
                        let d = f16_at(bp.add(208));
                        for c in 0..8 {
                            let (n, q) = (c / 4, c % 4);
                            let ql = _mm256_loadu_si256(bp.add(64 * n + 32 * (q % 2)).cast());
                            let ql = if q < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
                            let ql = _mm256_and_si256(ql, _mm256_set1_epi8(0xF));
                            let qh = _mm256_loadu_si256(bp.add(128 + 32 * n).cast());
                            let qh = _mm256_and_si256(
                                _mm256_srl_epi16(qh, _mm_cvtsi32_si128((2 * q) as i32)),
                                _mm256_set1_epi8(3),
                            );
                            let codes = _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));
                            let s0 = i16::from(*bp.add(192 + 2 * c) as i8);
                            let s1 = i16::from(*bp.add(192 + 2 * c + 1) as i8);
                            let scales = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                            for t in 0..N {
                                let x = ap[t].add(b * 8 + c);
                                let p = _mm256_maddubs_epi16(codes, act(x));
                                fma(&mut acc[t], _mm256_madd_epi16(p, scales), d * (*x).d);
                                let off = i32::from(s0) * i32::from((*x).sums[0])
                                    + i32::from(s1) * i32::from((*x).sums[1]);
                                extra[t] -= 32.0 * d * (*x).d * off as f32;
                            }
                        }
                    }
                }
            }
            for t in 0..N {
                out[t] = hsum(acc[t]) + extra[t];
            }
        }
    }
}
