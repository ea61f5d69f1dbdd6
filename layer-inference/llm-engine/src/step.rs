//! The step loop: one thread per engine owns the backend and runs every sequence the queue
//! admitted, as one forward pass per step: the next token of each decoding sequence plus at
//! most one chunk of one prompt (the best-placed request's), so prompts are read while the
//! others keep generating, and `--parallel 4` costs little more per step than one sequence.
//! Only the best priority running takes part in a step: background work pauses while a chat
//! runs and goes on after it.
//!
//! A new sequence starts from the longest token prefix it shares with a cached sequence or a
//! running one ([`crate::prefix`]) and reads only the rest of its prompt. A sequence that
//! ends, or whose client leaves, leaves its KV in the prefix cache, which is held under its
//! memory budget by dropping the least recently used entries. A sequence asked to yield to a
//! better request parks between two steps, keeping its KV, and resumes where it was.
//!
//! Events go to each request's channel without blocking the loop: a client that reads slowly
//! holds its own events back, not the other sequences.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::engine::{Event, Finish, Params, Stats, TextStream, Timings};
use crate::error::EngineError;
use crate::prefix::{PrefixCache, common_prefix};
use crate::queue::{Parked, Resumed, Slot};
use crate::runner::{Feed, Runner};
use crate::sampling::{DRY_BREAKERS, Sampler, SamplerDefaults};
use crate::tokenizer::GgufTokenizer;

/// How often the loop looks at parked sequences and slow clients when nothing runs.
const POLL: Duration = Duration::from_millis(20);

/// A request that has a sequence, on its way to the loop.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub params: Params,
    pub tx: mpsc::Sender<Event>,
    pub slot: Slot,
    pub queued: Duration,
    pub done: oneshot::Sender<Result<(), EngineError>>,
}

/// What the loop shares with the engine.
pub(crate) struct Shared {
    pub tokenizer: GgufTokenizer,
    pub sampler_defaults: SamplerDefaults,
    /// Tokens that end a repeat for DRY, found on the first request that turns DRY on.
    pub dry_breakers: std::sync::OnceLock<Arc<[u32]>>,
    pub context: usize,
    pub default_max_tokens: Option<u32>,
    pub stats: Arc<Stats>,
    /// Bytes the prefix cache may hold (0: nothing is kept).
    pub cache_budget: usize,
}

/// Events a sequence could not hand over yet (its client reads slowly).
struct Outbox {
    tx: mpsc::Sender<Event>,
    events: VecDeque<Event>,
}

impl Outbox {
    /// Hands over what the channel takes; false if the client left.
    fn flush(&mut self) -> bool {
        while let Some(ev) = self.events.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.events.push_front(ev);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }
}

/// A running (or parked) sequence.
struct Seq<S> {
    prompt: Vec<u32>,
    slot: Slot,
    out: Outbox,
    done: oneshot::Sender<Result<(), EngineError>>,
    kv: S,
    /// The tokens the KV holds.
    fed: Vec<u32>,
    reused: usize,
    sampler: Sampler,
    generated: Vec<u32>,
    text: TextStream,
    /// The last sampled token, fed at the next step.
    next: [u32; 1],
    max_new: usize,
    queued: Duration,
    started: Instant,
    prompt_time: Option<Duration>,
    decode_started: Option<Instant>,
    parked: Duration,
    parked_at_first_token: Duration,
    park: Option<(Parked, Instant)>,
}

impl<S> Seq<S> {
    fn prefilling(&self) -> bool {
        self.prompt_time.is_none()
    }
}

/// The loop's state.
pub(crate) struct Stepper<R: Runner> {
    runner: R,
    shared: Arc<Shared>,
    cache: PrefixCache<R::Seq>,
    running: Vec<Seq<R::Seq>>,
    parked: Vec<Seq<R::Seq>>,
    /// Finished requests whose last events wait for a slow client.
    draining: Vec<Outbox>,
}

impl<R: Runner> Stepper<R> {
    pub fn new(runner: R, shared: Arc<Shared>) -> Self {
        Stepper {
            runner,
            shared,
            cache: PrefixCache::default(),
            running: Vec::new(),
            parked: Vec::new(),
            draining: Vec::new(),
        }
    }

