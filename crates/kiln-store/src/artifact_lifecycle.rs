//! What happens to artifacts after their build: retention rules per project, pinned
//! builds, the builds retention must never touch, deleting a build's manifest and then
//! the blobs no manifest names, and rebuilds made to verify a build
//! (`sql/artifact_lifecycle.rs`).

use async_trait::async_trait;
use kiln_core::Millis;

use crate::{BlobRecord, StoreResult};

/// A project's retention rule as stored (`None`: no such limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionRecord {
    pub project_id: i64,
    pub keep_builds: Option<u32>,
    pub keep_days: Option<u32>,
    pub updated_at: Millis,
}

/// A pinned build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRecord {
    pub build_id: i64,
    /// Who pinned it (`user:…` or `token:…`, as the audit log says).
    pub pinned_by: String,
    pub pinned_at: Millis,
}

/// A build of a project that holds artifacts, with what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildArtifactUsage {
    pub build_id: i64,
    pub run_id: String,
    pub number: i64,
    pub branch: Option<String>,
    pub status: String,
    pub ended_at: Option<Millis>,
    pub files: u64,
    pub bytes: u64,
}

/// A build rebuilt to verify it, and the rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationRecord {
    pub build_id: i64,
    pub rebuild_id: i64,
    pub rebuild_run_id: String,
    pub requested_at: Millis,
}

#[async_trait]
pub trait ArtifactLifecycleStore: Send + Sync {
    /// A project's retention rule, if one was ever set.
    async fn artifact_retention(&self, project_id: i64) -> StoreResult<Option<RetentionRecord>>;
    /// Sets a project's retention rule (both `None`: keep everything).
    async fn set_artifact_retention(
        &self,
        project_id: i64,
        keep_builds: Option<u32>,
        keep_days: Option<u32>,
        now: Millis,
    ) -> StoreResult<RetentionRecord>;
    /// Every project whose rule lets something go (the periodic pass's list).
    async fn retention_rules(&self) -> StoreResult<Vec<RetentionRecord>>;

    /// Pins a build; `false` when it was pinned already (the first pin is kept).
    async fn pin_build(&self, build_id: i64, pinned_by: &str, now: Millis) -> StoreResult<bool>;
    /// Unpins a build; `false` when it was not pinned.
    async fn unpin_build(&self, build_id: i64) -> StoreResult<bool>;
    async fn build_pin(&self, build_id: i64) -> StoreResult<Option<PinRecord>>;

    /// The builds of a project whose artifacts retention must never delete: the pinned
    /// builds, the newest successful build of each branch (builds without a branch count
    /// as one branch), the build each environment serves now and the two newest deployed
    /// builds of each environment (so the last known good one can be rolled back to).
    /// This is the one place that decides.
    async fn protected_builds(&self, project_id: i64) -> StoreResult<Vec<i64>>;
    /// The builds of a project that hold artifacts, with their file counts and bytes.
    async fn builds_with_artifacts(&self, project_id: i64) -> StoreResult<Vec<BuildArtifactUsage>>;
    /// The blobs that only these builds' manifests name: what deleting their artifacts
    /// would free (the dry run's answer).
    async fn blobs_only_named_by(&self, build_ids: &[i64]) -> StoreResult<Vec<BlobRecord>>;
    /// Deletes these builds' manifests in one transaction; the rows deleted. Their blobs
    /// stay until `forget_blob`.
    async fn delete_build_artifacts(&self, build_ids: &[i64]) -> StoreResult<u64>;
    /// Blobs no manifest row names (at most `limit`, oldest first): what the blob store
    /// may delete.
    async fn unreferenced_blobs(&self, limit: i64) -> StoreResult<Vec<BlobRecord>>;
    /// Deletes a blob's row if still no manifest row names it; whether it did.
    async fn forget_blob(&self, sha256: &str) -> StoreResult<bool>;

    /// Records that `rebuild_id` rebuilds `build_id` to verify it.
    async fn record_verification(
        &self,
        build_id: i64,
        rebuild_id: i64,
        now: Millis,
    ) -> StoreResult<()>;
    /// The newest verification rebuild of a build.
    async fn latest_verification(&self, build_id: i64) -> StoreResult<Option<VerificationRecord>>;
}
