//! Build artifacts: a build's manifest (one row per file, naming a blob by SHA-256) and
//! the blobs' digests (`sql/artifacts.rs`). The bytes are not here: the server's blob
//! store holds them.

use async_trait::async_trait;
use kiln_core::Millis;

use crate::StoreResult;

/// A file of a build's manifest, with its blob's digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub build_id: i64,
    pub path: String,
    /// The step that made it; `None` for a file uploaded by a script with an ingest token.
    pub step: Option<String>,
    pub size: u64,
    /// Unix permission bits (`0o644`, `0o755`).
    pub mode: u32,
    /// `None` until computed (off the upload path, moments after it).
    pub md5: Option<String>,
    pub sha256: String,
    /// `None` until computed, like `md5`.
    pub sha512: Option<String>,
    pub created_at: Millis,
}

/// A stored blob's digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    pub sha256: String,
    pub size: u64,
    pub md5: Option<String>,
    pub sha512: Option<String>,
}

/// What adding a file to a build's manifest did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactAdded {
    /// A new row.
    Added,
    /// The build already had this path with the same content: nothing changed.
    Unchanged,
    /// The build already has this path with other content (this SHA-256); manifests do
    /// not change once written.
    Conflict(String),
}

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Adds `record` to its build's manifest, recording its blob's digests if they are
    /// new, in one transaction.
    async fn add_artifact(&self, record: &ArtifactRecord) -> StoreResult<ArtifactAdded>;
    /// Takes a file out of a build's manifest (its blob stays for the others naming it);
    /// whether there was one.
    async fn remove_artifact(&self, build_id: i64, path: &str) -> StoreResult<bool>;
    /// A build's manifest, by path.
    async fn build_artifacts(&self, build_id: i64) -> StoreResult<Vec<ArtifactRecord>>;
    /// One file of a build's manifest.
    async fn build_artifact(
        &self,
        build_id: i64,
        path: &str,
    ) -> StoreResult<Option<ArtifactRecord>>;
    /// A file of a build's manifest with this content (any one of them).
    async fn build_artifact_by_sha256(
        &self,
        build_id: i64,
        sha256: &str,
    ) -> StoreResult<Option<ArtifactRecord>>;
    /// A build's file count and total bytes.
    async fn build_artifact_totals(&self, build_id: i64) -> StoreResult<(u64, u64)>;
    /// A blob's digests, if any manifest row was ever written for it.
    async fn artifact_blob(&self, sha256: &str) -> StoreResult<Option<BlobRecord>>;
    /// Up to `limit` blobs whose MD5 and SHA-512 are not computed yet, oldest first.
    async fn undigested_blobs(&self, limit: i64) -> StoreResult<Vec<BlobRecord>>;
    /// Records a blob's MD5 and SHA-512.
    async fn set_blob_digests(&self, sha256: &str, md5: &str, sha512: &str) -> StoreResult<()>;
}