    /// Runs until the engine is dropped and every sequence has ended.
    pub fn run(mut self, jobs: Receiver<Job>) {
        loop {
            let idle = self.running.is_empty();
            let job = if !idle {
                jobs.try_recv().map_err(|e| e == TryRecvError::Disconnected)
            } else if self.parked.is_empty() && self.draining.is_empty() {
                jobs.recv().map_err(|_| true)
            } else {
                jobs.recv_timeout(POLL)
                    .map_err(|e| e == RecvTimeoutError::Disconnected)
            };
            match job {
                Ok(job) => {
                    self.admit(job);
                    while let Ok(job) = jobs.try_recv() {
                        self.admit(job);
                    }
                }
                Err(true) if idle && self.parked.is_empty() && self.draining.is_empty() => {
                    return;
                }
                Err(_) => {}
            }
            self.tend();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Starts a sequence for `job` from the longest prefix it shares with what is cached or
    /// running.
    fn admit(&mut self, job: Job) {
        let stats = self.shared.stats.clone();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let limit = job.prompt.len().saturating_sub(1);
        let (kv, reused) = match self.start_from_prefix(&job.prompt, limit) {
            Ok(x) => x,
            Err(e) => {
                let _ = job.done.send(Err(e));
                return;
            }
        };
        stats.prefix_lookups.fetch_add(1, Ordering::Relaxed);
        if reused > 0 {
            stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
            stats
                .prefix_tokens_reused
                .fetch_add(reused as u64, Ordering::Relaxed);
        }
        let sh = &self.shared;
        let settings = sh.sampler_defaults.resolve(&job.params.sampling);
        let seed = job.params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let breakers = if settings.dry_multiplier > 0.0 {
            sh.dry_breakers
                .get_or_init(|| sh.tokenizer.ids_containing(DRY_BREAKERS).into())
                .clone()
        } else {
            Arc::from([])
        };
        let sampler = Sampler::new(settings, seed, &sh.tokenizer.stop_ids, breakers);
        let room = sh.context.saturating_sub(job.prompt.len());
        let max_new = job
            .params
            .max_tokens
            .or(sh.default_max_tokens)
            .map_or(room, |m| (m as usize).min(room));
        self.running.push(Seq {
            fed: job.prompt[..reused].to_vec(),
            text: TextStream::new(&job.params.stop),
            prompt: job.prompt,
            slot: job.slot,
            out: Outbox {
                tx: job.tx,
                events: VecDeque::new(),
            },
            done: job.done,
            kv,
            reused,
            sampler,
            generated: Vec::new(),
            next: [0],
            max_new,
            queued: job.queued,
            started: Instant::now(),
            prompt_time: None,
            decode_started: None,
            parked: Duration::ZERO,
            parked_at_first_token: Duration::ZERO,
            park: None,
        });
    }

    /// A sequence holding the first `n ≤ limit` tokens of `prompt` from the cache or a
    /// running sequence, as long a prefix as the backend can take, and `n`.
    fn start_from_prefix(
        &mut self,
        prompt: &[u32],
        limit: usize,
    ) -> Result<(R::Seq, usize), EngineError> {
        let cached = self.cache.best(prompt).map(|(i, n)| (i, n.min(limit)));
        let live = self
            .running
            .iter()
            .chain(&self.parked)
            .enumerate()
            .map(|(i, s)| (i, common_prefix(&s.fed, prompt).min(limit)))
            .max_by_key(|(_, n)| *n);
        let from_cache = cached.filter(|(_, n)| *n > 0 && live.is_none_or(|(_, m)| *n >= m));
        if let Some((i, n)) = from_cache {
            self.cache.touch(i);
            if let Some(kv) = self.runner.share(&self.cache.get(i).seq, n)? {
                return Ok((kv, n));
            }
            // A backend that does not share it may take the entry over, if it can continue it.
            let entry = self.cache.take(i);
            match self.runner.adopt(entry.seq, n) {
                Ok(kv) => return Ok((kv, n)),
                Err(seq) => {
                    for d in self.cache.insert(entry.tokens, seq) {
                        self.runner.evict(d);
                    }
                }
            }
        } else if let Some((i, n)) = live.filter(|(_, n)| *n > 0) {
            let src = if i < self.running.len() {
                &self.running[i].kv
            } else {
                &self.parked[i - self.running.len()].kv
            };
            if let Some(kv) = self.runner.share(src, n)? {
                return Ok((kv, n));
            }
        }
        loop {
            match self.runner.new_seq() {
                Err(EngineError::KvFull) if self.drop_lru() => {}
                r => return r.map(|s| (s, 0)),
            }
        }
    }

    /// Between steps: clients that left, sequences asked to yield, parked ones that may
    /// resume, events that wait for slow clients.
    fn tend(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &mut self.running[i];
            if !s.out.flush() || s.out.tx.is_closed() {
                let s = self.running.swap_remove(i);
                self.end_cancelled(s);
                continue;
            }
            if let Some(p) = s.slot.park() {
                let mut s = self.running.swap_remove(i);
                self.runner.park(&mut s.kv);
                s.park = Some((p, Instant::now()));
                self.parked.push(s);
                continue;
            }
            i += 1;
        }
        let mut i = 0;
        while i < self.parked.len() {
            let s = &mut self.parked[i];
            let resumed = if !s.out.flush() || s.out.tx.is_closed() {
                s.slot.abandon();
                Some(Resumed::Cancelled)
            } else {
                s.park.as_ref().map_or(Some(Resumed::Go), |(p, _)| p.poll())
            };
            match resumed {
                None => i += 1,
                Some(r) => {
                    let mut s = self.parked.swap_remove(i);
                    if let Some((_, since)) = s.park.take() {
                        s.parked += since.elapsed();
                    }
                    match r {
                        Resumed::Go => self.running.push(s),
                        Resumed::Cancelled => self.end_cancelled(s),
                    }
                }
            }
        }
        self.draining
            .retain_mut(|out| out.flush() && !out.events.is_empty());
    }

    /// One forward pass: every decoding sequence's next token and one prompt chunk.
    fn step(&mut self) {
        let plan = self.plan();
        let stats = self.shared.stats.clone();
        stats.steps.fetch_add(1, Ordering::Relaxed);
        let new_tokens: usize = plan.iter().map(|p| p.1.len()).sum();
        stats
            .step_tokens
            .fetch_add(new_tokens as u64, Ordering::Relaxed);
        // A backend with a fixed KV size makes room by dropping cached sequences.
        while !self.runner.fits(new_tokens) && self.drop_lru() {}
        let result = loop {
            match self.forward(&plan) {
                Err(EngineError::KvFull) if self.drop_lru() => {}
                r => break r,
            }
        };
        match result {
            Ok(logits) => {
                let mut logits = logits.into_iter();
                let mut finished = Vec::new();
                for (i, tokens, wants) in plan {
                    self.running[i].fed.extend_from_slice(&tokens);
                    if wants {
                        let Some(l) = logits.next() else { continue };
                        if let Some(end) = self.on_logits(i, &l) {
                            finished.push((i, end));
                        }
                    }
                }
                // Highest index first, so that the others stay where they are.
                finished.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
                for (i, end) in finished {
                    let s = self.running.swap_remove(i);
                    match end {
                        Ok(finish) => self.end_finished(s, finish),
                        Err(e) => self.end_failed(s, e),
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let mut ids: Vec<usize> = plan.iter().map(|f| f.0).collect();
                ids.sort_unstable_by_key(|i| std::cmp::Reverse(*i));
                for i in ids {
                    let s = self.running.swap_remove(i);
                    self.end_failed(s, EngineError::Generate(msg.clone()));
                }
            }
        }
    }

    /// What this step feeds: (running sequence, tokens, whether its logits are wanted). Only
    /// the sequences of the best priority running take part: background work waits, KV and
    /// all, while a chat runs (as it would behind it in the queue), and goes on after.
    fn plan(&self) -> Vec<(usize, Vec<u32>, bool)> {
        let chunk = self.runner.chunk();
        let top = self.running.iter().map(|s| s.slot.key().priority).min();
        let takes_part = |s: &Seq<R::Seq>| Some(s.slot.key().priority) == top;
        let prefill = (0..self.running.len())
            .filter(|&i| self.running[i].prefilling() && takes_part(&self.running[i]))
            .min_by_key(|&i| self.running[i].slot.key());
        let mut plan = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            if !takes_part(s) {
                continue;
            }
            if !s.prefilling() {
                plan.push((i, s.next.to_vec(), true));
            } else if Some(i) == prefill {
                let from = s.fed.len();
                let to = s.prompt.len().min(from + chunk);
                plan.push((i, s.prompt[from..to].to_vec(), to == s.prompt.len()));
            }
        }
        plan
    }

    fn forward(&mut self, plan: &[(usize, Vec<u32>, bool)]) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut seqs: Vec<Option<&mut R::Seq>> =
            self.running.iter_mut().map(|s| Some(&mut s.kv)).collect();
        let mut feeds = Vec::with_capacity(plan.len());
        for (i, tokens, logits) in plan {
            if let Some(seq) = seqs[*i].take() {
                feeds.push(Feed {
                    seq,
                    tokens,
                    logits: *logits,
                });
            }
        }
        self.runner.forward(&mut feeds)
    }

    /// Drops the least recently used cached sequence; false if there is none.
    fn drop_lru(&mut self) -> bool {
        match self.cache.pop_lru() {
            Some(d) => {
                self.runner.evict(d);
                true
            }
            None => false,
        }
    }

    /// A sequence got its logits: sample its next token and pass its text on. `Some` when
    /// it has ended.
    fn on_logits(&mut self, i: usize, logits: &[f32]) -> Option<Result<Finish, EngineError>> {
        let stats = self.shared.stats.clone();
        let s = &mut self.running[i];
        if s.prompt_time.is_none() {
            let t = s.started.elapsed().saturating_sub(s.parked);
            s.prompt_time = Some(t);
            s.decode_started = Some(Instant::now());
            s.parked_at_first_token = s.parked;
            let us = t.as_micros() as u64;
            stats.prefill_us.fetch_add(us, Ordering::Relaxed);
            stats.ttft_us.fetch_add(us, Ordering::Relaxed);
            stats.ttft_count.fetch_add(1, Ordering::Relaxed);
            stats
                .prompt_tokens
                .fetch_add(s.prompt.len() as u64, Ordering::Relaxed);
            if s.max_new == 0 {
                return Some(Ok(Finish::Length));
            }
        }
        let tok = s.sampler.sample(logits, &s.generated);
        if self.shared.tokenizer.stop_ids.contains(&tok) {
            return Some(Ok(Finish::Stop));
        }
        s.generated.push(tok);
        s.slot.set_tokens(s.generated.len() as u64);
        let decoded = match self.shared.tokenizer.decode(&s.generated) {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let (piece, hit_stop) = s.text.push(&decoded);
        if !piece.is_empty() {
            s.out.events.push_back(Event::Text(piece));
            s.out.flush();
        }
        if hit_stop {
            return Some(Ok(Finish::Stop));
        }
        if s.generated.len() >= s.max_new {
            return Some(Ok(Finish::Length));
        }
        s.next = [tok];
        None
    }

    /// A sequence ended: its last text and `Done` go out, its KV into the prefix cache.
    fn end_finished(&mut self, mut s: Seq<R::Seq>, finish: Finish) {
        let stats = &self.shared.stats;
        if finish == Finish::Length || !s.text.stopped {
            let rest = s.text.flush();
            if !rest.is_empty() {
                s.out.events.push_back(Event::Text(rest));
            }
        }
        let decode_time = s
            .decode_started
            .map_or(Duration::ZERO, |t| t.elapsed())
            .saturating_sub(s.parked - s.parked_at_first_token);
        stats
            .decode_us
            .fetch_add(decode_time.as_micros() as u64, Ordering::Relaxed);
        stats
            .completion_tokens
            .fetch_add(s.generated.len() as u64, Ordering::Relaxed);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        s.out.events.push_back(Event::Done {
            finish,
            prompt_tokens: s.prompt.len(),
            completion_tokens: s.generated.len(),
            cached_tokens: s.reused,
            timings: Timings {
                queue_ms: ms(s.queued),
                prompt_ms: ms(s.prompt_time.unwrap_or_default()),
                predicted_ms: ms(decode_time),
                parked_ms: ms(s.parked),
            },
        });
        self.keep(s.kv, s.fed);
        drop(s.slot);
        let _ = s.done.send(Ok(()));
        let mut out = s.out;
        if out.flush() && !out.events.is_empty() {
            self.draining.push(out);
        }
    }

    /// The client left: what was read stays cached for the next request that shares it.
    fn end_cancelled(&mut self, s: Seq<R::Seq>) {
        drop(s.slot);
        self.keep(s.kv, s.fed);
        let _ = s.done.send(Ok(()));
    }

    /// Generation failed: the request gets the error, the KV is dropped.
    fn end_failed(&mut self, s: Seq<R::Seq>, e: EngineError) {
        drop(s.slot);
        self.runner.discard(s.kv);
        let _ = s.done.send(Err(e));
    }

    /// `kv`, holding `tokens`, goes into the prefix cache, which then sheds what is over its
    /// budget, least recently used first.
    fn keep(&mut self, mut kv: R::Seq, tokens: Vec<u32>) {
        if tokens.is_empty() || self.shared.cache_budget == 0 {
            self.runner.discard(kv);
            return;
        }
        self.runner.to_cache(&mut kv);
        for d in self.cache.insert(tokens, kv) {
            self.runner.evict(d);
        }
        while (self.runner.cached_bytes() > self.shared.cache_budget
            || self.cache.len() > self.runner.max_entries())
            && self.drop_lru()
        {}
        let stats = &self.shared.stats;
        stats
            .prefix_bytes
            .store(self.runner.cached_bytes() as u64, Ordering::Relaxed);
        stats
            .prefix_entries
            .store(self.cache.len() as u64, Ordering::Relaxed);
    }
}
