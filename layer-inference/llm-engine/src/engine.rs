//! Generation: a loaded model, a bounded queue in front of a fixed number of parallel
//! sequences, and the token loop (sampling, stop strings, limits) on a blocking thread.
//!
//! Each sequence clones the model's weights handle (the weights are shared; each clone has
//! its own KV cache). A request waits for a free sequence; when more than `queue` requests
//! are waiting, new ones are refused at once. When the receiver of a request's events is
//! dropped (the client went away), its loop stops at the next token and frees the slot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::ModelWeights;
use tokio::sync::{Semaphore, mpsc};

use crate::error::EngineError;
use crate::gguf::GgufInfo;
use crate::template::{CHATML, ChatTemplate, TemplateMessage};
use crate::tokenizer::GgufTokenizer;

/// Which library computes the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// candle: pure Rust, always built.
    #[default]
    Candle,
    /// llama.cpp: built with the `llama-cpp` feature (`cuda` on the Jetson).
    LlamaCpp,
    /// OpenVINO (an IR folder with its GGUF beside it): built with the `openvino` feature;
    /// the library is loaded at run time.
    OpenVino,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "candle" => Ok(Backend::Candle),
            "llama-cpp" | "llamacpp" | "llama.cpp" => Ok(Backend::LlamaCpp),
            "openvino" => Ok(Backend::OpenVino),
            other => Err(format!(
                "unknown backend `{other}` (candle, llama-cpp, openvino)"
            )),
        }
    }
}

/// Whether this build has the llama.cpp backend.
pub const HAS_LLAMA_CPP: bool = cfg!(feature = "llama-cpp");
/// Whether this build has the OpenVINO backend.
pub const HAS_OPENVINO: bool = cfg!(feature = "openvino");

/// Loads the OpenVINO C library from this file or folder now (instead of from
/// `OPENVINO_LIB_PATH` or the usual locations at the first load). An error in a build without
/// the OpenVINO backend.
pub fn use_openvino_library(path: PathBuf) -> Result<(), EngineError> {
    #[cfg(feature = "openvino")]
    return crate::openvino::load_library_from(Some(path));
    #[cfg(not(feature = "openvino"))]
    {
        let _ = path;
        Err(EngineError::Load(
            "this build has no OpenVINO backend; rebuild with `--features openvino`".into(),
        ))
    }
}

/// How to load and serve a model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub backend: Backend,
    pub model_path: PathBuf,
    /// The name the model is served under (default: the file name without `.gguf`).
    pub model_id: Option<String>,
    /// Context length (0: the model's own, capped at 4096).
    pub context: usize,
    /// Sequences generated at once.
    pub parallel: usize,
    /// Requests that may wait for a sequence; more are refused.
    pub queue: usize,
    /// CPU threads for the llama.cpp backend (0: every core). Candle sizes its thread pool
    /// from `RAYON_NUM_THREADS`, else every core.
    pub threads: usize,
    /// The OpenVINO device (`CPU`, `GPU`, `NPU`, `AUTO`).
    pub device: String,
    /// The OpenVINO inference precision (`f32`, `bf16`, `f16`); the device's default (bf16 on
    /// CPUs that have it) when `None`.
    pub precision: Option<String>,
}

impl EngineConfig {
    /// The name the model is served under: `model_id`, else the file or folder name.
    pub fn served_model_id(&self) -> String {
        self.model_id
            .clone()
            .unwrap_or_else(|| file_stem(&self.model_path))
    }

    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        EngineConfig {
            backend: Backend::Candle,
            model_path: model_path.into(),
            model_id: None,
            context: 0,
            parallel: 1,
            queue: 16,
            threads: 0,
            device: "CPU".into(),
            precision: None,
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Messages, rendered with the model's chat template.
    Chat(Vec<TemplateMessage>),
    /// Raw text (legacy completions).
    Text(String),
}

/// Sampling and limits.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub max_tokens: Option<u32>,
    /// OpenAI's default is 1; 0 means greedy.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Same seed, same text.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a request produces, in order: text pieces, then `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Microseconds spent decoding (after the first token), for tokens/s.
    pub decode_us: AtomicU64,
    pub prefill_us: AtomicU64,
    /// Sum of times from a sequence's start to its first token, and how many.
    pub ttft_us: AtomicU64,
    pub ttft_count: AtomicU64,
}

