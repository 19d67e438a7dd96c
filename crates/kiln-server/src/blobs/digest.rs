//! A blob's three digests read back from the store, hashed on two blocking threads in
//! parallel (MD5 with SHA-256, and SHA-512), and the digester: the background task that
//! fills in the MD5 and SHA-512 of blobs stored without them — uploads compute only the
//! SHA-256 they are checked by, so the slower digests never hold an upload up; its
//! threads run at the lowest priority, and it pauses while uploads or downloads are in
//! flight (up to `MAX_DEFER` per blob), so it does not slow the transfers beside it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use kiln_core::artifacts::{Digests, Md5Sha256Hasher, Sha512Hasher};
use kiln_store::Store;
use tokio::sync::{Notify, mpsc};

use super::transfers::Transfers;
use super::{BlobStore, BlobStream};
use crate::background::StopSignal;

/// Chunks queued to each hashing thread.
const QUEUE: usize = 16;
/// Blobs the digester takes per pass.
const BATCH: i64 = 16;
/// How long the digester rests when there is nothing to do (or it made no progress).
const IDLE: Duration = Duration::from_secs(30);
/// How long the digester waits, per blob, for transfers in flight to end before it
/// digests beside them (so constant traffic slows digests down but never stops them).
const MAX_DEFER: Duration = Duration::from_secs(30);

/// Whose turn the hashing threads take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashingPriority {
    /// A request waits for the digests (verify): the blocking pool, normal priority.
    Request,
    /// Nobody waits (the digester): threads of their own at the lowest priority, so
    /// filling in digests never slows the transfers and requests running beside it.
    Background,
}

/// The lowest scheduling priority (`nice` 19).
const BACKGROUND_NICE: i32 = 19;

/// Runs `work` on a thread as `priority` says; answers its result.
async fn on_thread<T: Send + 'static>(
    priority: HashingPriority,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    match priority {
        HashingPriority::Request => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| std::io::Error::other(e.to_string())),
        HashingPriority::Background => {
            let (answer, answered) = tokio::sync::oneshot::channel();
            // A thread of its own: on Linux the nice value belongs to the thread, and an
            // unprivileged thread cannot raise it again, so a pooled one must not be used.
            std::thread::Builder::new()
                .name("kiln-digester".into())
                .spawn(move || {
                    let _ = rustix::process::setpriority_process(None, BACKGROUND_NICE);
                    let _ = answer.send(work());
                })?;
            answered
                .await
                .map_err(|_| std::io::Error::other("a digester thread panicked"))
        }
    }
}

/// The digests of everything `stream` yields; `Err` if it breaks off.
pub async fn digest_stream(stream: BlobStream) -> std::io::Result<Digests> {
    digest_stream_at(stream, HashingPriority::Request, None).await
}

