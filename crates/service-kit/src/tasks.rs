//! One owner for a service's background tasks: every task is spawned through [`Tasks`], the
//! loops end when it is cancelled, and [`Tasks::shutdown`] waits (bounded) for every one —
//! work in progress, such as an alert being delivered with retries, is finished rather than
//! cut off, and a task that outlives the wait is reported.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The background tasks of one service.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when the service shuts down: loops select on it.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    /// Spawns work that runs to its end (shutdown waits for it).
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(fut);
    }

    /// Spawns a loop that stops when shutdown begins.
    pub fn spawn_loop(&self, name: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = fut => tracing::debug!(task = name, "ended"),
                () = cancel.cancelled() => tracing::debug!(task = name, "stopped"),
            }
        });
    }

    /// Cancels the loops and waits up to `grace` for every task; true if all ended.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        tracing::warn!(
            still_running = self.tracker.len(),
            ?grace,
            "background tasks did not end in time; they are cut off"
        );
        false
    }
}
