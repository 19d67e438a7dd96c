//! Kiln's durable storage: one trait per area (`Store` is their union), its records, and
//! the SQL engines behind it.
//!
//! Only this crate knows SQL. One implementation (`sql::SqlStore`) serves both SQLite and
//! PostgreSQL, each on its native driver (`sql::db`: rusqlite on SQLite, sqlx's
//! PostgreSQL driver on PostgreSQL): the statements are written in the common dialect and
//! the engines differ in their migrations, connection set-up and native ingest paths
//! (`sql::sqlite_writer`, `sql::pg_ingest`) sharing one transaction logic. The same test
//! suites (`tests/*_suite.rs`) run against both engines.

pub(crate) mod accounts;
mod analytics;
mod artifact_lifecycle;
mod artifacts;
pub mod backup;
mod dashboard;
mod deployments;
mod migrations;
pub(crate) mod notifications;
pub(crate) mod queue;
mod records;
pub mod sql;
mod status;
mod test_results;
#[cfg(feature = "test-support")]
pub mod test_support;
pub(crate) mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::{JobState, Millis, ProjectSlug};

pub use accounts::*;
pub use analytics::*;
pub use artifact_lifecycle::*;
pub use artifacts::*;
pub use dashboard::*;
pub use deployments::*;
pub use notifications::*;
pub use queue::*;
pub use records::*;
pub use sql::SqlStore;
pub use status::*;
pub use test_results::*;
pub use webhooks::*;

/// Which database engine a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A driver's own error, kept as the cause of a store error (for the log).
pub type DriverError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A record with the same key exists. The text is Kiln's own (callers may show it);
    /// the driver's message goes to the debug log only.
    #[error("{0}")]
    Conflict(String),
    /// Another writer held the database past the wait (SQLite's write lock, a PostgreSQL
    /// lock or serialisation failure): nothing was written, and trying again may work.
    #[error("the database is busy")]
    Busy(#[source] DriverError),
    /// The database failed or is unreachable; the cause is kept for the log, not shown.
    #[error("the database is unavailable")]
    Database(#[source] DriverError),
    /// Kiln found the database unusable (a corrupt row, a missing counter, a URL it
    /// cannot use); the detail is logged, not shown.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database's disk is full (SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full`):
    /// nothing was written; writes work again once an operator frees space.
    #[error("the database's disk is full")]
    Full(#[source] DriverError),
}

/// The database codes that mean "busy, nothing written": SQLite's BUSY and LOCKED
/// families (primary and extended result codes), PostgreSQL's serialization failure,
/// deadlock and lock-not-available.
const BUSY_CODES: [&str; 9] = [
    "5", "261", "517", "773", "6", "262", "40001", "40P01", "55P03",
];

/// The database codes that mean "out of disk space, nothing written": SQLite's FULL and
/// PostgreSQL's disk_full.
const FULL_CODES: [&str; 2] = ["13", "53100"];

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(database_error) = &error {
            if database_error.is_unique_violation() {
                tracing::debug!(error = %database_error, "unique violation");
                return StoreError::Conflict(CONFLICT.into());
            }
            if database_error
                .code()
                .is_some_and(|code| BUSY_CODES.contains(&code.as_ref()))
            {
                return StoreError::Busy(Box::new(error));
            }
            if database_error
                .code()
                .is_some_and(|code| FULL_CODES.contains(&code.as_ref()))
            {
                return StoreError::Full(Box::new(error));
            }
        }
        StoreError::Database(Box::new(error))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        if let Some(code) = error.code().map(|state| state.code()) {
            if code == "23505" {
                tracing::debug!(%error, "unique violation");
                return StoreError::Conflict(CONFLICT.into());
            }
            if BUSY_CODES.contains(&code) {
                return StoreError::Busy(Box::new(error));
            }
            if FULL_CODES.contains(&code) {
                return StoreError::Full(Box::new(error));
            }
        }
        StoreError::Database(Box::new(error))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(failure, _) = &error {
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            {
                tracing::debug!(%error, "unique violation");
                return StoreError::Conflict(CONFLICT.into());
            }
            if matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) {
                return StoreError::Busy(Box::new(error));
            }
            if failure.code == rusqlite::ErrorCode::DiskFull {
                return StoreError::Full(Box::new(error));
            }
        }
        StoreError::Database(Box::new(error))
    }
}

