//! Analytics and prediction reads on both engines: a range of a project's builds along
//! `builds_project_started`, their stages and jobs joined to the same range, and a
//! pipeline's newest successful builds with their stages.

use async_trait::async_trait;
use kiln_core::analytics::{BuildSample, Samples, StageSample};
use kiln_core::{BuildStatus, Millis, StageStatus};
use sqlx::Row;

use super::rows::corrupt;
use super::{SqlStore, trusted};
use crate::{AnalyticsFilter, AnalyticsStore, HistoryBuild, PipelineKey, StoreResult};

/// The filter's `WHERE` over `builds b`, its optional parts only when set (so each
/// combination has its own fixed text), and the values to bind in order.
fn range_clause(filter: &AnalyticsFilter) -> (String, Vec<Bind>) {
    let mut clause = "b.project_id = $1 AND b.started_at >= $2 AND b.started_at < $3".to_owned();
    let mut binds = vec![
        Bind::Int(filter.project_id),
        Bind::Int(filter.from.0),
        Bind::Int(filter.to.0),
    ];
    if let Some(branch) = &filter.branch {
        binds.push(Bind::Text(branch.clone()));
        clause.push_str(&format!(" AND b.branch = ${}", binds.len()));
    }
    if let Some(command) = &filter.command {
        binds.push(Bind::Text(command.clone()));
        clause.push_str(&format!(" AND b.command = ${}", binds.len()));
    }
    (clause, binds)
}

enum Bind {
    Int(i64),
    Text(String),
}

fn bound<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for bind in binds {
        query = match bind {
            Bind::Int(value) => query.bind(*value),
            Bind::Text(value) => query.bind(value.as_str()),
        };
    }
    query
}

fn build_status(name: &str) -> StoreResult<BuildStatus> {
    BuildStatus::from_name(name).ok_or_else(|| corrupt("build", name))
}

fn stage_status(name: &str) -> StoreResult<StageStatus> {
    StageStatus::from_name(name).ok_or_else(|| corrupt("stage", name))
}

#[async_trait]
impl AnalyticsStore for SqlStore {
    async fn analytics_samples(&self, filter: &AnalyticsFilter) -> StoreResult<Samples> {
        let (clause, binds) = range_clause(filter);
        let builds = bound(
            sqlx::query(trusted(format!(
                "SELECT b.started_at, b.ended_at, b.duration_ms, b.status, b.branch, b.metrics FROM builds b WHERE {clause}"
            ))),
            &binds,
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(BuildSample {
                started_at: Millis(row.try_get("started_at")?),
                ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(Millis),
                duration_ms: row.try_get("duration_ms")?,
                status: build_status(&status)?,
                branch: row.try_get("branch")?,
                metrics: super::rows::metrics_from_text(
                    row.try_get::<Option<String>, _>("metrics")?.as_deref(),
                )?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
        let stages = bound(
            sqlx::query(trusted(format!(
                "SELECT s.name, s.status, s.duration_ms FROM stages s JOIN builds b ON b.id = s.build_id WHERE {clause}"
            ))),
            &binds,
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(StageSample {
                name: row.try_get("name")?,
                status: stage_status(&status)?,
                duration_ms: row.try_get("duration_ms")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
        let queue_waits_ms = bound(
            sqlx::query(trusted(format!(
                "SELECT j.started_at - j.queued_at AS wait FROM jobs j JOIN builds b ON b.id = j.build_id \
                 WHERE {clause} AND j.kind = 'agent' AND j.started_at IS NOT NULL AND j.queued_at IS NOT NULL"
            ))),
            &binds,
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok(row.try_get::<i64, _>("wait")?.max(0)))
        .collect::<StoreResult<Vec<_>>>()?;
        Ok(Samples {
            builds,
            stages,
            queue_waits_ms,
        })
    }

    async fn pipeline_history(
        &self,
        key: &PipelineKey,
        limit: i64,
    ) -> StoreResult<Vec<HistoryBuild>> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // `= $N` or `IS NULL` by whether the key has a branch and a command, rather than
        // COALESCE on both sides: PostgreSQL then estimates the share of the project's
        // builds that match and walks them newest first instead of scanning them all.
        let branch = if key.branch.is_some() {
            "b.branch = $2"
        } else {
            "b.branch IS NULL AND $2 = ''"
        };
        let command = if key.command.is_some() {
            "b.command = $3"
        } else {
            "b.command IS NULL AND $3 = ''"
        };
        let rows = sqlx::query(trusted(format!(
            "SELECT b.id, b.started_at, b.duration_ms, b.status FROM builds b \
             WHERE b.project_id = $1 AND {branch} AND {command} \
             AND b.status = 'success' AND b.duration_ms IS NOT NULL ORDER BY b.id DESC LIMIT $4"
        )))
        .bind(key.project_id)
        .bind(key.branch.as_deref().unwrap_or_default())
        .bind(key.command.as_deref().unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut history = rows
            .iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(HistoryBuild {
                    id: row.try_get("id")?,
                    started_at: Millis(row.try_get("started_at")?),
                    duration_ms: row.try_get("duration_ms")?,
                    status: build_status(&status)?,
                    stages: Vec::new(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        if history.is_empty() {
            return Ok(history);
        }
        // The stages of those builds in one statement (the primary key serves the list).
        let list = (1..=history.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut query = sqlx::query(trusted(format!(
            "SELECT s.build_id, s.name, s.status, s.duration_ms FROM stages s \
             WHERE s.build_id IN ({list}) AND s.duration_ms IS NOT NULL"
        )));
        for build in &history {
            query = query.bind(build.id);
        }
        let stage_rows = query.fetch_all(&self.pool).await?;
        let index: std::collections::HashMap<i64, usize> = history
            .iter()
            .enumerate()
            .map(|(position, build)| (build.id, position))
            .collect();
        for row in &stage_rows {
            let build_id: i64 = row.try_get("build_id")?;
            let Some(&position) = index.get(&build_id) else {
                continue;
            };
            let status: String = row.try_get("status")?;
            history[position].stages.push((
                row.try_get("name")?,
                stage_status(&status)?,
                row.try_get("duration_ms")?,
            ));
        }
        Ok(history)
    }
}