/// [`digest_stream`], hashed at `priority`; with `transfers`, each piece waits until no
/// transfer is in flight (at most `MAX_DEFER` in all).
pub async fn digest_stream_at(
    mut stream: BlobStream,
    priority: HashingPriority,
    transfers: Option<&Transfers>,
) -> std::io::Result<Digests> {
    let mut deferred = Duration::ZERO;
    let (to_first, mut first) = mpsc::channel::<Bytes>(QUEUE);
    let (to_second, mut second) = mpsc::channel::<Bytes>(QUEUE);
    let md5_sha256 = on_thread(priority, move || {
        let mut hasher = Md5Sha256Hasher::default();
        let mut size = 0u64;
        while let Some(chunk) = first.blocking_recv() {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        (size, hasher.finish())
    });
    let sha512 = on_thread(priority, move || {
        let mut hasher = Sha512Hasher::default();
        while let Some(chunk) = second.blocking_recv() {
            hasher.update(&chunk);
        }
        hasher.finish()
    });
    let md5_sha256 = tokio::spawn(md5_sha256);
    let sha512 = tokio::spawn(sha512);
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        if let Some(transfers) = transfers
            && deferred < MAX_DEFER
        {
            deferred += transfers.quiet(MAX_DEFER - deferred).await;
        }
        match chunk {
            Ok(chunk) => {
                let _ = to_second.send(chunk.clone()).await;
                let _ = to_first.send(chunk).await;
            }
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    drop((to_first, to_second));
    let joined = |e: tokio::task::JoinError| std::io::Error::other(e.to_string());
    let (size, (md5, sha256)) = md5_sha256.await.map_err(joined)??;
    let sha512 = sha512.await.map_err(joined)??;
    match failure {
        Some(error) => Err(error),
        None => Ok(Digests {
            size,
            md5,
            sha256,
            sha512,
        }),
    }
}

/// Fills in the MD5 and SHA-512 of blobs stored without them: woken by each publish,
/// and every 30 s (so what a restart interrupted is finished, and a replica's uploads
/// are digested by whichever replica looks first — the same values either way).
pub(crate) async fn run_digester(
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    wake: Arc<Notify>,
    transfers: Arc<Transfers>,
    mut stop: StopSignal,
) {
    loop {
        let pending = digest_pending(store.as_ref(), blobs.as_ref(), &transfers);
        let progressed = match pending.await {
            Ok(done) => done > 0,
            Err(error) => {
                tracing::warn!(%error, "the artifact digester could not read pending blobs");
                false
            }
        };
        if progressed {
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(IDLE) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// One pass: digests up to a batch of pending blobs; answers how many it recorded.
async fn digest_pending(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    transfers: &Transfers,
) -> kiln_store::StoreResult<usize> {
    let mut done = 0;
    for blob in store.undigested_blobs(BATCH).await? {
        let digests = match blobs.read(&blob.sha256, 0, None).await {
            Ok(stream) => {
                digest_stream_at(stream, HashingPriority::Background, Some(transfers)).await
            }
            Err(error) => {
                tracing::warn!(sha256 = %blob.sha256, %error, "blob not digested: cannot read it");
                continue;
            }
        };
        match digests {
            Ok(digests) if digests.sha256 == blob.sha256 && digests.size == blob.size => {
                store
                    .set_blob_digests(&blob.sha256, &digests.md5, &digests.sha512)
                    .await?;
                done += 1;
            }
            Ok(digests) => tracing::error!(
                sha256 = %blob.sha256,
                found = %digests.sha256,
                size = digests.size,
                "a stored blob is not what was uploaded; `verify` names the builds holding it"
            ),
            Err(error) => {
                tracing::warn!(sha256 = %blob.sha256, %error, "blob not digested: reading it broke off")
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(pieces: &[&'static [u8]]) -> BlobStream {
        let pieces: Vec<std::io::Result<Bytes>> =
            pieces.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(pieces))
    }

    #[tokio::test]
    async fn background_digests_wait_while_a_transfer_is_in_flight() {
        let transfers = Arc::new(Transfers::default());
        let download = transfers.begin();
        let digesting = {
            let transfers = transfers.clone();
            tokio::spawn(async move {
                digest_stream_at(
                    stream_of(&[b"ab", b"c"]),
                    HashingPriority::Background,
                    Some(&transfers),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!digesting.is_finished(), "waits for the download");
        drop(download);
        let digests = tokio::time::timeout(Duration::from_secs(5), digesting)
            .await
            .expect("goes on once the download ended")
            .unwrap()
            .unwrap();
        assert_eq!(digests.size, 3);
        assert_eq!(digests.md5, "900150983cd24fb0d6963f7d28e17f72");
        // A request's digests (verify) never wait.
        let _upload = transfers.begin();
        let digests =
            tokio::time::timeout(Duration::from_secs(5), digest_stream(stream_of(&[b"abc"])))
                .await
                .expect("verify does not wait for transfers")
                .unwrap();
        assert_eq!(digests.size, 3);
    }
}
