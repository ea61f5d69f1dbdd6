//! GGUF metadata: the header, the key/value table and the tensor table of a GGUF file (v2 and
//! v3), read without loading the weights.
//!
//! Every length read from the file is bounded before anything is allocated, so a damaged or
//! hostile file gives an error, not an out-of-memory.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// `GGUF` in little-endian.
const MAGIC: u32 = 0x4655_4747;
/// The longest string we accept (chat templates are kilobytes; this is generous).
const MAX_STRING: u64 = 16 << 20;
/// The most array elements we accept (vocabularies are ~10^5).
const MAX_ARRAY: u64 = 64 << 20;
/// The most tensors and keys we accept.
const MAX_ENTRIES: u64 = 1 << 20;

/// What can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file (no GGUF magic at the start)")]
    NotGguf,
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("damaged GGUF file: {0}")]
    Damaged(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    /// Arrays are kept only as their element count, except arrays of strings shorter than
    /// [`KEEP_STRINGS`] elements (vocabularies are counted, not kept).
    Array {
        len: u64,
        strings: Option<Vec<String>>,
    },
}

/// String arrays up to this length are kept.
pub const KEEP_STRINGS: u64 = 64;

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    /// The ggml type id (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, ...).
    pub ggml_type: u32,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The metadata of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Size of the file in bytes.
    pub file_size: u64,
}

struct Reader<R> {
    r: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| GgufError::Damaged(format!("truncated: {e}")))?;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(GgufError::Damaged(format!("a string of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| GgufError::Damaged(format!("truncated string: {e}")))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U64(u64::from(self.u8()?)),
            1 => Value::I64(i64::from(self.u8()? as i8)),
            2 => Value::U64(u64::from(self.u16()?)),
            3 => Value::I64(i64::from(self.u16()? as i16)),
            4 => Value::U64(u64::from(self.u32()?)),
            5 => Value::I64(i64::from(self.u32()? as i32)),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Damaged("arrays nested too deep".into()));
                }
                let item = self.u32()?;
                let len = self.u64()?;
                if len > MAX_ARRAY {
                    return Err(GgufError::Damaged(format!("an array of {len} elements")));
                }
                let keep = item == 8 && len <= KEEP_STRINGS;
                let mut strings = Vec::new();
                for _ in 0..len {
                    let v = self.value(item, depth + 1)?;
                    if keep && let Value::Str(s) = v {
                        strings.push(s);
                    }
                }
                Value::Array {
                    len,
                    strings: keep.then_some(strings),
                }
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => return Err(GgufError::Damaged(format!("unknown value type {other}"))),
        })
    }
}

