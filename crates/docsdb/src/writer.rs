//! A bounded queue in front of a batched insert, drained by a background task: the request
//! log's and the tool calls' rows are written this way, so that no request waits on the DB.
//!
//! [`BatchWriter::log`] either queues the row at once or drops it and counts the drop; the
//! task writes what is queued in batches (one transaction each, one retry), and
//! [`BatchWriter::close`] writes everything still queued before it returns.
//!
//! Once a batch has begun, the task sleeps until the flush interval ends or the senders
//! tell it a whole batch waits (counting the rows it already holds; a batch is never more
//! than the queue holds), then takes the rows at once: queuing a row wakes nothing (no task
//! scheduled, no timer set per row), it costs the queue's own operation and one counter.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::db::Db;
use crate::error::Result;

/// Rows a [`BatchWriter`] can write: many in one transaction, all or none.
pub trait Rows: Sized + Send + Sync + 'static {
    /// What the rows are, for log lines ("request log").
    const WHAT: &'static str;

    /// Writes `rows` in one transaction; how many were written.
    fn insert(db: &Db, rows: &[Self]) -> impl Future<Output = Result<u64>> + Send;
}

/// Limits of a [`BatchWriter`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Rows that may wait in the channel; beyond this, rows are dropped and counted.
    pub capacity: usize,
    /// Rows per transaction at most.
    pub batch_size: usize,
    /// How long the first row of a batch may wait for others before the batch is written.
    pub flush_interval: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            capacity: 10_000,
            batch_size: 512,
            flush_interval: Duration::from_millis(200),
        }
    }
}

/// Counters of a writer, for `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    /// Rows refused because the channel was full or the writer closed.
    pub dropped: AtomicU64,
    /// Rows lost because their batch could not be written.
    pub failed: AtomicU64,
}

// A row travels unboxed: the channel's slots are allocated in blocks and reused, so a
// large slot costs no allocation per row where a box would.
#[allow(clippy::large_enum_variant)]
enum Msg<R> {
    Row(R),
    Close(oneshot::Sender<()>),
}

/// A bounded queue in front of [`Rows::insert`], drained by a background task.
#[derive(Debug)]
pub struct BatchWriter<R: Rows> {
    tx: mpsc::Sender<Msg<R>>,
    signal: Arc<Signal>,
    /// Rows waiting that make the senders wake the task: a batch, or the whole queue if
    /// that is smaller.
    wake_at: usize,
    closed: AtomicBool,
    stats: Arc<WriterStats>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The writer's death has been reported.
    reported: AtomicBool,
}

/// What the senders and the task share besides the channel.
#[derive(Debug, Default)]
struct Signal {
    /// Told when a whole batch waits, or a close: the task's wait ends early.
    ready: Notify,
    /// Rows accepted and not yet taken into a write (queued, or held by the task for the
    /// batch it is gathering).
    pending: AtomicUsize,
}

impl<R> std::fmt::Debug for Msg<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl<R: Rows> BatchWriter<R> {
    /// Starts the background task on the current Tokio runtime.
    pub fn spawn(db: Db, config: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let signal = Arc::new(Signal::default());
        let wake_at = config.batch_size.min(config.capacity).max(1);
        let task = tokio::spawn(run(db, config, rx, signal.clone(), stats.clone()));
        BatchWriter {
            tx,
            signal,
            wake_at,
            closed: AtomicBool::new(false),
            stats,
            task: std::sync::Mutex::new(Some(task)),
            reported: AtomicBool::new(false),
        }
    }

    /// Whether the background task has ended before [`close`](Self::close) asked it to.
    pub fn died(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.tx.is_closed()
    }

    fn report_death(&self, why: &str) {
        if !self.reported.swap(true, Ordering::AcqRel) {
            tracing::error!(
                why,
                dropped = self.stats.dropped.load(Ordering::Relaxed),
                what = R::WHAT,
                "a DB writer died: its rows are no longer written"
            );
        }
    }

