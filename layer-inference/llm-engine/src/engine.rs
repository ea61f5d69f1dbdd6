//! Generation: a loaded model, the priority queue in front of a fixed number of parallel
//! sequences ([`crate::queue`]), and the step loop ([`crate::step`]) that runs them all in one
//! forward pass per step, on a thread of its own, reusing cached prompt prefixes.
//!
//! A request waits for a free sequence, best priority first; a sequence asked to yield to a
//! better request parks between two steps and resumes later with its KV intact. When the
//! receiver of a request's events is dropped (the client went away), its sequence ends at the
//! next step, and what it read stays in the prefix cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use tokio::sync::{mpsc, oneshot};

use crate::error::EngineError;
use crate::gguf::GgufInfo;
use crate::queue::{Priority, Queue, QueueSnapshot, RequestState};
use crate::runner::Runner;
use crate::sampling::{SamplerDefaults, SamplerRequest};
use crate::step::{Job, Shared, Stepper};
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
    /// Memory for the KV of ended sequences kept for prefix reuse, in MiB (`None`: a
    /// sixteenth of the machine's memory, between 256 MiB and 4 GiB; 0: none kept).
    pub prefix_cache_mb: Option<usize>,
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
            prefix_cache_mb: None,
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
        /// Prompt tokens whose KV came from the prefix cache instead of being read.
        cached_tokens: usize,
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
    /// Requests that looked for a cached prefix, those that found one, and the prompt tokens
    /// it saved reading.
    pub prefix_lookups: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub prefix_tokens_reused: AtomicU64,
    /// Bytes and sequences the prefix cache holds now.
    pub prefix_bytes: AtomicU64,
    pub prefix_entries: AtomicU64,
    /// Forward passes, and the tokens they fed (their mean is the batch size).
    pub steps: AtomicU64,
    pub step_tokens: AtomicU64,
}

