//! The server's background tasks: spawned by name into one `JoinSet`, stopped together
//! through one stop signal, awaited together, and a task that panicked or ended early is
//! logged by its name. The periodic ones count their passes (`Passes`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// A periodic background task whose passes are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Periodic {
    /// A stale-build scan.
    Reaper,
    /// A round of the notifier over the committed events.
    Notifier,
    /// A round of the mail task over the due emails.
    Mail,
    /// An artifact retention pass over every project with a rule, then the unused blobs.
    Retention,
    /// A pass of the analytics keeper over every project's recent closed days.
    AnalyticsKeeper,
}

/// How many passes each periodic task has completed, so a caller (a test) can wait for
/// the pass that would have acted instead of sleeping and hoping it came.
#[derive(Debug, Default)]
pub struct Passes {
    reaper: AtomicU64,
    notifier: AtomicU64,
    mail: AtomicU64,
    retention: AtomicU64,
    analytics_keeper: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Passes {
    fn counter(&self, task: Periodic) -> &AtomicU64 {
        match task {
            Periodic::Reaper => &self.reaper,
            Periodic::Notifier => &self.notifier,
            Periodic::Mail => &self.mail,
            Periodic::Retention => &self.retention,
            Periodic::AnalyticsKeeper => &self.analytics_keeper,
        }
    }

    /// Passes `task` has completed so far.
    pub fn count(&self, task: Periodic) -> u64 {
        self.counter(task).load(Ordering::SeqCst)
    }

    /// Counts a completed pass.
    pub(crate) fn done(&self, task: Periodic) {
        self.counter(task).fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until `task` has completed `more` passes after this call began (a pass
    /// already under way may be the first), at most `within`; whether it did.
    pub async fn wait_for(&self, task: Periodic, more: u64, within: Duration) -> bool {
        let target = self.count(task) + more;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if self.count(task) >= target {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.count(task) >= target;
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

    #[tokio::test]
    async fn a_wait_for_passes_ends_with_the_pass_or_the_deadline() {
        let passes = Passes::default();
        assert!(
            !passes
                .wait_for(Periodic::Mail, 1, Duration::from_millis(30))
                .await,
            "no pass came"
        );
        // `join!` polls the wait first, so it counts from before these passes.
        let (waited, ()) = tokio::join!(
            passes.wait_for(Periodic::Reaper, 2, Duration::from_secs(10)),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                passes.done(Periodic::Reaper);
                passes.done(Periodic::Notifier);
                passes.done(Periodic::Reaper);
            }
        );
        assert!(waited);
        assert_eq!(passes.count(Periodic::Reaper), 2);
        assert_eq!(passes.count(Periodic::Notifier), 1);
    }
}
