//! Analytics and prediction as a service: checks the range and filters, reads the
//! samples from the store and lets kiln-core compute (the API's analytics and prediction
//! routes, `kiln predict` and the dashboard's analytics page call these).

use std::collections::BTreeMap;

use kiln_core::analytics::{self, Analytics, Quantiles};
use kiln_core::predict::{self, Prediction, Sample};
use kiln_core::{FieldError, Millis};
use kiln_protocol::{
    AnalyticsDay, FailingStage, HourCount, MetricTrendDto, PipelinePrediction, PredictionAccuracy,
    PredictionDto, ProjectAnalytics, QuantilesDto, RecoveryDto, StageAnalytics, StagePrediction,
};
use kiln_store::{AnalyticsFilter, PipelineKey, Project};

use crate::AppState;
use crate::service_error::ServiceError;

/// The longest range one analytics request may cover.
pub(crate) const MAX_RANGE_DAYS: i64 = 366;
/// Without `from`, the range is this many days before `to`.
pub(crate) const DEFAULT_RANGE_DAYS: i64 = 30;
/// How many past builds prediction and its replay read.
const HISTORY: i64 = 500;
const DAY_MS: i64 = 86_400_000;

/// What to analyze: the range (defaults: the last 30 days up to now) and the filters.
#[derive(Clone, Debug, Default)]
pub(crate) struct AnalyticsQuery {
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    pub branch: Option<String>,
    pub pipeline: Option<String>,
}

fn checked_filter(name: &str, value: &Option<String>, max: usize) -> Result<(), ServiceError> {
    match value {
        Some(value) if value.len() > max => {
            Err(FieldError::new(name, format!("must be at most {max} bytes")).into())
        }
        _ => Ok(()),
    }
}

/// The analytics of a project the caller may read (the caller's check is the route's).
pub(crate) async fn project_analytics(
    state: &AppState,
    project: &Project,
    query: AnalyticsQuery,
) -> Result<(Analytics, ProjectAnalytics), ServiceError> {
    let to = query.to.unwrap_or_else(|| state.clock.now());
    let from = query
        .from
        .unwrap_or(Millis(to.0.saturating_sub(DEFAULT_RANGE_DAYS * DAY_MS)));
    if from >= to {
        return Err(FieldError::new("from", "must be before `to`").into());
    }
    if to.0.saturating_sub(from.0) > MAX_RANGE_DAYS * DAY_MS {
        return Err(FieldError::new(
            "to",
            format!("the range may cover at most {MAX_RANGE_DAYS} days; ask for a shorter one"),
        )
        .into());
    }
    checked_filter(
        "branch",
        &query.branch,
        kiln_core::limits::MAX_SHORT_FIELD_LEN,
    )?;
    checked_filter(
        "pipeline",
        &query.pipeline,
        kiln_core::limits::MAX_COMMAND_LEN,
    )?;
    let samples = state
        .store
        .analytics_samples(
            &AnalyticsFilter {
                project_id: project.id,
                from,
                to,
                branch: query.branch.clone(),
                command: query.pipeline.clone(),
            },
            state.clock.now(),
        )
        .await?;
    let computed = analytics::analyze(from, to, &samples);
    let answer = analytics_dto(project, &query, &computed);
    Ok((computed, answer))
}

fn quantiles_dto(q: &Quantiles) -> QuantilesDto {
    QuantilesDto {
        count: q.count,
        p50_ms: q.p50,
        p90_ms: q.p90,
        p95_ms: q.p95,
    }
}