    /// Queues a row without waiting. Returns false (and counts a drop) if the queue is full
    /// or the writer is closed.
    pub fn log(&self, row: R) -> bool {
        if self.closed.load(Ordering::Acquire) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Counted before it is sent, so the task never takes a row it has not been told of.
        let pending = self.signal.pending.fetch_add(1, Ordering::AcqRel) + 1;
        match self.tx.try_send(Msg::Row(row)) {
            Ok(()) => {
                if pending >= self.wake_at {
                    self.signal.ready.notify_one();
                }
                true
            }
            Err(e) => {
                self.signal.pending.fetch_sub(1, Ordering::AcqRel);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                    self.report_death("its queue is closed");
                }
                false
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Refuses new rows, writes every queued row, then returns; false (and an error logged)
    /// if the writer had died and rows were lost. Safe to call twice.
    pub async fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return true;
        }
        let (done_tx, done_rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Close(done_tx)).await.is_ok();
        self.signal.ready.notify_one();
        let flushed = sent && done_rx.await.is_ok();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let ended = match task {
            Some(t) => t.await.map_err(|e| e.to_string()),
            None => Ok(()),
        };
        match (flushed, ended) {
            (true, Ok(())) => true,
            (_, Err(e)) => {
                self.report_death(&e);
                false
            }
            (false, Ok(())) => {
                self.report_death("it ended before the close");
                false
            }
        }
    }
}

async fn run<R: Rows>(
    db: Db,
    cfg: WriterConfig,
    mut rx: mpsc::Receiver<Msg<R>>,
    signal: Arc<Signal>,
    stats: Arc<WriterStats>,
) {
    let size = cfg.batch_size.max(1);
    let mut batch: Vec<R> = Vec::with_capacity(size);
    loop {
        let mut close = match rx.recv().await {
            None => break,
            Some(Msg::Close(done)) => Some(done),
            Some(Msg::Row(r)) => {
                batch.push(r);
                None
            }
        };
        if close.is_none() {
            // Take what is queued already; if that is not a batch, wait once for the
            // interval's end or the senders' word, then take what came meanwhile.
            close = take_queued(&mut rx, &mut batch, size);
            if close.is_none() && batch.len() < size {
                let deadline = tokio::time::Instant::now() + cfg.flush_interval;
                let _ = tokio::time::timeout_at(deadline, signal.ready.notified()).await;
                close = take_queued(&mut rx, &mut batch, size);
            }
        }
        if close.is_some() {
            // Rows queued before the close message are all in the channel ahead of it, so
            // nothing is left behind; drain anything that raced in as well.
            while let Ok(Msg::Row(r)) = rx.try_recv() {
                batch.push(r);
            }
        }
        signal.pending.fetch_sub(batch.len(), Ordering::AcqRel);
        for chunk in batch.chunks(size) {
            write(&db, chunk, &stats).await;
        }
        batch.clear();
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

/// Moves queued rows into `batch` until it holds `size` or the queue is empty, without
/// waiting; the close request if one came.
fn take_queued<R>(
    rx: &mut mpsc::Receiver<Msg<R>>,
    batch: &mut Vec<R>,
    size: usize,
) -> Option<oneshot::Sender<()>> {
    while batch.len() < size {
        match rx.try_recv() {
            Ok(Msg::Row(r)) => batch.push(r),
            Ok(Msg::Close(done)) => return Some(done),
            Err(_) => break,
        }
    }
    None
}

async fn write<R: Rows>(db: &Db, rows: &[R], stats: &WriterStats) {
    // One retry: SQLite may report "database is locked" past its busy timeout under a burst.
    for attempt in 0..2 {
        match R::insert(db, rows).await {
            Ok(n) => {
                stats.written.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(e) if attempt == 0 => {
                tracing::warn!(error = %e, rows = rows.len(), what = R::WHAT, "a batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = rows.len(), what = R::WHAT, "a batch was lost");
                stats.failed.fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
        }
    }
}
