//! The staging area: uploads arrive here as `{id}.part` files with a `{id}.json` sidecar
//! (what was declared), so an interrupted upload resumes at the bytes already received.
//! Bytes are written and hashed (SHA-256, what the upload is checked by, and the CRC-32 a
//! client may confirm instead) on two blocking threads in parallel; a finished file is
//! moved into the blob store only once its SHA-256 matches the declared one, so nothing
//! half-uploaded is ever published. Sidecars and parts left alone for a day are swept.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use kiln_core::artifacts::{Sha256Crc32Hasher, crc32_hex, is_sha256_hex, parse_crc32_hex};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Pieces queued between the request and the writer and hasher threads (at most
/// `QUEUE` × the server's read buffer, or × `PIECE`, in memory per upload).
const QUEUE: usize = 16;
/// Small frames are gathered into pieces of this size before they go to the threads.
const PIECE: usize = 1024 * 1024;
/// Frames at least this large go to the threads as they are.
const DIRECT: usize = 64 * 1024;
/// The read buffer when a resumed upload is hashed again from disk.
const REHASH_CHUNK: usize = 1024 * 1024;
/// Written bytes after which the kernel is asked to start writing them to disk.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// What an upload declared when it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingUpload {
    pub upload_id: String,
    pub build_id: i64,
    pub path: String,
    pub step: Option<String>,
    pub size: u64,
    pub mode: u32,
    pub sha256: String,
}

/// What staging refused or failed at.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The upload has this many bytes, not the offset the client sent.
    #[error("the upload holds {0} bytes; continue from there")]
    Offset(u64),
    /// More bytes than the upload declared.
    #[error("the body goes past the {0} bytes the upload declared")]
    TooLong(u64),
    /// Another request is writing this upload.
    #[error("another request is sending this upload")]
    Busy,
    /// The client's body broke off (what arrived before is kept).
    #[error("the upload broke off: {0}")]
    Body(String),
    /// The disk failed.
    #[error("staging the upload failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A request's exclusive hold on one upload.
#[derive(Debug)]
pub struct UploadGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.busy.lock().expect("staging lock").remove(&self.id);
    }
}

/// What the server computed over a whole held file: the SHA-256 the manifest records and
/// the CRC-32 a client may confirm the upload with instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldDigest {
    pub sha256: String,
    pub crc32: u32,
}

impl From<Sha256Crc32Hasher> for HeldDigest {
    fn from(hasher: Sha256Crc32Hasher) -> Self {
        let (sha256, crc32) = hasher.finish();
        Self { sha256, crc32 }
    }
}

/// How far an upload got after a request's bytes were written.
#[derive(Debug)]
pub struct Appended {
    /// Bytes now held.
    pub length: u64,
    /// The digests of the whole file, when this request sent all of it from the start.
    pub digest: Option<HeldDigest>,
}

#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    busy: Arc<Mutex<HashSet<String>>>,
    /// When the last sweep started.
    swept: Mutex<Option<std::time::Instant>>,
    /// The uploads this process declared and has not published, discarded or swept:
    /// id → (build, declared size), so a build's staged bytes count against its limit.
    /// (A restart forgets them; the sweep removes their files within a day.)
    declared: Arc<Mutex<std::collections::HashMap<String, (i64, u64)>>>,
}

