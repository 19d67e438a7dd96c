//! `SqlStore`: the `Store` implementation for SQLite and PostgreSQL over sqlx's `Any`,
//! one area trait per file (`projects`, `builds`, `queue`, `accounts`, `notifications`,
//! `webhooks`, `secrets`); this module holds the connection set-up.
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
mod analytics;
mod analytics_days;
mod artifact_lifecycle;
mod artifacts;
mod builds;
mod deployments;
mod ingest;
mod notifications;
mod outage;
mod pg_ingest;
mod projects;
mod queue;
mod rows;
mod secrets;
mod sqlite_writer;
mod status;
mod test_results;
mod webhooks;

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Executor;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use outage::GuardedPool;

use crate::records::*;
use crate::{Engine, StoreError, StoreResult};

pub struct SqlStore {
    /// Reads and administrative writes; answers fast while the database is known down
    /// (`outage`).
    pool: GuardedPool<sqlx::Any>,
    engine: Engine,
    /// SQLite only: the thread that runs every ingest transaction.
    writer: Option<sqlite_writer::SqliteWriter>,
    /// PostgreSQL only: native connections for the statements that bind arrays (ingest
    /// in `pg_ingest`, webhook attempts), whose text stays the same whatever the batch,
    /// so each is prepared once per connection.
    native_pool: Option<GuardedPool<sqlx::Postgres>>,
    /// Kept for engine-specific connections (PostgreSQL `LISTEN`).
    database_url: String,
    /// PostgreSQL only: the readiness check's own connection, outside the pools, so
    /// `/readyz` says whether the database answers, not whether the pool is busy (a
    /// load balancer that took a busy pool for a dead database would pull the replica
    /// and pile its clients onto the others).
    health: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    /// PostgreSQL only: the claim's own connection, taken from the pool on first use and
    /// set to plan the claim statement once (`plan_cache_mode = force_generic_plan`): the
    /// pool's connections plan every execution with its values (see `connect`), which
    /// cost a claim ~0.5 ms of planning against ~0.1 ms of execution, at every claim of
    /// every waiting agent. Claims on a replica run one at a time anyway (the
    /// scheduler's lock); an error drops the connection and the next claim takes another.
    claim_connection: tokio::sync::Mutex<Option<sqlx::AnyConnection>>,
    /// SQLite only: the database file, for reads that return many rows (analytics) over
    /// a read-only rusqlite connection instead of sqlx's `Any` row decoding.
    sqlite_path: Option<std::path::PathBuf>,
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
            // While the database answers; `outage` shortens it while it is known down.
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
        let pool = GuardedPool::new(pool);
        let mut sqlite_path = None;
        let writer = match engine {
            Engine::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
                sqlite_path = Some(options.get_filename().to_path_buf());
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
            Engine::Postgres => Some(GuardedPool::new(
                // Ingest transactions run one at a time (they all lock the event-id
                // counter); the others serve the webhook sender's attempt batches.
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(false)
                    .connect_with(sqlx::postgres::PgConnectOptions::from_str(&url)?)
                    .await?,
            )),
        };
        Ok(Self {
            pool,
            engine,
            writer,
            native_pool,
            database_url: url,
            health: tokio::sync::Mutex::new(None),
            claim_connection: tokio::sync::Mutex::new(None),
            sqlite_path,
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
        if let Some(connection) = self.claim_connection.lock().await.take() {
            let _ = sqlx::Connection::close(connection).await;
        }
        if let Some(pool) = &self.native_pool {
            pool.close().await;
        }
        self.pool.close().await;
    }
}
