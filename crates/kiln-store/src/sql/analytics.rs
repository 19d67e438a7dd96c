//! Analytics and prediction reads on both engines: a range of a project's builds (its
//! closed days from `analytics_days` where valid, the rest along
//! `builds_project_started` with their stages and jobs, in one snapshot; see
//! `analytics_days`), and a pipeline's newest successful builds with their stages.

use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};

use kiln_core::analytics::{Samples, StageSample};
use kiln_core::{BuildStatus, Millis, StageStatus};

use super::analytics_days::{DayBuild, Plan, Span, assemble, decode_rows};
use super::db;
use super::rows::corrupt;
use super::{SqlStore, trusted};
use crate::{AnalyticsFilter, AnalyticsStore, HistoryBuild, PipelineKey, StoreResult};

/// The `WHERE` over `builds b` of a span, with the filter's branch and command when
/// asked (their parts only when set, so each combination has its own fixed text), and
/// the values to bind in order.
fn span_clause(
    project_id: i64,
    span: Span,
    filter: Option<&AnalyticsFilter>,
) -> (String, Vec<Bind>) {
    let mut clause = "b.project_id = $1 AND b.started_at >= $2 AND b.started_at < $3".to_owned();
    let mut binds = vec![
        Bind::Int(project_id),
        Bind::Int(span.from),
        Bind::Int(span.to),
    ];
    if let Some(branch) = filter.and_then(|f| f.branch.as_ref()) {
        binds.push(Bind::Text(branch.clone()));
        clause.push_str(&format!(" AND b.branch = ${}", binds.len()));
    }
    if let Some(command) = filter.and_then(|f| f.command.as_ref()) {
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

/// The three reads of a span, for both engines: its builds, their stages, and the queue
/// waits of their agent jobs, each row naming its build.
fn span_reads(clause: &str) -> [String; 3] {
    [
        format!(
            "SELECT b.id, b.started_at, b.ended_at, b.duration_ms, b.status, b.branch, b.command, b.metrics \
             FROM builds b WHERE {clause}"
        ),
        format!(
            "SELECT s.build_id, s.name, s.status, s.duration_ms FROM stages s JOIN builds b ON b.id = s.build_id WHERE {clause}"
        ),
        format!(
            "SELECT j.build_id, j.started_at - j.queued_at AS wait FROM jobs j JOIN builds b ON b.id = j.build_id \
             WHERE {clause} AND j.kind = 'agent' AND j.started_at IS NOT NULL AND j.queued_at IS NOT NULL"
        ),
    ]
}

/// The builds of one span as the three reads return them, grouped by build.
#[derive(Default)]
struct SpanBuilds {
    builds: Vec<DayBuild>,
    index: HashMap<i64, usize>,
}

impl SpanBuilds {
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        id: i64,
        started_at: i64,
        ended_at: Option<i64>,
        duration_ms: Option<i64>,
        status: &str,
        branch: Option<String>,
        command: Option<String>,
        metrics: Option<&str>,
    ) -> StoreResult<()> {
        self.index.insert(id, self.builds.len());
        self.builds.push(DayBuild {
            started_at,
            ended_at,
            duration_ms,
            status: build_status(status)?,
            branch: branch.map(Into::into),
            command: command.map(Into::into),
            metrics: super::rows::metrics_from_text(metrics)?
                .into_iter()
                .map(|(name, value)| (name.into(), value))
                .collect(),
            stages: Vec::new(),
            waits: Vec::new(),
        });
        Ok(())
    }

    fn of(&mut self, build_id: i64) -> Option<&mut DayBuild> {
        let at = *self.index.get(&build_id)?;
        self.builds.get_mut(at)
    }

    fn stage(
        &mut self,
        build_id: i64,
        name: String,
        status: &str,
        duration_ms: Option<i64>,
    ) -> StoreResult<()> {
        let status = stage_status(status)?;
        if let Some(build) = self.of(build_id) {
            build.stages.push(StageSample {
                name: name.into(),
                status,
                duration_ms,
            });
        }
        Ok(())
    }

    fn wait(&mut self, build_id: i64, wait: i64) {
        if let Some(build) = self.of(build_id) {
            build.waits.push(wait.max(0));
        }
    }
}

/// What a request read inside its snapshot.
struct Read {
    through: i64,
    samples: Samples,
    to_keep: Vec<(i64, Vec<u8>)>,
}

/// The counter read first in a snapshot: every write the snapshot misses has a higher
/// event id.
const COUNTER: &str = "SELECT value FROM kiln_counters WHERE name = 'event_id'";

/// The valid rows of a project's closed days.
const KEPT_DAYS: &str = "SELECT day, data FROM analytics_days \
     WHERE project_id = $1 AND day >= $2 AND day < $3 AND data IS NOT NULL AND changed_at <= computed_through";

/// Only which of a project's closed days are validly kept (when keeping, not reading).
const KEPT_DAY_LIST: &str = "SELECT day FROM analytics_days \
     WHERE project_id = $1 AND day >= $2 AND day < $3 AND data IS NOT NULL AND changed_at <= computed_through";

/// What a read is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The samples of the filter.
    Samples,
    /// Only keeping the closed days not kept yet: kept days are not decoded, the open
    /// rest is not read.
    KeepOnly,
}