/// Uploads untouched this long are removed.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Whether `id` is an upload id as [`Staging::upload_id`] makes them.
pub fn is_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Staging {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            busy: Arc::default(),
            swept: Mutex::new(None),
            declared: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id of an upload: the same declaration gets the same id, so a client that lost
    /// the answer (or a restarted agent) resumes the same upload.
    pub fn upload_id(build_id: i64, path: &str, sha256: &str, size: u64) -> String {
        let digest = sha2::Sha256::digest(format!("{build_id}\0{path}\0{sha256}\0{size}"));
        hex::encode(&digest[..16])
    }

    /// The file the bytes go to (`id` checked by [`is_upload_id`] before).
    pub fn part_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn sidecar_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Records the declaration (if new) and answers how many bytes are already held.
    pub async fn begin(&self, pending: &PendingUpload) -> std::io::Result<u64> {
        let sidecar = self.sidecar_path(&pending.upload_id);
        if !tokio::fs::try_exists(&sidecar).await.unwrap_or(false) {
            let text = serde_json::to_vec(pending).map_err(std::io::Error::other)?;
            let temporary = self.dir.join(format!("{}.json.tmp", pending.upload_id));
            tokio::fs::write(&temporary, text).await?;
            tokio::fs::rename(&temporary, &sidecar).await?;
        }
        self.declared
            .lock()
            .expect("staging lock")
            .insert(pending.upload_id.clone(), (pending.build_id, pending.size));
        match tokio::fs::metadata(self.part_path(&pending.upload_id)).await {
            Ok(metadata) => Ok(metadata.len()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// The declaration of a started upload.
    pub async fn pending(&self, id: &str) -> std::io::Result<Option<PendingUpload>> {
        if !is_upload_id(id) {
            return Ok(None);
        }
        match tokio::fs::read(self.sidecar_path(id)).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Holds the upload for one request, or `Busy`.
    pub fn hold(&self, id: &str) -> Result<UploadGuard, StagingError> {
        if !self
            .busy
            .lock()
            .expect("staging lock")
            .insert(id.to_owned())
        {
            return Err(StagingError::Busy);
        }
        Ok(UploadGuard {
            busy: self.busy.clone(),
            id: id.to_owned(),
        })
    }

    /// Appends `body` at `offset` (which must be the bytes held), never past `size`;
    /// synced to disk before it returns.
    pub async fn append<S, E>(
        &self,
        _guard: &UploadGuard,
        id: &str,
        offset: u64,
        size: u64,
        mut body: S,
    ) -> Result<Appended, StagingError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.part_path(id);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let held = file.metadata()?.len();
        if held != offset {
            return Err(StagingError::Offset(held));
        }
        let (to_writer, from_request) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_all(file, from_request));
        let (to_hasher, hasher) = if offset == 0 {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
            (
                Some(sender),
                Some(tokio::task::spawn_blocking(move || hash_all(receiver))),
            )
        } else {
            (None, None)
        };
        let mut received = offset;
        let mut failure = None;
        // Large frames go to the threads as they are (no copy); small ones (a client that
        // sends little at a time) are gathered into pieces of `PIECE` bytes, so the
        // threads are woken per piece, not per frame.
        let mut piece = bytes::BytesMut::new();
        loop {
            let next = body.next().await;
            let chunk = match next {
                Some(Ok(chunk)) => Some(chunk),
                Some(Err(error)) => {
                    failure = Some(StagingError::Body(error.to_string()));
                    None
                }
                None => None,
            };
            let mut ready = Vec::with_capacity(2);
            if let Some(chunk) = chunk.as_ref() {
                if received + chunk.len() as u64 > size {
                    failure = Some(StagingError::TooLong(size));
                    break;
                }
                received += chunk.len() as u64;
                if chunk.len() >= DIRECT {
                    if !piece.is_empty() {
                        ready.push(std::mem::take(&mut piece).freeze());
                    }
                    ready.push(chunk.clone());
                } else {
                    if piece.is_empty() {
                        piece.reserve(PIECE);
                    }
                    piece.extend_from_slice(chunk);
                }
            }
            // What arrived before a break is kept (the client resumes after it).
            if piece.len() >= PIECE || (chunk.is_none() && !piece.is_empty()) {
                ready.push(std::mem::take(&mut piece).freeze());
            }
            let mut writer_gone = false;
            for full in ready {
                if let Some(hasher) = &to_hasher {
                    let _ = hasher.send(full.clone()).await;
                }
                if to_writer.send(full).await.is_err() {
                    writer_gone = true;
                    break;
                }
            }
            if writer_gone || chunk.is_none() {
                break;
            }
        }
        drop(to_writer);
        drop(to_hasher);
        let written = writer
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        let digest = match hasher {
            Some(hasher) => Some(
                hasher
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            ),
            None => None,
        };
        if let Some(failure) = failure {
            if matches!(failure, StagingError::TooLong(_)) {
                // Nothing of this request is kept past what was declared.
                let file = std::fs::OpenOptions::new().write(true).open(&path)?;
                file.set_len(offset)?;
            }
            return Err(failure);
        }
        let length = offset + written;
        Ok(Appended {
            length,
            digest: digest
                .filter(|(hashed, _)| *hashed == length && length == size)
                .map(|(_, digest)| digest),
        })
    }

    /// The digests and size of a held file, read back from disk (a resumed upload).
    pub async fn digest(&self, id: &str) -> std::io::Result<(HeldDigest, u64)> {
        let path = self.part_path(id);
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(path)?;
            let mut hasher = Sha256Crc32Hasher::default();
            let mut size = 0u64;
            let mut buffer = vec![0u8; REHASH_CHUNK];
            loop {
                let read = file.read(&mut buffer)?;
                if read == 0 {
                    return Ok((hasher.into(), size));
                }
                size += read as u64;
                hasher.update(&buffer[..read]);
            }
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    fn computed_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sha256"))
    }

    /// Keeps the digests the server computed over a whole upload that declared no SHA-256,
    /// for the request that confirms it (`{sha256} {crc32}`; it survives a restart, and the
    /// sweep removes it with the upload's other files).
    pub async fn remember_digest(&self, id: &str, digest: &HeldDigest) -> std::io::Result<()> {
        let text = format!("{} {}", digest.sha256, crc32_hex(digest.crc32));
        tokio::fs::write(self.computed_path(id), text).await
    }

    /// The digests [`remember_digest`](Self::remember_digest) kept, if the held bytes are
    /// still what they were computed over (`size` of them). A file in another form (a
    /// SHA-256 alone, as an earlier Kiln kept it) answers `None`: the part is hashed again.
    pub async fn remembered_digest(&self, id: &str, size: u64) -> Option<HeldDigest> {
        let held = tokio::fs::metadata(self.part_path(id)).await.ok()?.len();
        let text = tokio::fs::read_to_string(self.computed_path(id))
            .await
            .ok()?;
        let (sha256, crc32) = text.split_once(' ')?;
        let crc32 = parse_crc32_hex(crc32)?;
        (held == size && is_sha256_hex(sha256)).then(|| HeldDigest {
            sha256: sha256.to_owned(),
            crc32,
        })
    }

    /// The declared bytes of a build's uploads in progress here, but `except` one.
    pub fn staged_bytes(&self, build_id: i64, except: &str) -> u64 {
        self.declared
            .lock()
            .expect("staging lock")
            .iter()
            .filter(|(id, (build, _))| *build == build_id && id.as_str() != except)
            .map(|(_, (_, size))| size)
            .sum()
    }

    /// Forgets an upload (after it was published, or when its bytes were wrong).
    pub async fn discard(&self, id: &str) {
        self.declared.lock().expect("staging lock").remove(id);
        let _ = tokio::fs::remove_file(self.part_path(id)).await;
        let _ = tokio::fs::remove_file(self.sidecar_path(id)).await;
        let _ = tokio::fs::remove_file(self.computed_path(id)).await;
    }

    /// Sweeps abandoned uploads in the background at most once an hour (called as uploads
    /// start, so a server that takes none does no work).
    pub fn sweep_now_and_then(self: &Arc<Self>) {
        {
            let mut swept = self.swept.lock().expect("staging lock");
            if swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return;
            }
            *swept = Some(std::time::Instant::now());
        }
        let staging = self.clone();
        tokio::spawn(async move {
            let removed = staging.sweep(ABANDONED_AFTER).await;
            if removed > 0 {
                tracing::info!(removed, "abandoned artifact uploads removed");
            }
        });
    }

    /// Removes uploads untouched for `age`; returns how many.
    pub async fn sweep(&self, age: Duration) -> usize {
        let dir = self.dir.clone();
        let busy = self.busy.clone();
        let declared = self.declared.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return 0;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.split('.').next().unwrap_or_default().to_owned();
                if busy.lock().expect("staging lock").contains(&id) {
                    continue;
                }
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|elapsed| elapsed >= age);
                if old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                    declared.lock().expect("staging lock").remove(&id);
                }
            }
            removed
        })
        .await
        .unwrap_or(0)
    }
}

