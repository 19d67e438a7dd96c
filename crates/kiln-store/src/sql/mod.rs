//! `SqlStore`: the `Store` implementation for SQLite and PostgreSQL over sqlx's `Any`.
//!
//! Statements use `$N` placeholders, which both engines accept, and only types both
//! share (BIGINT, DOUBLE PRECISION, TEXT). Ingest transactions begin with a write to the
//! `kiln_counters` row, which serialises them across connections and replicas.
//!
//! Ingest on SQLite does not go through sqlx: `sqlite_writer` runs it on a dedicated
//! thread with its own rusqlite connection (same file, same pragmas), `BEGIN IMMEDIATE`,
//! sharing the transaction's logic and statement text with the PostgreSQL path in
//! `ingest`.

mod accounts;
mod dashboard;
mod hooks;
mod ingest;
mod notifications;
mod pg_ingest;
mod queue;
mod rows;
mod secrets;
mod sqlite_writer;
mod webhooks;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kiln_core::token::Scope;
use kiln_core::{Millis, ProjectSlug};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};

use crate::accounts::*;
use crate::dashboard::*;
use crate::notifications::*;
use crate::queue::*;
use crate::records::*;
use crate::webhooks::*;
use crate::{Engine, Store, StoreError, StoreResult};
use rows::{BUILD_SELECT, build_from_row, project_from_row, token_from_row};

pub struct SqlStore {
    pool: AnyPool,
    engine: Engine,
    /// SQLite only: the thread that runs every ingest transaction.
    writer: Option<sqlite_writer::SqliteWriter>,
    /// PostgreSQL only: native connections for the statements that bind arrays (ingest
    /// in `pg_ingest`, webhook attempts), whose text stays the same whatever the batch,
    /// so each is prepared once per connection.
    native_pool: Option<sqlx::PgPool>,
    /// Kept for engine-specific connections (PostgreSQL `LISTEN`).
    database_url: String,
}

/// The PostgreSQL channel on which ingest announces commits.
pub(crate) const COMMIT_CHANNEL: &str = "kiln_events";

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("engine", &self.engine)
            .finish()
    }
}

/// Marks a statement assembled only from this crate's constants, never from input.
pub(crate) fn trusted(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The engine a database URL names, or an error that says which URLs work.
pub fn engine_of(database_url: &str) -> StoreResult<Engine> {
    if database_url.starts_with("sqlite:") {
        Ok(Engine::Sqlite)
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Engine::Postgres)
    } else {
        Err(StoreError::Unavailable(format!(
            "unsupported database URL '{}': use sqlite://PATH or postgres://USER@HOST:PORT/DB",
            database_url.split('@').next_back().unwrap_or_default()
        )))
    }
}

