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

/// The three reads on a read-only rusqlite connection of its own (SQLite): the rows of
/// a long range decode several times faster than through sqlx's `Any` driver.
fn sqlite_samples(path: &std::path::Path, filter: &AnalyticsFilter) -> StoreResult<Samples> {
    use rusqlite::{OpenFlags, params_from_iter};
    let connection = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    let (clause, binds) = range_clause(filter);
    // `$N` are numbered in order of appearance, so they bind by position in SQLite.
    let values: Vec<rusqlite::types::Value> = binds
        .iter()
        .map(|bind| match bind {
            Bind::Int(value) => rusqlite::types::Value::Integer(*value),
            Bind::Text(value) => rusqlite::types::Value::Text(value.clone()),
        })
        .collect();
    let mut builds = Vec::new();
    let mut statement = connection.prepare(&format!(
        "SELECT b.started_at, b.ended_at, b.duration_ms, b.status, b.branch, b.metrics FROM builds b WHERE {clause}"
    ))?;
    let mut rows = statement.query(params_from_iter(values.iter()))?;
    while let Some(row) = rows.next()? {
        let status: String = row.get(3)?;
        let metrics: Option<String> = row.get(5)?;
        builds.push(BuildSample {
            started_at: Millis(row.get(0)?),
            ended_at: row.get::<_, Option<i64>>(1)?.map(Millis),
            duration_ms: row.get(2)?,
            status: build_status(&status)?,
            branch: row.get(4)?,
            metrics: super::rows::metrics_from_text(metrics.as_deref())?,
        });
    }
    let mut stages = Vec::new();
    let mut statement = connection.prepare(&format!(
        "SELECT s.name, s.status, s.duration_ms FROM stages s JOIN builds b ON b.id = s.build_id WHERE {clause}"
    ))?;
    let mut rows = statement.query(params_from_iter(values.iter()))?;
    while let Some(row) = rows.next()? {
        let status: String = row.get(1)?;
        stages.push(StageSample {
            name: row.get(0)?,
            status: stage_status(&status)?,
            duration_ms: row.get(2)?,
        });
    }
    let mut queue_waits_ms = Vec::new();
    let mut statement = connection.prepare(&format!(
        "SELECT j.started_at - j.queued_at AS wait FROM jobs j JOIN builds b ON b.id = j.build_id \
         WHERE {clause} AND j.kind = 'agent' AND j.started_at IS NOT NULL AND j.queued_at IS NOT NULL"
    ))?;
    let mut rows = statement.query(params_from_iter(values.iter()))?;
    while let Some(row) = rows.next()? {
        queue_waits_ms.push(row.get::<_, i64>(0)?.max(0));
    }
    Ok(Samples {
        builds,
        stages,
        queue_waits_ms,
    })
}

/// The three reads on the native PostgreSQL pool (typed rows, not `Any`'s).
async fn postgres_samples(pool: &sqlx::PgPool, filter: &AnalyticsFilter) -> StoreResult<Samples> {
    let (clause, binds) = range_clause(filter);
    let bound = |sql: String| {
        let mut query = sqlx::query::<sqlx::Postgres>(trusted(sql));
        for bind in &binds {
            query = match bind {
                Bind::Int(value) => query.bind(*value),
                Bind::Text(value) => query.bind(value.clone()),
            };
        }
        query
    };
    let builds = bound(format!(
        "SELECT b.started_at, b.ended_at, b.duration_ms, b.status, b.branch, b.metrics FROM builds b WHERE {clause}"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        let status: String = row.try_get(3)?;
        let metrics: Option<String> = row.try_get(5)?;
        Ok(BuildSample {
            started_at: Millis(row.try_get(0)?),
            ended_at: row.try_get::<Option<i64>, _>(1)?.map(Millis),
            duration_ms: row.try_get(2)?,
            status: build_status(&status)?,
            branch: row.try_get(4)?,
            metrics: super::rows::metrics_from_text(metrics.as_deref())?,
        })
    })
    .collect::<StoreResult<Vec<_>>>()?;
    let stages = bound(format!(
        "SELECT s.name, s.status, s.duration_ms FROM stages s JOIN builds b ON b.id = s.build_id WHERE {clause}"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        let status: String = row.try_get(1)?;
        Ok(StageSample {
            name: row.try_get(0)?,
            status: stage_status(&status)?,
            duration_ms: row.try_get(2)?,
        })
    })
    .collect::<StoreResult<Vec<_>>>()?;
    let queue_waits_ms = bound(format!(
        "SELECT j.started_at - j.queued_at AS wait FROM jobs j JOIN builds b ON b.id = j.build_id \
         WHERE {clause} AND j.kind = 'agent' AND j.started_at IS NOT NULL AND j.queued_at IS NOT NULL"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| Ok(row.try_get::<i64, _>(0)?.max(0)))
    .collect::<StoreResult<Vec<_>>>()?;
    Ok(Samples {
        builds,
        stages,
        queue_waits_ms,
    })
}

#[async_trait]
impl AnalyticsStore for SqlStore {
    async fn analytics_samples(&self, filter: &AnalyticsFilter) -> StoreResult<Samples> {
        if let Some(pool) = &self.native_pool {
            return postgres_samples(pool, filter).await;
        }
        if let Some(path) = &self.sqlite_path {
            let path = path.clone();
            let owned = filter.clone();
            match tokio::task::spawn_blocking(move || sqlite_samples(&path, &owned)).await {
                Ok(Ok(samples)) => return Ok(samples),
                // A read-only connection can be refused while SQLite recovers the WAL
                // index; the pool's connections answer the same question, only slower.
                Ok(Err(error)) => {
                    tracing::warn!(%error, "analytics read on its own connection failed; reading through the pool")
                }
                Err(error) => {
                    tracing::warn!(%error, "analytics read task failed; reading through the pool")
                }
            }
        }
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
