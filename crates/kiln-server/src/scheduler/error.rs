//! The scheduler's own errors: what it refuses and why, in Kiln's words, independent of
//! HTTP. The JSON API and the dashboard map them (`From<SchedulerError> for ApiError`,
//! in `api/mod.rs`);
//! a store error keeps its cause until it is mapped in one place (`error.rs`).

use kiln_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A value the caller gave is malformed (a branch name, a priority).
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with the state of a build or job (ended, reassigned).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// Well-formed, but naming something that does not exist or cannot be used (an
    /// unknown branch or commit, a project without a repository).
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Kiln cannot do it now (ingest is busy, git is away); trying again may work.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SchedulerError {
    pub fn bad_request(
        code: &'static str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }
}
