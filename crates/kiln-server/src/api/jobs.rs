//! A build's jobs and their logs, for readers: the jobs of a build, a log page by byte
//! offset, and a live SSE tail that resumes by offset.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;

use super::path::Path;
use axum::http::{HeaderMap, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_protocol::JobList;
use kiln_store::JobRecord;
use serde_json::json;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::builds::project_build;
use crate::services::projects::readable_project;
use crate::wire::job_dto;

/// Most bytes one log page returns.
pub(super) const MAX_LOG_PAGE: i64 = 1024 * 1024;
/// A live tail also looks for chunks stored by other replicas this often.
const TAIL_POLL: Duration = Duration::from_millis(500);

pub(crate) async fn jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, run_id)): Path<(String, String)>,
) -> Result<Json<JobList>, ApiError> {
    let project = readable_project(&state, &caller, &slug).await?;
    let build = project_build(&state, &project, &run_id).await?;
    let jobs = state.store.jobs_of_build(build.id).await?;
    Ok(Json(JobList {
        jobs: jobs.iter().map(job_dto).collect(),
    }))
}

/// The job named by a path segment: its id, or its step name.
async fn build_job(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    run_id: &str,
    job: &str,
) -> Result<JobRecord, ApiError> {
    let project = readable_project(state, caller, slug).await?;
    let build = project_build(state, &project, run_id).await?;
    let jobs = state.store.jobs_of_build(build.id).await?;
    jobs.into_iter()
        .find(|candidate| candidate.step == job || candidate.id.to_string() == job)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "build {run_id} has no job '{job}'; list them at /api/v1/projects/{slug}/builds/{run_id}/jobs"
            ))
        })
}

/// Where a log read or tail starts. `Last-Event-ID` wins over `?offset=`: a browser's
/// EventSource reconnects to the same URL (so with the first `?offset=`) and sends the
/// last offset it received in the header, which is where it must go on.
fn log_offset(headers: &HeaderMap, params: &QueryParams) -> Result<i64, ApiError> {
    match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .map(Ok)
            .unwrap_or_else(|| {
                Err(ApiError::bad_request(
                    "invalid_field",
                    Some("Last-Event-ID"),
                    "Last-Event-ID: must be a byte offset",
                ))
            }),
        None => Ok(params.integer("offset", 0, i64::MAX)?.unwrap_or(0)),
    }
}

pub(crate) async fn log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, run_id, job)): Path<(String, String, String)>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let offset = params.integer("offset", 0, i64::MAX)?.unwrap_or(0);
    let limit = params
        .integer("limit", 1, MAX_LOG_PAGE)?
        .unwrap_or(MAX_LOG_PAGE);
    let job = build_job(&state, &caller, &slug, &run_id, &job).await?;
    let (bytes, size) = state.store.read_log(job.id, offset, limit).await?;
    let next = offset.min(size) + bytes.len() as i64;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            // A log is untrusted text: a browser saves it rather than showing it.
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{slug}-{}-{}.log\"",
                    job.build_id, job.step
                ),
            ),
            (
                header::HeaderName::from_static("x-kiln-log-offset"),
                next.to_string(),
            ),
            (
                header::HeaderName::from_static("x-kiln-log-size"),
                size.to_string(),
            ),
            (
                header::HeaderName::from_static("x-kiln-job-state"),
                job.state.as_str().to_owned(),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// SSE: `log` events whose data is the log text from the offset in their `id`'s
/// predecessor (lines of the chunk become `data:` lines; invalid UTF-8 is replaced),
/// each `id` the byte offset after the chunk; `end` when the job has ended and its whole
/// log was sent. Resume with `Last-Event-ID` or `?offset=`.
pub(crate) async fn log_stream(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, run_id, job)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let mut offset = log_offset(&headers, &params)?;
    let job = build_job(&state, &caller, &slug, &run_id, &job).await?;
    let permit = state.streams.acquire(&caller)?;
    let mut stored = state.scheduler.logs().subscribe(job.id);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(16);
    let store = state.store.clone();
    tokio::spawn(async move {
        let _held = permit;
        loop {
            let (bytes, _size) = match store.read_log(job.id, offset, 256 * 1024).await {
                Ok(page) => page,
                Err(_) => return,
            };
            if !bytes.is_empty() {
                offset += bytes.len() as i64;
                let event = Event::default()
                    .id(offset.to_string())
                    .event("log")
                    .data(String::from_utf8_lossy(&bytes));
                if sender.send(event).await.is_err() {
                    return;
                }
                continue;
            }
            let ended = match store.job_by_id(job.id).await {
                Ok(Some(current)) => current.state.is_terminal() && current.log_size <= offset,
                _ => true,
            };
            if ended {
                let _ = sender
                    .send(
                        Event::default()
                            .event("end")
                            .data(json!({"offset": offset}).to_string()),
                    )
                    .await;
                return;
            }
            tokio::select! {
                changed = stored.changed() => if changed.is_err() { tokio::time::sleep(TAIL_POLL).await; },
                _ = tokio::time::sleep(TAIL_POLL) => {}
                _ = sender.closed() => return,
            }
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(receiver).map(Ok::<_, Infallible>);
    Ok((
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response())
}

use tokio_stream::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(query: Option<&str>, last_event_id: Option<&str>) -> Result<i64, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(id) = last_event_id {
            headers.insert("last-event-id", id.parse().unwrap());
        }
        log_offset(&headers, &QueryParams::from_uri(query))
    }

    #[test]
    fn a_reconnect_resumes_from_last_event_id_not_the_first_offset() {
        assert_eq!(offset(None, None).unwrap(), 0);
        assert_eq!(offset(Some("offset=120"), None).unwrap(), 120);
        assert_eq!(offset(None, Some("300")).unwrap(), 300);
        // EventSource reconnects to its original URL and names where it got to.
        assert_eq!(offset(Some("offset=120"), Some("300")).unwrap(), 300);
        assert!(offset(None, Some("-1")).is_err());
        assert!(offset(Some("offset=x"), None).is_err());
    }
}
