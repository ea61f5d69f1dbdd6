//! Generation: a loaded model, the priority queue in front of a fixed number of parallel
//! sequences ([`crate::queue`]), and the token loop (sampling, stop tokens and strings,
//! limits) on a blocking thread.
//!
//! Each sequence clones the model's weights handle (the weights are shared; each clone has
//! its own KV cache). A request waits for a free sequence, best priority first; a sequence
//! asked to yield to a better request parks between two tokens or prefill chunks and resumes
//! later with its cache intact. When the receiver of a request's events is dropped (the
//! client went away), its loop stops at the next token and frees the sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokio::sync::mpsc;

use crate::error::EngineError;
use crate::gguf::GgufInfo;
use crate::queue::{Priority, Queue, QueueSnapshot, RequestState, Resumed, Slot};
use crate::sampling::{DRY_BREAKERS, Sampler, SamplerDefaults, SamplerRequest};
use crate::template::{CHATML, ChatTemplate, TemplateMessage};
use crate::tokenizer::GgufTokenizer;

/// Prompt tokens fed at once: between two chunks a sequence can yield to a better request.
/// candle reads a prompt token by token anyway (about as fast as it generates), so small
/// chunks cost it nothing; llama.cpp and OpenVINO gain from larger batches.
fn prefill_chunk(backend: Backend) -> usize {
    match backend {
        Backend::Candle => 16,
        Backend::LlamaCpp | Backend::OpenVino => 128,
    }
}

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
    /// Requests that may wait for a sequence; more are refused (or, if better, take the
    /// place of the worst one waiting).
    pub queue: usize,
    /// The longest a request waits for a sequence before it is refused.
    pub max_queue_wait: Duration,
    /// New tokens for a request that does not say (`None`: up to the context).
    pub default_max_tokens: Option<u32>,
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
            max_queue_wait: Duration::from_secs(600),
            default_max_tokens: None,
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

/// Sampling, limits and scheduling of one request.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub max_tokens: Option<u32>,
    /// What the request set; the rest comes from [`Engine::sampler_defaults`].
    pub sampling: SamplerRequest,
    /// Same seed, same text.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub priority: Priority,
    /// The request's id, so its place in the queue can be asked for.
    pub request_id: Option<String>,
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

/// Where the time of one request went (llama-server's `timings`, plus the queue).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Waiting for a sequence.
    pub queue_ms: f64,
    /// Reading the prompt (parked time excluded).
    pub prompt_ms: f64,
    /// From the first new token to the last (parked time excluded).
    pub predicted_ms: f64,
    /// Parked while better requests ran.
    pub parked_ms: f64,
}

