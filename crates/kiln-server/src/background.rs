//! The server's background tasks: spawned by name into one `JoinSet`, stopped together
//! through one stop signal, awaited together, and a task that panicked or ended early is
//! logged by its name.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// What every background task watches: it ends when the value becomes `true`.
pub(crate) type StopSignal = watch::Receiver<bool>;

pub(crate) struct Background {
    tasks: JoinSet<&'static str>,
    stop: watch::Sender<bool>,
}

impl Background {
    pub(crate) fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: watch::channel(false).0,
        }
    }

    /// The signal to hand to a task started with `spawn`.
    pub(crate) fn stop_signal(&self) -> StopSignal {
        self.stop.subscribe()
    }

    /// Starts `task` under `name`.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.tasks.spawn(async move {
            task.await;
            name
        });
    }

    /// Signals every task to stop and waits for all of them.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        while let Some(ended) = self.tasks.join_next().await {
            match ended {
                Ok(name) => tracing::debug!(task = name, "background task stopped"),
                Err(error) => tracing::error!(%error, "a background task panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task sees the stop signal and `stop` returns only after all have ended.
    #[tokio::test]
    async fn stop_ends_every_task_and_waits_for_it() {
        let mut background = Background::new();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for name in ["one", "two", "three"] {
            let mut stop = background.stop_signal();
            let ended = ended.clone();
            background.spawn(name, async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
                // A task that takes a moment to wind down is still waited for.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        background.stop().await;
        assert_eq!(ended.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