impl GgufInfo {
    /// Reads the metadata and tensor table of the file at `path`.
    pub fn read(path: &Path) -> Result<GgufInfo, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        let mut r = Reader {
            r: BufReader::with_capacity(1 << 16, file),
        };
        let magic = r.u32().map_err(|_| GgufError::NotGguf)?;
        if magic != MAGIC {
            return Err(GgufError::NotGguf);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        if n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES {
            return Err(GgufError::Damaged(format!(
                "{n_tensors} tensors, {n_kv} keys"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 8 {
                return Err(GgufError::Damaged(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = r.u32()?;
            let _offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
            });
        }
        Ok(GgufInfo {
            version,
            metadata,
            tensors,
            file_size,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// An architecture-scoped number, e.g. `arch_u64("context_length")`.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{key}")).and_then(Value::as_u64)
    }

    /// The training context length.
    pub fn context_length(&self) -> Option<u64> {
        self.arch_u64("context_length")
    }

    /// Parameters, counted from the tensor table.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(TensorInfo::elements).sum()
    }

    /// The model's quantisation, from `general.file_type` (llama.cpp's names).
    pub fn quantization(&self) -> Option<&'static str> {
        let ft = self.get("general.file_type").and_then(Value::as_u64)?;
        Some(match ft {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            7 => "Q8_0",
            8 => "Q5_0",
            9 => "Q5_1",
            10 => "Q2_K",
            11 => "Q3_K_S",
            12 => "Q3_K_M",
            13 => "Q3_K_L",
            14 => "Q4_K_S",
            15 => "Q4_K_M",
            16 => "Q5_K_S",
            17 => "Q5_K_M",
            18 => "Q6_K",
            32 => "BF16",
            _ => "other",
        })
    }

    /// The chat template embedded in the file.
    pub fn chat_template(&self) -> Option<&str> {
        self.get("tokenizer.chat_template").and_then(Value::as_str)
    }

    /// Memory the model needs to serve `ctx` tokens of context: the weights (mapped whole)
    /// plus an f16 KV cache of `2 × layers × ctx × kv-width`, plus a fixed 64 MiB for compute
    /// buffers. An estimate for capacity planning, not a measurement.
    pub fn memory_footprint(&self, ctx: u64) -> u64 {
        let layers = self.arch_u64("block_count").unwrap_or(0);
        let embd = self.arch_u64("embedding_length").unwrap_or(0);
        let heads = self.arch_u64("attention.head_count").unwrap_or(1).max(1);
        let kv_heads = self.arch_u64("attention.head_count_kv").unwrap_or(heads);
        let kv_width = embd / heads * kv_heads;
        let kv_cache = 2 * layers * ctx * kv_width * 2;
        self.file_size + kv_cache + (64 << 20)
    }
}

/// Writes a minimal valid GGUF file (a llama architecture header, context 512, Q4_1 file
/// type, two tiny tensor entries and no weights): for tests of tools that read model files.
pub fn write_minimal(path: &Path) -> std::io::Result<()> {
    let mut b: Vec<u8> = Vec::new();
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend_from_slice(&(t.len() as u64).to_le_bytes());
        b.extend_from_slice(t.as_bytes());
    };
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes()); // tensors
    b.extend_from_slice(&9u64.to_le_bytes()); // keys
    let kv_str = |b: &mut Vec<u8>, k: &str, v: &str| {
        s(b, k);
        b.extend_from_slice(&8u32.to_le_bytes());
        s(b, v);
    };
    let kv_u32 = |b: &mut Vec<u8>, k: &str, v: u32| {
        s(b, k);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    };
    kv_str(&mut b, "general.architecture", "llama");
    kv_str(&mut b, "general.name", "tiny");
    kv_u32(&mut b, "general.file_type", 3);
    kv_u32(&mut b, "llama.context_length", 512);
    kv_u32(&mut b, "llama.block_count", 2);
    kv_u32(&mut b, "llama.embedding_length", 64);
    kv_u32(&mut b, "llama.attention.head_count", 4);
    kv_str(
        &mut b,
        "tokenizer.chat_template",
        "{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    for t in ["<s>", "a", "b"] {
        s(&mut b, t);
    }
    for (name, dims) in [
        ("token_embd.weight", vec![64u64, 3]),
        ("output.weight", vec![64, 3]),
    ] {
        s(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    }
    std::fs::write(path, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_fixture(path: &Path) {
        write_minimal(path).unwrap();
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.gguf");
        write_fixture(&p);
        let g = GgufInfo::read(&p).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.context_length(), Some(512));
        assert_eq!(g.quantization(), Some("Q4_1"));
        assert_eq!(g.parameter_count(), 2 * 64 * 3);
        assert!(g.chat_template().unwrap().contains("messages"));
        assert_eq!(
            g.get("tokenizer.ggml.tokens"),
            Some(&Value::Array {
                len: 3,
                strings: Some(vec!["<s>".into(), "a".into(), "b".into()])
            })
        );
        // 2 layers × 512 ctx × 64 wide × K and V × 2 bytes, plus the file and 64 MiB.
        assert_eq!(
            g.memory_footprint(512),
            g.file_size + 2 * 2 * 512 * 64 * 2 + (64 << 20)
        );
    }

    #[test]
    fn damaged_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"not a model").unwrap();
        assert!(matches!(GgufInfo::read(&p), Err(GgufError::NotGguf)));
        write_fixture(&p);
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 10]).unwrap();
        assert!(matches!(GgufInfo::read(&p), Err(GgufError::Damaged(_))));
        let mut huge = full.clone();
        // The first key's length, made absurd: refused before any allocation.
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(matches!(GgufInfo::read(&p), Err(GgufError::Damaged(_))));
        assert!(matches!(
            GgufInfo::read(&dir.path().join("missing")),
            Err(GgufError::Io { .. })
        ));
    }
}