fn analytics_dto(project: &Project, query: &AnalyticsQuery, a: &Analytics) -> ProjectAnalytics {
    ProjectAnalytics {
        project: project.slug.clone(),
        from: a.from.to_rfc3339(),
        to: a.to.to_rfc3339(),
        branch: query.branch.clone(),
        pipeline: query.pipeline.clone(),
        builds: a.builds,
        succeeded: a.succeeded,
        failed: a.failed,
        cancelled: a.cancelled,
        unfinished: a.unfinished,
        success_rate: a.success_rate,
        duration: quantiles_dto(&a.duration),
        duration_trend: a.duration_trend,
        days: a
            .days
            .iter()
            .map(|day| AnalyticsDay {
                date: day.date.clone(),
                builds: day.builds,
                succeeded: day.succeeded,
                failed: day.failed,
                success_rate: day.success_rate,
                duration: quantiles_dto(&day.duration),
            })
            .collect(),
        stages: a
            .stages
            .iter()
            .map(|stage| StageAnalytics {
                name: stage.name.clone(),
                runs: stage.runs,
                failed: stage.failed,
                failure_rate: stage.failure_rate,
                duration: quantiles_dto(&stage.duration),
            })
            .collect(),
        queue_wait: quantiles_dto(&a.queue_wait),
        mttr: RecoveryDto {
            incidents: a.recovery.incidents,
            mean_ms: a.recovery.mean_ms,
            median_ms: a.recovery.median_ms,
        },
        top_failing_stages: a
            .top_failing_stages
            .iter()
            .map(|(name, failures)| FailingStage {
                name: name.clone(),
                failures: *failures,
            })
            .collect(),
        busiest_hours: a
            .busiest_hours
            .iter()
            .enumerate()
            .map(|(hour, builds)| HourCount {
                hour: hour as u32,
                builds: *builds,
            })
            .collect(),
        metrics: a
            .metrics
            .iter()
            .map(|trend| MetricTrendDto {
                name: trend.name.clone(),
                builds: trend.builds,
                p50: trend.p50,
                min: trend.min,
                max: trend.max,
                latest: trend.latest,
                days: trend.days.clone(),
            })
            .collect(),
    }
}

fn prediction_dto(prediction: Prediction) -> PredictionDto {
    PredictionDto {
        expected_ms: prediction.expected_ms,
        low_ms: prediction.low_ms,
        high_ms: prediction.high_ms,
        samples: prediction.samples,
    }
}

/// What a build of the pipeline (project, branch — the project's default branch when
/// `None` — and command) starting at `at` (default now) is expected to take, per stage
/// too, and how accurate such predictions were on the stored history.
pub(crate) async fn predict_pipeline(
    state: &AppState,
    project: &Project,
    branch: Option<String>,
    pipeline: Option<String>,
    at: Option<Millis>,
) -> Result<PipelinePrediction, ServiceError> {
    checked_filter("branch", &branch, kiln_core::limits::MAX_SHORT_FIELD_LEN)?;
    checked_filter("pipeline", &pipeline, kiln_core::limits::MAX_COMMAND_LEN)?;
    let branch = branch.or_else(|| Some(project.default_branch.clone()));
    let at = at.unwrap_or_else(|| state.clock.now());
    let key = PipelineKey {
        project_id: project.id,
        branch: branch.clone(),
        command: pipeline.clone(),
    };
    let history = state.store.pipeline_history(&key, HISTORY).await?;
    let builds: Vec<Sample> = history
        .iter()
        .map(|build| Sample {
            started_at: build.started_at,
            duration_ms: build.duration_ms,
        })
        .collect();
    let mut stage_history: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for build in &history {
        for (name, status, duration_ms) in &build.stages {
            if *status == kiln_core::StageStatus::Success {
                stage_history.entry(name).or_default().push(Sample {
                    started_at: build.started_at,
                    duration_ms: *duration_ms,
                });
            }
        }
    }
    let chronological: Vec<Sample> = builds.iter().rev().copied().collect();
    Ok(PipelinePrediction {
        project: project.slug.clone(),
        branch,
        pipeline,
        at: at.to_rfc3339(),
        build: predict::predict(&builds, Some(at)).map(prediction_dto),
        stages: stage_history
            .into_iter()
            .filter_map(|(name, samples)| {
                predict::predict(&samples, Some(at)).map(|prediction| StagePrediction {
                    name: name.to_owned(),
                    prediction: prediction_dto(prediction),
                })
            })
            .collect(),
        accuracy: predict::replay(&chronological, true).map(|accuracy| PredictionAccuracy {
            median_ape: accuracy.median_ape,
            replayed: accuracy.replayed,
        }),
    })
}
