//! After a build, on the wire: artifact retention (a project's rule, a run or dry run),
//! pins, comparing two builds' artifacts, rebuilds that verify a build, and build
//! reports. Sizes are bytes; digests lowercase hex; times RFC 3339.

use serde::{Deserialize, Serialize};

use crate::ArtifactFile;

/// `PUT /api/v1/projects/{slug}/artifact-retention`: both parts optional; neither keeps
/// everything.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetArtifactRetention {
    /// Keep the artifacts of the newest N ended builds of each branch.
    #[serde(default)]
    pub keep_builds: Option<u32>,
    /// Keep the artifacts of builds that ended within the last D days.
    #[serde(default)]
    pub keep_days: Option<u32>,
}

/// A project's retention rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRetention {
    pub project: String,
    pub keep_builds: Option<u32>,
    pub keep_days: Option<u32>,
    /// When it was last set; `None` when never (everything is kept).
    pub updated_at: Option<String>,
}

/// A build whose artifacts a retention run deletes (or would delete).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionBuild {
    pub run_id: String,
    pub number: i64,
    pub branch: Option<String>,
    pub ended_at: Option<String>,
    pub files: u64,
    pub bytes: u64,
}

/// `POST /api/v1/projects/{slug}/artifact-retention/run[?dryRun=true]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRun {
    pub project: String,
    pub dry_run: bool,
    /// The builds whose artifacts go, oldest first.
    pub builds: Vec<RetentionBuild>,
    /// Manifest entries of those builds.
    pub files: u64,
    /// Blobs no other build uses (a blob shared with a kept build stays).
    pub blobs: u64,
    /// The bytes those blobs hold: what the store frees.
    pub bytes_freed: u64,
    /// Builds with artifacts that are protected (pinned, last good of a branch).
    pub protected: Vec<String>,
    /// Builds left for a later run (one run handles at most 1,000).
    pub remaining: u64,
}

/// `POST|DELETE /api/v1/builds/{runId}/pin`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildPin {
    pub run_id: String,
    pub pinned: bool,
    pub pinned_by: Option<String>,
    pub pinned_at: Option<String>,
}

/// One side of a compared file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComparedSide {
    pub size: u64,
    pub sha256: String,
}

/// One path of a comparison.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComparedArtifact {
    pub path: String,
    /// `identical`, `differs`, `only_a` or `only_b`.
    pub status: String,
    pub a: Option<ComparedSide>,
    pub b: Option<ComparedSide>,
}

/// `GET /api/v1/compare?a=RUN&b=RUN`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactComparison {
    pub a: String,
    pub b: String,
    /// `reproducible`, `not_reproducible` or `no_artifacts`.
    pub verdict: String,
    pub reproducible: bool,
    pub identical: u64,
    pub differs: u64,
    pub only_a: u64,
    pub only_b: u64,
    pub files: Vec<ComparedArtifact>,
}

/// `POST /api/v1/builds/{runId}/rebuild-verify` and `GET …/verification`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildVerification {
    pub run_id: String,
    /// The newest rebuild; `None` (and so the rest) when the build was never rebuilt to
    /// verify it.
    pub rebuild_run_id: Option<String>,
    /// The rebuild's status (`queued`, `running`, `success`, …).
    pub rebuild_status: Option<String>,
    pub requested_at: Option<String>,
    /// The comparison of the two builds' artifacts, once the rebuild has ended.
    pub comparison: Option<ArtifactComparison>,
}

/// How a build started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportTrigger {
    /// `api`, `poll`, `retry`, `verify`, `push` … for builds Kiln ran; `reported` for a
    /// build that reported itself.
    pub cause: String,
    /// The user who asked, when one did.
    pub by: Option<String>,
    /// The build this one retries or verifies.
    pub retry_of: Option<String>,
}

/// A stage of a report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportStage {
    pub name: String,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

/// A failed job with the end of its log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportFailure {
    pub step: String,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    /// The last lines of its log (at most 20).
    pub last_log_lines: Vec<String>,
}

/// A report's test summary.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportTests {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub errored: u64,
    pub skipped: u64,
    /// Names of failed or errored tests (at most 20).
    pub failures: Vec<String>,
}

/// `GET /api/v1/builds/{runId}/report.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    pub project: String,
    pub run_id: String,
    pub number: i64,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub status: String,
    pub message: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub trigger: ReportTrigger,
    pub stages: Vec<ReportStage>,
    pub failures: Vec<ReportFailure>,
    pub tests: Option<ReportTests>,
    pub artifacts: Vec<ArtifactFile>,
    /// The newest deployment of this build (or rollback to it), `null` when it was never
    /// deployed.
    pub deployment: Option<crate::DeploymentDto>,
}
