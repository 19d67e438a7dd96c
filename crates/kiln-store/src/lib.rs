//! Kiln's durable storage: the `Store` trait, its records, and the SQL engines behind it.
//!
//! Only this crate knows SQL. One implementation (`sql::SqlStore`, over sqlx's `Any`
//! driver) serves both SQLite and PostgreSQL: the statements are written in the common
//! dialect and the engines differ only in their migrations, connection set-up and how a
//! write transaction begins — except SQLite ingest, which a dedicated writer thread runs
//! over rusqlite (`sql::sqlite_writer`) with the same transaction logic. The same test
//! suite (`tests/store_suite.rs`) runs against both engines.

mod migrations;
mod records;
pub mod sql;
#[cfg(feature = "test-support")]
pub mod test_support;

use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::{Millis, ProjectSlug};

pub use records::*;
pub use sql::SqlStore;

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// The database failed or is unreachable; the detail is logged, not shown.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(database_error) = &error
            && database_error.is_unique_violation()
        {
            return StoreError::Conflict(database_error.message().to_owned());
        }
        StoreError::Unavailable(error.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(failure, message) = &error
            && (failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
        {
            return StoreError::Conflict(message.clone().unwrap_or_else(|| error.to_string()));
        }
        StoreError::Unavailable(error.to_string())
    }
}

impl StoreError {
    /// SQLite's "database is locked" (another connection or process holds the write
    /// lock past the busy timeout): the transaction wrote nothing and may be retried.
    pub(crate) fn is_sqlite_busy(&self) -> bool {
        matches!(self, StoreError::Unavailable(message) if message.contains("database is locked"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything Kiln keeps durably. Implementations are cheap to share (`Arc<dyn Store>`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
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
    /// Signals commits made by other processes on the same database (PostgreSQL
    /// `LISTEN`); `None` where only this process writes (SQLite).
    async fn commit_signals(&self) -> StoreResult<Option<tokio::sync::mpsc::Receiver<()>>>;
    /// Running builds whose last event is older than their heartbeat timeout.
    async fn stale_builds(
        &self,
        now: Millis,
        default_timeout_secs: i64,
        limit: i64,
    ) -> StoreResult<Vec<BuildRecord>>;
}

/// Opens the store named by a database URL (`sqlite://…`, `postgres://…`), creating
/// the SQLite file if needed, and runs pending migrations.
pub async fn connect(database_url: &str) -> StoreResult<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::connect(database_url).await?))
}