/// Keeps a closed day computed as of `computed_through`, unless a newer one is there.
const KEEP_DAY: &str = "INSERT INTO analytics_days (project_id, day, data, computed_through) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (project_id, day) DO UPDATE SET data = excluded.data, computed_through = excluded.computed_through \
     WHERE analytics_days.computed_through <= excluded.computed_through";

/// The reads on a read-only rusqlite connection of its own (SQLite), in one read
/// transaction: the rows of a long range decode several times faster than through sqlx.
fn sqlite_read(
    path: &std::path::Path,
    filter: &AnalyticsFilter,
    now: Millis,
    purpose: Purpose,
) -> StoreResult<Read> {
    use rusqlite::{OpenFlags, params_from_iter};
    let connection = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    let plan = Plan::new(filter, now, purpose == Purpose::KeepOnly);
    // One snapshot for the counter and every read (WAL: a deferred transaction's first
    // read fixes it).
    connection.execute_batch("BEGIN")?;
    let through: i64 = connection.query_row(COUNTER, [], |row| row.get(0))?;
    let mut rows = Vec::new();
    let mut listed = BTreeSet::new();
    if let Some(closed) = plan.closed {
        let range = rusqlite::params![filter.project_id, closed.from, closed.to];
        if purpose == Purpose::KeepOnly {
            let mut statement = connection.prepare(KEPT_DAY_LIST)?;
            let mut found = statement.query(range)?;
            while let Some(row) = found.next()? {
                listed.insert(row.get::<_, i64>(0)?);
            }
        } else {
            let mut statement = connection.prepare(KEPT_DAYS)?;
            let mut found = statement.query(range)?;
            while let Some(row) = found.next()? {
                rows.push((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?));
            }
        }
    }
    let mut samples = Samples::default();
    let mut kept = decode_rows(rows, filter, &mut samples);
    kept.append(&mut listed);
    let read_span =
        |span: Span, filter_by: Option<&AnalyticsFilter>| -> StoreResult<Vec<DayBuild>> {
            let (clause, binds) = span_clause(filter.project_id, span, filter_by);
            let [builds_sql, stages_sql, waits_sql] = span_reads(&clause);
            // `$N` are numbered in order of appearance, so they bind by position in SQLite.
            let values: Vec<rusqlite::types::Value> = binds
                .iter()
                .map(|bind| match bind {
                    Bind::Int(value) => rusqlite::types::Value::Integer(*value),
                    Bind::Text(value) => rusqlite::types::Value::Text(value.clone()),
                })
                .collect();
            let mut span_builds = SpanBuilds::default();
            let mut statement = connection.prepare(&builds_sql)?;
            let mut rows = statement.query(params_from_iter(values.iter()))?;
            while let Some(row) = rows.next()? {
                let status: String = row.get(4)?;
                let metrics: Option<String> = row.get(7)?;
                span_builds.build(
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    &status,
                    row.get(5)?,
                    row.get(6)?,
                    metrics.as_deref(),
                )?;
            }
            let mut statement = connection.prepare(&stages_sql)?;
            let mut rows = statement.query(params_from_iter(values.iter()))?;
            while let Some(row) = rows.next()? {
                let status: String = row.get(2)?;
                span_builds.stage(row.get(0)?, row.get(1)?, &status, row.get(3)?)?;
            }
            let mut statement = connection.prepare(&waits_sql)?;
            let mut rows = statement.query(params_from_iter(values.iter()))?;
            while let Some(row) = rows.next()? {
                span_builds.wait(row.get(0)?, row.get(1)?);
            }
            Ok(span_builds.builds)
        };
    let mut read_closed = Vec::new();
    for span in plan.missing(&kept) {
        read_closed.extend(read_span(span, None)?);
    }
    let mut read_open = Vec::new();
    for span in &plan.open {
        read_open.extend(read_span(*span, Some(filter))?);
    }
    connection.execute_batch("COMMIT")?;
    let to_keep = assemble(filter, &mut samples, &kept, read_closed, read_open, &plan);
    Ok(Read {
        through,
        samples,
        to_keep,
    })
}

