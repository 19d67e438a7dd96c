//! Builds Kiln runs, in SQL: project repositories, branches, agents, the job queue and
//! job logs. Every state change is a single compare-and-set statement (`… WHERE state =
//! 'running' AND attempt = $n`), so concurrent servers and agents cannot both win, and
//! SQLite's write lock is taken by the first statement of any transaction here.

use crate::QueueStore;
use async_trait::async_trait;
use std::collections::HashMap;

use kiln_core::{JobState, Millis};
use serde_json::Value;

use super::db::{self, Row};
use super::ingest::{JobRow, insert_jobs};
use super::{SqlStore, rows, trusted};
use crate::queue::*;
use crate::records::Project;
use crate::{Engine, StoreError, StoreResult};

const AGENT_COLUMNS: &str = "id, name, token_id, labels, concurrency, executor, hostname, version, \
     registered_at, last_seen_at, metrics";

const BRANCH_COLUMNS: &str = "project_id, name, priority, auto_build, last_commit, created_at";

const JOB_SELECT: &str = "SELECT j.id, j.build_id, j.project_id, p.slug, p.repo, b.run_id, b.number, b.branch, \
     b.commit_sha, j.step, j.position, j.state, j.priority, j.depends_on, j.labels, j.spec, j.attempt, \
     j.agent_id, a.name AS agent_name, j.lease_expires_at, j.cancel_requested, j.created_at, j.queued_at, \
     j.started_at, j.finished_at, j.exit_code, j.reason, j.log_size, j.kind, \
     CAST(CASE WHEN p.repo_credentials IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_repo_credentials \
     FROM jobs j JOIN builds b ON b.id = j.build_id JOIN projects p ON p.id = j.project_id \
     LEFT JOIN agents a ON a.id = j.agent_id";

/// Queued jobs a claim looks at, best first; enough that label and concurrency filters
/// rarely exhaust them.
const CLAIM_CANDIDATES: i64 = 200;

/// The claim on PostgreSQL, one statement: the best queued job this agent may run (its
/// labels contained in the agent's, its project under `max_concurrency`, the agent under
/// its own concurrency), locked with `SKIP LOCKED` so concurrent claims on any replica
/// pass each other instead of queueing on one row, and taken. `$1` agent, `$2` lease end, `$3` now, `$4` the agent's labels as a
/// JSON list, `$5` its concurrency, `$6` the aging period. A job that avoids this agent
/// (`avoid_agent_id`) is passed over for its first `AVOIDED_AGENT_HOLD_MS` queued.
static PG_CLAIM_TAKE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    PG_CLAIM_TAKE_TEXT.replacen(
        "WHERE j.state = 'queued' ",
        &format!(
            "WHERE j.state = 'queued' \
             AND (j.avoid_agent_id IS NULL OR j.avoid_agent_id <> $1 \
               OR j.queued_at <= $3 - {AVOIDED_AGENT_HOLD_MS}) "
        ),
        1,
    )
});

const PG_CLAIM_TAKE_TEXT: &str = "WITH claimed AS ( \
       UPDATE jobs SET state = 'running', agent_id = $1, attempt = attempt + 1, \
         lease_expires_at = $2, started_at = $3, finished_at = NULL, exit_code = NULL, \
         reason = NULL, cancel_requested = 0 \
       WHERE id = ( \
         SELECT j.id FROM jobs j JOIN projects p ON p.id = j.project_id \
         WHERE j.state = 'queued' \
           AND j.labels::jsonb <@ $4::jsonb \
           AND (p.max_concurrency IS NULL OR p.max_concurrency > \
             (SELECT COUNT(*) FROM jobs r WHERE r.project_id = j.project_id AND r.state = 'running' AND r.kind = 'agent')) \
           AND (SELECT COUNT(*) FROM jobs r WHERE r.agent_id = $1 AND r.state = 'running') < $5 \
         ORDER BY j.priority - (($3 - j.queued_at) / $6), j.queued_at, j.id \
         LIMIT 1 FOR UPDATE OF j SKIP LOCKED) \
       RETURNING *)";

/// `PG_CLAIM_TAKE` followed by `JOB_SELECT` over the claimed row.
static PG_CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} {}",
        *PG_CLAIM_TAKE,
        JOB_SELECT.replacen("FROM jobs j", "FROM claimed j", 1)
    )
});

const PG_CLAIM_ORDER: &str = "ORDER BY j.priority - (($3 - j.queued_at) / $6), j.queued_at, j.id";

