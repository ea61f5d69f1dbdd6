//! Reading a model of the CPU backend from its GGUF file: the shape from the metadata,
//! each layer's tensors (quantised blocks kept as stored when the kernels take their format,
//! dequantised otherwise) and the RoPE tables.

use std::io::{Read, Seek, SeekFrom};

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;

use super::matmul::Weight;
use super::model::{ARCHITECTURES, Hparams, Layer, Model, Rope};
use super::quant::Format;
use crate::error::EngineError;

fn load_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Load(e.to_string())
}

struct Reader<'a, R> {
    ct: &'a Content,
    file: &'a mut R,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn meta_u(&self, key: &str) -> Option<usize> {
        self.ct
            .metadata
            .get(key)
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
            .map(|v| v as usize)
    }

    fn meta_f(&self, key: &str) -> Option<f32> {
        self.ct.metadata.get(key).and_then(|v| {
            v.to_f32()
                .ok()
                .or_else(|| v.to_f64().ok().map(|x| x as f32))
        })
    }

    fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }

    /// A 1-D tensor (norms, biases) as floats.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        let info = self
            .ct
            .tensor_infos
            .get(name)
            .ok_or_else(|| load_err(format!("the file has no tensor `{name}`")))?;
        let v = info
            .read(self.file, self.ct.tensor_data_offset, &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if v.len() != len {
            return Err(load_err(format!(
                "`{name}` has {} values, not {len}",
                v.len()
            )));
        }
        Ok(v)
    }

    /// A matrix of `rows` outputs of `k` inputs: its blocks as stored when the kernels take
    /// its format, else dequantised to floats.
    fn matrix(&mut self, name: &str, rows: usize, k: usize) -> Result<Weight, EngineError> {
        let info = self
            .ct
            .tensor_infos
            .get(name)
            .ok_or_else(|| load_err(format!("the file has no tensor `{name}`")))?;
        let dims = info.shape.dims();
        if dims != [rows, k] {
            return Err(load_err(format!(
                "`{name}` is {dims:?}, expected [{rows}, {k}]"
            )));
        }
        match Format::of(info.ggml_dtype) {
            Some(format) if k.is_multiple_of(format.block_values()) => {
                let mut data = vec![0u8; rows * format.row_bytes(k)];
                self.file
                    .seek(SeekFrom::Start(self.ct.tensor_data_offset + info.offset))
                    .and_then(|_| self.file.read_exact(&mut data))
                    .map_err(|e| load_err(format!("reading `{name}`: {e}")))?;
                Ok(Weight::Quant {
                    format,
                    rows,
                    k,
                    data,
                })
            }
            _ => {
                let data = info
                    .read(self.file, self.ct.tensor_data_offset, &Device::Cpu)?
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Ok(Weight::Dense { rows, k, data })
            }
        }
    }
}

/// What the metadata says of the model's shape, and of its RoPE.
struct Shape {
    arch: String,
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    eps: f32,
    theta: f32,
    /// Linear RoPE scaling (1: none).
    linear: f32,
}

impl Model {
    /// Reads the model from a GGUF file, with RoPE tables for `max_pos` positions.
    pub fn load<R: Read + Seek>(
        ct: &Content,
        file: &mut R,
        max_pos: usize,
    ) -> Result<Model, EngineError> {
        let mut r = Reader { ct, file };
        let s = shape(&r)?;
        let embed_info = ct
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| load_err("the file has no tensor `token_embd.weight`"))?;
        let vocab = embed_info.shape.dims().first().copied().unwrap_or(0);
        let embed = r.matrix("token_embd.weight", vocab, s.hidden)?;
        let freq_factors = if r.has("rope_freqs.weight") {
            Some(r.vector("rope_freqs.weight", s.head_dim / 2)?)
        } else {
            None
        };
        let layers = (0..s.layers)
            .map(|i| layer(&mut r, i, &s))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = r.vector("output_norm.weight", s.hidden)?;
        let output = if r.has("output.weight") {
            Some(r.matrix("output.weight", vocab, s.hidden)?)
        } else {
            None
        };
        let (cos, sin) = rope_tables(&s, freq_factors.as_deref(), max_pos);
        Ok(Model {
            hp: Hparams {
                rope: if s.arch == "qwen2" {
                    Rope::Neox
                } else {
                    Rope::Norm
                },
                arch: s.arch,
                layers: s.layers,
                hidden: s.hidden,
                heads: s.heads,
                kv_heads: s.kv_heads,
                head_dim: s.head_dim,
                eps: s.eps,
                vocab,
            },
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            max_pos,
        })
    }
}

