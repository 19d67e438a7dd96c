//! The agent endpoints (agent tokens only): register, claim (long poll), heartbeat,
//! log chunks, and the end of an attempt.

use std::time::Duration;

use axum::extract::State;

use super::path::Path;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_core::limits::{
    MAX_AGENT_CONCURRENCY, MAX_AGENT_LABELS, MAX_AGENT_NAME_LEN, MAX_CLAIM_WAIT_SECS,
    MAX_LOG_CHUNK_BYTES, MAX_MESSAGE_LEN,
};
use kiln_core::{AgentLabel, FieldError};
use kiln_protocol::{
    AgentHeartbeat, AgentRegistered, ClaimRequest, FinishJob, HeartbeatReply, LogAck, RegisterAgent,
};
use kiln_store::{AgentRecord, JobEnd, NewAgent};

use super::body::JsonBody;
use super::body::parse;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::scheduler::{ArtifactSource, artifact_source, reported_state};

fn short_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("must be 1-{max} characters without control characters"),
        )
        .into());
    }
    Ok(())
}

/// The agent named in a request, if it registered with this caller's token.
async fn own_agent(
    state: &AppState,
    caller: &Caller,
    agent_id: i64,
) -> Result<AgentRecord, ApiError> {
    match state.store.agent_by_id(agent_id).await? {
        Some(agent) if agent.token_id == Some(caller.token_id) => Ok(agent),
        _ => Err(ApiError::NotFound(format!(
            "agent {agent_id} is not registered with this token; register again (POST /api/v1/agent/register)"
        ))),
    }
}

pub(crate) async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<AgentRegistered>, ApiError> {
    let request: RegisterAgent = parse(body)?;
    short_text("name", &request.name, MAX_AGENT_NAME_LEN)?;
    if request.labels.len() > MAX_AGENT_LABELS {
        return Err(FieldError::new("labels", format!("at most {MAX_AGENT_LABELS} labels")).into());
    }
    let mut labels = Vec::new();
    for (index, label) in request.labels.iter().enumerate() {
        let label = AgentLabel::parse(&format!("labels[{index}]"), label)?;
        if !labels.contains(&label.as_str().to_owned()) {
            labels.push(label.as_str().to_owned());
        }
    }
    if !(1..=MAX_AGENT_CONCURRENCY).contains(&request.concurrency) {
        return Err(
            FieldError::new("concurrency", format!("must be 1-{MAX_AGENT_CONCURRENCY}")).into(),
        );
    }
    if !["process", "sandbox", "container"].contains(&request.executor.as_str()) {
        return Err(FieldError::new(
            "executor",
            "must be \"process\", \"sandbox\" or \"container\"",
        )
        .into());
    }
    for (field, value) in [
        ("hostname", &request.hostname),
        ("version", &request.version),
    ] {
        if let Some(value) = value {
            short_text(field, value, MAX_AGENT_NAME_LEN)?;
        }
    }
    let agent = state
        .store
        .register_agent(
            &NewAgent {
                name: request.name.trim().to_owned(),
                token_id: caller.token_id,
                labels,
                concurrency: request.concurrency,
                executor: request.executor,
                hostname: request.hostname,
                version: request.version,
            },
            state.clock.now(),
        )
        .await?;
    let config = state.scheduler.config();
    Ok(Json(AgentRegistered {
        agent_id: agent.id,
        lease_secs: config.job_lease.as_secs(),
        heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
        max_claim_wait_secs: MAX_CLAIM_WAIT_SECS,
    }))
}

