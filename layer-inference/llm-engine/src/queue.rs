//! Who generates next: a fixed number of sequences, a bounded wait queue ordered by priority,
//! and yielding, so that a chat never waits behind background work.
//!
//! Each request has a [`Priority`] (lower runs first, as in vLLM; interactive 0, background
//! 10). A free sequence goes to the best waiting request (priority, then arrival). When a
//! request waits and a running sequence has a worse priority, that sequence is asked to
//! yield: between two tokens (or prefill chunks) it parks, keeping its KV cache, and goes
//! back into the queue at its original place; the better request takes the sequence. Parked
//! sequences do not count against the queue limit. When the queue is full, a newcomer that
//! is better than the worst waiting request takes its place (that one is refused); else the
//! newcomer is refused.
//!
//! The decisions ([`next`], [`victims`], [`shed`]) are pure functions of the keys; [`Queue`]
//! holds the state behind one mutex and does the waking.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::EngineError;

/// A request's priority: lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Priority(pub i32);

impl Priority {
    /// A person is waiting (the default).
    pub const INTERACTIVE: Priority = Priority(0);
    /// Nobody is waiting for it right now (titles, tags, follow-up suggestions).
    pub const BACKGROUND: Priority = Priority(10);
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "interactive" => Ok(Priority::INTERACTIVE),
            "background" => Ok(Priority::BACKGROUND),
            n => n.parse().map(Priority).map_err(|_| {
                format!("priority `{s}` is not `interactive`, `background` or an integer")
            }),
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Priority::INTERACTIVE => f.write_str("interactive"),
            Priority::BACKGROUND => f.write_str("background"),
            Priority(n) => write!(f, "{n}"),
        }
    }
}

/// The order of requests: priority, then arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub priority: Priority,
    pub seq: u64,
}

/// Which waiting request gets the next free sequence: the best key.
pub fn next(waiting: &[Key]) -> Option<usize> {
    (0..waiting.len()).min_by_key(|i| waiting[*i])
}

/// Which running sequences should yield: each waiting request, best first, is paired with
/// the worst running sequence of a strictly worse priority not already yielding.
/// `running` is each sequence's key and whether it was already asked to yield.
pub fn victims(running: &[(Key, bool)], waiting: &[Key]) -> Vec<usize> {
    let mut waiting: Vec<Key> = waiting.to_vec();
    waiting.sort_unstable();
    let mut taken: Vec<bool> = running.iter().map(|r| r.1).collect();
    let mut out = Vec::new();
    for w in waiting {
        let worst = (0..running.len())
            .filter(|i| !taken[*i] && running[*i].0.priority > w.priority)
            .max_by_key(|i| running[*i].0);
        match worst {
            Some(i) => {
                taken[i] = true;
                out.push(i);
            }
            None => break,
        }
    }
    out
}

/// The queue is full and `newcomer` arrives: the waiting request to refuse in its place (the
/// worst, if the newcomer's priority is better), or `None` to refuse the newcomer.
pub fn shed(waiting: &[Key], newcomer: Key) -> Option<usize> {
    let worst = (0..waiting.len()).max_by_key(|i| waiting[*i])?;
    (waiting[worst].priority > newcomer.priority).then_some(worst)
}

/// One request's place in the engine.
#[derive(Debug)]
pub struct Ticket {
    pub key: Key,
    pub request_id: Option<String>,
    yield_now: AtomicBool,
    tokens: AtomicU64,
}

impl Ticket {
    fn new(key: Key, request_id: Option<String>) -> Arc<Self> {
        Arc::new(Ticket {
            key,
            request_id,
            yield_now: AtomicBool::new(false),
            tokens: AtomicU64::new(0),
        })
    }
}

enum Wake {
    /// A new request waiting in `enter`.
    New(oneshot::Sender<Result<(), EngineError>>),
    /// A parked sequence waiting on its blocking thread.
    Parked(std::sync::mpsc::SyncSender<()>),
}

struct Waiting {
    ticket: Arc<Ticket>,
    since: Instant,
    wake: Wake,
}

