//! Analytics and prediction on the wire (`GET /api/v1/projects/{slug}/analytics`,
//! `GET /api/v1/projects/{slug}/prediction`). Durations are milliseconds, rates
//! fractions from 0 to 1, days and hours UTC.

use serde::{Deserialize, Serialize};

/// Nearest-rank percentiles of a sample; `null` when it is empty.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuantilesDto {
    pub count: u64,
    pub p50_ms: Option<i64>,
    pub p90_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// One UTC day of the range (every day is listed, empty ones too).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsDay {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub builds: u64,
    pub succeeded: u64,
    /// `failed` or `stale`.
    pub failed: u64,
    pub success_rate: Option<f64>,
    /// Of that day's successful builds.
    pub duration: QuantilesDto,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageAnalytics {
    pub name: String,
    /// Ended runs of the stage.
    pub runs: u64,
    pub failed: u64,
    pub failure_rate: Option<f64>,
    /// Of its successful runs.
    pub duration: QuantilesDto,
}

/// Time to recovery: a failed build's end to the end of the next successful build of
/// the same branch.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryDto {
    pub incidents: u64,
    pub mean_ms: Option<i64>,
    pub median_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct FailingStage {
    pub name: String,
    pub failures: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct HourCount {
    /// 0 to 23, UTC.
    pub hour: u32,
    pub builds: u64,
}

/// `GET /api/v1/projects/{slug}/analytics?from=&to=&branch=&pipeline=`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectAnalytics {
    pub project: String,
    pub from: String,
    pub to: String,
    pub branch: Option<String>,
    pub pipeline: Option<String>,
    /// Builds started in the range.
    pub builds: u64,
    pub succeeded: u64,
    /// `failed` or `stale`.
    pub failed: u64,
    pub cancelled: u64,
    /// Still queued or running.
    pub unfinished: u64,
    /// succeeded / (succeeded + failed); cancelled builds are left out.
    pub success_rate: Option<f64>,
    /// Of the successful builds.
    pub duration: QuantilesDto,
    /// The p50 of the range's second half against its first (`0.1`: 10% slower).
    pub duration_trend: Option<f64>,
    pub days: Vec<AnalyticsDay>,
    pub stages: Vec<StageAnalytics>,
    /// Agent jobs: claimed − queued.
    pub queue_wait: QuantilesDto,
    pub mttr: RecoveryDto,
    pub top_failing_stages: Vec<FailingStage>,
    /// All 24 hours.
    pub busiest_hours: Vec<HourCount>,
    /// Custom metrics the builds reported, most reported first (at most 20).
    pub metrics: Vec<MetricTrendDto>,
}

/// A custom metric over the range (values as reported, in the emitter's unit).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTrendDto {
    pub name: String,
    /// Builds that reported it.
    pub builds: u64,
    pub p50: f64,
    pub min: f64,
    pub max: f64,
    /// The newest build's value.
    pub latest: f64,
    /// The median per day, in the order of `days` (`null` on days without it).
    pub days: Vec<Option<f64>>,
}

/// An expected duration with its 80% interval.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictionDto {
    pub expected_ms: i64,
    pub low_ms: i64,
    pub high_ms: i64,
    /// Past successful runs it is based on.
    pub samples: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct StagePrediction {
    pub name: String,
    pub prediction: PredictionDto,
}

/// Replay of the history: each past build predicted from the builds before it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictionAccuracy {
    /// Median absolute percentage error (0.1 is 10%).
    pub median_ape: f64,
    pub replayed: usize,
}

/// `GET /api/v1/projects/{slug}/prediction?branch=&pipeline=&at=`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelinePrediction {
    pub project: String,
    pub branch: Option<String>,
    pub pipeline: Option<String>,
    /// The start time predicted for.
    pub at: String,
    /// `null` without a successful build to learn from.
    pub build: Option<PredictionDto>,
    pub stages: Vec<StagePrediction>,
    pub accuracy: Option<PredictionAccuracy>,
}