/// What a unique violation says when the caller has nothing more precise.
const CONFLICT: &str = "a record with the same name or key exists already";

impl StoreError {
    /// The error and its causes, one after the other (for the log).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// True for the errors a retry may cure (`Busy`, `Database`, `Unavailable`, `Full`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Busy(_)
                | StoreError::Database(_)
                | StoreError::Unavailable(_)
                | StoreError::Full(_)
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything Kiln keeps durably: one trait per area, each implemented in its own file
/// per engine. Implementations are cheap to share (`Arc<dyn Store>`); a `dyn Store`
/// answers every area's methods.
pub trait Store:
    ProjectStore
    + BuildStore
    + QueueStore
    + AccountStore
    + NotificationStore
    + WebhookStore
    + SecretStore
    + AnalyticsStore
    + TestResultStore
    + ArtifactStore
    + ArtifactLifecycleStore
    + DeploymentStore
    + StatusStore
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: ProjectStore
        + BuildStore
        + QueueStore
        + AccountStore
        + NotificationStore
        + WebhookStore
        + SecretStore
        + AnalyticsStore
        + TestResultStore
        + ArtifactStore
        + ArtifactLifecycleStore
        + DeploymentStore
        + StatusStore
        + Send
        + Sync
        + 'static
{
}

/// Projects, their tokens and the secret their GitHub webhooks are signed with; the engine itself (`sql/projects.rs`).
#[async_trait]
pub trait ProjectStore: Send + Sync {
    fn engine(&self) -> Engine;
    /// A trivial query, for readiness checks.
    async fn ping(&self) -> StoreResult<()>;
    async fn create_project(
        &self,
        slug: &ProjectSlug,
        name: &str,
        now: Millis,
    ) -> StoreResult<Project>;
    async fn list_projects(&self) -> StoreResult<Vec<Project>>;
    async fn project_by_slug(&self, slug: &str) -> StoreResult<Option<Project>>;
    async fn project_by_id(&self, id: i64) -> StoreResult<Option<Project>>;
    /// Stores a token by its hash. A hash that exists already is a conflict, except for
    /// `ensure_token`, which returns the existing record (idempotent admin bootstrap).
    async fn create_token(&self, token: &NewToken, now: Millis) -> StoreResult<TokenRecord>;
    async fn ensure_token(&self, token: &NewToken, now: Millis) -> StoreResult<TokenRecord>;
    async fn list_tokens(&self, project_id: Option<i64>) -> StoreResult<Vec<TokenRecord>>;
    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<TokenRecord>>;
    /// Revokes a token of the given project (or an instance token when `None`).
    async fn revoke_token(
        &self,
        project_id: Option<i64>,
        token_id: i64,
        now: Millis,
    ) -> StoreResult<TokenRecord>;
    async fn touch_token(&self, token_id: i64, now: Millis) -> StoreResult<()>;
    /// Sets (or clears) the secret that signs the project's GitHub webhooks.
    async fn set_github_secret(&self, project_id: i64, secret: Option<&str>) -> StoreResult<()>;
    /// The project's GitHub webhook secret, if one is set.
    async fn github_secret(&self, project_id: i64) -> StoreResult<Option<String>>;
}

/// Events and the builds derived from them: the group-commit ingest and every read of builds and events (`sql/builds.rs`).
#[async_trait]
pub trait BuildStore: Send + Sync {
    /// How many group commits the ingestor may have in flight at once: 1 where one
    /// writer runs them in turn anyway (SQLite); more where a second transaction can
    /// queue behind the first's lock while that one commits, saving the round trip
    /// between them (PostgreSQL). Ids stay gap-free and in commit order either way.
    fn ingest_concurrency(&self) -> usize {
        1
    }

