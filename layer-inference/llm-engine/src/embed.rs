//! Sentence embeddings: a BERT model in sentence-transformers' layout (a folder with
//! `config.json`, `model.safetensors`, `tokenizer.json`, `sentence_bert_config.json`,
//! `1_Pooling/config.json`, `modules.json`), such as all-MiniLM-L6-v2, on candle.
//!
//! It does what sentence-transformers does for such a model: WordPiece tokens with `[CLS]`
//! and `[SEP]`, cut at the model's `max_seq_length`; the encoder; mean pooling over the real
//! tokens (not the padding); L2 normalisation when `modules.json` has a `Normalize` module.
//!
//! [`Embeddings`] owns the model on one worker thread and batches: the inputs of every
//! request waiting when the worker is free are sorted by length and run `batch` at a time,
//! so a batch pads little and concurrent callers share the matrix work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::oneshot;

use crate::EngineError;

/// What the model's files say.
#[derive(Debug, Clone)]
pub struct EmbedInfo {
    /// `model_type` of `config.json` (`bert`).
    pub family: String,
    /// Vector length.
    pub dimensions: usize,
    /// The most tokens of an input that count (longer inputs are cut, as sentence-transformers does).
    pub max_tokens: usize,
    pub parameters: u64,
    /// The weights file, in bytes.
    pub weights_bytes: u64,
    /// Every file of the folder, in bytes.
    pub size_on_disk: u64,
    pub normalized: bool,
}

/// A model loaded and ready to embed.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pub model_id: String,
    pub info: EmbedInfo,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// One input, tokenized.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// It had more tokens than the model takes and was cut.
    pub truncated: bool,
}

fn load_err(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::Load(format!("{}: {what}", path.display()))
}

fn read_json(path: &Path) -> Result<serde_json::Value, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| load_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| load_err(path, e))
}

