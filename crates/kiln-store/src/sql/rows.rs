//! Mapping database rows to records; a row that cannot be mapped is reported as a
//! corrupt-data error rather than a panic.

use super::db::{self, Row};
use kiln_core::token::{Scope, TokenKind};
use kiln_core::{BuildState, BuildStatus, Millis, RunId, StageName, StageState, StageStatus};
use std::collections::BTreeMap;

use crate::records::{BuildRecord, Project, StoredEvent, TokenRecord};
use crate::{StoreError, StoreResult};

pub(crate) const PROJECT_COLUMNS: &str = "id, slug, name, created_at, repo, default_branch, max_concurrency, repo_credentials, public_status";

pub(crate) const TOKEN_COLUMNS: &str = "id, project_id, user_id, kind, name, scopes, display_prefix, created_at, last_used_at, revoked_at";

/// The stages of build `$1`, in order (read by `stage_from_row`).
pub(crate) const STAGES_OF_BUILD: &str = "SELECT name, position, status, started_at, ended_at, duration_ms, message \
     FROM stages WHERE build_id = $1 ORDER BY position";

pub(crate) const BUILD_SELECT: &str = "SELECT b.id, b.project_id, p.slug, b.number, b.last_event_id, b.run_id, \
     b.status, b.progress_hundredths, b.current_stage, b.env, b.origin, b.command, b.host, b.pid, b.repo, b.branch, \
     b.commit_sha, b.message, b.created_at, b.started_at, b.ended_at, b.duration_ms, b.last_event_at, \
     b.heartbeat_timeout_secs, b.last_seq, b.metrics FROM builds b JOIN projects p ON p.id = b.project_id";

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("corrupt {what} row: {detail}"))
}

pub(crate) fn project_from_row(row: &Row) -> StoreResult<Project> {
    Ok(Project {
        id: row.try_get("id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        created_at: Millis(row.try_get("created_at")?),
        repo: row.try_get("repo")?,
        default_branch: row.try_get("default_branch")?,
        max_concurrency: row.try_get("max_concurrency")?,
        repo_credentials: row.try_get("repo_credentials")?,
        public_status: row.try_get::<i64, _>("public_status")? != 0,
    })
}

pub(crate) fn token_from_row(row: &Row) -> StoreResult<TokenRecord> {
    let kind: String = row.try_get("kind")?;
    let scopes: String = row.try_get("scopes")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        user_id: row.try_get("user_id")?,
        kind: TokenKind::from_name(&kind).ok_or_else(|| corrupt("token", &kind))?,
        name: row.try_get("name")?,
        scopes: Scope::split(&scopes),
        display_prefix: row.try_get("display_prefix")?,
        created_at: Millis(row.try_get("created_at")?),
        last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(Millis),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(Millis),
    })
}

/// Named column access shared by `db` rows (reads on both engines), tokio-postgres rows
/// (PostgreSQL ingest) and rusqlite rows (the SQLite writer), so one mapping serves all.
pub(crate) trait Columns {
    fn int(&self, name: &str) -> StoreResult<i64>;
    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>>;
    fn text(&self, name: &str) -> StoreResult<String>;
    fn opt_text(&self, name: &str) -> StoreResult<Option<String>>;
}

