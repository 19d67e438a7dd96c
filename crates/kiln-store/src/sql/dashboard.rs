//! The dashboard's reads: builds of a set of projects, recent durations per pipeline,
//! the events that started a page of builds and how far their jobs got — each one
//! statement per page.

use std::collections::HashMap;

use super::{SqlStore, rows, trusted};
use crate::Engine;
use crate::{BuildFilter, BuildRecord, JobTally, PipelineKey, StoreResult, StoredEvent};
use rows::{BUILD_SELECT, build_from_row};
use sqlx::Row;

/// `$first, $first+1, …` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SqlStore {
    pub(super) async fn q_list_builds(
        &self,
        filter: &BuildFilter,
    ) -> StoreResult<Vec<BuildRecord>> {
        // Optional filters become `($N IS NULL OR column = $N)` so one statement serves
        // every combination; a project set adds `project_id IN (…)` (the dashboard's
        // readable projects), read newest first along the primary key.
        let project_set = match &filter.project_ids {
            Some(ids) if ids.is_empty() => return Ok(Vec::new()),
            Some(ids) => format!(" AND b.project_id IN ({})", placeholders(6, ids.len())),
            None => String::new(),
        };
        let statement = format!(
            "{BUILD_SELECT} WHERE ($1 IS NULL OR b.project_id = $1) AND ($2 IS NULL OR b.branch = $2) \
             AND ($3 IS NULL OR b.status = $3) AND ($4 IS NULL OR b.id < $4){project_set} \
             ORDER BY b.id DESC LIMIT $5"
        );
        let mut query = sqlx::query(trusted(statement))
            .bind(filter.project_id)
            .bind(filter.branch.as_deref())
            .bind(filter.status.map(|s| s.as_str()))
            .bind(filter.before)
            .bind(filter.limit);
        for id in filter.project_ids.iter().flatten() {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(build_from_row).collect()
    }

    pub(super) async fn q_recent_success_durations(
        &self,
        keys: &[PipelineKey],
        per_key: i64,
    ) -> StoreResult<Vec<(PipelineKey, Vec<i64>)>> {
        if keys.is_empty() || per_key <= 0 {
            return Ok(Vec::new());
        }
        // One sub-select per pipeline, each walking its project's builds newest first
        // (index `builds_project`) until it has `per_key` successes, joined by UNION ALL:
        // one round trip however many running builds a page shows. NULL branch or
        // command compare equal through COALESCE (a build without a branch is its own
        // pipeline, not everyone's).
        let parts: Vec<String> = (0..keys.len())
            .map(|index| {
                let base = 2 + index * 3;
                format!(
                    "SELECT * FROM (SELECT {index} AS k, b.id AS id, b.duration_ms AS duration_ms FROM builds b \
                     WHERE b.project_id = ${} AND COALESCE(b.branch, '') = ${} AND COALESCE(b.command, '') = ${} \
                     AND b.status = 'success' AND b.duration_ms IS NOT NULL ORDER BY b.id DESC LIMIT $1) AS s{index}",
                    base,
                    base + 1,
                    base + 2
                )
            })
            .collect();
        let statement = format!("{} ORDER BY k, id DESC", parts.join(" UNION ALL "));
        let mut query = sqlx::query(trusted(statement)).bind(per_key);
        for key in keys {
            query = query
                .bind(key.project_id)
                .bind(key.branch.clone().unwrap_or_default())
                .bind(key.command.clone().unwrap_or_default());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut durations: HashMap<usize, Vec<i64>> = HashMap::new();
        for row in &rows {
            let index: i64 = sqlx::Row::try_get(row, "k")?;
            let duration: i64 = sqlx::Row::try_get(row, "duration_ms")?;
            durations.entry(index as usize).or_default().push(duration);
        }
        let mut found: Vec<(PipelineKey, Vec<i64>)> = durations
            .into_iter()
            .filter_map(|(index, list)| keys.get(index).map(|key| (index, key.clone(), list)))
            .map(|(_, key, list)| (key, list))
            .collect();
        found.sort_by_key(|(key, _)| keys.iter().position(|candidate| candidate == key));
        Ok(found)
    }

    pub(super) async fn q_latest_events(
        &self,
        build_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>> {
        // Walks the `(build_id, seq)` unique index backwards.
        let rows = sqlx::query(
            "SELECT id, seq, build_id, project_id, event_type, received_at, payload FROM events \
             WHERE build_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(build_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::event_from_row).collect()
    }

    pub(super) async fn q_first_events(&self, build_ids: &[i64]) -> StoreResult<Vec<StoredEvent>> {
        if build_ids.is_empty() {
            return Ok(Vec::new());
        }
        let statement = format!(
            "SELECT id, seq, build_id, project_id, event_type, received_at, payload FROM events \
             WHERE seq = 1 AND build_id IN ({}) ORDER BY id",
            placeholders(1, build_ids.len())
        );
        let mut query = sqlx::query(trusted(statement));
        for id in build_ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(rows::event_from_row).collect()
    }

    pub(super) async fn q_job_tallies(&self, build_ids: &[i64]) -> StoreResult<Vec<JobTally>> {
        if build_ids.is_empty() {
            return Ok(Vec::new());
        }
        // The unique (build_id, step) index serves the IN list.
        let statement = format!(
            "SELECT build_id, CAST(SUM(CASE WHEN state = 'passed' THEN 1 ELSE 0 END) AS BIGINT) AS passed, \
             CAST(COUNT(*) AS BIGINT) AS total FROM jobs WHERE build_id IN ({}) GROUP BY build_id",
            placeholders(1, build_ids.len())
        );
        let mut query = sqlx::query(trusted(statement));
        for id in build_ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(JobTally {
                    build_id: row.try_get("build_id")?,
                    passed: row.try_get("passed")?,
                    total: row.try_get("total")?,
                })
            })
            .collect()
    }

    pub(super) async fn q_log_lines_before(&self, job_id: i64, offset: i64) -> StoreResult<i64> {
        // Whole chunks before the offset are counted by the database (newlines are the
        // length lost by removing them); the one chunk the offset falls inside, if any,
        // is read and counted here. PostgreSQL's bytea goes through `encode(…,
        // 'escape')`, which keeps newlines as they are.
        let count_newlines = match self.engine {
            Engine::Sqlite => {
                "length(data) - length(CAST(replace(CAST(data AS TEXT), char(10), '') AS BLOB))"
            }
            Engine::Postgres => {
                "length(encode(data, 'escape')) - length(replace(encode(data, 'escape'), chr(10), ''))"
            }
        };
        let statement = format!(
            "SELECT CAST(COALESCE(SUM({count_newlines}), 0) AS BIGINT) AS lines, \
             CAST(COALESCE(MAX(offset_bytes + length(data)), 0) AS BIGINT) AS counted_to \
             FROM job_logs WHERE job_id = $1 AND offset_bytes + length(data) <= $2"
        );
        let row = sqlx::query(trusted(statement))
            .bind(job_id)
            .bind(offset)
            .fetch_one(&self.pool)
            .await?;
        let mut lines: i64 = sqlx::Row::try_get(&row, "lines")?;
        let counted_to: i64 = sqlx::Row::try_get(&row, "counted_to")?;
        if counted_to < offset {
            let (rest, _) = self
                .q_read_log(job_id, counted_to, offset - counted_to)
                .await?;
            lines += rest.iter().filter(|byte| **byte == b'\n').count() as i64;
        }
        Ok(lines)
    }
}