    /// Appends the events of many requests in ONE transaction (group commit). Each
    /// request is accepted or rejected as a whole; a rejected request writes nothing
    /// and does not affect the others. Returns one result per request, in order, only
    /// after the transaction committed.
    async fn ingest(
        &self,
        requests: &[IngestRequest],
        now: Millis,
    ) -> StoreResult<Vec<Result<Vec<EventOutcome>, IngestRejection>>>;
    async fn list_builds(&self, filter: &BuildFilter) -> StoreResult<Vec<BuildRecord>>;
    /// The start times and durations (newest first, at most `per_key` each) of the
    /// latest successful builds of each pipeline, in one query: the history the
    /// dashboard's ETA predicts from. Keys without a successful build are left out.
    async fn recent_success_durations(
        &self,
        keys: &[PipelineKey],
        per_key: i64,
    ) -> StoreResult<Vec<(PipelineKey, Vec<kiln_core::predict::Sample>)>>;
    /// The first stored event (`seq` 1: `build_queued` or `build_started`, usually) of
    /// each of these builds, in one query: who or what started them.
    async fn first_events(&self, build_ids: &[i64]) -> StoreResult<Vec<StoredEvent>>;
    /// For each of these builds that has jobs (Kiln-run builds): how many of its jobs
    /// passed and how many it has, in one query — how far an ended build got.
    async fn job_tallies(&self, build_ids: &[i64]) -> StoreResult<Vec<JobTally>>;
    /// The newest `limit` events of one build, newest first (the build page's list).
    async fn latest_events(&self, build_id: i64, limit: i64) -> StoreResult<Vec<StoredEvent>>;
    /// The build with its stages.
    async fn build_by_run_id(&self, run_id: &str) -> StoreResult<Option<BuildRecord>>;
    /// Events of one build with `id > after_id`, oldest first.
    async fn events_after(
        &self,
        build_id: i64,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// Events of every build of a project with `id > after_id`, oldest first.
    async fn project_events_after(
        &self,
        project_id: i64,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// Events of every project with `id > after_id`, oldest first (the live tailer).
    async fn events_after_global(&self, after_id: i64, limit: i64)
    -> StoreResult<Vec<StoredEvent>>;
    /// The highest event id committed so far (0 when none).
    async fn max_event_id(&self) -> StoreResult<i64>;
    /// Signals commits made on the same database by any process, this one included
    /// (PostgreSQL `LISTEN`): the value is the last event id of the latest commit
    /// announced (commits are announced in order; a lost connection announces
    /// `i64::MAX`: look, something may have been missed).
    /// `None` where only this process writes (SQLite).
    async fn commit_signals(&self) -> StoreResult<Option<tokio::sync::watch::Receiver<i64>>>;
    /// Running builds whose last event is older than their heartbeat timeout.
    async fn stale_builds(
        &self,
        now: Millis,
        default_timeout_secs: i64,
        limit: i64,
    ) -> StoreResult<Vec<BuildRecord>>;
}

/// Builds Kiln runs: repositories, branches, agents, the job queue and job logs (`sql/queue.rs`).
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Sets a project's repository settings (a `None` repo stops Kiln building it).
    async fn set_project_repo(
        &self,
        project_id: i64,
        repo: Option<&str>,
        default_branch: &str,
        max_concurrency: Option<i64>,
    ) -> StoreResult<Project>;
    /// Creates or updates a branch; `last_commit` is kept.
    async fn upsert_branch(
        &self,
        project_id: i64,
        name: &str,
        priority: Option<i64>,
        auto_build: bool,
        now: Millis,
    ) -> StoreResult<BranchRecord>;
    async fn list_branches(&self, project_id: i64) -> StoreResult<Vec<BranchRecord>>;
    async fn delete_branch(&self, project_id: i64, name: &str) -> StoreResult<()>;
    /// Branches with `auto_build` of projects that have a repository.
    async fn auto_build_branches(&self) -> StoreResult<Vec<(Project, BranchRecord)>>;
    /// Records that the poller queued `commit` for a branch, if the branch's last commit
    /// is still `previous` (so concurrent pollers queue one build). True when recorded.
    async fn advance_branch_commit(
        &self,
        project_id: i64,
        name: &str,
        previous: Option<&str>,
        commit: &str,
    ) -> StoreResult<bool>;
    /// Registers an agent by name, or updates the registration of that name.
    async fn register_agent(&self, agent: &NewAgent, now: Millis) -> StoreResult<AgentRecord>;
    async fn agent_by_id(&self, id: i64) -> StoreResult<Option<AgentRecord>>;
    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>>;
    /// Records that an agent was heard from, with its resource use.
    async fn touch_agent(
        &self,
        id: i64,
        now: Millis,
        metrics: Option<&serde_json::Value>,
    ) -> StoreResult<()>;
    /// Creates a build's jobs (existing steps of the build are left as they are).
    async fn create_jobs(
        &self,
        build_id: i64,
        project_id: i64,
        priority: i64,
        jobs: &[JobPlan],
        now: Millis,
    ) -> StoreResult<()>;
    async fn job_by_id(&self, id: i64) -> StoreResult<Option<JobRecord>>;
    /// The jobs of a build, in pipeline order.
    async fn jobs_of_build(&self, build_id: i64) -> StoreResult<Vec<JobRecord>>;
    /// Jobs for agents not yet ended (blocked, queued, running), oldest first; reported
    /// jobs are not among them.
    async fn unfinished_jobs(&self, limit: i64) -> StoreResult<Vec<JobRecord>>;
    /// Claims the first queued job the agent may run: by aged priority, then FIFO,
    /// among jobs whose labels the agent offers, within per-project and per-agent
    /// concurrency. The job becomes `running` under a lease with its attempt counted.
    async fn claim_job(
        &self,
        agent: &AgentRecord,
        rules: ClaimRules,
        now: Millis,
    ) -> StoreResult<Option<JobRecord>> {
        self.claim_job_with(agent, rules, &ClaimHints::default(), now)
            .await
    }
    /// [`QueueStore::claim_job`] with the agent recommendation's hints: held steps'
    /// young jobs passed over, preferred steps first among equal aged priority. Still
    /// one compare-and-set.
    async fn claim_job_with(
        &self,
        agent: &AgentRecord,
        rules: ClaimRules,
        hints: &ClaimHints,
        now: Millis,
    ) -> StoreResult<Option<JobRecord>>;
    /// Successful runs of the given steps (project id, step) finished since `since`: for
    /// each step and agent its `per_agent` newest.
    async fn step_runs(
        &self,
        steps: &[(i64, String)],
        since: Millis,
        per_agent: i64,
    ) -> StoreResult<Vec<StepRun>>;
    /// The cache keys agents used for the given steps since `since`.
    async fn agent_caches(
        &self,
        steps: &[(i64, String)],
        since: Millis,
    ) -> StoreResult<Vec<AgentCache>>;
    /// Records that an agent holds `cache_key` (a job of the step with that cache passed
    /// on it).
    async fn record_agent_cache(
        &self,
        agent_id: i64,
        project_id: i64,
        step: &str,
        cache_key: &str,
        now: Millis,
    ) -> StoreResult<()>;
    /// Renews (to `now + lease_ms`, once a third of the lease is used) the leases of an
    /// agent's running jobs among `job_ids` and tells, for each, whether the agent still
    /// holds it and whether it was cancelled.
    async fn renew_leases(
        &self,
        agent_id: i64,
        job_ids: &[i64],
        now: Millis,
        lease_ms: i64,
    ) -> StoreResult<Vec<HeldJob>>;
    /// Ends attempt `attempt` of a running job held by `agent_id` (None: whoever holds
    /// it, for the lease reaper). False when the job is not in that state any more.
    async fn finish_job(
        &self,
        job_id: i64,
        attempt: i64,
        agent_id: Option<i64>,
        end: &JobEnd,
        now: Millis,
    ) -> StoreResult<bool>;
    /// Puts attempt `attempt` of a running job back in the queue (automatic retry).
    async fn requeue_job(&self, job_id: i64, attempt: i64, now: Millis) -> StoreResult<bool>;
    /// Moves blocked jobs of a build to queued (`queue`) or skipped (`skip`).
    async fn unblock_jobs(
        &self,
        build_id: i64,
        queue: &[String],
        skip: &[String],
        now: Millis,
    ) -> StoreResult<()>;
    /// Cancels a build's waiting jobs and asks agents to stop its running ones.
    /// Returns how many running jobs were asked to stop.
    async fn cancel_jobs(&self, build_id: i64, now: Millis) -> StoreResult<u64>;
    /// Running jobs whose lease ran out before `now`.
    async fn expired_leases(&self, now: Millis, limit: i64) -> StoreResult<Vec<JobRecord>>;
    /// Gives every running job a lease until at least `until` (a server that starts
    /// gives agents time to reconnect).
    async fn extend_leases(&self, until: Millis) -> StoreResult<u64>;
    /// Builds that are not ended, have jobs, and have none queued or running: their jobs
    /// need advancing (or the build ending).
    async fn builds_to_advance(&self, limit: i64) -> StoreResult<Vec<i64>>;
    /// The job holding the log a `kiln run` reports for `step` of a build, created
    /// (running, never queued or leased) on first use. A step Kiln's agents run is a
    /// conflict.
    async fn reported_job(
        &self,
        build_id: i64,
        project_id: i64,
        step: &str,
        now: Millis,
    ) -> StoreResult<JobRecord>;
    /// Ends a running reported job with a terminal `state`; false when it had ended.
    async fn end_reported_job(
        &self,
        job_id: i64,
        state: JobState,
        exit_code: Option<i64>,
        now: Millis,
    ) -> StoreResult<bool>;
    /// Ends the reported jobs still running of builds that ended before
    /// `ended_before` (their reporter stopped without saying so), with their build's
    /// outcome; returns how many.
    async fn end_orphaned_reported_jobs(
        &self,
        ended_before: Millis,
        now: Millis,
    ) -> StoreResult<u64>;
    /// Appends a chunk to a job's log at byte `offset`. A chunk that was stored before
    /// (a retry) is acknowledged again.
    async fn append_log(
        &self,
        job_id: i64,
        offset: i64,
        bytes: &[u8],
        cap: i64,
    ) -> StoreResult<LogAppend>;
    /// Up to `max_bytes` of a job's log from `offset`, and the log's size.
    async fn read_log(
        &self,
        job_id: i64,
        offset: i64,
        max_bytes: i64,
    ) -> StoreResult<(Vec<u8>, i64)>;
    /// How many lines of a job's log end before byte `offset` (its newlines there),
    /// counted in the database, so a viewer showing only a log's tail still numbers its
    /// lines from the start without reading the rest.
    async fn log_lines_before(&self, job_id: i64, offset: i64) -> StoreResult<i64>;
}

/// Accounts: users, sessions, memberships, user tokens and the audit log (`sql/accounts.rs`).
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user; an email in use is a conflict.
    async fn create_user(
        &self,
        email: &str,
        name: &str,
        password_hash: Option<&str>,
        instance_admin: bool,
        now: Millis,
    ) -> StoreResult<UserRecord>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: i64) -> StoreResult<Option<UserRecord>>;
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;
    async fn set_password(&self, user_id: i64, password_hash: &str) -> StoreResult<()>;
    /// Deactivates a user (`Some(now)`: they can no longer log in or use their tokens)
    /// or activates them again (`None`); answers the user as stored. `NotFound` for no
    /// such user.
    async fn set_user_disabled(
        &self,
        user_id: i64,
        disabled_at: Option<Millis>,
    ) -> StoreResult<UserRecord>;
    /// Ends every live session of a user; answers the ids of those it ended.
    async fn revoke_user_sessions(&self, user_id: i64, now: Millis) -> StoreResult<Vec<i64>>;
    /// Stores a session by the hash of its cookie value.
    async fn create_session(
        &self,
        user_id: i64,
        token_hash: &str,
        csrf_token: &str,
        now: Millis,
        expires_at: Millis,
    ) -> StoreResult<SessionRecord>;
    async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>>;
    async fn revoke_session(&self, id: i64, now: Millis) -> StoreResult<()>;
    /// Gives a user a role in a project (or changes it).
    async fn set_membership(
        &self,
        project_id: i64,
        user_id: i64,
        role: kiln_core::Role,
        now: Millis,
    ) -> StoreResult<Membership>;
    async fn remove_membership(&self, project_id: i64, user_id: i64) -> StoreResult<()>;
    async fn memberships_of_user(&self, user_id: i64) -> StoreResult<Vec<Membership>>;
    async fn members_of_project(&self, project_id: i64) -> StoreResult<Vec<Membership>>;
    /// Users who administer a project: its admins and every instance admin (enabled).
    async fn project_admins(&self, project_id: i64) -> StoreResult<Vec<i64>>;
    /// A personal token of a user (kind `user`).
    async fn create_user_token(
        &self,
        user_id: i64,
        token: &NewToken,
        now: Millis,
    ) -> StoreResult<TokenRecord>;
    async fn user_tokens(&self, user_id: i64) -> StoreResult<Vec<TokenRecord>>;
    async fn revoke_user_token(
        &self,
        user_id: i64,
        token_id: i64,
        now: Millis,
    ) -> StoreResult<TokenRecord>;
    /// Records an admin action.
    async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        project_id: Option<i64>,
        target: Option<&str>,
        detail: Option<&str>,
        now: Millis,
    ) -> StoreResult<()>;
    /// Audit entries, newest first (of one project, or all).
    async fn audit_log(
        &self,
        project_id: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<AuditEntry>>;
}