/// The reads on the native PostgreSQL pool (typed rows), in one repeatable-read
/// transaction.
async fn postgres_read(
    pool: &super::outage::GuardedPool<sqlx::Postgres>,
    filter: &AnalyticsFilter,
    now: Millis,
    purpose: Purpose,
) -> StoreResult<Read> {
    use sqlx::Row as _;
    let plan = Plan::new(filter, now, purpose == Purpose::KeepOnly);
    let mut transaction = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *transaction)
        .await?;
    let through: i64 = sqlx::query_scalar(COUNTER)
        .fetch_one(&mut *transaction)
        .await?;
    let mut rows = Vec::new();
    let mut listed = BTreeSet::new();
    if let Some(closed) = plan.closed {
        let keep_only = purpose == Purpose::KeepOnly;
        for row in sqlx::query(if keep_only { KEPT_DAY_LIST } else { KEPT_DAYS })
            .bind(filter.project_id)
            .bind(closed.from)
            .bind(closed.to)
            .fetch_all(&mut *transaction)
            .await?
        {
            let day = row.try_get::<i64, _>(0)?;
            if keep_only {
                listed.insert(day);
            } else {
                rows.push((day, row.try_get::<Vec<u8>, _>(1)?));
            }
        }
    }
    let mut samples = Samples::default();
    let mut kept = decode_rows(rows, filter, &mut samples);
    kept.append(&mut listed);
    let mut spans: Vec<(Span, Option<&AnalyticsFilter>)> = plan
        .missing(&kept)
        .into_iter()
        .map(|span| (span, None))
        .collect();
    spans.extend(plan.open.iter().map(|span| (*span, Some(filter))));
    let mut read_closed = Vec::new();
    let mut read_open = Vec::new();
    for (span, filter_by) in spans {
        let (clause, binds) = span_clause(filter.project_id, span, filter_by);
        let [builds_sql, stages_sql, waits_sql] = span_reads(&clause);
        let query = |sql: String| {
            let mut query = sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(sql));
            for bind in &binds {
                query = match bind {
                    Bind::Int(value) => query.bind(*value),
                    Bind::Text(value) => query.bind(value.clone()),
                };
            }
            query
        };
        let mut span_builds = SpanBuilds::default();
        for row in query(builds_sql).fetch_all(&mut *transaction).await? {
            let status: String = row.try_get(4)?;
            let metrics: Option<String> = row.try_get(7)?;
            span_builds.build(
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                &status,
                row.try_get(5)?,
                row.try_get(6)?,
                metrics.as_deref(),
            )?;
        }
        for row in query(stages_sql).fetch_all(&mut *transaction).await? {
            let status: String = row.try_get(2)?;
            span_builds.stage(row.try_get(0)?, row.try_get(1)?, &status, row.try_get(3)?)?;
        }
        for row in query(waits_sql).fetch_all(&mut *transaction).await? {
            span_builds.wait(row.try_get(0)?, row.try_get(1)?);
        }
        if filter_by.is_some() {
            read_open.extend(span_builds.builds);
        } else {
            read_closed.extend(span_builds.builds);
        }
    }
    transaction.commit().await?;
    let to_keep = assemble(filter, &mut samples, &kept, read_closed, read_open, &plan);
    Ok(Read {
        through,
        samples,
        to_keep,
    })
}