/// `PG_CLAIM` with `ClaimHints`: `$7` the hold's queue-time bound, `$8` the held steps
/// and `$9` the preferred ones, each a JSON list of `[project id, step]` pairs. Used
/// only when there are hints, so the plain claim pays nothing for them.
static PG_CLAIM_HINTED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let step = "jsonb_build_array(jsonb_build_array(j.project_id, j.step))";
    PG_CLAIM.replacen(
        PG_CLAIM_ORDER,
        &format!(
            "AND NOT (j.queued_at >= $7 AND $8::jsonb @> {step}) \
             ORDER BY j.priority - (($3 - j.queued_at) / $6), \
             CASE WHEN $9::jsonb @> {step} THEN 0 ELSE 1 END, j.queued_at, j.id"
        ),
        1,
    )
});

/// At most this many steps per statement of `step_runs` and `agent_caches`.
const STEPS_PER_READ: usize = 200;

/// `(j.project_id = $first AND j.step = $first+1) OR …` for `count` steps.
fn step_filter(prefix: &str, first: usize, count: usize) -> String {
    (0..count)
        .map(|n| {
            format!(
                "({prefix}project_id = ${} AND {prefix}step = ${})",
                first + 2 * n,
                first + 2 * n + 1
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("corrupt {what} row: {detail}"))
}

fn json_list(text: &str, what: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

fn to_json_text(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

fn agent_from_row(row: &Row) -> StoreResult<AgentRecord> {
    let labels: String = row.try_get("labels")?;
    let metrics: Option<String> = row.try_get("metrics")?;
    Ok(AgentRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        token_id: row.try_get("token_id")?,
        labels: json_list(&labels, "agent")?,
        concurrency: row.try_get("concurrency")?,
        executor: row.try_get("executor")?,
        hostname: row.try_get("hostname")?,
        version: row.try_get("version")?,
        registered_at: Millis(row.try_get("registered_at")?),
        last_seen_at: Millis(row.try_get("last_seen_at")?),
        metrics: metrics.and_then(|text| serde_json::from_str(&text).ok()),
    })
}

fn branch_from_row(row: &Row) -> StoreResult<BranchRecord> {
    Ok(BranchRecord {
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        priority: row.try_get("priority")?,
        auto_build: row.try_get::<i64, _>("auto_build")? != 0,
        last_commit: row.try_get("last_commit")?,
        created_at: Millis(row.try_get("created_at")?),
    })
}

fn job_from_row(row: &Row) -> StoreResult<JobRecord> {
    let state: String = row.try_get("state")?;
    let depends_on: String = row.try_get("depends_on")?;
    let labels: String = row.try_get("labels")?;
    let spec: String = row.try_get("spec")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        build_id: row.try_get("build_id")?,
        project_id: row.try_get("project_id")?,
        project_slug: row.try_get("slug")?,
        repo: row.try_get("repo")?,
        run_id: row.try_get("run_id")?,
        build_number: row.try_get("number")?,
        branch: row.try_get("branch")?,
        commit: row.try_get("commit_sha")?,
        step: row.try_get("step")?,
        position: row.try_get("position")?,
        state: JobState::from_name(&state).ok_or_else(|| corrupt("job", &state))?,
        priority: row.try_get("priority")?,
        depends_on: json_list(&depends_on, "job")?,
        labels: json_list(&labels, "job")?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("job", e))?,
        attempt: row.try_get("attempt")?,
        agent_id: row.try_get("agent_id")?,
        agent_name: row.try_get("agent_name")?,
        lease_expires_at: row
            .try_get::<Option<i64>, _>("lease_expires_at")?
            .map(Millis),
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: Millis(row.try_get("created_at")?),
        queued_at: row.try_get::<Option<i64>, _>("queued_at")?.map(Millis),
        started_at: row.try_get::<Option<i64>, _>("started_at")?.map(Millis),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(Millis),
        exit_code: row.try_get("exit_code")?,
        reason: row.try_get("reason")?,
        log_size: row.try_get("log_size")?,
        reported: row.try_get::<String, _>("kind")? == "reported",
        has_repo_credentials: row.try_get::<i64, _>("has_repo_credentials")? != 0,
    })
}

