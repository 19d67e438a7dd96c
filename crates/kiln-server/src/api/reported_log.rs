//! The log a `kiln run` reports (ingest tokens): its wrapped command's output, appended
//! by byte offset to a reported job of its build, so the build page, `GET …/jobs/{step}/log`
//! and the live tail show it like the log of a step Kiln ran.

use axum::extract::State;

use super::path::Path;
use axum::http::Uri;
use axum::{Extension, Json};
use kiln_core::limits::MAX_LOG_CHUNK_BYTES;
use kiln_core::{JobState, StageName};
use kiln_protocol::ReportedLogAck;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::builds::ingest_build;

/// The step a log goes to when the request names none.
const DEFAULT_STEP: &str = "run";

/// `POST /api/v1/builds/{runId}/log?offset=&step=&end=&exitCode=`: appends the body's
/// bytes at `offset` of `step`'s log (created on the first append), and with `end`
/// marks that log complete with the command's outcome.
pub(crate) async fn append(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    uri: Uri,
    // At most a chunk; a larger one is 413 with the error body.
    super::body::RawBody(body): super::body::RawBody<MAX_LOG_CHUNK_BYTES>,
) -> Result<Json<ReportedLogAck>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let offset = params.integer("offset", 0, i64::MAX)?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            Some("offset"),
            "offset: is required (the log's length so far; 0 for the first chunk)",
        )
    })?;
    let step = StageName::parse("step", params.string("step").unwrap_or(DEFAULT_STEP))?;
    let end = params
        .string("end")
        .map(|raw| match JobState::from_name(raw) {
            Some(state @ (JobState::Passed | JobState::Failed | JobState::Cancelled)) => Ok(state),
            _ => Err(ApiError::bad_request(
                "invalid_field",
                Some("end"),
                format!("end: '{raw}' is not an outcome; use passed, failed or cancelled"),
            )),
        })
        .transpose()?;
    let exit_code = params.integer("exitCode", 0, 255)?;
    let build = ingest_build(&state, &caller, &run_id, "write build logs").await?;
    let job = state.scheduler.reported_job(&build, step.as_str()).await?;
    if job.state.is_terminal() && !body.is_empty() && job.log_size <= offset {
        return Err(ApiError::Conflict {
            code: "log_ended",
            message: format!(
                "the log of step '{}' of build {run_id} was ended ({}); nothing more is appended",
                job.step, job.state
            ),
            field: None,
        });
    }
    let size = state.scheduler.append_log(&job, offset, &body).await?;
    let state_now = match end {
        Some(outcome) => {
            state
                .scheduler
                .end_reported_job(&job, outcome, exit_code, size)
                .await?;
            if job.state.is_terminal() {
                job.state
            } else {
                outcome
            }
        }
        None => job.state,
    };
    Ok(Json(ReportedLogAck {
        job_id: job.id,
        step: job.step,
        size,
        state: state_now.as_str().into(),
        cancel: job.cancel_requested,
    }))
}
