//! The dashboard's reads: builds of a set of projects, recent durations per pipeline,
//! the events that started a page of builds and how far their jobs got — each one
//! statement per page.

use crate::BuildStore;
use async_trait::async_trait;
use std::collections::HashMap;

use std::time::Duration;

use kiln_core::Millis;
use kiln_core::predict::Sample;

use super::db;
use super::{COMMIT_CHANNEL, SqlStore, pg_ingest, rows, trusted};
use crate::Engine;
use crate::records::*;
use crate::{
    BuildFilter, BuildRecord, JobTally, PipelineKey, StoreError, StoreResult, StoredEvent,
};
use rows::{BUILD_SELECT, build_from_row};

/// `$first, $first+1, …` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl BuildStore for SqlStore {
    fn ingest_concurrency(&self) -> usize {
        match self.engine {
            Engine::Sqlite => 1,
            Engine::Postgres => pg_ingest::CONNECTIONS,
        }
    }

    #[tracing::instrument(skip_all, fields(requests = requests.len()))]
    async fn ingest(
        &self,
        requests: &[IngestRequest],
        now: Millis,
    ) -> StoreResult<Vec<Result<Vec<EventOutcome>, IngestRejection>>> {
        match (&self.writer, &self.pg_ingest, &self.native_pool) {
            (Some(writer), _, _) => writer.ingest(requests, now).await,
            (None, Some(ingest), Some(pool)) => {
                ingest.ingest(pool, COMMIT_CHANNEL, requests, now).await
            }
            _ => Err(StoreError::Unavailable(
                "this store has no ingest path (neither SQLite writer nor PostgreSQL pool)".into(),
            )),
        }
    }

    async fn build_by_run_id(&self, run_id: &str) -> StoreResult<Option<BuildRecord>> {
        let row = db::query(trusted(format!("{BUILD_SELECT} WHERE b.run_id = $1")))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut build = build_from_row(&row)?;
        build.state.stages = rows::load_stages(&self.pool, build.id).await?;
        Ok(Some(build))
    }

    async fn events_after(
        &self,
        build_id: i64,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.events_where("build_id", build_id, after_id, limit)
            .await
    }

    async fn project_events_after(
        &self,
        project_id: i64,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.events_where("project_id", project_id, after_id, limit)
            .await
    }

    async fn events_after_global(
        &self,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.events_where("0", 0, after_id, limit).await
    }

    async fn max_event_id(&self) -> StoreResult<i64> {
        let row = db::query("SELECT value FROM kiln_counters WHERE name = 'event_id'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn commit_signals(&self) -> StoreResult<Option<tokio::sync::watch::Receiver<i64>>> {
        if self.engine != Engine::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.database_url).await?;
        listener.listen(COMMIT_CHANNEL).await?;
        let (sender, receiver) = tokio::sync::watch::channel(0_i64);
        tokio::spawn(async move {
            loop {
                let announced = match listener.recv().await {
                    // The payload is the commit's last event id (`pg_ingest`).
                    Ok(notification) => notification.payload().parse().unwrap_or(i64::MAX),
                    Err(error) => {
                        // PgListener reconnects by itself; commits missed meanwhile are
                        // found by looking once more (and by the tailer's periodic
                        // catch-up).
                        tracing::warn!(%error, "commit notifications interrupted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        i64::MAX
                    }
                };
                // The latest announcement replaces any the reader has not seen: commits
                // are announced in commit order, so it covers them.
                if sender.send(announced).is_err() {
                    return;
                }
            }
        });
        Ok(Some(receiver))
    }

    async fn stale_builds(
        &self,
        now: Millis,
        default_timeout_secs: i64,
        limit: i64,
    ) -> StoreResult<Vec<BuildRecord>> {
        let rows = db::query(trusted(format!(
            "{BUILD_SELECT} WHERE b.status = 'running' \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.build_id = b.id AND j.kind = 'agent') \
             AND b.last_event_at + COALESCE(b.heartbeat_timeout_secs, $1) * 1000 <= $2 \
             ORDER BY b.last_event_at LIMIT $3"
        )))
        .bind(default_timeout_secs)
        .bind(now.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(build_from_row).collect()
    }

    async fn list_builds(&self, filter: &BuildFilter) -> StoreResult<Vec<BuildRecord>> {
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
        let mut query = db::query(trusted(statement))
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

    async fn recent_success_durations(
        &self,
        keys: &[PipelineKey],
        per_key: i64,
    ) -> StoreResult<Vec<(PipelineKey, Vec<Sample>)>> {
        if keys.is_empty() || per_key <= 0 {
            return Ok(Vec::new());
        }
        // One sub-select per pipeline, each walking its project's builds newest first
        // (index `builds_project`) until it has `per_key` successes, joined by UNION ALL:
        // one round trip however many running builds a page shows. A key without a
        // branch or command matches only builds without one (its own pipeline, not
        // everyone's).
        // `= $N` or `IS NULL` by whether the key has a branch and a command (not COALESCE
        // on both sides), so PostgreSQL estimates the match and walks the builds newest
        // first instead of scanning the project's history.
        let parts: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                let base = 2 + index * 3;
                let branch = match key.branch {
                    Some(_) => format!("b.branch = ${}", base + 1),
                    None => format!("b.branch IS NULL AND ${} = ''", base + 1),
                };
                let command = match key.command {
                    Some(_) => format!("b.command = ${}", base + 2),
                    None => format!("b.command IS NULL AND ${} = ''", base + 2),
                };
                format!(
                    "SELECT * FROM (SELECT {index} AS k, b.id AS id, b.started_at AS started_at, b.duration_ms AS duration_ms FROM builds b \
                     WHERE b.project_id = ${base} AND {branch} AND {command} \
                     AND b.status = 'success' AND b.duration_ms IS NOT NULL ORDER BY b.id DESC LIMIT $1) AS s{index}"
                )
            })
            .collect();
        let statement = format!("{} ORDER BY k, id DESC", parts.join(" UNION ALL "));
        let mut query = db::query(trusted(statement)).bind(per_key);
        for key in keys {
            query = query
                .bind(key.project_id)
                .bind(key.branch.clone().unwrap_or_default())
                .bind(key.command.clone().unwrap_or_default());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut durations: HashMap<usize, Vec<Sample>> = HashMap::new();
        for row in &rows {
            let index: i64 = row.try_get("k")?;
            durations.entry(index as usize).or_default().push(Sample {
                started_at: Millis(row.try_get("started_at")?),
                duration_ms: row.try_get("duration_ms")?,
            });
        }
        let mut found: Vec<(PipelineKey, Vec<Sample>)> = durations
            .into_iter()
            .filter_map(|(index, list)| keys.get(index).map(|key| (index, key.clone(), list)))
            .map(|(_, key, list)| (key, list))
            .collect();
        found.sort_by_key(|(key, _)| keys.iter().position(|candidate| candidate == key));
        Ok(found)
    }

    async fn latest_events(&self, build_id: i64, limit: i64) -> StoreResult<Vec<StoredEvent>> {
        // Walks the `(build_id, seq)` unique index backwards.
        let rows = db::query(
            "SELECT id, seq, build_id, project_id, event_type, received_at, payload FROM events \
             WHERE build_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(build_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::event_from_row).collect()
    }

    async fn first_events(&self, build_ids: &[i64]) -> StoreResult<Vec<StoredEvent>> {
        if build_ids.is_empty() {
            return Ok(Vec::new());
        }
        let statement = format!(
            "SELECT id, seq, build_id, project_id, event_type, received_at, payload FROM events \
             WHERE seq = 1 AND build_id IN ({}) ORDER BY id",
            placeholders(1, build_ids.len())
        );
        let mut query = db::query(trusted(statement));
        for id in build_ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(rows::event_from_row).collect()
    }

    async fn job_tallies(&self, build_ids: &[i64]) -> StoreResult<Vec<JobTally>> {
        if build_ids.is_empty() {
            return Ok(Vec::new());
        }
        // The unique (build_id, step) index serves the IN list.
        let statement = format!(
            "SELECT build_id, CAST(SUM(CASE WHEN state = 'passed' THEN 1 ELSE 0 END) AS BIGINT) AS passed, \
             CAST(COUNT(*) AS BIGINT) AS total FROM jobs WHERE build_id IN ({}) AND kind = 'agent' GROUP BY build_id",
            placeholders(1, build_ids.len())
        );
        let mut query = db::query(trusted(statement));
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
}