impl SqlStore {
    pub async fn connect(database_url: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let engine = engine_of(database_url)?;
        let url = match engine {
            Engine::Sqlite if !database_url.contains("mode=") => {
                let separator = if database_url.contains('?') { '&' } else { '?' };
                format!("{database_url}{separator}mode=rwc")
            }
            _ => database_url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool_options = AnyPoolOptions::new()
            .max_connections(match engine {
                Engine::Sqlite => 8,
                Engine::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            // No ping before every use (a round trip per query on PostgreSQL): a broken
            // connection fails its query, the caller gets a retryable 503, and the pool
            // replaces the connection.
            .test_before_acquire(false);
        let pool_options = if engine == Engine::Sqlite {
            pool_options.after_connect(|connection, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the single writer; FULL makes a commit
                    // durable across power loss before the client is answered (group
                    // commit amortises the fsync). See docs/operations.md.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        connection.execute(pragma).await?;
                    }
                    Ok(())
                })
            })
        } else {
            pool_options.after_connect(|connection, _meta| {
                Box::pin(async move {
                    // Plan every execution with its actual values. Prepared statements
                    // otherwise switch to a generic plan after five runs, and for the
                    // ingest lookups (`run_id IN (…)`, `(build_id, client_event_id) IN
                    // (VALUES …)`) and the optional filters of the read queries that plan
                    // was a hash join over a sequential scan of events: a commit's cost
                    // grew with the table.
                    connection
                        .execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                    Ok(())
                })
            })
        };
        let pool = pool_options.connect_with(options).await?;
        let mut connection = pool.acquire().await?;
        crate::migrations::run(&mut connection, engine).await?;
        drop(connection);
        let writer = match engine {
            Engine::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
                if options.get_filename() == std::path::Path::new(":memory:") {
                    return Err(StoreError::Unavailable(
                        "in-memory SQLite is not supported (every connection would see another \
                         database): use sqlite://PATH"
                            .into(),
                    ));
                }
                Some(sqlite_writer::SqliteWriter::start(options.get_filename())?)
            }
            Engine::Postgres => None,
        };
        let native_pool = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => Some(
                // Ingest transactions run one at a time (they all lock the event-id
                // counter); the others serve the webhook sender's attempt batches.
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(false)
                    .connect_with(sqlx::postgres::PgConnectOptions::from_str(&url)?)
                    .await?,
            ),
        };
        Ok(Self {
            pool,
            engine,
            writer,
            native_pool,
            database_url: url,
        })
    }

    /// Events with `id > after_id` where `column = value`, oldest first. `column` is one
    /// of this module's constants (`"0"` with value 0 matches every event).
    async fn events_where(
        &self,
        column: &'static str,
        value: i64,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(trusted(format!(
            "SELECT id, seq, build_id, project_id, event_type, received_at, payload FROM events \
             WHERE {column} = $1 AND id > $2 ORDER BY id LIMIT $3"
        )))
        .bind(value)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::event_from_row).collect()
    }

    /// Closes the pools; in-flight queries finish first.
    pub async fn close(&self) {
        if let Some(pool) = &self.native_pool {
            pool.close().await;
        }
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for SqlStore {
    fn engine(&self) -> Engine {
        self.engine
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut connection = self.pool.acquire().await?;
        connection.ping().await?;
        Ok(())
    }

    async fn create_project(
        &self,
        slug: &ProjectSlug,
        name: &str,
        now: Millis,
    ) -> StoreResult<Project> {
        let row = sqlx::query(trusted(format!(
            "INSERT INTO projects (slug, name, created_at) VALUES ($1, $2, $3) RETURNING {}",
            rows::PROJECT_COLUMNS
        )))
        .bind(slug.as_str())
        .bind(name)
        .bind(now.0)
        .fetch_one(&self.pool)
        .await
        .map_err(|error| match StoreError::from(error) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a project with slug '{slug}' exists already"))
            }
            other => other,
        })?;
        project_from_row(&row)
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let rows = sqlx::query(trusted(format!(
            "SELECT {} FROM projects ORDER BY slug",
            rows::PROJECT_COLUMNS
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(project_from_row).collect()
    }

    async fn project_by_slug(&self, slug: &str) -> StoreResult<Option<Project>> {
        let row = sqlx::query(trusted(format!(
            "SELECT {} FROM projects WHERE slug = $1",
            rows::PROJECT_COLUMNS
        )))
        .bind(slug)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn project_by_id(&self, id: i64) -> StoreResult<Option<Project>> {
        let row = sqlx::query(trusted(format!(
            "SELECT {} FROM projects WHERE id = $1",
            rows::PROJECT_COLUMNS
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn create_token(&self, token: &NewToken, now: Millis) -> StoreResult<TokenRecord> {
        let row = sqlx::query(trusted(format!(
            "INSERT INTO tokens (project_id, kind, name, scopes, token_hash, display_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {}",
            rows::TOKEN_COLUMNS
        )))
        .bind(token.project_id)
        .bind(token.kind.as_str())
        .bind(&token.name)
        .bind(Scope::join(&token.scopes))
        .bind(&token.token_hash)
        .bind(&token.display_prefix)
        .bind(now.0)
        .fetch_one(&self.pool)
        .await?;
        token_from_row(&row)
    }

    async fn ensure_token(&self, token: &NewToken, now: Millis) -> StoreResult<TokenRecord> {
        sqlx::query(
            "INSERT INTO tokens (project_id, kind, name, scopes, token_hash, display_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token.project_id)
        .bind(token.kind.as_str())
        .bind(&token.name)
        .bind(Scope::join(&token.scopes))
        .bind(&token.token_hash)
        .bind(&token.display_prefix)
        .bind(now.0)
        .execute(&self.pool)
        .await?;
        self.token_by_hash(&token.token_hash)
            .await?
            .ok_or(StoreError::NotFound("token"))
    }

    async fn list_tokens(&self, project_id: Option<i64>) -> StoreResult<Vec<TokenRecord>> {
        let rows = match project_id {
            Some(project_id) => {
                sqlx::query(trusted(format!(
                    "SELECT {} FROM tokens WHERE project_id = $1 ORDER BY id",
                    rows::TOKEN_COLUMNS
                )))
                .bind(project_id)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(trusted(format!(
                    "SELECT {} FROM tokens WHERE project_id IS NULL ORDER BY id",
                    rows::TOKEN_COLUMNS
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(token_from_row).collect()
    }

    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query(trusted(format!(
            "SELECT {} FROM tokens WHERE token_hash = $1",
            rows::TOKEN_COLUMNS
        )))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn revoke_token(
        &self,
        project_id: Option<i64>,
        token_id: i64,
        now: Millis,
    ) -> StoreResult<TokenRecord> {
        // Instance tokens have no project; -1 stands for "none" so one statement serves both.
        let row = sqlx::query(trusted(format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND COALESCE(project_id, -1) = $3 RETURNING {}",
            rows::TOKEN_COLUMNS
        )))
        .bind(now.0)
        .bind(token_id)
        .bind(project_id.unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(token_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("token"))
    }

    async fn touch_token(&self, token_id: i64, now: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now.0)
            .bind(token_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(requests = requests.len()))]
    async fn ingest(
        &self,
        requests: &[IngestRequest],
        now: Millis,
    ) -> StoreResult<Vec<Result<Vec<EventOutcome>, IngestRejection>>> {
        match (&self.writer, &self.native_pool) {
            (Some(writer), _) => writer.ingest(requests, now).await,
            (None, Some(pool)) => pg_ingest::ingest(pool, COMMIT_CHANNEL, requests, now).await,
            (None, None) => Err(StoreError::Unavailable(
                "this store has no ingest path (neither SQLite writer nor PostgreSQL pool)".into(),
            )),
        }
    }

    async fn list_builds(&self, filter: &BuildFilter) -> StoreResult<Vec<BuildRecord>> {
        self.q_list_builds(filter).await
    }

    async fn recent_success_durations(
        &self,
        keys: &[PipelineKey],
        per_key: i64,
    ) -> StoreResult<Vec<(PipelineKey, Vec<i64>)>> {
        self.q_recent_success_durations(keys, per_key).await
    }

    async fn log_lines_before(&self, job_id: i64, offset: i64) -> StoreResult<i64> {
        self.q_log_lines_before(job_id, offset).await
    }

    async fn latest_events(&self, build_id: i64, limit: i64) -> StoreResult<Vec<StoredEvent>> {
        self.q_latest_events(build_id, limit).await
    }

    async fn first_events(&self, build_ids: &[i64]) -> StoreResult<Vec<StoredEvent>> {
        self.q_first_events(build_ids).await
    }

    async fn job_tallies(&self, build_ids: &[i64]) -> StoreResult<Vec<JobTally>> {
        self.q_job_tallies(build_ids).await
    }

    async fn build_by_run_id(&self, run_id: &str) -> StoreResult<Option<BuildRecord>> {
        let row = sqlx::query(trusted(format!("{BUILD_SELECT} WHERE b.run_id = $1")))
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
        let row = sqlx::query("SELECT value FROM kiln_counters WHERE name = 'event_id'")
            .fetch_one(&self.pool)
            .await?;
        Ok(sqlx::Row::try_get(&row, 0)?)
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
        let rows = sqlx::query(trusted(format!(
            "{BUILD_SELECT} WHERE b.status = 'running' \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.build_id = b.id) \
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

    async fn set_project_repo(
        &self,
        project_id: i64,
        repo: Option<&str>,
        default_branch: &str,
        max_concurrency: Option<i64>,
    ) -> StoreResult<Project> {
        self.q_set_project_repo(project_id, repo, default_branch, max_concurrency)
            .await
    }

    async fn upsert_branch(
        &self,
        project_id: i64,
        name: &str,
        priority: Option<i64>,
        auto_build: bool,
        now: Millis,
    ) -> StoreResult<BranchRecord> {
        self.q_upsert_branch(project_id, name, priority, auto_build, now)
            .await
    }

    async fn list_branches(&self, project_id: i64) -> StoreResult<Vec<BranchRecord>> {
        self.q_list_branches(project_id).await
    }

    async fn delete_branch(&self, project_id: i64, name: &str) -> StoreResult<()> {
        self.q_delete_branch(project_id, name).await
    }

    async fn auto_build_branches(&self) -> StoreResult<Vec<(Project, BranchRecord)>> {
        self.q_auto_build_branches().await
    }

    async fn advance_branch_commit(
        &self,
        project_id: i64,
        name: &str,
        previous: Option<&str>,
        commit: &str,
    ) -> StoreResult<bool> {
        self.q_advance_branch_commit(project_id, name, previous, commit)
            .await
    }

    async fn register_agent(&self, agent: &NewAgent, now: Millis) -> StoreResult<AgentRecord> {
        self.q_register_agent(agent, now).await
    }

    async fn agent_by_id(&self, id: i64) -> StoreResult<Option<AgentRecord>> {
        self.q_agent_by_id(id).await
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.q_list_agents().await
    }

    async fn touch_agent(
        &self,
        id: i64,
        now: Millis,
        metrics: Option<&serde_json::Value>,
    ) -> StoreResult<()> {
        self.q_touch_agent(id, now, metrics).await
    }

    async fn create_jobs(
        &self,
        build_id: i64,
        project_id: i64,
        priority: i64,
        jobs: &[JobPlan],
        now: Millis,
    ) -> StoreResult<()> {
        self.q_create_jobs(build_id, project_id, priority, jobs, now)
            .await
    }

    async fn job_by_id(&self, id: i64) -> StoreResult<Option<JobRecord>> {
        self.q_job_by_id(id).await
    }

    async fn jobs_of_build(&self, build_id: i64) -> StoreResult<Vec<JobRecord>> {
        self.q_jobs_of_build(build_id).await
    }

    async fn unfinished_jobs(&self, limit: i64) -> StoreResult<Vec<JobRecord>> {
        self.q_unfinished_jobs(limit).await
    }

    async fn claim_job(
        &self,
        agent: &AgentRecord,
        rules: ClaimRules,
        now: Millis,
    ) -> StoreResult<Option<JobRecord>> {
        self.q_claim_job(agent, rules, now).await
    }

    async fn renew_leases(
        &self,
        agent_id: i64,
        job_ids: &[i64],
        now: Millis,
        lease_ms: i64,
    ) -> StoreResult<Vec<HeldJob>> {
        self.q_renew_leases(agent_id, job_ids, now, lease_ms).await
    }

    async fn finish_job(
        &self,
        job_id: i64,
        attempt: i64,
        agent_id: Option<i64>,
        end: &JobEnd,
        now: Millis,
    ) -> StoreResult<bool> {
        self.q_finish_job(job_id, attempt, agent_id, end, now).await
    }

    async fn requeue_job(&self, job_id: i64, attempt: i64, now: Millis) -> StoreResult<bool> {
        self.q_requeue_job(job_id, attempt, now).await
    }

    async fn unblock_jobs(
        &self,
        build_id: i64,
        queue: &[String],
        skip: &[String],
        now: Millis,
    ) -> StoreResult<()> {
        self.q_unblock_jobs(build_id, queue, skip, now).await
    }

    async fn cancel_jobs(&self, build_id: i64, now: Millis) -> StoreResult<u64> {
        self.q_cancel_jobs(build_id, now).await
    }

    async fn expired_leases(&self, now: Millis, limit: i64) -> StoreResult<Vec<JobRecord>> {
        self.q_expired_leases(now, limit).await
    }

    async fn extend_leases(&self, until: Millis) -> StoreResult<u64> {
        self.q_extend_leases(until).await
    }

    async fn builds_to_advance(&self, limit: i64) -> StoreResult<Vec<i64>> {
        self.q_builds_to_advance(limit).await
    }

    async fn append_log(
        &self,
        job_id: i64,
        offset: i64,
        bytes: &[u8],
        cap: i64,
    ) -> StoreResult<LogAppend> {
        self.q_append_log(job_id, offset, bytes, cap).await
    }

    async fn read_log(
        &self,
        job_id: i64,
        offset: i64,
        max_bytes: i64,
    ) -> StoreResult<(Vec<u8>, i64)> {
        self.q_read_log(job_id, offset, max_bytes).await
    }

    async fn create_user(
        &self,
        email: &str,
        name: &str,
        password_hash: Option<&str>,
        instance_admin: bool,
        now: Millis,
    ) -> StoreResult<UserRecord> {
        self.q_create_user(email, name, password_hash, instance_admin, now)
            .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        self.q_user_by_email(email).await
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<UserRecord>> {
        self.q_user_by_id(id).await
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        self.q_list_users().await
    }

    async fn set_password(&self, user_id: i64, password_hash: &str) -> StoreResult<()> {
        self.q_set_password(user_id, password_hash).await
    }

    async fn set_user_disabled(
        &self,
        user_id: i64,
        disabled_at: Option<Millis>,
    ) -> StoreResult<UserRecord> {
        self.q_set_user_disabled(user_id, disabled_at).await
    }

    async fn revoke_user_sessions(&self, user_id: i64, now: Millis) -> StoreResult<Vec<i64>> {
        self.q_revoke_user_sessions(user_id, now).await
    }

    async fn create_session(
        &self,
        user_id: i64,
        token_hash: &str,
        csrf_token: &str,
        now: Millis,
        expires_at: Millis,
    ) -> StoreResult<SessionRecord> {
        self.q_create_session(user_id, token_hash, csrf_token, now, expires_at)
            .await
    }

    async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<SessionRecord>> {
        self.q_session_by_hash(token_hash).await
    }

    async fn revoke_session(&self, id: i64, now: Millis) -> StoreResult<()> {
        self.q_revoke_session(id, now).await
    }

    async fn set_membership(
        &self,
        project_id: i64,
        user_id: i64,
        role: kiln_core::Role,
        now: Millis,
    ) -> StoreResult<Membership> {
        self.q_set_membership(project_id, user_id, role, now).await
    }

    async fn remove_membership(&self, project_id: i64, user_id: i64) -> StoreResult<()> {
        self.q_remove_membership(project_id, user_id).await
    }

    async fn memberships_of_user(&self, user_id: i64) -> StoreResult<Vec<Membership>> {
        self.q_memberships_of_user(user_id).await
    }

    async fn members_of_project(&self, project_id: i64) -> StoreResult<Vec<Membership>> {
        self.q_members_of_project(project_id).await
    }

    async fn project_admins(&self, project_id: i64) -> StoreResult<Vec<i64>> {
        self.q_project_admins(project_id).await
    }

    async fn create_user_token(
        &self,
        user_id: i64,
        token: &NewToken,
        now: Millis,
    ) -> StoreResult<TokenRecord> {
        self.q_create_user_token(user_id, token, now).await
    }

    async fn user_tokens(&self, user_id: i64) -> StoreResult<Vec<TokenRecord>> {
        self.q_user_tokens(user_id).await
    }

    async fn revoke_user_token(
        &self,
        user_id: i64,
        token_id: i64,
        now: Millis,
    ) -> StoreResult<TokenRecord> {
        self.q_revoke_user_token(user_id, token_id, now).await
    }

    async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        project_id: Option<i64>,
        target: Option<&str>,
        detail: Option<&str>,
        now: Millis,
    ) -> StoreResult<()> {
        self.q_append_audit(actor, action, project_id, target, detail, now)
            .await
    }

    async fn audit_log(
        &self,
        project_id: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<AuditEntry>> {
        self.q_audit_log(project_id, before, limit).await
    }

    async fn insert_notifications(
        &self,
        notification: &NewNotification,
        recipients: &[i64],
        delivery: Delivery,
    ) -> StoreResult<Vec<i64>> {
        self.q_insert_notifications(notification, recipients, delivery)
            .await
    }

    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> StoreResult<Vec<NotificationRecord>> {
        self.q_list_notifications(filter).await
    }

    async fn mark_notification_read(
        &self,
        user_id: i64,
        id: i64,
        now: Millis,
    ) -> StoreResult<NotificationRecord> {
        self.q_mark_notification_read(user_id, id, now).await
    }

    async fn mark_all_notifications_read(&self, user_id: i64, now: Millis) -> StoreResult<u64> {
        self.q_mark_all_notifications_read(user_id, now).await
    }

    async fn archive_notification(
        &self,
        user_id: i64,
        id: i64,
        now: Millis,
    ) -> StoreResult<NotificationRecord> {
        self.q_archive_notification(user_id, id, now).await
    }

    async fn archive_notifications_before(&self, cutoff: Millis, now: Millis) -> StoreResult<u64> {
        self.q_archive_notifications_before(cutoff, now).await
    }

    async fn notification_stats(&self, user_id: i64) -> StoreResult<NotificationStats> {
        self.q_notification_stats(user_id).await
    }

    async fn add_notification_mute(
        &self,
        user_id: i64,
        project_id: Option<i64>,
        kind: Option<NotificationKind>,
        now: Millis,
    ) -> StoreResult<NotificationMute> {
        self.q_add_notification_mute(user_id, project_id, kind, now)
            .await
    }

    async fn remove_notification_mute(
        &self,
        user_id: i64,
        project_id: Option<i64>,
        kind: Option<NotificationKind>,
    ) -> StoreResult<()> {
        self.q_remove_notification_mute(user_id, project_id, kind)
            .await
    }

    async fn notification_mutes(&self, user_id: i64) -> StoreResult<Vec<NotificationMute>> {
        self.q_notification_mutes(user_id).await
    }

    async fn notifier_cursor(&self) -> StoreResult<i64> {
        self.q_notifier_cursor().await
    }

    async fn advance_notifier_cursor(&self, from: i64, to: i64) -> StoreResult<bool> {
        self.q_advance_notifier_cursor(from, to).await
    }

    async fn claim_due_emails(
        &self,
        now: Millis,
        claimed_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<OutboxEmail>> {
        self.q_claim_due_emails(now, claimed_until, limit).await
    }

    async fn email_sent(&self, id: i64, now: Millis) -> StoreResult<()> {
        self.q_email_sent(id, now).await
    }

    async fn email_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
        now: Millis,
    ) -> StoreResult<()> {
        self.q_email_failed(id, error, retry_at, now).await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: &NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint> {
        self.q_create_webhook_endpoint(endpoint).await
    }

    async fn webhook_endpoints(
        &self,
        project_id: Option<i64>,
    ) -> StoreResult<Vec<WebhookEndpoint>> {
        self.q_webhook_endpoints(project_id).await
    }

    async fn webhook_endpoint(&self, project_id: i64, id: i64) -> StoreResult<WebhookEndpoint> {
        self.q_webhook_endpoint(project_id, id).await
    }

    async fn update_webhook_endpoint(
        &self,
        project_id: i64,
        id: i64,
        patch: &WebhookEndpointPatch,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint> {
        self.q_update_webhook_endpoint(project_id, id, patch, now)
            .await
    }

    async fn rotate_webhook_secret(
        &self,
        project_id: i64,
        id: i64,
        new_secret: &str,
        previous_until: Millis,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint> {
        self.q_rotate_webhook_secret(project_id, id, new_secret, previous_until, now)
            .await
    }

    async fn delete_webhook_endpoint(&self, project_id: i64, id: i64) -> StoreResult<()> {
        self.q_delete_webhook_endpoint(project_id, id).await
    }

    async fn webhook_cursor(&self) -> StoreResult<i64> {
        self.q_webhook_cursor().await
    }

    async fn advance_webhook_cursor(&self, from: i64, to: i64) -> StoreResult<bool> {
        self.q_advance_webhook_cursor(from, to).await
    }

    async fn insert_webhook_delivery(
        &self,
        delivery: &NewWebhookDelivery,
    ) -> StoreResult<Option<i64>> {
        self.q_insert_webhook_delivery(delivery).await
    }

    async fn claim_due_webhook_deliveries(
        &self,
        now: Millis,
        claimed_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedWebhookDelivery>> {
        self.q_claim_due_webhook_deliveries(now, claimed_until, limit)
            .await
    }

    async fn queue_webhook_deliveries(
        &self,
        deliveries: &[NewWebhookDelivery],
        dropped: &[DroppedWebhookEvents],
        cursor_from: i64,
        cursor_to: i64,
    ) -> StoreResult<QueuedWebhookDeliveries> {
        self.q_queue_webhook_deliveries(deliveries, dropped, cursor_from, cursor_to)
            .await
    }

    async fn pending_webhook_deliveries(&self, endpoint_id: i64) -> StoreResult<i64> {
        self.q_pending_webhook_deliveries(endpoint_id).await
    }

    async fn finish_webhook_attempts(
        &self,
        finished: &[FinishedWebhookAttempt],
    ) -> StoreResult<()> {
        self.q_finish_webhook_attempts(finished).await
    }

    async fn webhook_deliveries(
        &self,
        endpoint_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<WebhookDeliveryRecord>> {
        self.q_webhook_deliveries(endpoint_id, limit).await
    }

    async fn redeliver_webhook(
        &self,
        endpoint_id: i64,
        delivery_id: i64,
        now: Millis,
    ) -> StoreResult<WebhookDeliveryRecord> {
        self.q_redeliver_webhook(endpoint_id, delivery_id, now)
            .await
    }

    async fn webhook_status(
        &self,
        project_id: Option<i64>,
    ) -> StoreResult<Vec<WebhookEndpointStatus>> {
        self.q_webhook_status(project_id).await
    }

    async fn set_github_secret(&self, project_id: i64, secret: Option<&str>) -> StoreResult<()> {
        self.q_set_github_secret(project_id, secret).await
    }

    async fn github_secret(&self, project_id: i64) -> StoreResult<Option<String>> {
        self.q_github_secret(project_id).await
    }

    async fn set_project_secret(
        &self,
        project_id: i64,
        name: &str,
        ciphertext: &str,
        now: Millis,
    ) -> StoreResult<SecretRecord> {
        self.q_set_project_secret(project_id, name, ciphertext, now)
            .await
    }

    async fn list_project_secrets(&self, project_id: i64) -> StoreResult<Vec<SecretRecord>> {
        self.q_list_project_secrets(project_id).await
    }

    async fn project_secret_values(&self, project_id: i64) -> StoreResult<Vec<(String, String)>> {
        self.q_project_secret_values(project_id).await
    }

    async fn delete_project_secret(&self, project_id: i64, name: &str) -> StoreResult<bool> {
        self.q_delete_project_secret(project_id, name).await
    }

    async fn set_repo_credentials(
        &self,
        project_id: i64,
        repo: Option<&str>,
        ciphertext: Option<&str>,
    ) -> StoreResult<()> {
        self.q_set_repo_credentials(project_id, repo, ciphertext)
            .await
    }
}
