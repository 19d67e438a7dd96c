//! Where artifact contents live: a content-addressed blob store behind one trait (files
//! named by their SHA-256), on local disk under the data dir (`local.rs`) or in an
//! S3-compatible object store (`s3.rs`), and the staging area where uploads arrive
//! (`staging.rs`) before a finished, verified file is moved in; transfers in flight are
//! counted (`transfers.rs`) so the digester's background hashing waits for them.

pub mod digest;
pub mod local;
pub mod s3;
pub mod staging;
pub mod tarball;
pub mod transfers;

use std::fmt;
use std::path::Path;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// A blob's bytes, streamed.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// What a blob store could not do.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob has this digest.
    #[error("no stored blob has SHA-256 {0}")]
    NotFound(String),
    /// The store failed (disk full, object store down, permissions); the message says
    /// which and is safe to log, not to show to callers.
    #[error("artifact storage failed: {0}")]
    Failed(String),
}

impl BlobError {
    pub fn failed(context: &str, error: impl fmt::Display) -> Self {
        Self::Failed(format!("{context}: {error}"))
    }
}

/// Content-addressed storage of artifact bytes. Keys are lowercase hex SHA-256 digests
/// the caller has verified; a key, once stored, always holds the same bytes, so storing
/// it again is a no-op and readers never see a partial blob.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Moves the finished file `file` (whose SHA-256 is `sha256` and length `size`) into
    /// the store. The file is consumed (moved or removed) whether or not the blob was
    /// already there. Atomic: a concurrent reader sees the whole blob or none.
    async fn put_file(&self, sha256: &str, file: &Path, size: u64) -> Result<(), BlobError>;
    /// The stored blob's size, or `None`.
    async fn size(&self, sha256: &str) -> Result<Option<u64>, BlobError>;
    /// The blob's bytes from `offset`, at most `len` of them (`None`: to the end).
    async fn read(
        &self,
        sha256: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<BlobStream, BlobError>;
    /// Removes the blob (absent is not an error).
    async fn delete(&self, sha256: &str) -> Result<(), BlobError>;
    /// Where blobs go, for logs and `kiln serve`'s start-up line (no credentials).
    fn describe(&self) -> String;
}
