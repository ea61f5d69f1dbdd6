//! The llama.cpp backend (`--features llama-cpp`; `cuda` for the Jetson): the same engine,
//! with llama.cpp computing the logits. Tokenizer, template, sampling and stop handling stay
//! ours, so both backends behave alike for the same seed and settings.
//!
//! One context holds a KV stream per running sequence (`--parallel` of them, each of the
//! context length), as llama-server's slots do: a step is one `llama_decode` of a batch whose
//! tokens carry their sequence ids, and each token attends only to its own stream.
//!
//! A sequence that ends stays in its stream, as a prefix cache entry, until a new sequence
//! needs the stream: then the oldest such entry is copied out to host memory (llama.cpp's
//! sequence state), where the cache keeps it. A request that continues most of an entry (a
//! chat's next turn, an agent's next step, the same prompt again) takes it over where it is:
//! what lies past the shared prefix is dropped, nothing is copied. A request that shares a
//! shorter prefix (a system prompt and tools) gets a copy in a stream of its own, and the
//! entry stays for others. A sequence that parks behind a better request is copied out, and
//! back in when it resumes. The cache costs no attention work in the streams that run.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::num::NonZeroU32;
use std::rc::{Rc, Weak};
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};

use crate::error::EngineError;
use crate::runner::{Feed, Runner};

/// llama.cpp may be initialised once per process.
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            LlamaBackend::init()
                .map(|mut b| {
                    b.void_logs();
                    b
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp: {e}")))
}

/// A model loaded by llama.cpp.
pub struct LlamaWeights {
    model: LlamaModel,
    /// Creating contexts of one model concurrently is unsound in llama.cpp: one at a time.
    create: Mutex<()>,
    threads: i32,
}

impl LlamaWeights {
    /// Loads the model; `threads` 0 means every core.
    pub fn load(path: &std::path::Path, threads: usize) -> Result<Self, EngineError> {
        let b = backend()?;
        let model = LlamaModel::load_from_file(b, path, &LlamaModelParams::default())
            .map_err(|e| EngineError::Load(format!("llama.cpp: {e}")))?;
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let threads = i32::try_from(threads).unwrap_or(i32::MAX);
        Ok(LlamaWeights {
            model,
            create: Mutex::new(()),
            threads,
        })
    }

    /// Bytes of KV per token position (f16 keys and values of every layer).
    fn bytes_per_cell(&self) -> usize {
        let heads = self.model.n_head().max(1) as usize;
        let head_dim = self.model.n_embd().max(0) as usize / heads;
        2 * self.model.n_layer() as usize * self.model.n_head_kv() as usize * head_dim * 2
    }

    /// One context with a KV stream of `context` tokens for each of `parallel` sequences.
    pub fn runner(&self, context: usize, parallel: usize) -> Result<LlamaRunner<'_>, EngineError> {
        let streams = parallel.clamp(1, MAX_STREAMS);
        let n_ctx = u32::try_from(streams * context).unwrap_or(u32::MAX);
        let n_batch = u32::try_from(CHUNK + streams).unwrap_or(u32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx.max(1)))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_seq_max(streams as u32)
            .with_kv_unified(false)
            .with_flash_attention_policy(1)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = {
            let _one_at_a_time = self
                .create
                .lock()
                .map_err(|e| EngineError::Generate(e.to_string()))?;
            self.model
                .new_context(backend()?, params)
                .map_err(|e| EngineError::Load(format!("llama.cpp context: {e}")))?
        };
        Ok(LlamaRunner {
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_vocab: self.model.n_vocab().max(0) as usize,
            free: (0..streams as i32).collect(),
            resident: VecDeque::new(),
            per_cell: self.bytes_per_cell(),
            held: 0,
        })
    }
}

/// Prompt tokens fed per step.
const CHUNK: usize = 256;
/// llama.cpp's most sequences in one context.
const MAX_STREAMS: usize = 256;

/// Where a sequence's KV is.
enum Place {
    /// In the context's stream of this sequence id.
    Stream(i32),
    /// Copied out to host memory.
    Host(SeqState),
    /// Nowhere: copying it out failed, so nothing of it can be reused.
    Lost,
}

/// One sequence: where its KV is (shared with the runner's list of cache entries still in
/// their streams, which it may copy out) and the positions it holds.
pub struct LlamaSeq {
    place: Rc<RefCell<Place>>,
    len: usize,
}

impl LlamaSeq {
    fn new(place: Place, len: usize) -> Self {
        LlamaSeq {
            place: Rc::new(RefCell::new(place)),
            len,
        }
    }

