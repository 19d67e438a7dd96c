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

fn build_status(name: &str) -> StoreResult<BuildStatus> {
    BuildStatus::from_name(name).ok_or_else(|| corrupt("build", name))
}

fn stage_status(name: &str) -> StoreResult<StageStatus> {
    StageStatus::from_name(name).ok_or_else(|| corrupt("stage", name))
}

/// The three reads of a range, for both engines: its builds, their stages, and the queue
/// waits of their agent jobs.
fn range_reads(clause: &str) -> [String; 3] {
    [
        format!(
            "SELECT b.started_at, b.ended_at, b.duration_ms, b.status, b.branch, b.metrics FROM builds b WHERE {clause}"
        ),
        format!(
            "SELECT s.name, s.status, s.duration_ms FROM stages s JOIN builds b ON b.id = s.build_id WHERE {clause}"
        ),
        format!(
            "SELECT j.started_at - j.queued_at AS wait FROM jobs j JOIN builds b ON b.id = j.build_id \
             WHERE {clause} AND j.kind = 'agent' AND j.started_at IS NOT NULL AND j.queued_at IS NOT NULL"
        ),
    ]
}

/// A build row of the first read, as its columns come.
fn build_sample(
    started_at: i64,
    ended_at: Option<i64>,
    duration_ms: Option<i64>,
    status: &str,
    branch: Option<String>,
    metrics: Option<&str>,
) -> StoreResult<BuildSample> {
    Ok(BuildSample {
        started_at: Millis(started_at),
        ended_at: ended_at.map(Millis),
        duration_ms,
        status: build_status(status)?,
        branch,
        metrics: super::rows::metrics_from_text(metrics)?,
    })
}

/// A stage row of the second read.
fn stage_sample(name: String, status: &str, duration_ms: Option<i64>) -> StoreResult<StageSample> {
    Ok(StageSample {
        name,
        status: stage_status(status)?,
        duration_ms,
    })
}

/// The reads on a read-only rusqlite connection of its own (SQLite): the rows of a long
/// range decode several times faster than through sqlx's `Any` driver.
fn sqlite_samples(path: &std::path::Path, filter: &AnalyticsFilter) -> StoreResult<Samples> {
    use rusqlite::{OpenFlags, params_from_iter};
    let connection = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    let (clause, binds) = range_clause(filter);
    let [builds_sql, stages_sql, waits_sql] = range_reads(&clause);
    // `$N` are numbered in order of appearance, so they bind by position in SQLite.
    let values: Vec<rusqlite::types::Value> = binds
        .iter()
        .map(|bind| match bind {
            Bind::Int(value) => rusqlite::types::Value::Integer(*value),
            Bind::Text(value) => rusqlite::types::Value::Text(value.clone()),
        })
        .collect();
    let mut samples = Samples::default();
    let mut statement = connection.prepare(&builds_sql)?;
    let mut rows = statement.query(params_from_iter(values.iter()))?;
    while let Some(row) = rows.next()? {
        let status: String = row.get(3)?;
        let metrics: Option<String> = row.get(5)?;
        samples.builds.push(build_sample(
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            &status,
            row.get(4)?,
            metrics.as_deref(),
        )?);
    }
    let mut statement = connection.prepare(&stages_sql)?;
    let mut rows = statement.query(params_from_iter(values.iter()))?;
    while let Some(row) = rows.next()? {
        let status: String = row.get(1)?;
        samples
            .stages
            .push(stage_sample(row.get(0)?, &status, row.get(2)?)?);
    }
    let mut statement = connection.prepare(&waits_sql)?;
    let mut rows = statement.query(params_from_iter(values.iter()))?;
    while let Some(row) = rows.next()? {
        samples.queue_waits_ms.push(row.get::<_, i64>(0)?.max(0));
    }
    Ok(samples)
}

/// The reads on the native PostgreSQL pool (typed rows, not `Any`'s).
async fn postgres_samples(
    pool: &super::outage::GuardedPool<sqlx::Postgres>,
    filter: &AnalyticsFilter,
) -> StoreResult<Samples> {
    let (clause, binds) = range_clause(filter);
    let [builds_sql, stages_sql, waits_sql] = range_reads(&clause);
    let fetch = |sql: String| {
        let mut query = sqlx::query::<sqlx::Postgres>(trusted(sql));
        for bind in &binds {
            query = match bind {
                Bind::Int(value) => query.bind(*value),
                Bind::Text(value) => query.bind(value.clone()),
            };
        }
        query.fetch_all(pool)
    };
    let mut samples = Samples::default();
    for row in fetch(builds_sql).await? {
        let status: String = row.try_get(3)?;
        let metrics: Option<String> = row.try_get(5)?;
        samples.builds.push(build_sample(
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            &status,
            row.try_get(4)?,
            metrics.as_deref(),
        )?);
    }
    for row in fetch(stages_sql).await? {
        let status: String = row.try_get(1)?;
        samples
            .stages
            .push(stage_sample(row.try_get(0)?, &status, row.try_get(2)?)?);
    }
    for row in fetch(waits_sql).await? {
        samples
            .queue_waits_ms
            .push(row.try_get::<i64, _>(0)?.max(0));
    }
    Ok(samples)
}

#[async_trait]
impl AnalyticsStore for SqlStore {
    async fn analytics_samples(&self, filter: &AnalyticsFilter) -> StoreResult<Samples> {
        if let Some(pool) = &self.native_pool {
            return postgres_samples(pool, filter).await;
        }
        let Some(path) = self.sqlite_path.clone() else {
            return Err(crate::StoreError::Unavailable(
                "this store has neither a SQLite file nor a PostgreSQL pool to read analytics from"
                    .into(),
            ));
        };
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || {
            // A read-only connection can be refused while SQLite recovers the WAL index
            // after another connection closed; once more, after a moment, is enough.
            sqlite_samples(&path, &filter).or_else(|error| {
                tracing::warn!(%error, "analytics read failed; retrying once");
                std::thread::sleep(std::time::Duration::from_millis(50));
                sqlite_samples(&path, &filter)
            })
        })
        .await
        .map_err(|e| crate::StoreError::Unavailable(format!("the analytics read stopped: {e}")))?
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