/// Notifications: users' inboxes, mutes, the email outbox and the notifier's cursor (`sql/notifications.rs`).
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Gives one event's notification to each recipient that has not muted its project
    /// or kind, at most once per (user, event) and per (user, build, kind), so replays
    /// notify no one twice. With `Delivery::InboxAndEmail` each new notification is also
    /// queued in the email outbox, in the same transaction. Returns the new ids.
    async fn insert_notifications(
        &self,
        notification: &NewNotification,
        recipients: &[i64],
        delivery: Delivery,
    ) -> StoreResult<Vec<i64>>;
    /// A user's notifications, newest first.
    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> StoreResult<Vec<NotificationRecord>>;
    /// Marks one of the user's notifications read (NotFound for another user's).
    async fn mark_notification_read(
        &self,
        user_id: i64,
        id: i64,
        now: Millis,
    ) -> StoreResult<NotificationRecord>;
    /// Marks all of the user's notifications read; returns how many were unread.
    async fn mark_all_notifications_read(&self, user_id: i64, now: Millis) -> StoreResult<u64>;
    async fn archive_notification(
        &self,
        user_id: i64,
        id: i64,
        now: Millis,
    ) -> StoreResult<NotificationRecord>;
    /// Archives every notification created before `cutoff` (auto-archive).
    async fn archive_notifications_before(&self, cutoff: Millis, now: Millis) -> StoreResult<u64>;
    async fn notification_stats(&self, user_id: i64) -> StoreResult<NotificationStats>;
    /// Adds a mute (an existing identical mute is returned as it is).
    async fn add_notification_mute(
        &self,
        user_id: i64,
        project_id: Option<i64>,
        kind: Option<NotificationKind>,
        now: Millis,
    ) -> StoreResult<NotificationMute>;
    async fn remove_notification_mute(
        &self,
        user_id: i64,
        project_id: Option<i64>,
        kind: Option<NotificationKind>,
    ) -> StoreResult<()>;
    async fn notification_mutes(&self, user_id: i64) -> StoreResult<Vec<NotificationMute>>;
    /// The id of the last event the notifiers processed.
    async fn notifier_cursor(&self) -> StoreResult<i64>;
    /// Moves the notifier cursor from `from` to `to`; false when it is no longer at
    /// `from` (another replica's notifier moved it).
    async fn advance_notifier_cursor(&self, from: i64, to: i64) -> StoreResult<bool>;
    /// Claims up to `limit` outbox emails due at `now` for one attempt each: they are not
    /// due again before `claimed_until` unless the attempt reports back.
    async fn claim_due_emails(
        &self,
        now: Millis,
        claimed_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<OutboxEmail>>;
    async fn email_sent(&self, id: i64, now: Millis) -> StoreResult<()>;
    /// Records a failed attempt: retried at `retry_at`, or given up when `None`.
    async fn email_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
        now: Millis,
    ) -> StoreResult<()>;
}