/// `Columns` for each row type, by the method that reads a column by name.
macro_rules! columns {
    ($($row:ty => $get:ident),*) => {$(
        // `Ok(…?)` converts each driver's error; for `db::Row` it already is a store error.
        #[allow(clippy::needless_question_mark)]
        impl Columns for $row {
            fn int(&self, name: &str) -> StoreResult<i64> {
                Ok(self.$get(name)?)
            }
            fn opt_int(&self, name: &str) -> StoreResult<Option<i64>> {
                Ok(self.$get(name)?)
            }
            fn text(&self, name: &str) -> StoreResult<String> {
                Ok(self.$get(name)?)
            }
            fn opt_text(&self, name: &str) -> StoreResult<Option<String>> {
                Ok(self.$get(name)?)
            }
        }
    )*};
}
columns!(Row => try_get, tokio_postgres::Row => try_get, rusqlite::Row<'_> => get);

pub(crate) fn build_from_row(row: &impl Columns) -> StoreResult<BuildRecord> {
    let run_id = row.text("run_id")?;
    let status = row.text("status")?;
    let current_stage = row.opt_text("current_stage")?;
    let state = BuildState {
        run_id: RunId::parse("run_id", &run_id).map_err(|e| corrupt("build", e))?,
        status: BuildStatus::from_name(&status).ok_or_else(|| corrupt("build", &status))?,
        progress: row
            .opt_int("progress_hundredths")?
            .map(|hundredths| hundredths as f64 / 100.0),
        current_stage: current_stage
            .map(|name| StageName::parse("current_stage", &name))
            .transpose()
            .map_err(|e| corrupt("build", e))?,
        env: row.opt_text("env")?,
        origin: row.opt_text("origin")?,
        command: row.opt_text("command")?,
        host: row.opt_text("host")?,
        pid: row.opt_int("pid")?,
        repo: row.opt_text("repo")?,
        branch: row.opt_text("branch")?,
        commit: row.opt_text("commit_sha")?,
        message: row.opt_text("message")?,
        created_at: Millis(row.int("created_at")?),
        started_at: Millis(row.int("started_at")?),
        ended_at: row.opt_int("ended_at")?.map(Millis),
        duration_ms: row.opt_int("duration_ms")?,
        last_event_at: Millis(row.int("last_event_at")?),
        heartbeat_timeout_secs: row.opt_int("heartbeat_timeout_secs")?,
        last_seq: row.int("last_seq")?,
        stages: Vec::new(),
        metrics: metrics_from_text(row.opt_text("metrics")?.as_deref())?,
    };
    Ok(BuildRecord {
        id: row.int("id")?,
        project_id: row.int("project_id")?,
        project_slug: row.text("slug")?,
        number: row.int("number")?,
        last_event_id: row.int("last_event_id")?,
        state,
    })
}

/// A build's metrics column (a JSON object of names to numbers, or NULL).
pub(crate) fn metrics_from_text(text: Option<&str>) -> StoreResult<BTreeMap<String, f64>> {
    match text {
        None => Ok(BTreeMap::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| corrupt("build metrics", e)),
    }
}

/// The metrics column of a build: NULL when it has none.
pub(crate) fn metrics_to_text(metrics: &BTreeMap<String, f64>) -> Option<String> {
    (!metrics.is_empty()).then(|| serde_json::to_string(metrics).unwrap_or_default())
}

pub(crate) fn stage_from_row(row: &impl Columns) -> StoreResult<StageState> {
    let name = row.text("name")?;
    let status = row.text("status")?;
    Ok(StageState {
        name: StageName::parse("name", &name).map_err(|e| corrupt("stage", e))?,
        position: row.int("position")?,
        status: StageStatus::from_name(&status).ok_or_else(|| corrupt("stage", &status))?,
        started_at: Millis(row.int("started_at")?),
        ended_at: row.opt_int("ended_at")?.map(Millis),
        duration_ms: row.opt_int("duration_ms")?,
        message: row.opt_text("message")?,
        dirty: false,
    })
}

pub(crate) async fn load_stages<'c>(
    executor: impl Into<db::Target<'c>>,
    build_id: i64,
) -> StoreResult<Vec<StageState>> {
    let rows = db::query(STAGES_OF_BUILD)
        .bind(build_id)
        .fetch_all(executor)
        .await?;
    rows.iter().map(stage_from_row).collect()
}

pub(crate) fn event_from_row(row: &Row) -> StoreResult<StoredEvent> {
    let payload: String = row.try_get("payload")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        build_id: row.try_get("build_id")?,
        project_id: row.try_get("project_id")?,
        event_type: row.try_get("event_type")?,
        received_at: Millis(row.try_get("received_at")?),
        payload: serde_json::from_str(&payload).map_err(|e| corrupt("event", e))?,
    })
}