enum Weights {
    Candle(Box<ModelWeights>),
    #[cfg(feature = "llama-cpp")]
    Llama(crate::llama::LlamaWeights),
    #[cfg(feature = "openvino")]
    OpenVino(crate::openvino::OvWeights),
}

/// One sequence's model state (its KV cache).
enum Session<'a> {
    Candle(Box<ModelWeights>),
    #[cfg(feature = "llama-cpp")]
    Llama(crate::llama::LlamaSession<'a>),
    #[cfg(feature = "openvino")]
    OpenVino(crate::openvino::OvSession),
    #[allow(dead_code)]
    Unused(std::marker::PhantomData<&'a ()>),
}

impl Session<'_> {
    fn prefill(&mut self, tokens: &[u32]) -> Result<Tensor, EngineError> {
        match self {
            Session::Candle(m) => {
                let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
                Ok(m.forward(&input, 0)?.squeeze(0)?)
            }
            #[cfg(feature = "llama-cpp")]
            Session::Llama(l) => l.prefill(tokens),
            #[cfg(feature = "openvino")]
            Session::OpenVino(o) => o.prefill(tokens),
            Session::Unused(_) => Err(EngineError::Generate("no backend".into())),
        }
    }

    fn step(&mut self, token: u32, pos: usize) -> Result<Tensor, EngineError> {
        match self {
            Session::Candle(m) => {
                let input = Tensor::new(&[token], &Device::Cpu)?.unsqueeze(0)?;
                Ok(m.forward(&input, pos)?.squeeze(0)?)
            }
            #[cfg(feature = "llama-cpp")]
            Session::Llama(l) => l.step(token, pos),
            #[cfg(feature = "openvino")]
            Session::OpenVino(o) => o.step(token, pos),
            Session::Unused(_) => Err(EngineError::Generate("no backend".into())),
        }
    }
}

/// A loaded model, ready to serve.
pub struct Engine {
    pub model_id: String,
    pub info: GgufInfo,
    pub context: usize,
    pub backend: Backend,
    weights: Weights,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    slots: Arc<Semaphore>,
    parallel: usize,
    queue: usize,
    waiting: AtomicUsize,
    pub stats: Stats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the model (blocking: run it on a blocking thread).
    pub fn load(cfg: &EngineConfig) -> Result<Engine, EngineError> {
        // An OpenVINO IR takes its tokenizer and chat template from the GGUF beside it.
        #[cfg(feature = "openvino")]
        let gguf = match cfg.backend {
            Backend::OpenVino => crate::ir::tokenizer_gguf(&cfg.model_path)?,
            _ => cfg.model_path.clone(),
        };
        #[cfg(not(feature = "openvino"))]
        let gguf = cfg.model_path.clone();
        let info = GgufInfo::read(&gguf)?;
        let mut file = std::fs::File::open(&gguf).map_err(|e| EngineError::Load(e.to_string()))?;
        let ct =
            gguf_file::Content::read(&mut file).map_err(|e| EngineError::Load(e.to_string()))?;
        let tokenizer = GgufTokenizer::from_gguf(&ct)?;
        let template = ChatTemplate::new(info.chat_template().unwrap_or(CHATML))?;
        let weights = match cfg.backend {
            Backend::Candle => Weights::Candle(Box::new(
                ModelWeights::from_gguf(ct, &mut file, &Device::Cpu)
                    .map_err(|e| EngineError::Load(e.to_string()))?,
            )),
            #[cfg(feature = "llama-cpp")]
            Backend::LlamaCpp => Weights::Llama(crate::llama::LlamaWeights::load(
                &cfg.model_path,
                cfg.threads,
            )?),
            #[cfg(not(feature = "llama-cpp"))]
            Backend::LlamaCpp => {
                return Err(EngineError::Load(
                    "this build has no llama.cpp backend; rebuild with `--features llama-cpp`"
                        .into(),
                ));
            }
            #[cfg(feature = "openvino")]
            Backend::OpenVino => Weights::OpenVino(crate::openvino::OvWeights::load(
                &cfg.model_path,
                &cfg.device,
                cfg.precision.as_deref(),
            )?),
            #[cfg(not(feature = "openvino"))]
            Backend::OpenVino => {
                return Err(EngineError::Load(
                    "this build has no OpenVINO backend; rebuild with `--features openvino`".into(),
                ));
            }
        };
        let model_ctx = info.context_length().unwrap_or(2048) as usize;
        let context = if cfg.context == 0 {
            model_ctx.min(4096)
        } else {
            cfg.context.min(model_ctx)
        };
        let parallel = cfg.parallel.max(1);
        Ok(Engine {
            model_id: cfg.served_model_id(),
            info,
            context,
            backend: cfg.backend,
            weights,
            tokenizer,
            template,
            slots: Arc::new(Semaphore::new(parallel)),
            parallel,
            queue: cfg.queue,
            waiting: AtomicUsize::new(0),
            stats: Stats::default(),
        })
    }

