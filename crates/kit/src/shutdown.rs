//! Shutdown is a contract: a signal (SIGTERM or SIGINT) cancels one [`Shutdown`] token shared by
//! every server and background task of the process; servers then turn health NOT_SERVING, drain
//! within their grace period and return, and tracked background tasks get to flush before the
//! process exits 0.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cancellation token plus the set of background tasks that must finish before exit.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down everything that watches this token.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a background task that shutdown waits for (a flusher, a spool writer). The task
    /// should watch [`Shutdown::triggered`] and finish its work when it fires.
    pub fn spawn_tracked<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits up to `timeout` for every tracked task; false when some were still running.
    pub async fn wait_for_tasks(&self, timeout: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok()
    }

    /// Triggers shutdown on the first SIGTERM or SIGINT (Ctrl-C).
    pub fn trigger_on_signals(&self) -> std::io::Result<()> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let shutdown = self.clone();
        tokio::spawn(async move {
            let signal = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
                () = shutdown.triggered() => return,
            };
            tracing::info!(signal, "shutting down");
            shutdown.trigger();
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracked_tasks_finish_their_work_after_the_trigger() {
        let shutdown = Shutdown::new();
        let (flushed_tx, flushed_rx) = tokio::sync::oneshot::channel();
        let watcher = shutdown.clone();
        shutdown.spawn_tracked(async move {
            watcher.triggered().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = flushed_tx.send(());
        });
        shutdown.trigger();
        assert!(shutdown.wait_for_tasks(Duration::from_secs(5)).await);
        assert!(flushed_rx.await.is_ok(), "the task ran to completion");
    }

    #[tokio::test]
    async fn waiting_gives_up_after_the_timeout() {
        let shutdown = Shutdown::new();
        shutdown.spawn_tracked(tokio::time::sleep(Duration::from_secs(60)));
        shutdown.trigger();
        assert!(!shutdown.wait_for_tasks(Duration::from_millis(50)).await);
    }
}