/// Outbound webhooks: endpoints, the delivery outbox and its attempts, the consumer's cursor (`sql/webhooks.rs`).
#[async_trait]
pub trait WebhookStore: Send + Sync {
    async fn create_webhook_endpoint(
        &self,
        endpoint: &NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint>;
    /// A project's endpoints, or every endpoint with `None`, in id order.
    async fn webhook_endpoints(&self, project_id: Option<i64>)
    -> StoreResult<Vec<WebhookEndpoint>>;
    /// NotFound for an endpoint of another project.
    async fn webhook_endpoint(&self, project_id: i64, id: i64) -> StoreResult<WebhookEndpoint>;
    async fn update_webhook_endpoint(
        &self,
        project_id: i64,
        id: i64,
        patch: &WebhookEndpointPatch,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint>;
    /// Makes `new_secret` the signing secret; the old one keeps signing until
    /// `previous_until`.
    async fn rotate_webhook_secret(
        &self,
        project_id: i64,
        id: i64,
        new_secret: &str,
        previous_until: Millis,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint>;
    /// Deletes an endpoint with its deliveries and their attempts.
    async fn delete_webhook_endpoint(&self, project_id: i64, id: i64) -> StoreResult<()>;
    /// The id of the last event the webhook consumers processed.
    async fn webhook_cursor(&self) -> StoreResult<i64>;
    /// Moves the webhook cursor from `from` to `to`; false when another replica moved it.
    async fn advance_webhook_cursor(&self, from: i64, to: i64) -> StoreResult<bool>;
    /// Queues a delivery; `None` when the endpoint already has one for that event.
    async fn insert_webhook_delivery(
        &self,
        delivery: &NewWebhookDelivery,
    ) -> StoreResult<Option<i64>>;
    /// Claims up to `limit` due deliveries, at most the oldest pending one per active
    /// endpoint, for one attempt each (counted); they are not due again before
    /// `claimed_until` unless the attempt reports back.
    async fn claim_due_webhook_deliveries(
        &self,
        now: Millis,
        claimed_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedWebhookDelivery>>;
    /// The consumer's page in one transaction: queues `deliveries` (skipping those an
    /// endpoint already has for their event), moves the webhook cursor from
    /// `cursor_from` to `cursor_to` (compare-and-set, like `advance_webhook_cursor`) and,
    /// if it moved, adds `dropped` to the endpoints' `dropped_while_disabled`.
    async fn queue_webhook_deliveries(
        &self,
        deliveries: &[NewWebhookDelivery],
        dropped: &[DroppedWebhookEvents],
        cursor_from: i64,
        cursor_to: i64,
    ) -> StoreResult<QueuedWebhookDeliveries>;
    /// How many pending deliveries an endpoint holds.
    async fn pending_webhook_deliveries(&self, endpoint_id: i64) -> StoreResult<i64>;
    /// Records attempts and their outcomes in one transaction; each is ignored unless its
    /// delivery is still pending at that attempt (a stale claim's report).
    async fn finish_webhook_attempts(&self, finished: &[FinishedWebhookAttempt])
    -> StoreResult<()>;
    /// `finish_webhook_attempts` for one attempt.
    async fn finish_webhook_attempt(
        &self,
        delivery_id: i64,
        body: &str,
        attempt: &WebhookAttempt,
        outcome: &WebhookOutcome,
        now: Millis,
    ) -> StoreResult<()> {
        self.finish_webhook_attempts(&[FinishedWebhookAttempt {
            delivery_id,
            body: body.to_owned(),
            attempt: attempt.clone(),
            outcome: outcome.clone(),
            finished_at: now,
        }])
        .await
    }
    /// An endpoint's deliveries, newest first, with their attempts.
    async fn webhook_deliveries(
        &self,
        endpoint_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<WebhookDeliveryRecord>>;
    /// Queues a delivered or failed delivery again (Conflict while it is pending).
    async fn redeliver_webhook(
        &self,
        endpoint_id: i64,
        delivery_id: i64,
        now: Millis,
    ) -> StoreResult<WebhookDeliveryRecord>;
    /// Per-endpoint delivery figures of a project, or of every project with `None`.
    async fn webhook_status(
        &self,
        project_id: Option<i64>,
    ) -> StoreResult<Vec<WebhookEndpointStatus>>;
}

/// Project secrets and repository credentials, as ciphertext only: the server encrypts (`sql/secrets.rs`).
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Creates or replaces a project secret.
    async fn set_project_secret(
        &self,
        project_id: i64,
        name: &str,
        ciphertext: &str,
        now: Millis,
    ) -> StoreResult<SecretRecord>;
    /// A project's secrets by name, without their values.
    async fn list_project_secrets(&self, project_id: i64) -> StoreResult<Vec<SecretRecord>>;
    /// A project's secrets as (name, ciphertext).
    async fn project_secret_values(&self, project_id: i64) -> StoreResult<Vec<(String, String)>>;
    /// Deletes a secret; false when there was none.
    async fn delete_project_secret(&self, project_id: i64, name: &str) -> StoreResult<bool>;
    /// Sets the repository URL (without credentials) and its encrypted credentials.
    async fn set_repo_credentials(
        &self,
        project_id: i64,
        repo: Option<&str>,
        ciphertext: Option<&str>,
    ) -> StoreResult<()>;
}

/// What the instance and a published project look like now: `/metrics`' figures, a
/// project's public status (`sql/status.rs`).
#[async_trait]
pub trait StatusStore: Send + Sync {
    /// The counts `/metrics` reads from the database, each answered by an index (builds
    /// and jobs not ended, pending outboxes, agents), so a scrape costs the same
    /// whatever the history holds.
    async fn operational_counts(&self) -> StoreResult<OperationalCounts>;
    /// Publishes (or withdraws) a project's public status page and badges.
    async fn set_public_status(&self, project_id: i64, public: bool) -> StoreResult<Project>;
    /// Among the project's newest `window` builds, newest first, at most `limit`, only
    /// those of `branch` when given: what a public status page and badge are drawn
    /// from, so their cost is bounded by `window` however many builds the project has.
    async fn recent_build_summaries(
        &self,
        project_id: i64,
        window: i64,
        branch: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<BuildSummary>>;
}

/// Opens the store named by a database URL (`sqlite://…`, `postgres://…`), creating
/// the SQLite file if needed, and runs pending migrations.
pub async fn connect(database_url: &str) -> StoreResult<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::connect(database_url).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    /// SQLite's busy and locked results are `Busy` (retried by the writer), whatever
    /// their message says; other failures keep the driver error as their cause.
    #[test]
    fn driver_errors_are_classified_by_code() {
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_BUSY_SNAPSHOT,
        ] {
            assert!(
                matches!(StoreError::from(sqlite_failure(code)), StoreError::Busy(_)),
                "{code}"
            );
        }
        let error = StoreError::from(sqlite_failure(rusqlite::ffi::SQLITE_IOERR));
        assert!(matches!(error, StoreError::Database(_)), "{error:?}");
        assert!(
            error.chain().starts_with("the database is unavailable: "),
            "{}",
            error.chain()
        );
        assert!(error.is_retryable());
        let conflict = StoreError::from(sqlite_failure(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE));
        assert!(matches!(conflict, StoreError::Conflict(ref text) if text == CONFLICT));
        assert!(!conflict.is_retryable());
    }

    /// A database that cannot grow (here: capped at 8 pages) fails its write as `Full`,
    /// the error Kiln reports as "the server's disk is full".
    #[test]
    fn a_database_out_of_space_is_full() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE t (v BLOB); PRAGMA max_page_count = 8;")
            .unwrap();
        let error = (0..100)
            .find_map(|_| {
                db.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                    .err()
            })
            .expect("the database filled up");
        let error = StoreError::from(error);
        assert!(matches!(error, StoreError::Full(_)), "{error:?}");
        assert!(error.is_retryable());
        assert!(matches!(
            StoreError::from(sqlite_failure(rusqlite::ffi::SQLITE_FULL)),
            StoreError::Full(_)
        ));
    }
}