/// The model's shape from the metadata; an error naming what this backend does not run.
fn shape<R: Read + Seek>(r: &Reader<'_, R>) -> Result<Shape, EngineError> {
    let arch =
        r.ct.metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(EngineError::Load(format!(
            "the candle backend runs {} models; this file's architecture is `{arch}`",
            ARCHITECTURES.join(" and ")
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    if r.meta_u(&key("expert_count")).unwrap_or(0) > 0 {
        return Err(load_err(format!(
            "this `{arch}` file is a mixture of experts, which the candle backend does not run"
        )));
    }
    let need = |v: Option<usize>, k: &str| {
        v.filter(|v| *v > 0)
            .ok_or_else(|| load_err(format!("the file has no `{arch}.{k}`")))
    };
    let layers = need(r.meta_u(&key("block_count")), "block_count")?;
    let hidden = need(r.meta_u(&key("embedding_length")), "embedding_length")?;
    let heads = need(
        r.meta_u(&key("attention.head_count")),
        "attention.head_count",
    )?;
    let kv_heads = r.meta_u(&key("attention.head_count_kv")).unwrap_or(heads);
    let head_dim = r
        .meta_u(&key("attention.key_length"))
        .unwrap_or(hidden / heads);
    let ffn = need(r.meta_u(&key("feed_forward_length")), "feed_forward_length")?;
    let rope_dims = r.meta_u(&key("rope.dimension_count")).unwrap_or(head_dim);
    if kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || rope_dims != head_dim
        || !head_dim.is_multiple_of(2)
    {
        return Err(load_err(format!(
            "unsupported attention shape: {heads} heads, {kv_heads} KV heads, head size {head_dim}, RoPE over {rope_dims}"
        )));
    }
    let eps = r
        .meta_f(&key("attention.layer_norm_rms_epsilon"))
        .unwrap_or(1e-5);
    let theta = r.meta_f(&key("rope.freq_base")).unwrap_or(10_000.0);
    let linear = match r
        .ct
        .metadata
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok().cloned())
        .as_deref()
    {
        Some("linear") => r.meta_f(&key("rope.scaling.factor")).unwrap_or(1.0),
        _ => 1.0,
    };
    Ok(Shape {
        arch,
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        ffn,
        eps,
        theta,
        linear,
    })
}

/// Layer `i`'s tensors (q/k/v biases where the file has them: Qwen2).
fn layer<R: Read + Seek>(r: &mut Reader<'_, R>, i: usize, s: &Shape) -> Result<Layer, EngineError> {
    let n = |t: &str| format!("blk.{i}.{t}");
    let bias = |r: &mut Reader<'_, R>, t: &str, len| -> Result<Option<Vec<f32>>, EngineError> {
        let name = n(t);
        if r.has(&name) {
            r.vector(&name, len).map(Some)
        } else {
            Ok(None)
        }
    };
    let (q_rows, kv_rows) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    Ok(Layer {
        attn_norm: r.vector(&n("attn_norm.weight"), s.hidden)?,
        q: r.matrix(&n("attn_q.weight"), q_rows, s.hidden)?,
        k: r.matrix(&n("attn_k.weight"), kv_rows, s.hidden)?,
        v: r.matrix(&n("attn_v.weight"), kv_rows, s.hidden)?,
        q_bias: bias(r, "attn_q.bias", q_rows)?,
        k_bias: bias(r, "attn_k.bias", kv_rows)?,
        v_bias: bias(r, "attn_v.bias", kv_rows)?,
        o: r.matrix(&n("attn_output.weight"), s.hidden, q_rows)?,
        ffn_norm: r.vector(&n("ffn_norm.weight"), s.hidden)?,
        gate: r.matrix(&n("ffn_gate.weight"), s.ffn, s.hidden)?,
        up: r.matrix(&n("ffn_up.weight"), s.ffn, s.hidden)?,
        down: r.matrix(&n("ffn_down.weight"), s.hidden, s.ffn)?,
    })
}

/// cos and sin of every (position, pair) for `max_pos` positions.
fn rope_tables(s: &Shape, freq_factors: Option<&[f32]>, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = s.head_dim / 2;
    let mut cos = vec![0f32; max_pos * half];
    let mut sin = vec![0f32; max_pos * half];
    for p in 0..max_pos {
        for i in 0..half {
            let mut freq = 1.0 / s.theta.powf(2.0 * i as f32 / s.head_dim as f32);
            if let Some(f) = freq_factors {
                freq /= f[i];
            }
            let a = p as f32 / s.linear * freq;
            cos[p * half + i] = a.cos();
            sin[p * half + i] = a.sin();
        }
    }
    (cos, sin)
}