fn write_all(
    file: std::fs::File,
    mut chunks: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<u64> {
    let mut file = file;
    let start = file.metadata()?.len();
    let mut written = 0u64;
    let mut flushed = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        file.write_all(&chunk)?;
        written += chunk.len() as u64;
        if written - flushed >= WRITEBACK_EVERY {
            start_writeback(&file, start + flushed, written - flushed);
            flushed = written;
        }
    }
    // Durable before the answer; most of it is on disk already.
    file.sync_data()?;
    Ok(written)
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk now, while later
/// bytes still arrive, so the `sync_data` before the answer waits only for the last few
/// MiB rather than for the whole file (which the kernel would otherwise keep dirty in
/// memory until then). `POSIX_FADV_DONTNEED` starts the writeback of a range's dirty pages
/// without waiting for it (the safe-Rust way to `sync_file_range(SYNC_FILE_RANGE_WRITE)`);
/// the pages are dirty when it is called, so none is dropped from the cache. A hint only:
/// durability still comes from the `sync_data`.
pub(crate) fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        let _ = nix::fcntl::posix_fadvise(
            file,
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

fn hash_all(mut chunks: tokio::sync::mpsc::Receiver<Bytes>) -> (u64, HeldDigest) {
    let mut hasher = Sha256Crc32Hasher::default();
    let mut size = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (size, hasher.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|part| Ok(Bytes::from_static(part)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn large_and_small_frames_are_written_in_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        // Large frames go to the threads as they are, small ones gathered between them.
        let large = vec![b'a'; DIRECT];
        let frames: Vec<Bytes> = vec![
            Bytes::from_static(b"xy"),
            Bytes::from(large.clone()),
            Bytes::from_static(b"z"),
            Bytes::from(large.clone()),
        ];
        let whole: Vec<u8> = frames.iter().flat_map(|frame| frame.to_vec()).collect();
        let sha256 = hex::encode(sha2::Sha256::digest(&whole));
        let size = whole.len() as u64;
        let id = Staging::upload_id(1, "c.bin", &sha256, size);
        let guard = staging.hold(&id).unwrap();
        let body = futures_util::stream::iter(frames.into_iter().map(Ok::<_, String>));
        let appended = staging.append(&guard, &id, 0, size, body).await.unwrap();
        assert_eq!(appended.length, size);
        let digest = appended.digest.unwrap();
        assert_eq!(digest.sha256, sha256);
        assert_eq!(digest.crc32, crc32fast::hash(&whole));
        assert_eq!(std::fs::read(staging.part_path(&id)).unwrap(), whole);
    }

    #[tokio::test]
    async fn an_upload_resumes_at_the_bytes_held_and_is_hashed_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        let id = Staging::upload_id(1, "a.txt", "x", 6);
        assert!(is_upload_id(&id));
        assert_eq!(id, Staging::upload_id(1, "a.txt", "x", 6));
        let pending = PendingUpload {
            upload_id: id.clone(),
            build_id: 1,
            path: "a.txt".into(),
            step: None,
            size: 6,
            mode: 0o644,
            sha256: "x".into(),
        };
        assert_eq!(staging.begin(&pending).await.unwrap(), 0);
        assert_eq!(staging.pending(&id).await.unwrap(), Some(pending.clone()));
        let guard = staging.hold(&id).unwrap();
        assert!(matches!(staging.hold(&id), Err(StagingError::Busy)));
        let first = staging
            .append(&guard, &id, 0, 6, body(&[b"ab", b"c"]))
            .await
            .unwrap();
        assert_eq!(first.length, 3);
        assert!(
            first.digest.is_none(),
            "a part of the file has no digests of the file"
        );
        assert!(matches!(
            staging.append(&guard, &id, 0, 6, body(&[b"x"])).await,
            Err(StagingError::Offset(3))
        ));
        assert!(matches!(
            staging.append(&guard, &id, 3, 6, body(&[b"defg"])).await,
            Err(StagingError::TooLong(6))
        ));
        assert_eq!(
            staging.begin(&pending).await.unwrap(),
            3,
            "the refused body left nothing"
        );
        let rest = staging
            .append(&guard, &id, 3, 6, body(&[b"def"]))
            .await
            .unwrap();
        assert_eq!(rest.length, 6);
        let (digest, size) = staging.digest(&id).await.unwrap();
        assert_eq!(size, 6);
        assert_eq!(
            digest.sha256,
            "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721"
        );
        assert_eq!(crc32_hex(digest.crc32), "4b8e39ef");
        // Remembered for the confirming request; a SHA-256 alone (an earlier Kiln's file)
        // or a part that changed since is not trusted.
        assert_eq!(staging.remembered_digest(&id, 6).await, None);
        staging.remember_digest(&id, &digest).await.unwrap();
        assert_eq!(
            staging.remembered_digest(&id, 6).await,
            Some(digest.clone())
        );
        assert_eq!(staging.remembered_digest(&id, 7).await, None);
        std::fs::write(staging.computed_path(&id), &digest.sha256).unwrap();
        assert_eq!(staging.remembered_digest(&id, 6).await, None);
        drop(guard);

        let whole_id = Staging::upload_id(1, "b.txt", "y", 6);
        let guard = staging.hold(&whole_id).unwrap();
        let whole = staging
            .append(&guard, &whole_id, 0, 6, body(&[b"abcdef"]))
            .await
            .unwrap();
        assert_eq!(whole.digest, Some(digest));
        staging.discard(&id).await;
        assert_eq!(staging.pending(&id).await.unwrap(), None);
        assert_eq!(
            staging.sweep(Duration::ZERO).await,
            0,
            "an upload being sent stays"
        );
        drop(guard);
        assert_eq!(
            staging.sweep(Duration::ZERO).await,
            1,
            "b's part goes once left alone"
        );
    }
}