    /// Its stream, if it is in one.
    fn stream_id(&self) -> Option<i32> {
        match *self.place.borrow() {
            Place::Stream(id) => Some(id),
            _ => None,
        }
    }

    fn host_bytes(&self) -> usize {
        match &*self.place.borrow() {
            Place::Host(s) => s.byte_len(),
            _ => 0,
        }
    }
}

impl std::fmt::Debug for LlamaSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &*self.place.borrow() {
            Place::Stream(id) => format!("stream {id}"),
            Place::Host(s) => format!("host, {} bytes", s.byte_len()),
            Place::Lost => "lost".into(),
        };
        write!(f, "LlamaSeq({place}, {} positions)", self.len)
    }
}

/// A prefix cache entry still in its stream.
struct Resident {
    id: i32,
    len: usize,
    place: Weak<RefCell<Place>>,
}

/// Every running sequence in one llama.cpp context, decoded together; the prefix cache in
/// the streams nobody runs in and in host memory, parked sequences in host memory.
pub struct LlamaRunner<'a> {
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'a>,
    n_vocab: usize,
    /// Streams nothing holds; the lowest is taken first, so that the running sequences' ids
    /// stay consecutive and llama.cpp decodes them in one graph.
    free: BTreeSet<i32>,
    /// Cache entries in their streams, the oldest first (the first copied out).
    resident: VecDeque<Resident>,
    /// Bytes of KV per position in a stream.
    per_cell: usize,
    /// Bytes the prefix cache holds: its entries' cells in streams and copies in host memory.
    held: usize,
}

fn gen_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Generate(format!("llama.cpp: {e}"))
}

impl LlamaRunner<'_> {
    /// A stream to fill: a free one, else the oldest cache entry's, once copied out.
    fn take_stream(&mut self) -> Result<i32, EngineError> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        let r = self.resident.pop_front().ok_or(EngineError::KvFull)?;
        self.held = self.held.saturating_sub(r.len * self.per_cell);
        if let Some(place) = r.place.upgrade() {
            let copied = self.copy_out(r.id);
            self.held += copied.as_ref().map_or(0, SeqState::byte_len);
            *place.borrow_mut() = copied.map_or(Place::Lost, Place::Host);
        }
        self.clear(r.id, 0);
        Ok(r.id)
    }

    fn copy_out(&self, id: i32) -> Option<SeqState> {
        self.ctx
            .state_seq_get(id, LlamaStateSeqFlags::empty())
            .inspect_err(|e| tracing::warn!("llama.cpp: cannot copy a sequence's KV out: {e}"))
            .ok()
    }

    /// Drops stream `id`'s positions from `from` on.
    fn clear(&mut self, id: i32, from: usize) {
        let from = u32::try_from(from).ok();
        let _ = self
            .ctx
            .clear_kv_cache_seq(u32::try_from(id).ok(), from, None);
    }

    fn free_stream(&mut self, id: i32) {
        self.clear(id, 0);
        self.free.insert(id);
    }

    /// Takes cache entry `id` off the resident list.
    fn unlist(&mut self, id: i32) -> bool {
        match self.resident.iter().position(|r| r.id == id) {
            Some(i) => {
                let r = self.resident.remove(i);
                self.held = self
                    .held
                    .saturating_sub(r.map_or(0, |r| r.len) * self.per_cell);
                true
            }
            None => false,
        }
    }

    /// A new stream holding the first `n` positions of `state`.
    fn restore(&mut self, state: &SeqState, n: usize) -> Result<i32, EngineError> {
        let id = self.take_stream()?;
        match self.ctx.state_seq_set(state, id) {
            Ok(()) => {
                self.clear(id, n);
                Ok(id)
            }
            Err(e) => {
                self.free_stream(id);
                Err(gen_err(e))
            }
        }
    }

    /// `seq`'s stream, its KV copied back in if it was copied out (a parked sequence).
    fn stream(&mut self, seq: &mut LlamaSeq) -> Result<i32, EngineError> {
        if let Some(id) = seq.stream_id() {
            return Ok(id);
        }
        let id = match &*seq.place.borrow() {
            // Not resident, so taking a stream cannot touch this place.
            Place::Host(state) => self.restore(state, seq.len)?,
            _ => {
                return Err(EngineError::Generate(
                    "llama.cpp: a parked sequence's KV was lost".into(),
                ));
            }
        };
        *seq.place.borrow_mut() = Place::Stream(id);
        Ok(id)
    }
}

