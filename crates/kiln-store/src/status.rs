//! What the instance and a published project look like now: the figures `/metrics`
//! reads (each answered by an index, never a scan of history) and the recent builds a
//! project's public status page and badges are drawn from.

use kiln_core::{BuildStatus, JobState, Millis};

/// The database's part of a `/metrics` scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationalCounts {
    /// Builds not ended (queued or running), by project slug and status.
    pub active_builds: Vec<(String, BuildStatus, i64)>,
    /// Agents' jobs not ended (blocked, queued, running), by state; reported jobs
    /// (`kiln run`) are not in the queue and not counted.
    pub active_jobs: Vec<(JobState, i64)>,
    /// When the job waiting longest in the queue was queued.
    pub oldest_queued_at: Option<Millis>,
    /// Every registered agent with when it was last heard from and its running jobs.
    pub agents: Vec<AgentActivity>,
    /// Webhook deliveries waiting for their first or next attempt.
    pub webhook_pending: i64,
    /// When the oldest of them was queued.
    pub webhook_oldest_pending_at: Option<Millis>,
    /// Committed events the webhook consumer has not turned into deliveries yet.
    pub webhook_unread_events: i64,
    /// Notification emails neither sent nor given up.
    pub email_pending: i64,
    pub email_oldest_pending_at: Option<Millis>,
}

/// An agent as `/metrics` counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentActivity {
    pub id: i64,
    pub last_seen_at: Millis,
    pub running_jobs: i64,
}

/// A build as a public status page shows it: no message, command, host or log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSummary {
    pub id: i64,
    pub number: i64,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub status: BuildStatus,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub duration_ms: Option<i64>,
}