impl Embedder {
    /// Loads the model folder `dir`; it is served as `model_id` (default: the folder's name).
    pub fn load(dir: &Path, model_id: Option<&str>) -> Result<Embedder, EngineError> {
        if !dir.is_dir() {
            return Err(load_err(
                dir,
                "not a folder (an embedding model is a sentence-transformers folder: config.json, model.safetensors, tokenizer.json)",
            ));
        }
        let config_path = dir.join("config.json");
        let config_json = read_json(&config_path)?;
        let family = config_json
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        if family != "bert" {
            return Err(load_err(
                &config_path,
                format!("model_type `{family}`: only BERT encoders are supported"),
            ));
        }
        let config: BertConfig =
            serde_json::from_value(config_json.clone()).map_err(|e| load_err(&config_path, e))?;
        // sentence-transformers' own settings, where the folder has them.
        let st = read_json(&dir.join("sentence_bert_config.json")).ok();
        let position_limit = config_json
            .get("max_position_embeddings")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(512) as usize;
        let max_tokens = st
            .as_ref()
            .and_then(|s| s.get("max_seq_length"))
            .and_then(serde_json::Value::as_u64)
            .map_or(position_limit, |n| (n as usize).min(position_limit));
        let pooling = read_json(&dir.join("1_Pooling").join("config.json")).ok();
        if let Some(p) = &pooling
            && p.get("pooling_mode_mean_tokens")
                .and_then(serde_json::Value::as_bool)
                == Some(false)
        {
            return Err(load_err(
                &dir.join("1_Pooling"),
                "only mean pooling is supported",
            ));
        }
        let normalized = read_json(&dir.join("modules.json"))
            .ok()
            .and_then(|m| m.as_array().cloned())
            .is_some_and(|mods| {
                mods.iter().any(|m| {
                    m.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.ends_with("Normalize"))
                })
            });

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| load_err(&tokenizer_path, e))?;
        // The file pads every input to a fixed length and cuts at 128; sentence-transformers
        // cuts at `max_seq_length` and pads per batch, as the worker does.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| load_err(&tokenizer_path, e))?;

        let weights = dir.join("model.safetensors");
        let weights_bytes = std::fs::metadata(&weights)
            .map_err(|e| load_err(&weights, e))?
            .len();
        let device = Device::Cpu;
        // Read, not mapped: the weights stay valid whatever happens to the file.
        let tensors =
            candle_core::safetensors::load(&weights, &device).map_err(|e| load_err(&weights, e))?;
        // Weights only (not buffers such as `position_ids`).
        let parameters = tensors
            .values()
            .filter(|t| t.dtype().is_float())
            .map(|t| t.elem_count() as u64)
            .sum();
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| load_err(&weights, e))?;
        let size_on_disk = folder_size(dir);
        let model_id = served_id(dir, model_id);
        Ok(Embedder {
            model,
            tokenizer,
            model_id,
            info: EmbedInfo {
                family,
                dimensions: config.hidden_size,
                max_tokens,
                parameters,
                weights_bytes,
                size_on_disk,
                normalized,
            },
        })
    }

    /// Tokenizes `text` as the model reads it (with `[CLS]` and `[SEP]`, cut at
    /// [`EmbedInfo::max_tokens`]).
    pub fn encode(&self, text: &str) -> Result<Encoded, EngineError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Tokenize(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// The vectors of `inputs`, run as one batch (padded to the longest).
    pub fn embed(&self, inputs: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError> {
        let n = inputs.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let len = inputs.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0f32; n * len];
        for (row, e) in inputs.iter().enumerate() {
            ids[row * len..row * len + e.ids.len()].copy_from_slice(&e.ids);
            mask[row * len..row * len + e.ids.len()].fill(1.0);
        }
        let device = &self.model.device;
        let ids = Tensor::from_vec(ids, (n, len), device)?;
        let mask = Tensor::from_vec(mask, (n, len), device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens.
        let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        let counts = mask.sum_keepdim(1)?.clamp(1e-9, f32::MAX)?;
        let pooled = summed.broadcast_div(&counts)?;
        let mut out = pooled.to_vec2::<f32>()?;
        if self.info.normalized {
            for v in &mut out {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(out)
    }
}

/// The name a model folder is served under: `model_id`, else the folder's name.
pub fn served_id(dir: &Path, model_id: Option<&str>) -> String {
    model_id.map_or_else(
        || {
            dir.file_name()
                .map_or("embeddings".into(), |n| n.to_string_lossy().into_owned())
        },
        str::to_owned,
    )
}

/// Every file under `dir`, in bytes.
pub fn folder_size(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Limits of [`Embeddings`].
#[derive(Debug, Clone, Copy)]
pub struct EmbedLimits {
    /// Inputs run through the model at once.
    pub batch: usize,
    /// Inputs that may wait for the worker; a request that would go beyond gets
    /// [`EngineError::QueueFull`] at once.
    pub queue: usize,
}

impl Default for EmbedLimits {
    fn default() -> Self {
        EmbedLimits {
            batch: 32,
            queue: 8192,
        }
    }
}

/// What a request gets back.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One vector per input, in the request's order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read (after cutting), all inputs together.
    pub tokens: u64,
    /// How many inputs were cut at the model's limit.
    pub truncated: usize,
}

/// Counters since start (for `/metrics`).
#[derive(Debug, Default)]
pub struct EmbedStats {
    pub requests: AtomicU64,
    pub inputs: AtomicU64,
    pub tokens: AtomicU64,
    /// Time the worker spent in the model.
    pub busy_us: AtomicU64,
    /// Batches run.
    pub batches: AtomicU64,
}

struct Job {
    inputs: Vec<Encoded>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// The embedder behind its worker thread.
pub struct Embeddings {
    embedder: Arc<Embedder>,
    limits: EmbedLimits,
    waiting: Arc<AtomicUsize>,
    jobs: std::sync::mpsc::Sender<Job>,
    pub stats: Arc<EmbedStats>,
}

impl std::fmt::Debug for Embeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embeddings")
            .field("embedder", &self.embedder)
            .field("limits", &self.limits)
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Embeddings {
    /// Starts the worker thread over `embedder`.
    pub fn start(embedder: Embedder, limits: EmbedLimits) -> Embeddings {
        let embedder = Arc::new(embedder);
        let limits = EmbedLimits {
            batch: limits.batch.max(1),
            queue: limits.queue.max(1),
        };
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(EmbedStats::default());
        let (model, count, st) = (embedder.clone(), waiting.clone(), stats.clone());
        let spawned = std::thread::Builder::new()
            .name("embeddings".into())
            .spawn(move || worker(&model, &rx, limits.batch, &count, &st));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the embeddings thread");
        }
        Embeddings {
            embedder,
            limits,
            waiting,
            jobs: tx,
            stats,
        }
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    pub fn limits(&self) -> EmbedLimits {
        self.limits
    }

    /// Inputs waiting for (or in) the model now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Embeds `texts`, in order.
    pub async fn embed(&self, texts: &[String]) -> Result<Embedded, EngineError> {
        // Tokenizing thousands of inputs is CPU work: off the async threads.
        let (model, owned) = (self.embedder.clone(), texts.to_vec());
        let inputs = tokio::task::spawn_blocking(move || {
            owned
                .iter()
                .map(|t| model.encode(t))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| EngineError::Tokenize(e.to_string()))??;
        let tokens = inputs.iter().map(|e| e.ids.len() as u64).sum();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats
            .inputs
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        self.stats.tokens.fetch_add(tokens, Ordering::Relaxed);
        let truncated = inputs.iter().filter(|e| e.truncated).count();
        let n = inputs.len();
        if n == 0 {
            return Ok(Embedded {
                vectors: Vec::new(),
                tokens,
                truncated,
            });
        }
        // Reserve a place in the queue, or refuse at once.
        let before = self.waiting.fetch_add(n, Ordering::SeqCst);
        if !admits(before, n, self.limits.queue) {
            self.waiting.fetch_sub(n, Ordering::SeqCst);
            return Err(EngineError::QueueFull(before));
        }
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { inputs, reply }).is_err() {
            self.waiting.fetch_sub(n, Ordering::SeqCst);
            return Err(EngineError::Generate(
                "the embeddings thread has stopped".into(),
            ));
        }
        let vectors = answer
            .await
            .map_err(|_| EngineError::Generate("the embeddings thread has stopped".into()))?
            .map_err(EngineError::Generate)?;
        Ok(Embedded {
            vectors,
            tokens,
            truncated,
        })
    }
}

/// Padded tokens in one batch at most: the batch's activations (tokens × 1536 floats) stay
/// below 25 MB.
const MAX_BATCH_TOKENS: usize = 4096;
/// Attention scores in one batch at most (inputs × length², for each of 12 heads): 25 MB.
const MAX_BATCH_ATTENTION: usize = 512 * 1024;

/// Splits `order` (sorted by length, shortest first) into batches of at most `batch` inputs
/// whose padded size stays under [`MAX_BATCH_TOKENS`] and [`MAX_BATCH_ATTENTION`]: long
/// inputs go in smaller batches, so no tensor is large enough for the allocator to map and
/// unmap it on every layer (which costs more than the arithmetic).
fn batches<T>(order: &[T], len: impl Fn(&T) -> usize, batch: usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && end - start < batch {
            let longest = len(&order[end]).max(1);
            let n = end - start + 1;
            if n * longest > MAX_BATCH_TOKENS || n * longest * longest > MAX_BATCH_ATTENTION {
                break;
            }
            end += 1;
        }
        out.push(&order[start..end]);
        start = end;
    }
    out
}

/// Whether `n` more inputs may wait behind `waiting` (one request alone is always taken:
/// the server caps a request's inputs).
fn admits(waiting: usize, n: usize, limit: usize) -> bool {
    waiting == 0 || waiting + n <= limit
}

/// Takes every job waiting, runs their inputs shortest first in batches, answers each job.
fn worker(
    model: &Embedder,
    rx: &std::sync::mpsc::Receiver<Job>,
    batch: usize,
    waiting: &AtomicUsize,
    stats: &EmbedStats,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        // (job, input) in length order.
        let mut order: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i)))
            .collect();
        order.sort_by_key(|&(j, i)| jobs[j].inputs[i].ids.len());
        let mut results: Vec<Vec<Option<Vec<f32>>>> =
            jobs.iter().map(|j| vec![None; j.inputs.len()]).collect();
        let mut failed: Option<String> = None;
        for chunk in batches(&order, |&(j, i)| jobs[j].inputs[i].ids.len(), batch) {
            let inputs: Vec<&Encoded> = chunk.iter().map(|&(j, i)| &jobs[j].inputs[i]).collect();
            let t = std::time::Instant::now();
            let embedded = model.embed(&inputs);
            stats
                .busy_us
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            match embedded {
                Ok(vectors) => {
                    for (&(j, i), v) in chunk.iter().zip(vectors) {
                        results[j][i] = Some(v);
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        for (job, got) in jobs.into_iter().zip(results) {
            waiting.fetch_sub(job.inputs.len(), Ordering::SeqCst);
            let answer = match &failed {
                Some(e) => Err(e.clone()),
                None => got
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| "an input got no vector".to_owned()),
            };
            let _ = job.reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::admits;

    #[test]
    fn long_inputs_go_in_smaller_batches() {
        let lens: Vec<usize> = [vec![10; 40], vec![200; 40]].concat();
        let b = super::batches(&lens, |l| *l, 32);
        let sizes: Vec<usize> = b.iter().map(|c| c.len()).collect();
        // 32 short, then 8 short + what of the long fits (by attention: 13 × 200² ≤ 512k).
        assert_eq!(sizes[0], 32);
        assert!(sizes[2..].iter().all(|&n| n <= 13), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 80);
        assert_eq!(super::batches(&[5usize; 3], |l| *l, 1).len(), 3);
        assert!(super::batches(&Vec::<usize>::new(), |l| *l, 8).is_empty());
    }

    #[test]
    fn the_queue_takes_up_to_its_limit_and_one_request_alone() {
        assert!(admits(0, 10_000, 8));
        assert!(admits(4, 4, 8));
        assert!(!admits(5, 4, 8));
        assert!(!admits(1, 8, 8));
    }
}
