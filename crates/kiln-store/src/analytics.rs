//! What analytics and prediction read: a project's builds of a time range with their
//! stages and queue waits, and a pipeline's newest ended builds (`sql/analytics.rs`).

use async_trait::async_trait;
use kiln_core::analytics::Samples;
use kiln_core::{BuildStatus, Millis, StageStatus};

use crate::{PipelineKey, StoreResult};

/// The builds analytics look at: one project's, started in `[from, to)`.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalyticsFilter {
    pub project_id: i64,
    pub from: Millis,
    pub to: Millis,
    /// Only this branch.
    pub branch: Option<String>,
    /// Only builds of this command (the pipeline of builds `kiln run` and other emitters
    /// report; Kiln-run builds have none and are told apart by branch).
    pub command: Option<String>,
}

/// An ended build of a pipeline with its stages: prediction's history.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryBuild {
    pub id: i64,
    pub started_at: Millis,
    pub duration_ms: i64,
    pub status: BuildStatus,
    /// Ended stages: name, status, duration.
    pub stages: Vec<(String, StageStatus, i64)>,
}

#[async_trait]
pub trait AnalyticsStore: Send + Sync {
    /// The builds of the filter with their stages and the queue waits (claimed − queued)
    /// of their agent jobs. Whole UTC days that closed an hour before `now` (server
    /// time) come from the kept `analytics_days` rows where they are valid, and are kept
    /// once read while every build of them has ended; the rest is read along
    /// `builds_project_started`.
    async fn analytics_samples(
        &self,
        filter: &AnalyticsFilter,
        now: Millis,
    ) -> StoreResult<Samples>;
    /// Keeps the closed days of `[from, now)` of a project that are not validly kept yet
    /// (the analytics keeper's pass, so a first request finds them); answers how many
    /// it kept.
    async fn keep_closed_days(
        &self,
        project_id: i64,
        from: Millis,
        now: Millis,
    ) -> StoreResult<usize>;
    /// The newest `limit` builds of a pipeline that ended with a duration (success or
    /// failure, not cancelled), newest first, with their ended stages.
    async fn pipeline_history(
        &self,
        key: &PipelineKey,
        limit: i64,
    ) -> StoreResult<Vec<HistoryBuild>>;
}
