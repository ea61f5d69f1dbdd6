//! The kernels against candle's dequantisation and against each other.

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use half::f16;

use super::matmul::{Weight, dot_f32};
use super::quant::{Format, Q8Rows, dequantize_row, dot_scalar};
use super::simd::{Level, dot, dot_at, level};

const FORMATS: &[(Format, GgmlDType)] = &[
    (Format::Q4_0, GgmlDType::Q4_0),
    (Format::Q4_1, GgmlDType::Q4_1),
    (Format::Q5_0, GgmlDType::Q5_0),
    (Format::Q5_1, GgmlDType::Q5_1),
    (Format::Q8_0, GgmlDType::Q8_0),
    (Format::Q4K, GgmlDType::Q4K),
    (Format::Q5K, GgmlDType::Q5K),
    (Format::Q6K, GgmlDType::Q6K),
];

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `rows` random rows of `k` values in format `f`, with sensible scales.
fn random_rows(f: Format, rows: usize, k: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut data: Vec<u8> = (0..rows * f.row_bytes(k)).map(|_| rng.u8(..)).collect();
    for blk in data.chunks_exact_mut(f.block_bytes()) {
        let d = 0.001 + rng.f32() * 0.02;
        let m = (rng.f32() - 0.5) * 0.1;
        match f {
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => put_f16(blk, 0, d),
            Format::Q4_1 | Format::Q5_1 => {
                put_f16(blk, 0, d);
                put_f16(blk, 2, m);
            }
            Format::Q4K | Format::Q5K => {
                put_f16(blk, 0, d);
                put_f16(blk, 2, d / 2.0);
            }
            Format::Q6K => put_f16(blk, 208, d),
        }
    }
    data
}

fn random_act(n: usize, rng: &mut fastrand::Rng) -> Vec<f32> {
    (0..n).map(|_| (rng.f32() - 0.5) * 4.0).collect()
}

#[test]
fn dequantised_rows_match_candle() {
    let mut rng = fastrand::Rng::with_seed(7);
    for &(f, g) in FORMATS {
        let (rows, k) = (3, 512);
        let data = random_rows(f, rows, k, &mut rng);
        let theirs = qtensor_from_ggml(g, &data, vec![rows, k], &Device::Cpu)
            .and_then(|t| t.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        let mut ours = vec![0f32; rows * k];
        for r in 0..rows {
            let rb = f.row_bytes(k);
            dequantize_row(
                f,
                &data[r * rb..(r + 1) * rb],
                &mut ours[r * k..(r + 1) * k],
            );
        }
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{f:?} value {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn quantised_dots_match_the_float_dot_and_simd_matches_scalar() {
    let mut rng = fastrand::Rng::with_seed(11);
    for &(f, _) in FORMATS {
        let (rows, k) = (5, 768);
        let data = random_rows(f, rows, k, &mut rng);
        let x = random_act(4 * k, &mut rng);
        let mut xq = Q8Rows::default();
        xq.quantize(&x, k);
        let rb = f.row_bytes(k);
        for r in 0..rows {
            let w = &data[r * rb..(r + 1) * rb];
            let mut wf = vec![0f32; k];
            dequantize_row(f, w, &mut wf);
            let a = [xq.row(0), xq.row(1), xq.row(2), xq.row(3)];
            let mut four = [[0f32; 4]; 1];
            dot(f, &[w], &a, &mut four);
            let four = four[0];
            for t in 0..4 {
                // The float dot of the dequantised row with the dequantised activations.
                let row = xq.row(t);
                let xd: Vec<f32> = (0..k)
                    .map(|i| f32::from(row[i / 32].qs[i % 32]) * row[i / 32].d)
                    .collect();
                let exact = dot_f32(&wf, &xd);
                let mag: f32 = wf.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum();
                let scalar = dot_scalar(f, w, row);
                assert!(
                    (scalar - exact).abs() <= 1e-4 * mag,
                    "{f:?} row {r}: scalar {scalar} vs {exact}"
                );
                assert!(
                    (four[t] - scalar).abs() <= 1e-4 * mag,
                    "{f:?} row {r}: simd {} vs {scalar}",
                    four[t]
                );
                // One row at a time gives the very same bits as four at once.
                let mut one = [[0f32; 1]; 1];
                dot(f, &[w], &[row], &mut one);
                assert_eq!(
                    one[0][0].to_bits(),
                    four[t].to_bits(),
                    "{f:?}: batch changed a result"
                );
                // And the activations' quantisation costs little against the float inputs.
                let full = dot_f32(&wf, &x[t * k..(t + 1) * k]);
                assert!(
                    (scalar - full).abs() <= 0.02 * mag,
                    "{f:?}: {scalar} vs float {full}"
                );
            }
        }
    }
}

#[test]
fn a_matrix_product_gives_each_token_the_same_bits_in_any_batch() {
    let mut rng = fastrand::Rng::with_seed(3);
    let (rows, k) = (40, 256);
    let w = Weight::Quant {
        format: Format::Q4K,
        rows,
        k,
        data: random_rows(Format::Q4K, rows, k, &mut rng),
    };
    let x = random_act(7 * k, &mut rng);
    let mut xq = Q8Rows::default();
    xq.quantize(&x, k);
    let mut all = vec![0f32; 7 * rows];
    w.matmul(&x, &xq, &mut all);
    for t in 0..7 {
        let xt = &x[t * k..(t + 1) * k];
        let mut q1 = Q8Rows::default();
        q1.quantize(xt, k);
        let mut one = vec![0f32; rows];
        w.matmul(xt, &q1, &mut one);
        assert_eq!(one, all[t * rows..(t + 1) * rows], "token {t}");
    }
    let dense = Weight::Dense {
        rows: 2,
        k: 4,
        data: vec![1.0, 2.0, 3.0, 4.0, 0.5, 0.0, -1.0, 2.0],
    };
    let mut y = vec![0f32; 2];
    dense.matmul(&[1.0, 1.0, 1.0, 1.0], &Q8Rows::default(), &mut y);
    assert_eq!(y, [10.0, 1.5]);
}

#[test]
fn every_tile_shape_and_instruction_set_gives_the_same_bits() {
    let mut rng = fastrand::Rng::with_seed(5);
    let levels: Vec<Level> = [Level::Avx2, Level::Avx512Vnni]
        .into_iter()
        .filter(|l| *l == Level::Avx2 || level() == Level::Avx512Vnni)
        .collect();
    for &(f, _) in FORMATS {
        let k = 512;
        let rb = f.row_bytes(k);
        let data = random_rows(f, 4, k, &mut rng);
        let w: [&[u8]; 4] = std::array::from_fn(|r| &data[r * rb..(r + 1) * rb]);
        let x = random_act(3 * k, &mut rng);
        let mut xq = Q8Rows::default();
        xq.quantize(&x, k);
        let a = [xq.row(0), xq.row(1), xq.row(2)];
        let mut reference = [[0f32; 3]; 4];
        dot_at(levels[0], f, &w, &a, &mut reference);
        for &l in &levels {
            let mut tile = [[0f32; 3]; 4];
            dot_at(l, f, &w, &a, &mut tile);
            assert_eq!(tile, reference, "{f:?} at {l:?}");
            for r in 0..4 {
                for t in 0..3 {
                    let mut one = [[0f32; 1]; 1];
                    dot_at(l, f, &[w[r]], &[a[t]], &mut one);
                    assert_eq!(
                        one[0][0].to_bits(),
                        reference[r][t].to_bits(),
                        "{f:?} at {l:?}: row {r} token {t}"
                    );
                }
            }
        }
    }
}
