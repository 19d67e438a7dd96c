//! Artifact transfers in flight — uploads being written, downloads being sent — counted,
//! so background work on blobs (the digester's MD5 and SHA-512) waits for them instead of
//! taking CPU and disk from them: on a small machine a download that starts right after an
//! upload otherwise shares both with the upload's digests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::BlobStream;

/// The transfers in flight in this process.
#[derive(Debug, Default)]
pub struct Transfers {
    active: AtomicUsize,
    quiet: Notify,
}

/// One transfer, counted until dropped.
#[derive(Debug)]
pub struct TransferGuard(Arc<Transfers>);

impl Drop for TransferGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_waiters();
        }
    }
}

impl Transfers {
    /// Counts a transfer until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> TransferGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        TransferGuard(self.clone())
    }

    /// How many transfers are in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no transfer is in flight, but at most `limit`; answers how long it
    /// waited.
    pub async fn quiet(&self, limit: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        loop {
            let notified = self.quiet.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return started.elapsed();
            }
            let Some(left) = limit.checked_sub(started.elapsed()) else {
                return started.elapsed();
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(left) => return started.elapsed(),
            }
        }
    }

    /// `stream`, counted as a transfer until it is dropped (sent whole or abandoned).
    pub fn counted(self: &Arc<Self>, stream: BlobStream) -> BlobStream {
        let guard = self.begin();
        Box::pin(stream.map(move |chunk| {
            let _counted = &guard;
            chunk
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quiet_waits_for_the_last_transfer_and_no_longer_than_its_limit() {
        let transfers = Arc::new(Transfers::default());
        assert!(transfers.quiet(Duration::from_secs(5)).await < Duration::from_secs(1));
        let first = transfers.begin();
        let second = transfers.begin();
        assert_eq!(transfers.active(), 2);
        let waited = transfers.quiet(Duration::from_millis(50)).await;
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        let waiter = {
            let transfers = transfers.clone();
            tokio::spawn(async move { transfers.quiet(Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one transfer is still in flight");
        drop(second);
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the last transfer's end")
            .unwrap();
        assert!(waited < Duration::from_secs(30));
        assert_eq!(transfers.active(), 0);

        // A counted stream is a transfer until dropped, read whole or not.
        let stream: BlobStream = Box::pin(futures_util::stream::iter(vec![Ok(
            bytes::Bytes::from_static(b"abc"),
        )]));
        let mut counted = transfers.counted(stream);
        assert_eq!(transfers.active(), 1);
        assert!(counted.next().await.is_some());
        assert_eq!(transfers.active(), 1);
        drop(counted);
        assert_eq!(transfers.active(), 0);
    }
}
