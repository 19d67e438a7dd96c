//! Blobs as files under a directory: `{root}/{aa}/{bb}/{sha256}`, written by rename from
//! the staging area on the same file system, so a blob appears whole or not at all.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobError, BlobStore, BlobStream};

/// Read buffer of a blob stream.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// A store under `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a digest is stored in (the digest is checked by the caller: 64 hex
    /// digits, so it cannot name anything outside the root).
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        let (a, b) = (
            &sha256[..2.min(sha256.len())],
            &sha256[2.min(sha256.len())..4.min(sha256.len())],
        );
        self.root.join(a).join(b).join(sha256)
    }
}

fn checked(sha256: &str) -> Result<(), BlobError> {
    if kiln_core::artifacts::is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(BlobError::NotFound(sha256.chars().take(80).collect()))
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put_file(&self, sha256: &str, file: &Path, _size: u64) -> Result<(), BlobError> {
        checked(sha256)?;
        let target = self.path_of(sha256);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(file).await;
            return Ok(());
        }
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| BlobError::failed("creating the blob directory", e))?;
        }
        // The staging file was synced by its writer; rename is atomic on one file system,
        // and the directory is synced so the name survives a crash.
        if let Err(error) = tokio::fs::rename(file, &target).await {
            // Another file system (a store directory of its own): copy, sync, then rename
            // within the store, so the blob still appears whole.
            if error.raw_os_error() != Some(18) {
                return Err(BlobError::failed(
                    "moving the upload into the blob store",
                    error,
                ));
            }
            let partial = target.with_extension("partial");
            let (from, to) = (file.to_path_buf(), partial.clone());
            tokio::task::spawn_blocking(move || {
                std::fs::copy(&from, &to)?;
                std::fs::File::open(&to)?.sync_all()?;
                std::fs::remove_file(&from)
            })
            .await
            .map_err(|e| BlobError::failed("copying the upload into the blob store", e))?
            .map_err(|e| BlobError::failed("copying the upload into the blob store", e))?;
            tokio::fs::rename(&partial, &target)
                .await
                .map_err(|e| BlobError::failed("moving the upload into the blob store", e))?;
        }
        if let Some(parent) = target.parent() {
            let parent = parent.to_path_buf();
            let _ = tokio::task::spawn_blocking(move || {
                std::fs::File::open(parent).and_then(|dir| dir.sync_all())
            })
            .await;
        }
        Ok(())
    }

    async fn size(&self, sha256: &str) -> Result<Option<u64>, BlobError> {
        checked(sha256)?;
        match tokio::fs::metadata(self.path_of(sha256)).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(BlobError::failed("reading a blob's size", error)),
        }
    }

    async fn read(
        &self,
        sha256: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<BlobStream, BlobError> {
        checked(sha256)?;
        let mut file = match tokio::fs::File::open(self.path_of(sha256)).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(sha256.to_owned()));
            }
            Err(error) => return Err(BlobError::failed("opening a blob", error)),
        };
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| BlobError::failed("seeking in a blob", e))?;
        }
        let stream: BlobStream = match len {
            Some(len) => Box::pin(ReaderStream::with_capacity(file.take(len), CHUNK)),
            None => Box::pin(ReaderStream::with_capacity(file, CHUNK)),
        };
        Ok(stream)
    }

    async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        checked(sha256)?;
        match tokio::fs::remove_file(self.path_of(sha256)).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(BlobError::failed("removing a blob", error)),
        }
    }

    fn describe(&self) -> String {
        format!("local disk at {}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    async fn collect(mut stream: BlobStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn blobs_are_stored_by_digest_read_by_range_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path().join("blobs")).unwrap();
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let staged = dir.path().join("upload");
        std::fs::write(&staged, b"abc").unwrap();
        store.put_file(digest, &staged, 3).await.unwrap();
        assert!(!staged.exists());
        assert_eq!(store.size(digest).await.unwrap(), Some(3));
        assert_eq!(
            collect(store.read(digest, 0, None).await.unwrap()).await,
            b"abc"
        );
        assert_eq!(
            collect(store.read(digest, 1, Some(1)).await.unwrap()).await,
            b"b"
        );
        // Storing it again consumes the new file and keeps the old blob.
        std::fs::write(&staged, b"abc").unwrap();
        store.put_file(digest, &staged, 3).await.unwrap();
        assert!(!staged.exists());
        store.delete(digest).await.unwrap();
        store.delete(digest).await.unwrap();
        assert_eq!(store.size(digest).await.unwrap(), None);
        assert!(matches!(
            store.read(digest, 0, None).await,
            Err(BlobError::NotFound(_))
        ));
        // A key that is not a digest names nothing.
        assert!(matches!(
            store.size("../../etc/passwd").await,
            Err(BlobError::NotFound(_))
        ));
    }
}