    /// Requests waiting for a sequence.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Sequences generating now.
    pub fn busy(&self) -> usize {
        self.parallel - self.slots.available_permits()
    }

    /// The prompt's tokens.
    pub fn tokenize(&self, input: &Input) -> Result<Vec<u32>, EngineError> {
        let text = match input {
            Input::Chat(m) => self.template.render(
                m,
                self.tokenizer.bos.as_deref(),
                self.tokenizer.eos.as_deref(),
            )?,
            Input::Text(t) => t.clone(),
        };
        self.tokenizer.encode(&text)
    }

    /// Generates for `input`, sending events to `tx` until `Done` (or until `tx` is closed).
    /// Errors before the first event: the prompt does not fit, or the queue is full.
    pub async fn generate(
        self: &Arc<Self>,
        input: Input,
        params: Params,
        tx: mpsc::Sender<Event>,
    ) -> Result<(), EngineError> {
        let prompt = self.tokenize(&input)?;
        if prompt.len() + 1 > self.context {
            return Err(EngineError::ContextExceeded {
                prompt: prompt.len(),
                context: self.context,
            });
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        if waiting >= self.queue && self.slots.available_permits() == 0 {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::QueueFull(waiting));
        }
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p,
            () = tx.closed() => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                return Ok(());
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.map_err(|e| EngineError::Generate(e.to_string()))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.run(&prompt, &params, &tx)
        })
        .await
        .map_err(|e| EngineError::Generate(e.to_string()))?
    }

    fn run(&self, prompt: &[u32], p: &Params, tx: &mpsc::Sender<Event>) -> Result<(), EngineError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let t0 = std::time::Instant::now();
        let mut model = match &self.weights {
            Weights::Candle(w) => Session::Candle(Box::new((**w).clone())),
            #[cfg(feature = "llama-cpp")]
            Weights::Llama(w) => Session::Llama(w.session(self.context)?),
            #[cfg(feature = "openvino")]
            Weights::OpenVino(w) => Session::OpenVino(w.session()?),
        };
        let temperature = p.temperature.unwrap_or(1.0);
        let seed = p.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let mut sampler =
            LogitsProcessor::new(seed, (temperature > 0.0).then_some(temperature), p.top_p);
        let room = self.context - prompt.len();
        let max_new = p.max_tokens.map_or(room, |m| (m as usize).min(room));
        let logits = model.prefill(prompt)?;
        let mut next = sampler.sample(&logits)?;
        let first = t0.elapsed().as_micros() as u64;
        self.stats.prefill_us.fetch_add(first, Ordering::Relaxed);
        self.stats.ttft_us.fetch_add(first, Ordering::Relaxed);
        self.stats.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.stats
            .prompt_tokens
            .fetch_add(prompt.len() as u64, Ordering::Relaxed);
        let t1 = std::time::Instant::now();
        let mut text = TextStream::new(&p.stop);
        let mut generated: Vec<u32> = Vec::new();
        let mut finish = Finish::Length;
        let mut cancelled = false;
        for i in 0..max_new {
            if self.tokenizer.stop_ids.contains(&next) {
                finish = Finish::Stop;
                break;
            }
            generated.push(next);
            let decoded = self.tokenizer.decode(&generated)?;
            let (piece, hit_stop) = text.push(&decoded);
            if !piece.is_empty() && tx.blocking_send(Event::Text(piece)).is_err() {
                cancelled = true;
                break;
            }
            if hit_stop {
                finish = Finish::Stop;
                break;
            }
            if i + 1 == max_new {
                break;
            }
            if tx.is_closed() {
                cancelled = true;
                break;
            }
            let logits = model.step(next, prompt.len() + i)?;
            next = sampler.sample(&logits)?;
        }
        self.stats
            .decode_us
            .fetch_add(t1.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats
            .completion_tokens
            .fetch_add(generated.len() as u64, Ordering::Relaxed);
        if cancelled {
            return Ok(());
        }
        if finish == Finish::Length || !text.stopped {
            let rest = text.flush();
            if !rest.is_empty() {
                let _ = tx.blocking_send(Event::Text(rest));
            }
        }
        let _ = tx.blocking_send(Event::Done {
            finish,
            prompt_tokens: prompt.len(),
            completion_tokens: generated.len(),
        });
        Ok(())
    }
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned())
}