struct Running {
    ticket: Arc<Ticket>,
    since: Instant,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    running: Vec<Running>,
    waiting: Vec<Waiting>,
}

impl State {
    fn new_waiting(&self) -> usize {
        self.waiting
            .iter()
            .filter(|w| matches!(w.wake, Wake::New(_)))
            .count()
    }
}

/// Where a request is, for `GET /queue/{request_id}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for a sequence (`parked`: it had started and yielded to a better request).
    Waiting {
        priority: Priority,
        /// Requests that will get a sequence before it.
        ahead: usize,
        parked: bool,
        waited_ms: u64,
    },
    /// Generating now.
    Generating {
        priority: Priority,
        tokens: u64,
        since_ms: u64,
    },
}

/// The queue at a glance.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct QueueSnapshot {
    pub parallel: usize,
    pub running: usize,
    /// New requests waiting.
    pub waiting: usize,
    /// Sequences that yielded and wait to resume.
    pub parked: usize,
    pub limit: usize,
}

/// The engine's sequences and queue.
pub struct Queue {
    parallel: usize,
    limit: usize,
    max_wait: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("parallel", &self.parallel)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// `parallel` sequences, at most `limit` new requests waiting, each at most `max_wait`.
    pub fn new(parallel: usize, limit: usize, max_wait: Duration) -> Arc<Self> {
        Arc::new(Queue {
            parallel: parallel.max(1),
            limit,
            max_wait,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the lists half-changed (each change is
        // one push or remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives free sequences to the best waiting requests, then asks running sequences to
    /// yield where a better request still waits.
    fn rebalance(&self, st: &mut State) {
        while st.running.len() < self.parallel {
            let keys: Vec<Key> = st.waiting.iter().map(|w| w.ticket.key).collect();
            let Some(i) = next(&keys) else { break };
            let w = st.waiting.remove(i);
            let woke = match w.wake {
                Wake::New(tx) => tx.send(Ok(())).is_ok(),
                Wake::Parked(tx) => tx.try_send(()).is_ok(),
            };
            if woke {
                st.running.push(Running {
                    ticket: w.ticket,
                    since: Instant::now(),
                });
            }
        }
        let running: Vec<(Key, bool)> = st
            .running
            .iter()
            .map(|r| (r.ticket.key, r.ticket.yield_now.load(Ordering::Acquire)))
            .collect();
        let waiting: Vec<Key> = st.waiting.iter().map(|w| w.ticket.key).collect();
        for i in victims(&running, &waiting) {
            st.running[i]
                .ticket
                .yield_now
                .store(true, Ordering::Release);
        }
    }

    /// Removes a request wherever it is (done, cancelled or timed out) and passes its
    /// sequence on. Safe to call twice.
    fn leave(&self, seq: u64) {
        let mut st = self.lock();
        st.running.retain(|r| r.ticket.key.seq != seq);
        st.waiting.retain(|w| w.ticket.key.seq != seq);
        self.rebalance(&mut st);
    }

    /// Waits for a sequence. `on_wait` is called (with the number of requests ahead) if the
    /// request has to wait; waiting ends early when `cancelled` completes (the client left:
    /// `Ok(None)`), after `max_wait`, or when a better request takes the place in a full
    /// queue.
    pub async fn enter(
        self: &Arc<Self>,
        priority: Priority,
        request_id: Option<String>,
        on_wait: impl FnOnce(usize),
        cancelled: impl Future<Output = ()>,
    ) -> Result<Option<Slot>, EngineError> {
        let (ticket, rx, ahead) = {
            let mut st = self.lock();
            let key = Key {
                priority,
                seq: st.next_seq,
            };
            st.next_seq += 1;
            let ticket = Ticket::new(key, request_id);
            if st.running.len() < self.parallel && st.waiting.is_empty() {
                st.running.push(Running {
                    ticket: ticket.clone(),
                    since: Instant::now(),
                });
                return Ok(Some(self.slot(ticket)));
            }
            let waiting_new = st.new_waiting();
            if waiting_new >= self.limit {
                let new: Vec<(usize, Key)> = st
                    .waiting
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| matches!(w.wake, Wake::New(_)))
                    .map(|(i, w)| (i, w.ticket.key))
                    .collect();
                let keys: Vec<Key> = new.iter().map(|x| x.1).collect();
                match shed(&keys, key) {
                    Some(j) => {
                        let w = st.waiting.remove(new[j].0);
                        if let Wake::New(tx) = w.wake {
                            let _ = tx.send(Err(EngineError::Shed(priority.to_string())));
                        }
                    }
                    None => return Err(EngineError::QueueFull(waiting_new)),
                }
            }
            let (tx, rx) = oneshot::channel();
            let ahead = st.waiting.iter().filter(|w| w.ticket.key < key).count();
            st.waiting.push(Waiting {
                ticket: ticket.clone(),
                since: Instant::now(),
                wake: Wake::New(tx),
            });
            self.rebalance(&mut st);
            (ticket, rx, ahead)
        };
        // From here, leaving early must take the request out of the queue.
        let guard = LeaveOnDrop {
            queue: self.clone(),
            seq: ticket.key.seq,
        };
        on_wait(ahead);
        tokio::select! {
            granted = rx => match granted {
                Ok(Ok(())) => {
                    std::mem::forget(guard);
                    Ok(Some(self.slot(ticket)))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(EngineError::Generate("the queue dropped a request".into())),
            },
            () = cancelled => Ok(None),
            () = tokio::time::sleep(self.max_wait) => Err(EngineError::QueueTimeout(self.max_wait)),
        }
    }

    fn slot(self: &Arc<Self>, ticket: Arc<Ticket>) -> Slot {
        Slot {
            queue: self.clone(),
            ticket,
        }
    }

    /// The queue now.
    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.lock();
        let waiting = st.new_waiting();
        QueueSnapshot {
            parallel: self.parallel,
            running: st.running.len(),
            waiting,
            parked: st.waiting.len() - waiting,
            limit: self.limit,
        }
    }

    /// Where the request with this id is, if it is here.
    pub fn status(&self, request_id: &str) -> Option<RequestState> {
        let st = self.lock();
        let now = Instant::now();
        let ms = |t: Instant| now.duration_since(t).as_millis() as u64;
        if let Some(r) = st
            .running
            .iter()
            .find(|r| r.ticket.request_id.as_deref() == Some(request_id))
        {
            return Some(RequestState::Generating {
                priority: r.ticket.key.priority,
                tokens: r.ticket.tokens.load(Ordering::Relaxed),
                since_ms: ms(r.since),
            });
        }
        let w = st
            .waiting
            .iter()
            .find(|w| w.ticket.request_id.as_deref() == Some(request_id))?;
        Some(RequestState::Waiting {
            priority: w.ticket.key.priority,
            ahead: st
                .waiting
                .iter()
                .filter(|o| o.ticket.key < w.ticket.key)
                .count(),
            parked: matches!(w.wake, Wake::Parked(_)),
            waited_ms: ms(w.since),
        })
    }
}

/// Takes a request out of the queue when its wait ends without a sequence.
struct LeaveOnDrop {
    queue: Arc<Queue>,
    seq: u64,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        self.queue.leave(self.seq);
    }
}

/// A sequence, held by one request until dropped.
pub struct Slot {
    queue: Arc<Queue>,
    ticket: Arc<Ticket>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("key", &self.ticket.key)
            .finish()
    }
}

/// How a yield ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Not asked to yield, or asked and resumed.
    Go,
    /// The client left while the sequence was parked; the sequence is given up.
    Cancelled,
}