/// The prefix cache's budget when none is configured: a sixteenth of the machine's memory,
/// between 256 MiB and 4 GiB.
pub fn default_prefix_cache_mb() -> usize {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .unwrap_or(8 << 20);
    (total_kb / 1024 / 16).clamp(256, 4096)
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
    /// Bytes the prefix cache may hold.
    pub prefix_cache_bytes: usize,
    shared: Arc<Shared>,
    template: ChatTemplate,
    queue: Arc<Queue>,
    jobs: std::sync::mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the model (blocking: run it on a blocking thread) and starts its step loop.
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
        let model_ctx = info.context_length().unwrap_or(2048) as usize;
        let context = if cfg.context == 0 {
            model_ctx.min(4096)
        } else {
            cfg.context.min(model_ctx)
        };
        let stats = Arc::new(Stats::default());
        let prefix_cache_bytes = cfg.prefix_cache_mb.unwrap_or_else(default_prefix_cache_mb) << 20;
        let sampler_defaults = SamplerDefaults::from_gguf(&info);
        let shared = Arc::new(Shared {
            tokenizer,
            sampler_defaults: sampler_defaults.clone(),
            dry_breakers: std::sync::OnceLock::new(),
            context,
            default_max_tokens: cfg.default_max_tokens,
            stats: stats.clone(),
            cache_budget: prefix_cache_bytes,
        });
        let jobs = start_loop(cfg, &ct, &mut file, context, shared.clone())?;
        Ok(Engine {
            model_id: cfg.served_model_id(),
            sampler_defaults,
            default_max_tokens: cfg.default_max_tokens,
            prefix_cache_bytes,
            info,
            context,
            backend: cfg.backend,
            shared,
            template,
            queue: Queue::new(cfg.parallel, cfg.queue, cfg.max_queue_wait),
            jobs,
            stats,
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
        &self.shared.tokenizer.stop_ids
    }

    /// The prompt's tokens.
    pub fn tokenize(&self, input: &Input) -> Result<Vec<u32>, EngineError> {
        let text = match input {
            Input::Chat(m) => self.template.render(
                m,
                self.shared.tokenizer.bos.as_deref(),
                self.shared.tokenizer.eos.as_deref(),
            )?,
            Input::Text(t) => t.clone(),
        };
        self.shared.tokenizer.encode(&text)
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
        let (done, finished) = oneshot::channel();
        self.jobs
            .send(Job {
                prompt,
                params,
                tx,
                slot,
                queued: queued_at.elapsed(),
                done,
            })
            .map_err(|_| EngineError::Generate("the engine's step loop has stopped".into()))?;
        finished
            .await
            .map_err(|_| EngineError::Generate("the engine's step loop has stopped".into()))?
    }
}

/// Starts the step loop on its own thread, with the backend `cfg` names; returns where to
/// send it requests.
fn start_loop(
    cfg: &EngineConfig,
    ct: &gguf_file::Content,
    file: &mut std::fs::File,
    context: usize,
    shared: Arc<Shared>,
) -> Result<std::sync::mpsc::Sender<Job>, EngineError> {
    let (jobs, rx) = std::sync::mpsc::channel::<Job>();
    let (ready_tx, ready) = std::sync::mpsc::sync_channel::<Result<(), EngineError>>(1);
    let thread = std::thread::Builder::new().name("engine-step".into());
    // Runs the loop on `runner`, once it is built on the loop's thread.
    fn go<R: Runner>(
        runner: Result<R, EngineError>,
        shared: Arc<Shared>,
        rx: std::sync::mpsc::Receiver<Job>,
        ready: &std::sync::mpsc::SyncSender<Result<(), EngineError>>,
    ) {
        match runner {
            Ok(r) => {
                let _ = ready.send(Ok(()));
                Stepper::new(r, shared).run(rx);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    }
    let spawned = match cfg.backend {
        Backend::Candle => {
            let model = crate::cpu::model::Model::load(ct, file, context)?;
            thread.spawn(move || {
                go(
                    Ok(crate::cpu::runner::CpuRunner::new(model)),
                    shared,
                    rx,
                    &ready_tx,
                )
            })
        }
        #[cfg(feature = "llama-cpp")]
        Backend::LlamaCpp => {
            let weights = crate::llama::LlamaWeights::load(&cfg.model_path, cfg.threads)?;
            let parallel = cfg.parallel.max(1);
            thread.spawn(move || {
                let runner = weights.runner(context, parallel);
                go(runner, shared, rx, &ready_tx)
            })
        }
        #[cfg(not(feature = "llama-cpp"))]
        Backend::LlamaCpp => {
            return Err(EngineError::Load(
                "this build has no llama.cpp backend; rebuild with `--features llama-cpp`".into(),
            ));
        }
        #[cfg(feature = "openvino")]
        Backend::OpenVino => {
            let weights = crate::openvino::OvWeights::load(
                &cfg.model_path,
                &cfg.device,
                cfg.precision.as_deref(),
            )?;
            let bytes_per_token = ct_kv_bytes_per_token(ct);
            thread.spawn(move || go(Ok(weights.runner(bytes_per_token)), shared, rx, &ready_tx))
        }
        #[cfg(not(feature = "openvino"))]
        Backend::OpenVino => {
            return Err(EngineError::Load(
                "this build has no OpenVINO backend; rebuild with `--features openvino`".into(),
            ));
        }
    };
    spawned.map_err(|e| EngineError::Load(format!("cannot start the step loop: {e}")))?;
    ready
        .recv()
        .map_err(|_| EngineError::Load("the step loop did not start".into()))??;
    Ok(jobs)
}

/// Bytes of f16 KV per token of the model described by `ct` (for backends that do not say).
#[cfg(feature = "openvino")]
fn ct_kv_bytes_per_token(ct: &gguf_file::Content) -> usize {
    let arch = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    let u = |k: &str| {
        ct.metadata
            .get(&format!("{arch}.{k}"))
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(0) as usize
    };
    let heads = u("attention.head_count").max(1);
    let kv = match u("attention.head_count_kv") {
        0 => heads,
        n => n,
    };
    2 * u("block_count") * kv * (u("embedding_length") / heads) * 2
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