/// `$first, $first+1, …` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQLite claim's candidates (in the claim order) as the hints reorder them: held
/// steps' jobs queued at or after the bound left out, preferred steps' jobs first among
/// those of equal aged priority. Without hints, the rows as they are.
fn hinted_order<'a>(rows: &'a [Row], hints: &ClaimHints) -> StoreResult<Vec<&'a Row>> {
    if hints.is_empty() {
        return Ok(rows.iter().collect());
    }
    let listed = |steps: &[(i64, String)], project_id: i64, step: &str| {
        steps
            .iter()
            .any(|(project, name)| *project == project_id && name == step)
    };
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let project_id: i64 = row.try_get("project_id")?;
        let step: String = row.try_get("step")?;
        let queued_at: i64 = row.try_get::<Option<i64>, _>("queued_at")?.unwrap_or(0);
        if queued_at >= hints.hold_queued_after.0 && listed(&hints.held_steps, project_id, &step) {
            continue;
        }
        let aged: i64 = row.try_get("aged")?;
        let preferred = listed(&hints.preferred_steps, project_id, &step);
        kept.push((aged, !preferred, row));
    }
    // Stable: within the same (aged priority, preference) the claim order stays.
    kept.sort_by_key(|(aged, not_preferred, _)| (*aged, *not_preferred));
    Ok(kept.into_iter().map(|(_, _, row)| row).collect())
}

#[async_trait]
impl QueueStore for SqlStore {
    async fn set_project_repo(
        &self,
        project_id: i64,
        repo: Option<&str>,
        default_branch: &str,
        max_concurrency: Option<i64>,
    ) -> StoreResult<Project> {
        let row = db::query(trusted(format!(
            "UPDATE projects SET repo = $1, default_branch = $2, max_concurrency = $3 WHERE id = $4 RETURNING {}",
            rows::PROJECT_COLUMNS
        )))
        .bind(repo)
        .bind(default_branch)
        .bind(max_concurrency)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(rows::project_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("project"))
    }

    async fn upsert_branch(
        &self,
        project_id: i64,
        name: &str,
        priority: Option<i64>,
        auto_build: bool,
        now: Millis,
    ) -> StoreResult<BranchRecord> {
        let row = db::query(trusted(format!(
            "INSERT INTO branches (project_id, name, priority, auto_build, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (project_id, name) DO UPDATE SET priority = excluded.priority, auto_build = excluded.auto_build \
             RETURNING {BRANCH_COLUMNS}"
        )))
        .bind(project_id)
        .bind(name)
        .bind(priority)
        .bind(i64::from(auto_build))
        .bind(now.0)
        .fetch_one(&self.pool)
        .await?;
        branch_from_row(&row)
    }

    async fn list_branches(&self, project_id: i64) -> StoreResult<Vec<BranchRecord>> {
        let rows = db::query(trusted(format!(
            "SELECT {BRANCH_COLUMNS} FROM branches WHERE project_id = $1 ORDER BY name"
        )))
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(branch_from_row).collect()
    }