impl Slot {
    /// Whether a better request waits for this sequence (cheap: one atomic load).
    pub fn should_yield(&self) -> bool {
        self.ticket.yield_now.load(Ordering::Acquire)
    }

    /// Tokens generated so far, for [`Queue::status`].
    pub fn set_tokens(&self, n: u64) {
        self.ticket.tokens.store(n, Ordering::Relaxed);
    }

    /// The request's place in the order (priority, then arrival).
    pub fn key(&self) -> Key {
        self.ticket.key
    }

    /// Parks this sequence if a better request waits for it (without blocking): it goes
    /// back into the queue at its place, keeping its KV, and the returned [`Parked`] says
    /// when it may resume. `None`: not asked to yield, or the better request left meanwhile.
    pub fn park(&self) -> Option<Parked> {
        if !self.should_yield() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut st = self.queue.lock();
        self.ticket.yield_now.store(false, Ordering::Release);
        let seq = self.ticket.key.seq;
        let me = self.ticket.key;
        // Still worth it? (The better request may have left meanwhile.)
        if !st
            .waiting
            .iter()
            .any(|w| w.ticket.key.priority < me.priority)
        {
            return None;
        }
        st.running.retain(|r| r.ticket.key.seq != seq);
        st.waiting.push(Waiting {
            ticket: self.ticket.clone(),
            since: Instant::now(),
            wake: Wake::Parked(tx),
        });
        self.queue.rebalance(&mut st);
        Some(Parked { rx })
    }

