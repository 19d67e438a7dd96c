//! Plain records the store reads and writes.

use kiln_core::token::{Scope, TokenKind};
use kiln_core::{BuildState, BuildStatus, ClientEventId, Millis, NewEvent, RunId};

#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub created_at: Millis,
    /// The git repository Kiln builds from (any URL git accepts, or a local path);
    /// `None` for projects whose builds only report themselves.
    pub repo: Option<String>,
    pub default_branch: String,
    /// Jobs of this project that may run at once; `None` is unlimited.
    pub max_concurrency: Option<i64>,
    /// The repository's credentials, encrypted by the server (kept out of `repo`).
    pub repo_credentials: Option<String>,
    /// Its admin published a public status page and badges (off by default).
    pub public_status: bool,
}

/// A project secret, without its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRecord {
    pub name: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug)]
pub struct NewToken {
    pub project_id: Option<i64>,
    pub kind: TokenKind,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub token_hash: String,
    pub display_prefix: String,
}

impl NewToken {
    /// The record of a token `secret`: only its hash and a display prefix are kept.
    pub fn new(
        secret: &str,
        kind: TokenKind,
        project_id: Option<i64>,
        name: impl Into<String>,
        scopes: Vec<Scope>,
    ) -> NewToken {
        NewToken {
            project_id,
            kind,
            name: name.into(),
            scopes,
            token_hash: kiln_core::token::hash_token(secret),
            display_prefix: kiln_core::token::display_prefix(secret),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    pub id: i64,
    pub project_id: Option<i64>,
    /// The user a `user` token acts as.
    pub user_id: Option<i64>,
    pub kind: TokenKind,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub display_prefix: String,
    pub created_at: Millis,
    pub last_used_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// One client request's events, all for one project.
#[derive(Clone, Debug)]
pub struct IngestRequest {
    pub project_id: i64,
    pub events: Vec<NewEvent>,
    pub precondition: Precondition,
    /// Job rows written in the same transaction as the events, when the request is
    /// accepted: a triggered build and its jobs become visible together or not at all.
    pub jobs: Option<NewJobs>,
}

impl IngestRequest {
    /// A request of events only.
    pub fn events(project_id: i64, events: Vec<NewEvent>) -> Self {
        Self {
            project_id,
            events,
            precondition: Precondition::None,
            jobs: None,
        }
    }
}

/// The jobs of one build of an ingest request (a trigger's plan).
#[derive(Clone, Debug)]
pub struct NewJobs {
    /// The build they belong to; one of the request's events names it.
    pub run_id: RunId,
    pub priority: i64,
    pub plans: Vec<kiln_core::jobs::JobPlan>,
}

/// A condition checked inside the ingest transaction, against the build as it is then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// Apply only if the build is still stale (the reaper's guard against a heartbeat
    /// that arrived between its scan and its write); otherwise every event is ignored.
    BuildIsStale {
        default_timeout_secs: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeStatus {
    /// Stored now.
    Stored,
    /// Stored by an earlier request with the same `eventId`; the ids are that event's.
    Duplicate,
    /// Accepted and not stored (a heartbeat after the end).
    Ignored,
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventOutcome {
    pub run_id: RunId,
    pub client_event_id: Option<ClientEventId>,
    pub status: OutcomeStatus,
    /// Global event id (absent when ignored).
    pub id: Option<i64>,
    /// Per-build sequence number, from 1 (absent when ignored).
    pub seq: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IngestRejection {
    /// The build had ended; lifecycle events are refused.
    #[error("{message}")]
    Terminal { index: usize, message: String },
    /// The run id belongs to a build of another project.
    #[error(
        "runId {run_id} is already used by another project's build; generate a fresh UUID for each build"
    )]
    RunIdTaken { index: usize, run_id: String },
}

impl IngestRejection {
    pub fn index(&self) -> usize {
        match self {
            Self::Terminal { index, .. } | Self::RunIdTaken { index, .. } => *index,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BuildRecord {
    pub id: i64,
    pub project_id: i64,
    pub project_slug: String,
    pub number: i64,
    pub last_event_id: i64,
    /// Stages are filled only by `build_by_run_id`.
    pub state: BuildState,
}

#[derive(Clone, Debug, Default)]
pub struct BuildFilter {
    pub project_id: Option<i64>,
    /// Only builds of these projects (a caller's readable set, so a dashboard lists the
    /// builds of all its projects in one query); `None` means every project, an empty
    /// set matches nothing.
    pub project_ids: Option<Vec<i64>>,
    pub branch: Option<String>,
    pub status: Option<BuildStatus>,
    /// Only builds with an internal id below this cursor (paging, newest first).
    pub before: Option<i64>,
    pub limit: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub seq: i64,
    pub build_id: i64,
    pub project_id: i64,
    pub event_type: String,
    pub received_at: Millis,
    /// The event as received (`NewEvent::to_json`).
    pub payload: serde_json::Value,
}