    async fn delete_branch(&self, project_id: i64, name: &str) -> StoreResult<()> {
        let done = db::query("DELETE FROM branches WHERE project_id = $1 AND name = $2")
            .bind(project_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("branch"));
        }
        Ok(())
    }

    async fn auto_build_branches(&self) -> StoreResult<Vec<(Project, BranchRecord)>> {
        let rows = db::query(
            "SELECT br.project_id, br.name, br.priority, br.auto_build, br.last_commit, br.created_at \
             FROM branches br JOIN projects p ON p.id = br.project_id WHERE br.auto_build = 1 AND p.repo IS NOT NULL ORDER BY br.project_id, br.name"
        )
        .fetch_all(&self.pool)
        .await?;
        let mut projects: HashMap<i64, Project> = HashMap::new();
        let mut result = Vec::with_capacity(rows.len());
        for row in &rows {
            let branch = branch_from_row(row)?;
            let project = match projects.get(&branch.project_id) {
                Some(project) => project.clone(),
                None => {
                    let project = crate::ProjectStore::project_by_id(self, branch.project_id)
                        .await?
                        .ok_or(StoreError::NotFound("project"))?;
                    projects.insert(project.id, project.clone());
                    project
                }
            };
            result.push((project, branch));
        }
        Ok(result)
    }

    async fn advance_branch_commit(
        &self,
        project_id: i64,
        name: &str,
        previous: Option<&str>,
        commit: &str,
    ) -> StoreResult<bool> {
        let done = db::query(
            "UPDATE branches SET last_commit = $1 WHERE project_id = $2 AND name = $3 \
             AND COALESCE(last_commit, '') = $4",
        )
        .bind(commit)
        .bind(project_id)
        .bind(name)
        .bind(previous.unwrap_or(""))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn register_agent(&self, agent: &NewAgent, now: Millis) -> StoreResult<AgentRecord> {
        let row = db::query(trusted(format!(
            "INSERT INTO agents (name, token_id, labels, concurrency, executor, hostname, version, registered_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (name) DO UPDATE SET token_id = excluded.token_id, \
             labels = excluded.labels, concurrency = excluded.concurrency, executor = excluded.executor, \
             hostname = excluded.hostname, version = excluded.version, registered_at = excluded.registered_at, \
             last_seen_at = excluded.last_seen_at RETURNING {AGENT_COLUMNS}"
        )))
        .bind(&agent.name)
        .bind(agent.token_id)
        .bind(to_json_text(&agent.labels))
        .bind(agent.concurrency)
        .bind(&agent.executor)
        .bind(agent.hostname.as_deref())
        .bind(agent.version.as_deref())
        .bind(now.0)
        .fetch_one(&self.pool)
        .await?;
        agent_from_row(&row)
    }

    async fn agent_by_id(&self, id: i64) -> StoreResult<Option<AgentRecord>> {
        let row = db::query(trusted(format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        let rows = db::query(trusted(format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn touch_agent(&self, id: i64, now: Millis, metrics: Option<&Value>) -> StoreResult<()> {
        db::query(
            "UPDATE agents SET last_seen_at = $1, metrics = COALESCE($2, metrics) WHERE id = $3",
        )
        .bind(now.0)
        .bind(metrics.map(Value::to_string))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_jobs(
        &self,
        build_id: i64,
        project_id: i64,
        priority: i64,
        jobs: &[JobPlan],
        now: Millis,
    ) -> StoreResult<()> {
        let rows: Vec<JobRow> = jobs
            .iter()
            .map(|plan| JobRow::new(build_id, project_id, priority, plan, now))
            .collect();
        let mut transaction = self.pool.begin().await?;
        insert_jobs(&mut transaction, &rows).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn job_by_id(&self, id: i64) -> StoreResult<Option<JobRecord>> {
        let row = db::query(trusted(format!("{JOB_SELECT} WHERE j.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn jobs_of_build(&self, build_id: i64) -> StoreResult<Vec<JobRecord>> {
        let rows = db::query(trusted(format!(
            "{JOB_SELECT} WHERE j.build_id = $1 ORDER BY j.position"
        )))
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn unfinished_jobs(&self, limit: i64) -> StoreResult<Vec<JobRecord>> {
        let rows = db::query(trusted(format!(
            "{JOB_SELECT} WHERE j.state IN ('blocked', 'queued', 'running') AND j.kind = 'agent' ORDER BY j.id LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn claim_job_with(
        &self,
        agent: &AgentRecord,
        rules: ClaimRules,
        hints: &ClaimHints,
        now: Millis,
    ) -> StoreResult<Option<JobRecord>> {
        if self.engine == crate::Engine::Postgres {
            let labels = serde_json::to_string(&agent.labels)
                .map_err(|error| StoreError::Unavailable(format!("agent labels: {error}")))?;
            let statement = if hints.is_empty() {
                &PG_CLAIM
            } else {
                &PG_CLAIM_HINTED
            };
            let mut query = db::query(trusted(statement.to_string()))
                .bind(agent.id)
                .bind(now.0 + rules.lease_ms)
                .bind(now.0)
                .bind(labels)
                .bind(agent.concurrency)
                .bind(rules.aging_ms.max(1));
            if !hints.is_empty() {
                let steps = |steps: &[(i64, String)]| {
                    serde_json::to_string(steps).unwrap_or_else(|_| "[]".into())
                };
                query = query
                    .bind(hints.hold_queued_after.0)
                    .bind(steps(&hints.held_steps))
                    .bind(steps(&hints.preferred_steps));
            }
            let mut slot = self.claim_connection.lock().await;
            let connection = match slot.as_mut() {
                Some(connection) => connection,
                None => {
                    let mut connection = self.pool.connection().await?;
                    db::query("SET plan_cache_mode = force_generic_plan")
                        .execute(&mut connection)
                        .await?;
                    slot.insert(connection)
                }
            };
            let row = match query.fetch_optional(&mut *connection).await {
                Ok(row) => row,
                Err(error) => {
                    // A broken connection is not kept; the pool hears of the outage.
                    *slot = None;
                    if let (StoreError::Database(_), Some(pool)) = (&error, self.pool.postgres()) {
                        pool.probe_soon();
                    }
                    return Err(error);
                }
            };
            return row.as_ref().map(job_from_row).transpose();
        }
        // One round trip: the best queued jobs, each row also carrying how many jobs
        // the agent runs now.
        let rows = db::query(
            "SELECT j.id, j.project_id, j.step, j.queued_at, j.labels, j.avoid_agent_id, p.max_concurrency, \
             j.priority - (($1 - j.queued_at) / $2) AS aged, \
             (SELECT COUNT(*) FROM jobs r WHERE r.agent_id = $4 AND r.state = 'running') AS agent_running \
             FROM jobs j JOIN projects p ON p.id = j.project_id WHERE j.state = 'queued' \
             ORDER BY j.priority - (($1 - j.queued_at) / $2), j.queued_at, j.id LIMIT $3",
        )
        .bind(now.0)
        .bind(rules.aging_ms.max(1))
        .bind(CLAIM_CANDIDATES)
        .bind(agent.id)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        if first.try_get::<i64, _>("agent_running")? >= agent.concurrency {
            return Ok(None);
        }
        let candidates = hinted_order(&rows, hints)?;
        let mut project_running: HashMap<i64, i64> = HashMap::new();
        for candidate in candidates {
            let job_id: i64 = candidate.try_get("id")?;
            let project_id: i64 = candidate.try_get("project_id")?;
            let labels: String = candidate.try_get("labels")?;
            let labels = json_list(&labels, "job")?;
            if !labels.iter().all(|label| agent.labels.contains(label)) {
                continue;
            }
            let avoids_me =
                candidate.try_get::<Option<i64>, _>("avoid_agent_id")? == Some(agent.id);
            let queued_at: i64 = candidate
                .try_get::<Option<i64>, _>("queued_at")?
                .unwrap_or(0);
            if avoids_me && queued_at > now.0 - AVOIDED_AGENT_HOLD_MS {
                continue;
            }
            if let Some(limit) = candidate.try_get::<Option<i64>, _>("max_concurrency")? {
                let running = match project_running.get(&project_id) {
                    Some(count) => *count,
                    None => {
                        let count: i64 = db::query(
                            "SELECT COUNT(*) FROM jobs WHERE project_id = $1 AND state = 'running' AND kind = 'agent'",
                        )
                        .bind(project_id)
                        .fetch_one(&self.pool)
                        .await?
                        .try_get(0)?;
                        project_running.insert(project_id, count);
                        count
                    }
                };
                if running >= limit {
                    continue;
                }
            }
            let claimed = db::query(
                "UPDATE jobs SET state = 'running', agent_id = $1, attempt = attempt + 1, lease_expires_at = $2, \
                 started_at = $3, finished_at = NULL, exit_code = NULL, reason = NULL, cancel_requested = 0 \
                 WHERE id = $4 AND state = 'queued'",
            )
            .bind(agent.id)
            .bind(now.0 + rules.lease_ms)
            .bind(now.0)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
            if claimed.rows_affected() == 1 {
                return self.job_by_id(job_id).await;
            }
        }
        Ok(None)
    }

    async fn step_runs(
        &self,
        steps: &[(i64, String)],
        since: Millis,
        per_agent: i64,
    ) -> StoreResult<Vec<StepRun>> {
        let mut runs = Vec::new();
        for chunk in steps.chunks(STEPS_PER_READ) {
            // The window keeps each (step, agent)'s newest runs; the index on (project,
            // step, state, finished_at) finds each step's passed jobs.
            let statement = format!(
                "SELECT project_id, step, agent_id, duration_ms FROM ( \
                   SELECT j.project_id, j.step, j.agent_id, j.finished_at - j.started_at AS duration_ms, \
                     ROW_NUMBER() OVER (PARTITION BY j.project_id, j.step, j.agent_id ORDER BY j.finished_at DESC) AS newest \
                   FROM jobs j WHERE j.state = 'passed' AND j.kind = 'agent' AND j.agent_id IS NOT NULL \
                     AND j.started_at IS NOT NULL AND j.finished_at >= $1 AND ({}) \
                 ) ranked WHERE newest <= $2 ORDER BY project_id, step, agent_id",
                step_filter("j.", 3, chunk.len())
            );
            let mut query = db::query(trusted(statement)).bind(since.0).bind(per_agent);
            for (project_id, step) in chunk {
                query = query.bind(*project_id).bind(step.as_str());
            }
            for row in query.fetch_all(&self.pool).await? {
                runs.push(StepRun {
                    project_id: row.try_get("project_id")?,
                    step: row.try_get("step")?,
                    agent_id: row.try_get("agent_id")?,
                    duration_ms: row.try_get("duration_ms")?,
                });
            }
        }
        Ok(runs)
    }

    async fn agent_caches(
        &self,
        steps: &[(i64, String)],
        since: Millis,
    ) -> StoreResult<Vec<AgentCache>> {
        let mut caches = Vec::new();
        for chunk in steps.chunks(STEPS_PER_READ) {
            let statement = format!(
                "SELECT agent_id, project_id, step, cache_key, used_at FROM agent_caches \
                 WHERE used_at >= $1 AND ({}) ORDER BY used_at DESC",
                step_filter("", 2, chunk.len())
            );
            let mut query = db::query(trusted(statement)).bind(since.0);
            for (project_id, step) in chunk {
                query = query.bind(*project_id).bind(step.as_str());
            }
            for row in query.fetch_all(&self.pool).await? {
                caches.push(AgentCache {
                    agent_id: row.try_get("agent_id")?,
                    project_id: row.try_get("project_id")?,
                    step: row.try_get("step")?,
                    cache_key: row.try_get("cache_key")?,
                    used_at: Millis(row.try_get("used_at")?),
                });
            }
        }
        Ok(caches)
    }

    async fn record_agent_cache(
        &self,
        agent_id: i64,
        project_id: i64,
        step: &str,
        cache_key: &str,
        now: Millis,
    ) -> StoreResult<()> {
        db::query(
            "INSERT INTO agent_caches (agent_id, cache_key, project_id, step, used_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id, cache_key) \
             DO UPDATE SET used_at = excluded.used_at, project_id = excluded.project_id, step = excluded.step",
        )
        .bind(agent_id)
        .bind(cache_key)
        .bind(project_id)
        .bind(step)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn renew_leases(
        &self,
        agent_id: i64,
        job_ids: &[i64],
        now: Millis,
        lease_ms: i64,
    ) -> StoreResult<Vec<HeldJob>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = db::query(
            "SELECT id, cancel_requested, lease_expires_at FROM jobs WHERE agent_id = $1 AND state = 'running'",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        let mut held: HashMap<i64, (bool, i64)> = HashMap::new();
        for row in &rows {
            held.insert(
                row.try_get("id")?,
                (
                    row.try_get::<i64, _>("cancel_requested")? != 0,
                    row.try_get::<Option<i64>, _>("lease_expires_at")?
                        .unwrap_or(0),
                ),
            );
        }
        // Renew only once a third of the lease is used: a heartbeat every second must
        // not be a write every second.
        let lease_until = now.0 + lease_ms;
        let renew: Vec<i64> = job_ids
            .iter()
            .copied()
            .filter(|id| {
                held.get(id)
                    .is_some_and(|(_, expires)| lease_until - expires > lease_ms / 3)
            })
            .collect();
        if !renew.is_empty() {
            let statement = format!(
                "UPDATE jobs SET lease_expires_at = $1 WHERE agent_id = $2 AND state = 'running' AND id IN ({})",
                placeholders(3, renew.len())
            );
            let mut query = db::query(trusted(statement))
                .bind(lease_until)
                .bind(agent_id);
            for id in &renew {
                query = query.bind(*id);
            }
            query.execute(&self.pool).await?;
        }
        Ok(job_ids
            .iter()
            .map(|id| HeldJob {
                job_id: *id,
                held: held.contains_key(id),
                cancel_requested: held.get(id).is_some_and(|(cancel, _)| *cancel),
            })
            .collect())
    }

    async fn finish_job(
        &self,
        job_id: i64,
        attempt: i64,
        agent_id: Option<i64>,
        end: &JobEnd,
        now: Millis,
    ) -> StoreResult<bool> {
        let done = db::query(
            "UPDATE jobs SET state = $1, exit_code = $2, reason = $3, finished_at = $4, lease_expires_at = NULL \
             WHERE id = $5 AND state = 'running' AND attempt = $6 AND ($7 IS NULL OR agent_id = $7)",
        )
        .bind(end.state.as_str())
        .bind(end.exit_code)
        .bind(end.reason.as_deref())
        .bind(now.0)
        .bind(job_id)
        .bind(attempt)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn requeue_job(&self, job_id: i64, attempt: i64, now: Millis) -> StoreResult<bool> {
        let done = db::query(
            "UPDATE jobs SET state = 'queued', agent_id = NULL, lease_expires_at = NULL, queued_at = $1, \
             cancel_requested = 0 WHERE id = $2 AND state = 'running' AND attempt = $3",
        )
        .bind(now.0)
        .bind(job_id)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn unblock_jobs(
        &self,
        build_id: i64,
        queue: &[String],
        skip: &[String],
        now: Millis,
    ) -> StoreResult<()> {
        for (steps, statement) in [
            (
                queue,
                "UPDATE jobs SET state = 'queued', queued_at = $1 WHERE build_id = $2 AND step = $3 AND state = 'blocked'",
            ),
            (
                skip,
                "UPDATE jobs SET state = 'skipped', finished_at = $1, reason = 'dependency' \
                 WHERE build_id = $2 AND step = $3 AND state = 'blocked'",
            ),
        ] {
            for step in steps {
                db::query(statement)
                    .bind(now.0)
                    .bind(build_id)
                    .bind(step)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn cancel_jobs(&self, build_id: i64, now: Millis) -> StoreResult<u64> {
        db::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1, reason = 'cancelled' \
             WHERE build_id = $2 AND state IN ('blocked', 'queued')",
        )
        .bind(now.0)
        .bind(build_id)
        .execute(&self.pool)
        .await?;
        let running = db::query(
            "UPDATE jobs SET cancel_requested = 1 WHERE build_id = $1 AND state = 'running'",
        )
        .bind(build_id)
        .execute(&self.pool)
        .await?;
        Ok(running.rows_affected())
    }

    async fn expired_leases(&self, now: Millis, limit: i64) -> StoreResult<Vec<JobRecord>> {
        let rows = db::query(trusted(format!(
            "{JOB_SELECT} WHERE j.state = 'running' AND j.lease_expires_at < $1 ORDER BY j.lease_expires_at LIMIT $2"
        )))
        .bind(now.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn extend_leases(&self, until: Millis) -> StoreResult<u64> {
        let done = db::query(
            "UPDATE jobs SET lease_expires_at = $1 WHERE state = 'running' AND lease_expires_at < $1",
        )
        .bind(until.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn builds_to_advance(&self, limit: i64) -> StoreResult<Vec<i64>> {
        let rows = db::query(
            "SELECT b.id FROM builds b WHERE b.status IN ('queued', 'running') \
             AND EXISTS (SELECT 1 FROM jobs j WHERE j.build_id = b.id) \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.build_id = b.id \
                 AND (j.state IN ('queued', 'running') OR j.kind = 'reported')) \
             ORDER BY b.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| row.try_get::<i64, _>(0)).collect()
    }

    async fn log_lines_before(&self, job_id: i64, offset: i64) -> StoreResult<i64> {
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
        let row = db::query(trusted(statement))
            .bind(job_id)
            .bind(offset)
            .fetch_one(&self.pool)
            .await?;
        let mut lines: i64 = row.try_get("lines")?;
        let counted_to: i64 = row.try_get("counted_to")?;
        if counted_to < offset {
            let (rest, _) = self
                .read_log(job_id, counted_to, offset - counted_to)
                .await?;
            lines += rest.iter().filter(|byte| **byte == b'\n').count() as i64;
        }
        Ok(lines)
    }

    async fn reported_job(
        &self,
        build_id: i64,
        project_id: i64,
        step: &str,
        now: Millis,
    ) -> StoreResult<JobRecord> {
        // `WHERE true` keeps SQLite from reading `ON CONFLICT` as part of the SELECT.
        db::query(
            "INSERT INTO jobs (build_id, project_id, step, position, state, priority, depends_on, \
             labels, spec, attempt, created_at, started_at, kind) \
             SELECT $1, $2, $3, COALESCE((SELECT MAX(position) + 1 FROM jobs WHERE build_id = $1), 0), \
             'running', 0, '[]', '[]', '{}', 1, $4, $4, 'reported' WHERE true \
             ON CONFLICT (build_id, step) DO NOTHING",
        )
        .bind(build_id)
        .bind(project_id)
        .bind(step)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        let row = db::query(trusted(format!(
            "{JOB_SELECT} WHERE j.build_id = $1 AND j.step = $2"
        )))
        .bind(build_id)
        .bind(step)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("job"))?;
        let job = job_from_row(&row)?;
        if !job.reported {
            return Err(StoreError::Conflict(format!(
                "step '{step}' of this build is run by Kiln's agents; its log is theirs to write"
            )));
        }
        Ok(job)
    }

    async fn end_reported_job(
        &self,
        job_id: i64,
        state: JobState,
        exit_code: Option<i64>,
        now: Millis,
    ) -> StoreResult<bool> {
        let done = db::query(
            "UPDATE jobs SET state = $1, exit_code = $2, finished_at = $3 \
             WHERE id = $4 AND kind = 'reported' AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(exit_code)
        .bind(now.0)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn end_orphaned_reported_jobs(
        &self,
        ended_before: Millis,
        now: Millis,
    ) -> StoreResult<u64> {
        let done = db::query(
            "UPDATE jobs SET finished_at = $1, reason = 'reporter_gone', state = \
             (SELECT CASE b.status WHEN 'success' THEN 'passed' WHEN 'cancelled' THEN 'cancelled' \
              ELSE 'failed' END FROM builds b WHERE b.id = jobs.build_id) \
             WHERE kind = 'reported' AND state = 'running' AND build_id IN \
             (SELECT id FROM builds WHERE status IN ('success', 'failed', 'cancelled', 'stale') \
              AND ended_at < $2)",
        )
        .bind(now.0)
        .bind(ended_before.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn append_log(
        &self,
        job_id: i64,
        offset: i64,
        bytes: &[u8],
        cap: i64,
    ) -> StoreResult<LogAppend> {
        let length = bytes.len() as i64;
        let mut transaction = self.pool.begin().await?;
        // The size check and the growth are one statement, so two senders of the same
        // offset cannot both append.
        let grown = db::query(
            "UPDATE jobs SET log_size = log_size + $1 WHERE id = $2 AND log_size = $3 AND log_size + $1 <= $4",
        )
        .bind(length)
        .bind(job_id)
        .bind(offset)
        .bind(cap)
        .execute(&mut *transaction)
        .await?;
        if grown.rows_affected() == 1 {
            if length > 0 {
                db::query("INSERT INTO job_logs (job_id, offset_bytes, data) VALUES ($1, $2, $3)")
                    .bind(job_id)
                    .bind(offset)
                    .bind(bytes.to_vec())
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await?;
            return Ok(LogAppend::Stored {
                size: offset + length,
            });
        }
        transaction.rollback().await?;
        let size: Option<i64> = db::query("SELECT log_size FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        let Some(size) = size else {
            return Err(StoreError::NotFound("job"));
        };
        Ok(if offset + length <= size {
            LogAppend::Stored { size }
        } else if offset == size {
            LogAppend::TooLarge { size }
        } else {
            LogAppend::WrongOffset { size }
        })
    }

    async fn read_log(
        &self,
        job_id: i64,
        offset: i64,
        max_bytes: i64,
    ) -> StoreResult<(Vec<u8>, i64)> {
        let size: Option<i64> = db::query("SELECT log_size FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        let Some(size) = size else {
            return Err(StoreError::NotFound("job"));
        };
        let mut out = Vec::new();
        if offset >= size || max_bytes <= 0 {
            return Ok((out, size));
        }
        let rows = db::query(
            "SELECT offset_bytes, data FROM job_logs WHERE job_id = $1 AND offset_bytes >= \
             COALESCE((SELECT MAX(offset_bytes) FROM job_logs WHERE job_id = $1 AND offset_bytes <= $2), 0) \
             AND offset_bytes < $3 ORDER BY offset_bytes",
        )
        .bind(job_id)
        .bind(offset)
        .bind(offset.saturating_add(max_bytes))
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let start: i64 = row.try_get("offset_bytes")?;
            let data: Vec<u8> = row.try_get("data")?;
            let skip = usize::try_from((offset - start).max(0)).unwrap_or(0);
            if skip >= data.len() {
                continue;
            }
            let room = usize::try_from(max_bytes).unwrap_or(usize::MAX) - out.len();
            let end = data.len().min(skip + room);
            out.extend_from_slice(&data[skip..end]);
            if out.len() as i64 >= max_bytes {
                break;
            }
        }
        Ok((out, size))
    }
}