    /// Gives the sequence up while it is parked (its client left).
    pub fn abandon(&self) {
        self.queue.leave(self.ticket.key.seq);
    }

    /// Parks this sequence until it may resume, if a better request waits (blocking: call
    /// it from the generation thread). `cancelled` is checked while parked.
    pub fn yield_if_asked(&self, cancelled: impl Fn() -> bool) -> Resumed {
        let Some(parked) = self.park() else {
            return Resumed::Go;
        };
        loop {
            match parked.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Resumed::Go,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if cancelled() => {
                    self.abandon();
                    return Resumed::Cancelled;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Resumed::Cancelled,
            }
        }
    }
}

/// A parked sequence's wait for its turn.
#[derive(Debug)]
pub struct Parked {
    rx: std::sync::mpsc::Receiver<()>,
}

impl Parked {
    /// Whether it may resume now (`None`: not yet).
    pub fn poll(&self) -> Option<Resumed> {
        match self.rx.try_recv() {
            Ok(()) => Some(Resumed::Go),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Resumed::Cancelled),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.queue.leave(self.ticket.key.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(priority: i32, seq: u64) -> Key {
        Key {
            priority: Priority(priority),
            seq,
        }
    }

    #[test]
    fn the_best_priority_goes_first_then_arrival() {
        assert_eq!(next(&[]), None);
        assert_eq!(next(&[k(10, 0), k(0, 3), k(0, 2)]), Some(2));
        assert_eq!(next(&[k(10, 0), k(10, 1)]), Some(0));
    }

    #[test]
    fn only_a_worse_priority_yields_and_the_worst_first() {
        // A chat waits; two background sequences run: the newer one yields.
        assert_eq!(
            victims(&[(k(10, 1), false), (k(10, 2), false)], &[k(0, 5)]),
            [1]
        );
        // Equal priority never yields: a chat does not preempt a chat.
        assert!(victims(&[(k(0, 1), false)], &[k(0, 5)]).is_empty());
        // A background request waiting does not preempt anything.
        assert!(victims(&[(k(0, 1), false)], &[k(10, 0)]).is_empty());
        // One asked already is not asked twice; the next waiting one takes the other.
        assert_eq!(
            victims(&[(k(10, 1), true), (k(10, 2), false)], &[k(0, 5), k(0, 6)]),
            [1]
        );
        // Two chats, two background sequences: both yield.
        let mut v = victims(&[(k(10, 1), false), (k(5, 2), false)], &[k(0, 5), k(0, 6)]);
        v.sort_unstable();
        assert_eq!(v, [0, 1]);
    }

    #[test]
    fn a_full_queue_sheds_the_worst_for_a_better_newcomer() {
        assert_eq!(shed(&[k(10, 1), k(0, 2), k(10, 3)], k(0, 9)), Some(2));
        assert_eq!(shed(&[k(0, 1), k(0, 2)], k(0, 9)), None, "equals queue");
        assert_eq!(shed(&[k(0, 1)], k(10, 9)), None);
        assert_eq!(shed(&[], k(0, 9)), None);
    }

    fn never() -> impl Future<Output = ()> {
        std::future::pending()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_chat_takes_the_sequence_from_background_work_and_gives_it_back() {
        let q = Queue::new(1, 4, Duration::from_secs(60));
        let bg = q
            .enter(Priority::BACKGROUND, Some("bg".into()), |_| {}, never())
            .await
            .unwrap()
            .unwrap();
        assert!(!bg.should_yield());
        // A chat arrives: it waits, and the background sequence is asked to yield.
        let q2 = q.clone();
        let (ahead_tx, ahead_rx) = std::sync::mpsc::channel();
        let chat = tokio::spawn(async move {
            q2.enter(
                Priority::INTERACTIVE,
                Some("chat".into()),
                move |a| ahead_tx.send(a).unwrap(),
                never(),
            )
            .await
            .unwrap()
            .unwrap()
        });
        assert_eq!(ahead_rx.recv().unwrap(), 0);
        while !bg.should_yield() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            q.status("chat"),
            Some(RequestState::Waiting { ahead: 0, .. })
        ));
        // The background sequence parks on its thread; the chat gets the sequence.
        let parked = tokio::task::spawn_blocking(move || {
            let r = bg.yield_if_asked(|| false);
            (r, bg)
        });
        let chat_slot = chat.await.unwrap();
        assert!(matches!(
            q.status("bg"),
            Some(RequestState::Waiting { parked: true, .. })
        ));
        assert_eq!(q.snapshot().parked, 1);
        assert!(!parked.is_finished());
        // The chat ends: the background sequence resumes where it was.
        drop(chat_slot);
        let (r, bg) = parked.await.unwrap();
        assert_eq!(r, Resumed::Go);
        assert!(matches!(
            q.status("bg"),
            Some(RequestState::Generating { .. })
        ));
        drop(bg);
        assert_eq!(
            q.snapshot(),
            QueueSnapshot {
                parallel: 1,
                running: 0,
                waiting: 0,
                parked: 0,
                limit: 4
            }
        );
    }

    #[tokio::test]
    async fn waiting_ends_on_cancel_timeout_and_a_full_queue() {
        let q = Queue::new(1, 1, Duration::from_millis(50));
        let held = q
            .enter(Priority::INTERACTIVE, None, |_| {}, never())
            .await
            .unwrap()
            .unwrap();
        // The client leaves while waiting: out of the queue, no slot.
        let left = q
            .enter(Priority::INTERACTIVE, None, |_| {}, async {})
            .await
            .unwrap();
        assert!(left.is_none());
        assert_eq!(q.snapshot().waiting, 0);
        // Nobody frees the sequence: the wait times out.
        let err = q
            .enter(Priority::INTERACTIVE, None, |_| {}, never())
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::QueueTimeout(_)), "{err}");
        drop(held);

        // A background request fills the queue (limit 1); a chat takes its place; another
        // background request is refused.
        let q = Queue::new(1, 1, Duration::from_secs(60));
        let held = q
            .enter(Priority::INTERACTIVE, None, |_| {}, never())
            .await
            .unwrap()
            .unwrap();
        let q2 = q.clone();
        let bg =
            tokio::spawn(
                async move { q2.enter(Priority::BACKGROUND, None, |_| {}, never()).await },
            );
        while q.snapshot().waiting == 0 {
            tokio::task::yield_now().await;
        }
        let q3 = q.clone();
        let chat =
            tokio::spawn(
                async move { q3.enter(Priority::INTERACTIVE, None, |_| {}, never()).await },
            );
        let shed = bg.await.unwrap().unwrap_err();
        assert!(matches!(shed, EngineError::Shed(_)), "{shed}");
        let full = q
            .enter(Priority::BACKGROUND, None, |_| {}, never())
            .await
            .unwrap_err();
        assert!(matches!(full, EngineError::QueueFull(1)), "{full}");
        drop(held);
        assert!(chat.await.unwrap().unwrap().is_some());
    }
}