pub(crate) async fn claim(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request: ClaimRequest = parse(body)?;
    let wait = request.wait_secs.unwrap_or(MAX_CLAIM_WAIT_SECS);
    if wait > MAX_CLAIM_WAIT_SECS {
        return Err(FieldError::new("waitSecs", format!("must be 0-{MAX_CLAIM_WAIT_SECS}")).into());
    }
    let agent = own_agent(&state, &caller, request.agent_id).await?;
    match state
        .scheduler
        .claim(&agent, Duration::from_secs(wait))
        .await?
    {
        Some(job) => Ok((StatusCode::OK, Json(job)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let request: AgentHeartbeat = parse(body)?;
    if request.jobs.len() > MAX_AGENT_CONCURRENCY as usize {
        return Err(
            FieldError::new("jobs", format!("at most {MAX_AGENT_CONCURRENCY} jobs")).into(),
        );
    }
    if request
        .metrics
        .as_ref()
        .is_some_and(|m| !m.is_object() || m.to_string().len() > 4096)
    {
        return Err(FieldError::new("metrics", "must be an object of at most 4 KiB").into());
    }
    let agent = own_agent(&state, &caller, request.agent_id).await?;
    let reply = state
        .scheduler
        .heartbeat(&agent, &request.jobs, request.metrics.as_ref())
        .await?;
    Ok(Json(reply))
}

/// `POST /api/v1/agent/jobs/{id}/log?agentId=&attempt=&offset=`, the raw bytes as body.
pub(crate) async fn append_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(job_id): Path<i64>,
    uri: Uri,
    // At most a chunk; a larger one is 413 with the error body.
    super::body::RawBody(body): super::body::RawBody<MAX_LOG_CHUNK_BYTES>,
) -> Result<Json<LogAck>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let required = |key: &str| -> Result<i64, ApiError> {
        params.integer(key, 0, i64::MAX)?.ok_or_else(|| {
            ApiError::bad_request("invalid_field", Some(key), format!("{key}: is required"))
        })
    };
    let (agent_id, attempt, offset) = (
        required("agentId")?,
        required("attempt")?,
        required("offset")?,
    );
    own_agent(&state, &caller, agent_id).await?;
    let job = state.scheduler.held_job(job_id, agent_id, attempt).await?;
    let size = state.scheduler.append_log(&job, offset, &body).await?;
    Ok(Json(LogAck {
        size,
        cancel: job.cancel_requested,
    }))
}

/// `POST /api/v1/agent/jobs/{id}/tests?agentId=&attempt=` with a JUnit XML report the
/// step wrote (`test_reports:`): stored as the build's test results.
pub(crate) async fn upload_tests(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(job_id): Path<i64>,
    uri: Uri,
    super::body::RawBody(report): super::body::RawBody<
        { crate::services::test_results::MAX_REPORT_BYTES },
    >,
) -> Result<(StatusCode, Json<kiln_protocol::TestReportStored>), ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let required = |key: &str| -> Result<i64, ApiError> {
        params.integer(key, 0, i64::MAX)?.ok_or_else(|| {
            ApiError::bad_request("invalid_field", Some(key), format!("{key}: is required"))
        })
    };
    let (agent_id, attempt) = (required("agentId")?, required("attempt")?);
    own_agent(&state, &caller, agent_id).await?;
    let job = state.scheduler.held_job(job_id, agent_id, attempt).await?;
    let build = state
        .store
        .build_by_run_id(&job.run_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build '{}' not found", job.run_id)))?;
    let stored = crate::services::test_results::store_report(&state, &build, report).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// The job an agent's artifact request is about (its own, this attempt, still running)
/// and its build.
async fn agent_build(
    state: &AppState,
    caller: &Caller,
    job_id: i64,
    uri: &Uri,
) -> Result<(kiln_store::JobRecord, kiln_store::BuildRecord), ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let required = |key: &str| -> Result<i64, ApiError> {
        params.integer(key, 0, i64::MAX)?.ok_or_else(|| {
            ApiError::bad_request("invalid_field", Some(key), format!("{key}: is required"))
        })
    };
    let (agent_id, attempt) = (required("agentId")?, required("attempt")?);
    own_agent(state, caller, agent_id).await?;
    let job = state.scheduler.held_job(job_id, agent_id, attempt).await?;
    let build = state
        .store
        .build_by_run_id(&job.run_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build '{}' not found", job.run_id)))?;
    Ok((job, build))
}

/// `POST /api/v1/agent/jobs/{id}/artifacts?agentId=&attempt=`: starts or resumes the
/// upload of a file the job's step made.
pub(crate) async fn start_artifact(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(job_id): Path<i64>,
    uri: Uri,
    JsonBody(body): JsonBody,
) -> Result<Json<kiln_protocol::ArtifactUpload>, ApiError> {
    let (job, build) = agent_build(&state, &caller, job_id, &uri).await?;
    let request: kiln_protocol::StartArtifactUpload = parse(body)?;
    Ok(Json(
        crate::services::artifacts::start_upload(&state, &build, request, Some(job.step)).await?,
    ))
}

/// `PUT /api/v1/agent/jobs/{id}/artifacts/uploads/{uploadId}?agentId=&attempt=&offset=[&sha256=|&crc32=]`.
pub(crate) async fn send_artifact(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((job_id, upload_id)): Path<(i64, String)>,
    uri: Uri,
    body: axum::body::Body,
) -> Result<Json<kiln_protocol::ArtifactUpload>, ApiError> {
    let query = super::artifacts::SendQuery::of(&uri)?;
    let (_, build) = agent_build(&state, &caller, job_id, &uri).await?;
    Ok(Json(
        crate::services::artifacts::append(
            &state,
            &build,
            &upload_id,
            query.offset,
            &query.confirm,
            body.into_data_stream(),
        )
        .await?,
    ))
}

/// `GET /api/v1/agent/jobs/{id}/artifacts/{sha256}?agentId=&attempt=`: a blob of the
/// job's build (what the steps it depends on uploaded), for its workspace; for a
/// rollback's re-run of a deploy step, also one the earlier build's steps it depends on
/// uploaded (`scheduler::artifact_source`).
pub(crate) async fn download_artifact(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((job_id, sha256)): Path<(i64, String)>,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let (job, build) = agent_build(&state, &caller, job_id, &uri).await?;
    let mut record = state
        .store
        .build_artifact_by_sha256(build.id, &sha256)
        .await?;
    if record.is_none() {
        let spec = kiln_core::jobs::JobSpec::from_json(&job.spec);
        if let Some(ArtifactSource::Rerun { build_id, steps }) = artifact_source(&job, &spec) {
            record = state
                .store
                .build_artifact_by_sha256(build_id, &sha256)
                .await?
                .filter(|record| {
                    record
                        .step
                        .as_ref()
                        .is_some_and(|step| steps.contains(step))
                });
        }
    }
    let record = record.ok_or_else(|| {
        ApiError::NotFound(format!(
            "build '{}' has no artifact with SHA-256 {sha256}",
            build.state.run_id
        ))
    })?;
    super::artifacts::blob_response(&state, &record, &headers).await
}

pub(crate) async fn finish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(job_id): Path<i64>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    let request: FinishJob = parse(body)?;
    let job_state = reported_state(&request.state)?;
    if let Some(message) = &request.message
        && message.len() > MAX_MESSAGE_LEN
    {
        return Err(FieldError::new("message", format!("at most {MAX_MESSAGE_LEN} bytes")).into());
    }
    if let Some(reason) = &request.reason {
        short_text("reason", reason, 64)?;
    }
    own_agent(&state, &caller, request.agent_id).await?;
    let job = match state
        .scheduler
        .held_job(job_id, request.agent_id, request.attempt)
        .await
    {
        Ok(job) => job,
        // A repeated report of an attempt that already ended the same way is fine.
        Err(error) => {
            if let Some(job) = state.store.job_by_id(job_id).await?
                && job.attempt == request.attempt
                && job.agent_id == Some(request.agent_id)
                && job.state == job_state
            {
                return Ok(StatusCode::NO_CONTENT);
            }
            return Err(error.into());
        }
    };
    let end = JobEnd {
        state: job_state,
        exit_code: request.exit_code,
        reason: request.reason,
    };
    state
        .scheduler
        .finish(&job, end, request.message, request.duration_ms)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