/// What a request produces, in order: `Queued` if it has to wait, text pieces, then `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// It waits for a sequence behind `ahead` requests.
    Queued {
        ahead: usize,
    },
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        timings: Timings,
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
    /// Feeds `tokens` from position `start`; the logits after the last one.
    fn feed(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, EngineError> {
        let logits = match self {
            Session::Candle(m) => {
                let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
                m.forward(&input, start)?.squeeze(0)?
            }
            #[cfg(feature = "llama-cpp")]
            Session::Llama(l) => l.feed(tokens, start)?,
            #[cfg(feature = "openvino")]
            Session::OpenVino(o) => o.feed(tokens, start)?,
            Session::Unused(_) => return Err(EngineError::Generate("no backend".into())),
        };
        Ok(logits.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}

/// A loaded model, ready to serve.
pub struct Engine {
    pub model_id: String,
    pub info: GgufInfo,
    pub context: usize,
    pub backend: Backend,
    /// The sampler settings a request gets for what it leaves unset.
    pub sampler_defaults: SamplerDefaults,
    /// New tokens for a request that does not say (`None`: up to the context).
    pub default_max_tokens: Option<u32>,
    weights: Weights,
    tokenizer: GgufTokenizer,
    /// Tokens that end a repeat for DRY: found in the vocabulary on the first request that
    /// turns DRY on (a pass over every token, not paid at start-up or without DRY).
    dry_breakers: std::sync::OnceLock<Arc<[u32]>>,
    template: ChatTemplate,
    queue: Arc<Queue>,
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
        let mut tokenizer = GgufTokenizer::from_gguf(&ct)?;
        let template = ChatTemplate::new(info.chat_template().unwrap_or(CHATML))?;
        // Whatever closes an assistant turn in this template ends generation too.
        for id in template.end_of_turn_ids(&tokenizer) {
            if !tokenizer.stop_ids.contains(&id) {
                tokenizer.stop_ids.push(id);
            }
        }
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
        Ok(Engine {
            model_id: cfg.served_model_id(),
            sampler_defaults: SamplerDefaults::from_gguf(&info),
            default_max_tokens: cfg.default_max_tokens,
            info,
            context,
            backend: cfg.backend,
            weights,
            dry_breakers: std::sync::OnceLock::new(),
            tokenizer,
            template,
            queue: Queue::new(cfg.parallel, cfg.queue, cfg.max_queue_wait),
            stats: Stats::default(),
        })
    }

    /// Requests waiting for a sequence (parked ones included).
    pub fn waiting(&self) -> usize {
        let q = self.queue.snapshot();
        q.waiting + q.parked
    }

    /// Sequences generating now.
    pub fn busy(&self) -> usize {
        self.queue.snapshot().running
    }

    /// The queue at a glance.
    pub fn queue(&self) -> QueueSnapshot {
        self.queue.snapshot()
    }

    /// Where the request with this id is (waiting, parked or generating), if it is here.
    pub fn request_state(&self, request_id: &str) -> Option<RequestState> {
        self.queue.status(request_id)
    }

    /// The token ids that end generation (end of text and every end-of-turn token).
    pub fn stop_ids(&self) -> &[u32] {
        &self.tokenizer.stop_ids
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
    /// Errors before the first event: the prompt is empty or does not fit, or the queue is
    /// full; after a `Queued` event: the wait ended without a sequence.
    pub async fn generate(
        self: &Arc<Self>,
        input: Input,
        params: Params,
        tx: mpsc::Sender<Event>,
    ) -> Result<(), EngineError> {
        let prompt = self.tokenize(&input)?;
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() + 1 > self.context {
            return Err(EngineError::ContextExceeded {
                prompt: prompt.len(),
                context: self.context,
            });
        }
        let queued_at = Instant::now();
        let notify = tx.clone();
        let slot = self
            .queue
            .enter(
                params.priority,
                params.request_id.clone(),
                |ahead| {
                    let _ = notify.try_send(Event::Queued { ahead });
                },
                tx.closed(),
            )
            .await?;
        drop(notify);
        let Some(slot) = slot else {
            return Ok(()); // the client left while waiting
        };
        let queued = queued_at.elapsed();
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.run(&prompt, &params, &tx, &slot, queued))
            .await
            .map_err(|e| EngineError::Generate(e.to_string()))?
    }

    fn run(
        &self,
        prompt: &[u32],
        p: &Params,
        tx: &mpsc::Sender<Event>,
        slot: &Slot,
        queued: Duration,
    ) -> Result<(), EngineError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut parked = Duration::ZERO;
        let cancelled = || tx.is_closed();
        // Parks the sequence while a better request runs; false if the client left.
        let go_on = |parked: &mut Duration| {
            if !slot.should_yield() {
                return true;
            }
            let t = Instant::now();
            let r = slot.yield_if_asked(cancelled);
            *parked += t.elapsed();
            r == Resumed::Go
        };
        let mut model = match &self.weights {
            Weights::Candle(w) => Session::Candle(Box::new((**w).clone())),
            #[cfg(feature = "llama-cpp")]
            Weights::Llama(w) => Session::Llama(w.session(self.context)?),
            #[cfg(feature = "openvino")]
            Weights::OpenVino(w) => Session::OpenVino(w.session()?),
        };
        let seed = p.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let settings = self.sampler_defaults.resolve(&p.sampling);
        let mut sampler = Sampler::new(
            settings,
            seed,
            &self.tokenizer.stop_ids,
            if settings.dry_multiplier > 0.0 {
                self.dry_breakers
                    .get_or_init(|| self.tokenizer.ids_containing(DRY_BREAKERS).into())
                    .clone()
            } else {
                Arc::from([])
            },
        );
        let room = self.context - prompt.len();
        let max_new = p
            .max_tokens
            .or(self.default_max_tokens)
            .map_or(room, |m| (m as usize).min(room));
        // The prompt in chunks, so that a better request waits at most one chunk.
        let mut logits = Vec::new();
        let chunk_len = prefill_chunk(self.backend);
        for (i, chunk) in prompt.chunks(chunk_len).enumerate() {
            if i > 0 && !go_on(&mut parked) {
                return Ok(());
            }
            logits = model.feed(chunk, i * chunk_len)?;
        }
        let mut generated: Vec<u32> = Vec::new();
        let mut next = sampler.sample(&logits, &generated);
        let prompt_time = t0.elapsed().saturating_sub(parked);
        self.stats
            .prefill_us
            .fetch_add(prompt_time.as_micros() as u64, Ordering::Relaxed);
        self.stats
            .ttft_us
            .fetch_add(prompt_time.as_micros() as u64, Ordering::Relaxed);
        self.stats.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.stats
            .prompt_tokens
            .fetch_add(prompt.len() as u64, Ordering::Relaxed);
        let t1 = Instant::now();
        let parked_before = parked;
        let mut text = TextStream::new(&p.stop);
        let mut finish = Finish::Length;
        let mut cancelled_now = false;
        for i in 0..max_new {
            if self.tokenizer.stop_ids.contains(&next) {
                finish = Finish::Stop;
                break;
            }
            generated.push(next);
            slot.set_tokens(generated.len() as u64);
            let decoded = self.tokenizer.decode(&generated)?;
            let (piece, hit_stop) = text.push(&decoded);
            if !piece.is_empty() && tx.blocking_send(Event::Text(piece)).is_err() {
                cancelled_now = true;
                break;
            }
            if hit_stop {
                finish = Finish::Stop;
                break;
            }
            if i + 1 == max_new {
                break;
            }
            if tx.is_closed() || !go_on(&mut parked) {
                cancelled_now = true;
                break;
            }
            let logits = model.feed(&[next], prompt.len() + i)?;
            next = sampler.sample(&logits, &generated);
        }
        let decode_time = t1.elapsed().saturating_sub(parked - parked_before);
        self.stats
            .decode_us
            .fetch_add(decode_time.as_micros() as u64, Ordering::Relaxed);
        self.stats
            .completion_tokens
            .fetch_add(generated.len() as u64, Ordering::Relaxed);
        if cancelled_now {
            return Ok(());
        }
        if finish == Finish::Length || !text.stopped {
            let rest = text.flush();
            if !rest.is_empty() {
                let _ = tx.blocking_send(Event::Text(rest));
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let _ = tx.blocking_send(Event::Done {
            finish,
            prompt_tokens: prompt.len(),
            completion_tokens: generated.len(),
            timings: Timings {
                queue_ms: ms(queued),
                prompt_ms: ms(prompt_time),
                predicted_ms: ms(decode_time),
                parked_ms: ms(parked),
            },
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
