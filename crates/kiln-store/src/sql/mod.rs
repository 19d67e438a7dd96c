//! `SqlStore`: the `Store` implementation for SQLite and PostgreSQL, each on its native
//! driver through `db` (rusqlite on SQLite, sqlx's PostgreSQL driver on PostgreSQL), one
//! area trait per file (`projects`, `builds`, `queue`, `accounts`, `notifications`,
//! `webhooks`, `secrets`, …); this module holds the connection set-up.
//!
//! Statements use `$N` placeholders, which both engines accept, and only types both
//! share (BIGINT, DOUBLE PRECISION, TEXT). Ingest transactions begin with a write to the
//! `kiln_counters` row, which serialises them across connections and replicas.
//!
//! On SQLite every write runs on one thread (`sqlite_writer`: ingest with its own
//! statements, every other write through `db`), reads on a few read-only connections.
//! PostgreSQL ingest runs in `pg_ingest` (tokio-postgres: array binds, pipelined
//! statements); the rest through `db`.

mod accounts;
mod analytics;
mod analytics_days;
mod artifact_lifecycle;
mod artifacts;
mod builds;
pub(crate) mod db;
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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Executor;

use db::Db;
pub(crate) use db::trusted;
use outage::GuardedPool;

use crate::records::*;
use crate::{Engine, StoreError, StoreResult};

pub struct SqlStore {
    /// Reads and administrative writes on the engine's native connections; on
    /// PostgreSQL it answers fast while the database is known down (`outage`).
    pool: Db,
    engine: Engine,
    /// SQLite only: the thread that runs every write.
    writer: Option<Arc<sqlite_writer::SqliteWriter>>,
    /// PostgreSQL only: native connections for the statements that bind arrays (webhook
    /// attempts, analytics), whose text stays the same whatever the batch, so each is
    /// prepared once per connection; its guard also answers for `pg_ingest`.
    native_pool: Option<GuardedPool<sqlx::Postgres>>,
    /// PostgreSQL only: ingest's own pipelined connection.
    pg_ingest: Option<pg_ingest::PgIngest>,
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
    claim_connection: tokio::sync::Mutex<Option<db::Conn>>,
    /// SQLite only: the database file, for reads that return many rows (analytics) over
    /// a read-only rusqlite connection of their own.
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
        let engine = engine_of(database_url)?;
        match engine {
            Engine::Sqlite => Self::connect_sqlite(database_url).await,
            Engine::Postgres => Self::connect_postgres(database_url).await,
        }
    }

    async fn connect_sqlite(database_url: &str) -> StoreResult<Self> {
        let path = crate::backup::sqlite_path_of(database_url).ok_or_else(|| {
            StoreError::Unavailable(format!(
                "no file in the SQLite URL '{database_url}': use sqlite://PATH"
            ))
        })?;
        if path == std::path::Path::new(":memory:") {
            return Err(StoreError::Unavailable(
                "in-memory SQLite is not supported (every connection would see another \
                 database): use sqlite://PATH"
                    .into(),
            ));
        }
        // WAL lets readers run beside the single writer; FULL makes a commit durable
        // across power loss before the client is answered (group commit amortises the
        // fsync). See docs/operations.md and `sqlite_writer::open`.
        let writer = Arc::new(sqlite_writer::SqliteWriter::start(&path)?);
        let pool = Db::Sqlite(db::SqliteDb::start(&path, writer.clone())?);
        let mut connection = pool.connection().await?;
        crate::migrations::run(&mut connection, Engine::Sqlite).await?;
        drop(connection);
        Ok(Self {
            pool,
            engine: Engine::Sqlite,
            writer: Some(writer),
            native_pool: None,
            pg_ingest: None,
            database_url: database_url.to_owned(),
            health: tokio::sync::Mutex::new(None),
            claim_connection: tokio::sync::Mutex::new(None),
            sqlite_path: Some(path),
        })
    }

    async fn connect_postgres(url: &str) -> StoreResult<Self> {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            // While the database answers; `outage` shortens it while it is known down.
            .acquire_timeout(Duration::from_secs(10))
            // No ping before every use (a round trip per query): a broken connection
            // fails its query, the caller gets a retryable 503, and the pool replaces it.
            .test_before_acquire(false)
            .after_connect(|connection, _meta| {
                Box::pin(async move {
                    // Plan every execution with its actual values. Prepared statements
                    // otherwise switch to a generic plan after five runs, and for the
                    // optional filters of the read queries that plan was a hash join
                    // over a sequential scan of events: a read's cost grew with the table.
                    connection
                        .execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        let pool = Db::Postgres(GuardedPool::new(pool));
        let mut connection = pool.connection().await?;
        crate::migrations::run(&mut connection, Engine::Postgres).await?;
        connection.close().await;
        // The webhook sender's attempt batches and analytics reads (ingest has a
        // connection of its own, `pg_ingest`).
        let native_pool = GuardedPool::new(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .connect_with(options)
                .await?,
        );
        Ok(Self {
            pool,
            engine: Engine::Postgres,
            writer: None,
            native_pool: Some(native_pool),
            pg_ingest: Some(pg_ingest::PgIngest::new(url)?),
            database_url: url.to_owned(),
            health: tokio::sync::Mutex::new(None),
            claim_connection: tokio::sync::Mutex::new(None),
            sqlite_path: None,
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
        let rows = db::query(trusted(format!(
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
            connection.close().await;
        }
        if let Some(pool) = &self.native_pool {
            pool.close().await;
        }
        self.pool.close().await;
    }
}