impl Runner for LlamaRunner<'_> {
    type Seq = LlamaSeq;

    fn new_seq(&mut self) -> Result<LlamaSeq, EngineError> {
        let id = self.take_stream()?;
        Ok(LlamaSeq::new(Place::Stream(id), 0))
    }

    fn share(&mut self, src: &LlamaSeq, n: usize) -> Result<Option<LlamaSeq>, EngineError> {
        let n = n.min(src.len);
        let id = match src.stream_id() {
            // A cache entry whose prefix is most of it is taken over where it is (`adopt`).
            Some(id) if n * 10 >= src.len * 9 && self.resident.iter().any(|r| r.id == id) => {
                return Ok(None);
            }
            Some(id) => {
                let state = self
                    .ctx
                    .state_seq_get(id, LlamaStateSeqFlags::empty())
                    .map_err(gen_err)?;
                self.restore(&state, n)?
            }
            None => match &*src.place.borrow() {
                // Not resident, so taking a stream cannot touch this place.
                Place::Host(state) => self.restore(state, n)?,
                _ => return Ok(None),
            },
        };
        Ok(Some(LlamaSeq::new(Place::Stream(id), n)))
    }

    fn adopt(&mut self, src: LlamaSeq, n: usize) -> Result<LlamaSeq, LlamaSeq> {
        let n = n.min(src.len);
        if let Some(id) = src.stream_id()
            && self.unlist(id)
        {
            self.clear(id, n);
            return Ok(LlamaSeq::new(Place::Stream(id), n));
        }
        match self.share(&src, n) {
            Ok(Some(seq)) => {
                self.evict(src);
                Ok(seq)
            }
            _ => Err(src),
        }
    }

    fn forward(&mut self, feeds: &mut [Feed<'_, LlamaSeq>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut ids = Vec::with_capacity(feeds.len());
        for f in feeds.iter_mut() {
            ids.push(self.stream(f.seq)?);
        }
        // In stream order: llama.cpp puts consecutive sequence ids into one graph.
        let mut order: Vec<usize> = (0..feeds.len()).collect();
        order.sort_by_key(|&i| ids[i]);
        self.batch.clear();
        let mut out_row = vec![None; feeds.len()];
        for &k in &order {
            let f = &feeds[k];
            for (i, t) in f.tokens.iter().enumerate() {
                let last = i + 1 == f.tokens.len();
                self.batch
                    .add(
                        LlamaToken(*t as i32),
                        (f.seq.len + i) as i32,
                        &[ids[k]],
                        f.logits && last,
                    )
                    .map_err(gen_err)?;
                if f.logits && last {
                    out_row[k] = Some(self.batch.n_tokens() - 1);
                }
            }
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            // Whatever part of the batch went in comes out again.
            for (f, id) in feeds.iter().zip(&ids) {
                self.clear(*id, f.seq.len);
            }
            return Err(match e {
                llama_cpp_2::DecodeError::NoKvCacheSlot => EngineError::KvFull,
                e => gen_err(e),
            });
        }
        for f in feeds.iter_mut() {
            f.seq.len += f.tokens.len();
        }
        Ok(out_row
            .into_iter()
            .flatten()
            .map(|i| {
                let l = self.ctx.get_logits_ith(i);
                l[..self.n_vocab.min(l.len())].to_vec()
            })
            .collect())
    }

    fn park(&mut self, seq: &mut LlamaSeq) {
        if let Some(id) = seq.stream_id() {
            let copied = self.copy_out(id);
            *seq.place.borrow_mut() = copied.map_or(Place::Lost, Place::Host);
            self.free_stream(id);
        }
    }

    fn to_cache(&mut self, seq: &mut LlamaSeq) {
        match seq.stream_id() {
            Some(id) => {
                self.held += seq.len * self.per_cell;
                self.resident.push_back(Resident {
                    id,
                    len: seq.len,
                    place: Rc::downgrade(&seq.place),
                });
            }
            None => self.held += seq.host_bytes(),
        }
    }

    fn evict(&mut self, seq: LlamaSeq) {
        match seq.stream_id() {
            Some(id) => {
                self.unlist(id);
                self.free_stream(id);
            }
            None => self.held = self.held.saturating_sub(seq.host_bytes()),
        }
    }

    fn discard(&mut self, seq: LlamaSeq) {
        if let Some(id) = seq.stream_id() {
            self.free_stream(id);
        }
    }

    fn cached_bytes(&self) -> usize {
        self.held
    }

    fn chunk(&self) -> usize {
        CHUNK
    }
}
