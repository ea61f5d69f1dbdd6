//! The dot product of the exact scan, with AVX2 and FMA where the CPU has them.
//!
//! The portable version keeps 16 independent sums, which the compiler turns into vector
//! instructions of whatever width the target allows; the AVX2 version is the same code
//! compiled with those features enabled (and fused multiply-adds), chosen once at run time.

use std::sync::OnceLock;

type Dot = fn(&[f32], &[f32]) -> f32;

/// `a · b` over the shorter length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    static CHOSEN: OnceLock<Dot> = OnceLock::new();
    (CHOSEN.get_or_init(choose))(a, b)
}

fn choose() -> Dot {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return x86::dot_avx2;
    }
    portable
}

const LANES: usize = 16;

#[inline(always)]
fn dot_with(a: &[f32], b: &[f32], fma: bool) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = if fma {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

fn portable(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, false)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2_inner(a: &[f32], b: &[f32]) -> f32 {
        super::dot_with(a, b, true)
    }

    pub(super) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: chosen only after `is_x86_feature_detected!` found AVX2 and FMA.
        #[allow(unsafe_code)]
        unsafe {
            dot_avx2_inner(a, b)
        }
    }
}

/// Asks the CPU to start loading `v` into its caches (a hint, nothing more; a no-op on
/// other architectures): a search that reads points scattered over memory asks for the next
/// one while it scores this one.
#[inline]
pub fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch never faults and reads nothing; the address is inside `v`.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
    }
}

/// Scales `v` to length 1 (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let norm = portable(v, v).sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_agrees_with_the_plain_sum() {
        for n in [0, 1, 15, 16, 17, 384, 1000] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            for got in [portable(&a, &b), dot(&a, &b)] {
                assert!(
                    (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                    "{n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn normalised_vectors_have_length_one() {
        let mut v = vec![3.0, 4.0];
        normalise(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        normalise(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