impl SqlStore {
    /// Keeps the closed days a read computed (a failure only costs the next read time).
    async fn keep_days(&self, project_id: i64, through: i64, to_keep: Vec<(i64, Vec<u8>)>) {
        if to_keep.is_empty() {
            return;
        }
        let days = to_keep.len();
        let result = if let Some(writer) = &self.writer {
            writer
                .run(move |connection| {
                    let transaction = connection.transaction()?;
                    {
                        let mut keep = transaction.prepare_cached(KEEP_DAY)?;
                        for (day, data) in &to_keep {
                            keep.execute(rusqlite::params![project_id, day, data, through])?;
                        }
                    }
                    transaction.commit()?;
                    Ok(())
                })
                .await
        } else if let Some(pool) = &self.native_pool {
            let (days_list, data): (Vec<i64>, Vec<Vec<u8>>) = to_keep.into_iter().unzip();
            sqlx::query(
                "INSERT INTO analytics_days (project_id, day, data, computed_through) \
                 SELECT $1, day, data, $4 FROM UNNEST($2::BIGINT[], $3::BYTEA[]) AS k(day, data) \
                 ON CONFLICT (project_id, day) DO UPDATE SET data = excluded.data, computed_through = excluded.computed_through \
                 WHERE analytics_days.computed_through <= excluded.computed_through",
            )
            .bind(project_id)
            .bind(&days_list)
            .bind(&data)
            .bind(through)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(Into::into)
        } else {
            Ok(())
        };
        match result {
            Ok(()) => tracing::debug!(project_id, days, through, "analytics days kept"),
            Err(error) => tracing::warn!(%error, project_id, days, "could not keep analytics days"),
        }
    }
}

impl SqlStore {
    /// One read of either purpose on the engine's own connection, then the closed days
    /// it computed kept.
    async fn read_range(
        &self,
        filter: &AnalyticsFilter,
        now: Millis,
        purpose: Purpose,
    ) -> StoreResult<(Samples, usize)> {
        let read = if let Some(pool) = &self.native_pool {
            postgres_read(pool, filter, now, purpose).await?
        } else {
            let Some(path) = self.sqlite_path.clone() else {
                return Err(crate::StoreError::Unavailable(
                    "this store has neither a SQLite file nor a PostgreSQL pool to read analytics from"
                        .into(),
                ));
            };
            let filter = filter.clone();
            tokio::task::spawn_blocking(move || {
                // A read-only connection can be refused while SQLite recovers the WAL
                // index after another connection closed; once more, after a moment, is
                // enough.
                sqlite_read(&path, &filter, now, purpose).or_else(|error| {
                    tracing::warn!(%error, "analytics read failed; retrying once");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    sqlite_read(&path, &filter, now, purpose)
                })
            })
            .await
            .map_err(|e| {
                crate::StoreError::Unavailable(format!("the analytics read stopped: {e}"))
            })??
        };
        let Read {
            through,
            samples,
            to_keep,
        } = read;
        let kept = to_keep.len();
        self.keep_days(filter.project_id, through, to_keep).await;
        Ok((samples, kept))
    }
}

#[async_trait]
impl AnalyticsStore for SqlStore {
    async fn analytics_samples(
        &self,
        filter: &AnalyticsFilter,
        now: Millis,
    ) -> StoreResult<Samples> {
        Ok(self.read_range(filter, now, Purpose::Samples).await?.0)
    }

    async fn keep_closed_days(
        &self,
        project_id: i64,
        from: Millis,
        now: Millis,
    ) -> StoreResult<usize> {
        let filter = AnalyticsFilter {
            project_id,
            from,
            to: now,
            branch: None,
            command: None,
        };
        Ok(self.read_range(&filter, now, Purpose::KeepOnly).await?.1)
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
        let rows = db::query(trusted(format!(
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
        let mut query = db::query(trusted(format!(
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
