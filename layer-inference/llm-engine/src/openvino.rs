//! The OpenVINO backend (feature `openvino`): a stateful LLM IR (`openvino_model.xml/.bin`,
//! the folder OpenVINO GenAI writes) run through OpenVINO's core C API. The C library is
//! loaded at run time, so the crate builds and its other backends run without OpenVINO.
//!
//! The generation loop is ours, as the wheels carry no GenAI C library: each sequence has its
//! own infer request (its state — the KV cache — starts empty), is fed `input_ids`,
//! `attention_mask`, `position_ids` and `beam_idx`, and hands the last position's logits to
//! the engine's sampler. The tokenizer and chat template come from the GGUF the IR was derived
//! from, kept beside it, so every backend tokenizes and templates alike.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use openvino::{CompiledModel, Core, DeviceType, ElementType, InferRequest, RwPropertyKey, Shape};

use crate::error::EngineError;
use crate::runner::{Feed, Runner};

/// The environment variable naming the OpenVINO C library (a file, or a folder holding it).
pub const LIB_ENV: &str = "OPENVINO_LIB_PATH";

fn load_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Load(format!("OpenVINO: {e}"))
}

/// Loads `libopenvino_c` once: from `OPENVINO_LIB_PATH` (a file, or a folder with
/// `libopenvino_c.so*` / `.dylib` / `.dll`), else from the usual install locations
/// (`INTEL_OPENVINO_DIR`, `LD_LIBRARY_PATH`, `/usr/lib`, `/opt/intel/openvino*`).
pub fn load_library() -> Result<(), EngineError> {
    load_library_from(std::env::var_os(LIB_ENV).map(PathBuf::from))
}

/// As [`load_library`], from this file or folder (`None`: the usual locations). The first
/// call decides; later calls return its outcome.
pub fn load_library_from(path: Option<PathBuf>) -> Result<(), EngineError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            match path {
                Some(p) => {
                    let file = if p.is_dir() { find_c_library(&p)? } else { p };
                    openvino_sys::library::load_from(&file)
                        .map_err(|e| format!("cannot load {}: {e}", file.display()))
                }
                None => openvino_sys::library::load().map_err(|e| {
                    format!("the OpenVINO C library (libopenvino_c) was not found ({e}); set {LIB_ENV} to it or to its folder")
                }),
            }
        })
        .clone()
        .map_err(load_err)
}

/// `libopenvino_c` in a folder, versioned names (`libopenvino_c.so.2641`) accepted.
fn find_c_library(dir: &Path) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libopenvino_c.so")
                    || n.starts_with("libopenvino_c.") && n.ends_with(".dylib")
                    || n == "openvino_c.dll"
            })
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| format!("no libopenvino_c in {}", dir.display()))
}

/// A compiled model; each sequence gets its own infer request from it.
pub struct OvWeights {
    compiled: Mutex<CompiledModel>,
    has_beam_idx: bool,
    // The core outlives the compiled model.
    _core: Mutex<Core>,
}

impl OvWeights {
    /// Reads and compiles the IR for `device` (`CPU`, `GPU`, `NPU`, `AUTO`, ...), at the
    /// device's own inference precision or at `precision` (`f32`, `bf16`, `f16`).
    pub fn load(model: &Path, device: &str, precision: Option<&str>) -> Result<Self, EngineError> {
        load_library()?;
        let (xml, bin) = crate::ir::files(model)?;
        let mut core = Core::new().map_err(load_err)?;
        let ir = core
            .read_model_from_file(&xml.to_string_lossy(), &bin.to_string_lossy())
            .map_err(load_err)?;
        let mut inputs = Vec::new();
        for i in 0..ir.get_inputs_len().map_err(load_err)? {
            let port = ir.get_input_by_index(i).map_err(load_err)?;
            inputs.push(port.get_name().map_err(load_err)?);
        }
        for want in ["input_ids", "attention_mask", "position_ids"] {
            if !inputs.iter().any(|n| n == want) {
                return Err(EngineError::Load(format!(
                    "{} is not a stateful LLM IR: it has no `{want}` input (inputs: {})",
                    xml.display(),
                    inputs.join(", ")
                )));
            }
        }
        let device: DeviceType<'static> = device
            .parse()
            .map_err(|e| load_err(format!("device `{device}`: {e:?}")))?;
        if let Some(p) = precision {
            core.set_property(
                &device,
                &RwPropertyKey::Other("INFERENCE_PRECISION_HINT".into()),
                p,
            )
            .map_err(|e| load_err(format!("precision `{p}`: {e}")))?;
        }
        let compiled = core.compile_model(&ir, device).map_err(load_err)?;
        Ok(OvWeights {
            compiled: Mutex::new(compiled),
            has_beam_idx: inputs.iter().any(|n| n == "beam_idx"),
            _core: Mutex::new(core),
        })
    }

    /// The step loop's view of this model; `bytes_per_token` estimates what a cached
    /// sequence's state holds.
    pub fn runner(self, bytes_per_token: usize) -> OvRunner {
        OvRunner {
            weights: self,
            bytes_per_token,
            cached_tokens: 0,
        }
    }