/// Turns the decoded text so far into pieces to send: never half a UTF-8 character (the
/// decoder shows those as U+FFFD until the rest arrives), never the start of a stop string
/// that may still complete, and nothing from a stop string on.
pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of the decoded text already sent.
    sent: usize,
    pub stopped: bool,
    last: String,
}

impl TextStream {
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            sent: 0,
            stopped: false,
            last: String::new(),
        }
    }

    /// Takes the whole decoded text; returns the new piece to send and whether a stop string
    /// was found.
    pub fn push(&mut self, decoded: &str) -> (String, bool) {
        self.last = decoded.to_owned();
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| decoded.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let piece = decoded.get(self.sent..at).unwrap_or("").to_owned();
            self.sent = at.max(self.sent);
            return (piece, true);
        }
        // Hold back an unfinished character and any suffix that could begin a stop string.
        let mut end = decoded.len();
        if decoded.ends_with('\u{FFFD}') {
            end = decoded.trim_end_matches('\u{FFFD}').len();
        }
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && decoded[..end].ends_with(&s[..k]) {
                    end = end.min(decoded[..end].len() - k);
                    break;
                }
            }
        }
        if end <= self.sent {
            return (String::new(), false);
        }
        let piece = decoded.get(self.sent..end).unwrap_or("").to_owned();
        self.sent = end;
        (piece, false)
    }

    /// What is still held back, at the end.
    pub fn flush(&mut self) -> String {
        let rest = self.last.get(self.sent..).unwrap_or("").to_owned();
        self.sent = self.last.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_and_hold_back() {
        let mut t = TextStream::new(&["END".to_owned()]);
        assert_eq!(t.push("Hello"), ("Hello".into(), false));
        assert_eq!(t.push("Hello E"), (" ".into(), false), "`E` may start END");
        assert_eq!(t.push("Hello EN"), ("".into(), false));
        assert_eq!(
            t.push("Hello ENX"),
            ("ENX".into(), false),
            "not a stop after all"
        );
        assert_eq!(t.push("Hello ENX END more"), (" ".into(), true));
        assert!(t.stopped);
    }

    #[test]
    fn unfinished_characters_wait() {
        let mut t = TextStream::new(&[]);
        assert_eq!(t.push("caf\u{FFFD}"), ("caf".into(), false));
        assert_eq!(t.push("café"), ("é".into(), false));
        assert_eq!(t.flush(), "");
    }
}
