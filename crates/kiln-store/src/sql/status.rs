//! `/metrics`' figures and public status in SQL. Every count here is a range of an
//! index (builds by status, jobs by state, the outboxes' partial indexes) or a small
//! table (agents), and the public page reads a bounded window of a project's newest
//! builds, so neither grows with the history.

use async_trait::async_trait;
use kiln_core::{BuildStatus, JobState, Millis};

use super::db;
use super::rows::{self, project_from_row};
use super::{SqlStore, trusted};
use crate::records::Project;
use crate::status::{AgentActivity, BuildSummary, OperationalCounts};
use crate::{StatusStore, StoreError, StoreResult};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt {what} row: {value}"))
}

#[async_trait]
impl StatusStore for SqlStore {
    async fn operational_counts(&self) -> StoreResult<OperationalCounts> {
        let mut counts = OperationalCounts::default();

        for row in db::query(
            "SELECT p.slug, b.status, COUNT(*) AS n FROM builds b JOIN projects p ON p.id = b.project_id \
             WHERE b.status IN ('queued', 'running') GROUP BY p.slug, b.status ORDER BY p.slug, b.status",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let status: String = row.try_get("status")?;
            counts.active_builds.push((
                row.try_get("slug")?,
                BuildStatus::from_name(&status).ok_or_else(|| corrupt("build", &status))?,
                row.try_get("n")?,
            ));
        }

        for row in db::query(
            "SELECT state, COUNT(*) AS n, MIN(queued_at) AS oldest FROM jobs \
             WHERE state IN ('blocked', 'queued', 'running') AND kind = 'agent' GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let state: String = row.try_get("state")?;
            let state = JobState::from_name(&state).ok_or_else(|| corrupt("job", &state))?;
            if state == JobState::Queued {
                counts.oldest_queued_at = row.try_get::<Option<i64>, _>("oldest")?.map(Millis);
            }
            counts.active_jobs.push((state, row.try_get("n")?));
        }

        for row in db::query(
            "SELECT a.id, a.last_seen_at, \
               (SELECT COUNT(*) FROM jobs j WHERE j.state = 'running' AND j.agent_id = a.id) AS running \
             FROM agents a ORDER BY a.id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            counts.agents.push(AgentActivity {
                id: row.try_get("id")?,
                last_seen_at: Millis(row.try_get("last_seen_at")?),
                running_jobs: row.try_get("running")?,
            });
        }

        let row = db::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM webhook_deliveries WHERE state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        counts.webhook_pending = row.try_get("n")?;
        counts.webhook_oldest_pending_at = row.try_get::<Option<i64>, _>("oldest")?.map(Millis);

        let row = db::query(
            "SELECT (SELECT value FROM kiln_counters WHERE name = 'event_id') \
               - (SELECT value FROM kiln_counters WHERE name = 'webhook_cursor') AS unread",
        )
        .fetch_one(&self.pool)
        .await?;
        counts.webhook_unread_events = row.try_get::<Option<i64>, _>("unread")?.unwrap_or(0).max(0);

        let row = db::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM notification_emails \
             WHERE sent_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        counts.email_pending = row.try_get("n")?;
        counts.email_oldest_pending_at = row.try_get::<Option<i64>, _>("oldest")?.map(Millis);
        Ok(counts)
    }

    async fn set_public_status(&self, project_id: i64, public: bool) -> StoreResult<Project> {
        let row = db::query(trusted(format!(
            "UPDATE projects SET public_status = $1 WHERE id = $2 RETURNING {}",
            rows::PROJECT_COLUMNS
        )))
        .bind(i64::from(public))
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("project"))?;
        project_from_row(&row)
    }

    async fn recent_build_summaries(
        &self,
        project_id: i64,
        window: i64,
        branch: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<BuildSummary>> {
        // The inner query walks the (project_id, id) index backwards and stops after
        // `window` rows; the branch filter applies to that window only.
        let rows = db::query(
            "SELECT id, number, branch, commit_sha, status, started_at, ended_at, duration_ms FROM \
               (SELECT id, number, branch, commit_sha, status, started_at, ended_at, duration_ms \
                FROM builds WHERE project_id = $1 ORDER BY id DESC LIMIT $2) recent \
             WHERE (CAST($3 AS TEXT) IS NULL OR branch = $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(project_id)
        .bind(window)
        .bind(branch)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(BuildSummary {
                    id: row.try_get("id")?,
                    number: row.try_get("number")?,
                    branch: row.try_get("branch")?,
                    commit: row.try_get("commit_sha")?,
                    status: BuildStatus::from_name(&status)
                        .ok_or_else(|| corrupt("build", &status))?,
                    started_at: Millis(row.try_get("started_at")?),
                    ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(Millis),
                    duration_ms: row.try_get("duration_ms")?,
                })
            })
            .collect()
    }
}