    /// A fresh sequence (empty state).
    pub fn session(&self) -> Result<OvSession, EngineError> {
        let mut compiled = self
            .compiled
            .lock()
            .map_err(|_| EngineError::Generate("OpenVINO model lock poisoned".into()))?;
        let request = compiled
            .create_infer_request()
            .map_err(|e| EngineError::Generate(format!("OpenVINO: {e}")))?;
        Ok(OvSession {
            request,
            has_beam_idx: self.has_beam_idx,
        })
    }
}

/// One sequence: an infer request whose state holds the KV cache.
pub struct OvSession {
    request: InferRequest,
    has_beam_idx: bool,
}

fn gen_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Generate(format!("OpenVINO: {e}"))
}

fn i64_tensor(dims: &[i64], fill: impl Fn(usize) -> i64) -> Result<openvino::Tensor, EngineError> {
    let shape = Shape::new(dims).map_err(gen_err)?;
    let mut t = openvino::Tensor::new(ElementType::I64, &shape).map_err(gen_err)?;
    for (i, v) in t
        .get_data_mut::<i64>()
        .map_err(gen_err)?
        .iter_mut()
        .enumerate()
    {
        *v = fill(i);
    }
    Ok(t)
}

impl OvSession {
    /// Feeds `tokens` from position `start`; the last position's logits.
    pub fn feed(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, EngineError> {
        let n = tokens.len() as i64;
        let start = start as i64;
        let ids = i64_tensor(&[1, n], |i| i64::from(tokens[i]))?;
        // The mask covers what the state holds plus the new tokens.
        let mask = i64_tensor(&[1, start + n], |_| 1)?;
        let pos = i64_tensor(&[1, n], |i| start + i as i64)?;
        self.request
            .set_tensor("input_ids", &ids)
            .map_err(gen_err)?;
        self.request
            .set_tensor("attention_mask", &mask)
            .map_err(gen_err)?;
        self.request
            .set_tensor("position_ids", &pos)
            .map_err(gen_err)?;
        if self.has_beam_idx {
            let shape = Shape::new(&[1]).map_err(gen_err)?;
            let mut beam = openvino::Tensor::new(ElementType::I32, &shape).map_err(gen_err)?;
            beam.get_data_mut::<i32>().map_err(gen_err)?[0] = 0;
            self.request
                .set_tensor("beam_idx", &beam)
                .map_err(gen_err)?;
        }
        self.request.infer().map_err(gen_err)?;
        let out = self.request.get_tensor("logits").map_err(gen_err)?;
        if out.get_element_type().map_err(gen_err)? != ElementType::F32 {
            return Err(gen_err("the logits output is not f32"));
        }
        let dims = out.get_shape().map_err(gen_err)?.get_dimensions().to_vec();
        let vocab = dims.last().copied().unwrap_or(0) as usize;
        let data = out.get_data::<f32>().map_err(gen_err)?;
        if vocab == 0 || data.len() < vocab {
            return Err(gen_err(format!("unexpected logits shape {dims:?}")));
        }
        Ok(data[data.len() - vocab..].to_vec())
    }
}

/// A sequence: an infer request and the positions its state holds.
pub struct OvSeq {
    session: OvSession,
    len: usize,
}

/// OpenVINO as the step loop drives it. Each sequence is its own infer request, run one
/// after the other in a step (the IR takes one sequence per call). Its state cannot be read
/// or cut through OpenVINO's C API, so a cached sequence is reused only by a request that
/// continues it exactly (the next turn of a chat whose answer it generated), and is then
/// taken out of the cache.
pub struct OvRunner {
    weights: OvWeights,
    bytes_per_token: usize,
    cached_tokens: usize,
}

/// Prompt tokens fed per step.
const CHUNK: usize = 128;

impl Runner for OvRunner {
    type Seq = OvSeq;

    fn new_seq(&mut self) -> Result<OvSeq, EngineError> {
        Ok(OvSeq {
            session: self.weights.session()?,
            len: 0,
        })
    }

    fn share(&mut self, _src: &OvSeq, _n: usize) -> Result<Option<OvSeq>, EngineError> {
        Ok(None)
    }

    fn adopt(&mut self, src: OvSeq, n: usize) -> Result<OvSeq, OvSeq> {
        if n == src.len {
            self.cached_tokens = self.cached_tokens.saturating_sub(src.len);
            Ok(src)
        } else {
            Err(src)
        }
    }

    fn forward(&mut self, feeds: &mut [Feed<'_, OvSeq>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut out = Vec::new();
        for f in feeds.iter_mut() {
            let logits = f.seq.session.feed(f.tokens, f.seq.len)?;
            f.seq.len += f.tokens.len();
            if f.logits {
                out.push(logits);
            }
        }
        Ok(out)
    }

    fn to_cache(&mut self, seq: &mut OvSeq) {
        self.cached_tokens += seq.len;
    }

    fn evict(&mut self, seq: OvSeq) {
        self.cached_tokens = self.cached_tokens.saturating_sub(seq.len);
    }

    fn discard(&mut self, _seq: OvSeq) {}

    fn cached_bytes(&self) -> usize {
        self.cached_tokens * self.bytes_per_token
    }

    fn chunk(&self) -> usize {
        CHUNK
    }
}
