//! The build page (`/builds/{runId}`): header (status, progress, ETA, duration,
//! branch, commit, trigger), the stage timeline, the event list, the log viewer of one
//! job (Kiln-run builds), and the forms behind its Cancel and Retry buttons; plus the
//! whole raw log of a job as a download (`/builds/{runId}/jobs/{job}/raw`). Builds that
//! report themselves (`kiln run`) show the same page without jobs.

use askama::Template;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Redirect};
use kiln_core::{JobState, Millis, StageStatus};
use kiln_store::{BuildRecord, JobRecord, StoredEvent};
use serde_json::Value;

use super::ansi::{LogLine, plain, render_log};
use super::view::{BuildView, build_views};
use super::when::When;
use super::{Chrome, PageError, PageResult, check_csrf, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::builds::readable_build;

/// The log viewer renders this much of a log's end; earlier parts are a link away
/// ("load earlier") and newer ones stream in.
pub(crate) const LOG_WINDOW: i64 = 32 * 1024;
/// Events the page lists (the newest; heartbeats are not shown).
const EVENT_LIMIT: i64 = 100;
/// How much of a log one read of the raw download takes.
const RAW_CHUNK: i64 = 1024 * 1024;

/// Most jobs whose line counts are remembered; the map starts over beyond.
const LINE_CACHE_JOBS: usize = 4096;
/// A remembered count is extended by reading at most this much of the log after it;
/// farther away the database counts again.
const LINE_CACHE_REACH: i64 = 4 * 1024 * 1024;

/// How many lines of a job's log come before a byte offset, remembered per job. Logs
/// are append-only, so a count never changes: an ended job's page is numbered without
/// counting again, and a running one's from its last count plus the newlines read
/// since.
#[derive(Debug, Default)]
pub(crate) struct LogLineCache {
    counts: std::sync::Mutex<std::collections::HashMap<i64, (i64, i64)>>,
}

impl LogLineCache {
    async fn lines_before(
        &self,
        state: &AppState,
        job_id: i64,
        offset: i64,
    ) -> Result<i64, PageError> {
        let known = self
            .counts
            .lock()
            .map_err(|_| PageError(ApiError::Unavailable("the line cache failed; retry".into())))?
            .get(&job_id)
            .copied();
        let lines = match known {
            Some((at, lines)) if at == offset => lines,
            Some((at, lines)) if at < offset && offset - at <= LINE_CACHE_REACH => {
                let (between, _) = state.store.read_log(job_id, at, offset - at).await?;
                lines + between.iter().filter(|byte| **byte == b'\n').count() as i64
            }
            _ => state.store.log_lines_before(job_id, offset).await?,
        };
        if let Ok(mut counts) = self.counts.lock() {
            if counts.len() >= LINE_CACHE_JOBS && !counts.contains_key(&job_id) {
                counts.clear();
            }
            let entry = counts.entry(job_id).or_insert((offset, lines));
            if entry.0 <= offset {
                *entry = (offset, lines);
            }
        }
        Ok(lines)
    }
}

/// One bar of the stage timeline.
#[derive(Debug)]
struct TimelineRow {
    name: String,
    /// `running`, `success`, `failed`, `cancelled`, `queued`, `blocked`, `skipped`.
    status: &'static str,
    /// Left edge and width in percent of the build's span; no bar when not started.
    left: String,
    width: String,
    started: bool,
    duration: String,
    /// The job's id (Kiln-run builds), to link its log.
    job_id: Option<i64>,
    note: String,
}

#[derive(Debug)]
struct EventRow {
    id: i64,
    kind: String,
    time: When,
    stage: String,
    message: String,
    progress: String,
}

#[derive(Debug)]
struct JobTab {
    id: i64,
    step: String,
    state: &'static str,
    selected: bool,
}

/// The one log the page shows.
#[derive(Debug)]
struct LogView {
    job_id: i64,
    step: String,
    state: &'static str,
    lines: Vec<LogLine>,
    /// Byte offset where the rendered part starts (0: from the beginning).
    from: i64,
    /// Byte offset after the last complete rendered line: the live stream resumes here.
    to: i64,
    size: i64,
    next_line: i64,
    /// `?job=…&from=…` of the part before this one.
    earlier: Option<String>,
    /// The window does not reach the log's end (an earlier part was asked for).
    later: Option<String>,
    live: bool,
    raw_href: String,
    stream_href: String,
}

#[derive(Template)]
#[template(path = "build.html")]
struct BuildPage {
    chrome: Chrome,
    build: BuildView,
    timeline: Vec<TimelineRow>,
    events: Vec<EventRow>,
    events_more: bool,
    jobs: Vec<JobTab>,
    log: Option<LogView>,
    can_write: bool,
    can_retry: bool,
    kiln_run: bool,
    stream_href: String,
    events_href: String,
    /// The latest event id the page shows: the build stream resumes after it.
    last_event_id: i64,
    /// Custom metrics the build reported: (name, value as read).
    metrics: Vec<(String, String)>,
    /// Its test results, when reports were uploaded.
    tests: Option<TestsView>,
    /// Its artifacts, when it has any.
    artifacts: Option<ArtifactsView>,
}

/// The build's artifacts: the first files with download links, and the totals.
struct ArtifactsView {
    files: Vec<ArtifactRow>,
    count: u64,
    total: String,
    /// Files beyond those listed.
    more: u64,
}

struct ArtifactRow {
    path: String,
    href: String,
    size: String,
    sha256: String,
    step: String,
}

/// How many artifact files the page lists.
const SHOWN_ARTIFACTS: usize = 100;

/// A size as people read it: bytes, KiB, MiB or GiB.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

async fn artifacts_view(
    state: &AppState,
    build: &kiln_store::BuildRecord,
) -> Result<Option<ArtifactsView>, PageError> {
    let records = state.store.build_artifacts(build.id).await?;
    if records.is_empty() {
        return Ok(None);
    }
    let run_id = build.state.run_id.to_string();
    let total: u64 = records.iter().map(|r| r.size).sum();
    // A path segment as RFC 3986 leaves it: unreserved characters as they are.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let encode = |text: &str| percent_encoding::utf8_percent_encode(text, SEGMENT).to_string();
    Ok(Some(ArtifactsView {
        count: records.len() as u64,
        total: human_size(total),
        more: records.len().saturating_sub(SHOWN_ARTIFACTS) as u64,
        files: records
            .iter()
            .take(SHOWN_ARTIFACTS)
            .map(|record| ArtifactRow {
                href: format!(
                    "/api/v1/builds/{}/artifacts/files/{}",
                    encode(&run_id),
                    record
                        .path
                        .split('/')
                        .map(encode)
                        .collect::<Vec<_>>()
                        .join("/")
                ),
                path: record.path.clone(),
                size: human_size(record.size),
                sha256: record.sha256.clone(),
                step: record.step.clone().unwrap_or_default(),
            })
            .collect(),
    }))
}

/// The build's test results: counts and the first failures with their messages.
struct TestsView {
    summary: kiln_protocol::TestSummary,
    failures: Vec<kiln_protocol::TestCaseDto>,
    /// Failures beyond those shown.
    more: usize,
}

/// How many failed tests the page lists.
const SHOWN_FAILURES: usize = 50;

/// `GET /builds/{runId}` (`?job=` picks the log, `&from=` an earlier part of it).
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    uri: Uri,
) -> PageResult {
    let params = QueryParams::from_uri(uri.query());
    let chosen_job = params.integer("job", 1, i64::MAX)?;
    let from = params.integer("from", 0, i64::MAX)?;
    let build = readable_build(&state, &caller, &run_id).await?;
    let title = format!("{} #{}", build.project_slug, build.number);
    let chrome = Chrome::load(&state, &caller, "builds", title).await?;
    let view = build_views(&state, std::slice::from_ref(&build))
        .await?
        .remove(0);
    let now = state.clock.now();
    let jobs = state.store.jobs_of_build(build.id).await?;
    let timeline = timeline(&build, &jobs, now);
    let mut recent = state.store.latest_events(build.id, EVENT_LIMIT).await?;
    let events_more = recent.len() as i64 == EVENT_LIMIT;
    recent.reverse();
    let events = recent
        .iter()
        .filter(|event| event.event_type != "heartbeat")
        .map(|event| event_row(event, now))
        .collect();

    let selected = match chosen_job {
        Some(id) => Some(jobs.iter().find(|job| job.id == id).ok_or_else(|| {
            PageError(ApiError::NotFound(format!(
                "build {run_id} has no job {id}; pick one of its steps on the build page"
            )))
        })?),
        None => default_job(&jobs),
    };
    let log = match selected {
        Some(job) => Some(log_view(&state, &build, job, from).await?),
        None => None,
    };
    // The counts and the first failures only: a build may hold 100,000 cases.
    let tests =
        crate::services::test_results::build_tests(&state, &build, Some(SHOWN_FAILURES as i64))
            .await?;
    let tests = (tests.summary.total > 0).then(|| {
        let failing = (tests.summary.failed + tests.summary.errors) as usize;
        TestsView {
            summary: tests.summary,
            more: failing.saturating_sub(tests.tests.len()),
            failures: tests.tests,
        }
    });
    let artifacts = artifacts_view(&state, &build).await?;
    let can_write = caller.can_write(build.project_id);
    let kiln_run = jobs.iter().any(|job| !job.reported);
    let page = BuildPage {
        chrome,
        can_retry: can_write
            && kiln_run
            && build.state.status.is_terminal()
            && build.state.branch.is_some()
            && build.state.commit.is_some(),
        can_write,
        kiln_run,
        jobs: jobs
            .iter()
            .map(|job| JobTab {
                id: job.id,
                step: job.step.clone(),
                state: job.state.as_str(),
                selected: selected.is_some_and(|s| s.id == job.id),
            })
            .collect(),
        stream_href: format!("/api/v1/builds/{}/stream", view.run_id),
        events_href: format!("/api/v1/builds/{}/events", view.run_id),
        last_event_id: build.last_event_id,
        tests,
        artifacts,
        metrics: build
            .state
            .metrics
            .iter()
            .map(|(name, value)| (name.clone(), super::view::metric_value(value)))
            .collect(),
        build: view,
        timeline,
        events,
        events_more,
        log,
    };
    Ok(render(&page))
}

/// The job whose log a build page opens with: a running one, else the first that
/// failed, else the last that started.
fn default_job(jobs: &[JobRecord]) -> Option<&JobRecord> {
    jobs.iter()
        .find(|job| job.state == JobState::Running)
        .or_else(|| jobs.iter().find(|job| job.state == JobState::Failed))
        .or_else(|| jobs.iter().rev().find(|job| job.started_at.is_some()))
        .or_else(|| jobs.first())
}

async fn log_view(
    state: &AppState,
    build: &BuildRecord,
    job: &JobRecord,
    from: Option<i64>,
) -> Result<LogView, PageError> {
    let size = job.log_size;
    let requested = from.map(|f| f.min(size));
    let window_start = requested.unwrap_or((size - LOG_WINDOW).max(0));
    let (bytes, size) = state
        .store
        .read_log(job.id, window_start, LOG_WINDOW)
        .await?;
    // Start at a line start (unless at the log's start), end after the last newline.
    let skip = if window_start > 0 {
        bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        0
    };
    let end = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(skip, |i| (i + 1).max(skip));
    let start = window_start + skip as i64;
    let to = window_start + end as i64;
    let first_number = if start == 0 {
        1
    } else {
        state.log_lines.lines_before(state, job.id, start).await? + 1
    };
    let text = String::from_utf8_lossy(&bytes[skip..end]);
    let lines = render_log(&text, first_number);
    let next_line = first_number + lines.len() as i64;
    let base = format!("/builds/{}", build.state.run_id);
    let earlier = (start > 0).then(|| {
        format!(
            "{base}?job={}&from={}#log",
            job.id,
            (start - LOG_WINDOW).max(0)
        )
    });
    // A window that stops well before the log's end links to the rest instead of
    // streaming it (the stream would replay it all); the tail window streams what comes.
    let live = requested.is_none() || size - to <= LOG_WINDOW;
    let later = (!live).then(|| format!("{base}?job={}&from={}#log", job.id, to));
    Ok(LogView {
        job_id: job.id,
        step: job.step.clone(),
        state: job.state.as_str(),
        lines,
        from: start,
        to,
        size,
        next_line,
        earlier,
        later,
        live,
        raw_href: format!("{base}/jobs/{}/raw", job.id),
        stream_href: format!(
            "/api/v1/projects/{}/builds/{}/jobs/{}/log/stream",
            build.project_slug, build.state.run_id, job.id
        ),
    })
}

fn percent(value: i64, span: i64) -> String {
    format!(
        "{:.2}",
        (value.max(0) as f64 * 100.0 / span.max(1) as f64).min(100.0)
    )
}

/// The waterfall: jobs for Kiln-run builds, else the stages the build reported.
fn timeline(build: &BuildRecord, jobs: &[JobRecord], now: Millis) -> Vec<TimelineRow> {
    let origin = build.state.started_at.0.min(build.state.created_at.0);
    let end_of = |ended: Option<Millis>| ended.unwrap_or(now).0;
    let mut span_end = build.state.ended_at.map_or(now.0, |e| e.0);
    for job in jobs {
        if job.started_at.is_some() {
            span_end = span_end.max(end_of(job.finished_at));
        }
    }
    for stage in &build.state.stages {
        span_end = span_end.max(end_of(stage.ended_at));
    }
    let span = (span_end - origin).max(1);
    let bar = |start: i64, end: i64| {
        let width = ((end - start).max(0) as f64 * 100.0 / span as f64).max(0.5);
        (percent(start - origin, span), format!("{width:.2}"))
    };
    if !jobs.is_empty() {
        return jobs
            .iter()
            .map(|job| {
                let (left, width, duration) = match job.started_at {
                    Some(started) => {
                        let ended = end_of(job.finished_at);
                        let (left, width) = bar(started.0, ended);
                        (
                            left,
                            width,
                            kiln_core::eta::format_duration(ended - started.0),
                        )
                    }
                    None => (String::new(), String::new(), String::new()),
                };
                let status = match job.state {
                    JobState::Passed => "success",
                    other => other.as_str(),
                };
                let message = build
                    .state
                    .stages
                    .iter()
                    .find(|stage| stage.name.as_str() == job.step)
                    .and_then(|stage| stage.message.as_deref());
                let note = job_outcome(job, message);
                TimelineRow {
                    name: job.step.clone(),
                    status,
                    started: job.started_at.is_some(),
                    left,
                    width,
                    duration,
                    job_id: Some(job.id),
                    note,
                }
            })
            .collect();
    }
    build
        .state
        .stages
        .iter()
        .map(|stage| {
            let ended = end_of(stage.ended_at);
            let (left, width) = bar(stage.started_at.0, ended);
            TimelineRow {
                name: stage.name.to_string(),
                status: match stage.status {
                    StageStatus::Running if build.state.status.is_terminal() => "cancelled",
                    other => other.as_str(),
                },
                started: true,
                left,
                width,
                duration: kiln_core::eta::format_duration(
                    stage.duration_ms.unwrap_or(ended - stage.started_at.0),
                ),
                job_id: None,
                note: plain(stage.message.as_deref().unwrap_or_default()),
            }
        })
        .collect()
}

/// What became of a job, in the same words on every row: "exit code 0", "exit code 2",
/// "killed by signal 9", "timed out after 10 min", "cancelled", "skipped: a step it
/// depends on did not pass"; never the API's reason codes (`exit_status`). `message` is
/// its step's last stage message (the agent's words for the failure).
fn job_outcome(job: &JobRecord, message: Option<&str>) -> String {
    let message = message
        .map(|text| exit_words(&plain(text)))
        .filter(|text| !text.is_empty());
    let exit_code = job.exit_code.map(|code| format!("exit code {code}"));
    match job.state {
        JobState::Blocked => format!("waits for {}", job.depends_on.join(", ")),
        JobState::Queued => "waiting for an agent".into(),
        JobState::Running => String::new(),
        JobState::Passed => exit_code.unwrap_or_default(),
        JobState::Skipped => "skipped: a step it depends on did not pass".into(),
        JobState::Cancelled => "cancelled".into(),
        JobState::Failed => match job.reason.as_deref() {
            // The code is stored as 128 + N when signal N killed the command; the
            // agent's message says which it was.
            Some("exit_status") => message
                .filter(|text| text.starts_with("killed by signal"))
                .or(exit_code)
                .unwrap_or_else(|| "failed".into()),
            Some("timeout") => message.unwrap_or_else(|| "timed out".into()),
            Some("agent_lost") => message.unwrap_or_else(|| "its agent stopped answering".into()),
            Some("checkout") => message.unwrap_or_else(|| "the checkout failed".into()),
            _ => message.or(exit_code).unwrap_or_else(|| "failed".into()),
        },
    }
}

/// The agent's "exit status N" (older agents) in the dashboard's words, "exit code N".
fn exit_words(text: &str) -> String {
    match text.strip_prefix("exit status ") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            format!("exit code {rest}")
        }
        _ => text.to_owned(),
    }
}

fn event_row(event: &StoredEvent, now: Millis) -> EventRow {
    let text = |key: &str| {
        event
            .payload
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    EventRow {
        id: event.id,
        kind: event.event_type.clone(),
        time: When::new(event.received_at, now),
        stage: text("stage"),
        message: exit_words(&plain(&text("message"))),
        progress: event
            .payload
            .get("progress")
            .and_then(Value::as_f64)
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_default(),
    }
}

/// The form fields of a button: only the CSRF token.
fn form_csrf(body: &[u8]) -> String {
    QueryParams::from_uri(Some(&String::from_utf8_lossy(body)))
        .string("_csrf")
        .unwrap_or_default()
        .to_owned()
}

/// A build the caller may change (developers): 404 when it may not read it, 403 when it
/// may only read it.
async fn writable_build(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
) -> Result<BuildRecord, PageError> {
    let build = readable_build(state, caller, run_id).await?;
    if !caller.can_write(build.project_id) {
        return Err(PageError(
            crate::service_error::missing_role(caller, kiln_core::Role::Developer).into(),
        ));
    }
    Ok(build)
}

/// `POST /builds/{runId}/cancel` (form: `_csrf`): cancels the build, back to its page.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    body: axum::body::Bytes,
) -> PageResult {
    check_csrf(&caller, &form_csrf(&body))?;
    let build = writable_build(&state, &caller, &run_id).await?;
    let by = crate::services::builds::requester(&state, &caller)
        .await?
        .words();
    state.scheduler.cancel(&build, &by).await?;
    Ok(Redirect::to(&format!("/builds/{run_id}")).into_response())
}

/// `POST /builds/{runId}/retry` (form: `_csrf`): builds the same commit again and shows
/// the new build.
pub(crate) async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    body: axum::body::Bytes,
) -> PageResult {
    check_csrf(&caller, &form_csrf(&body))?;
    let build = writable_build(&state, &caller, &run_id).await?;
    let project = state
        .store
        .project_by_id(build.project_id)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("build '{run_id}' not found"))))?;
    let request = crate::services::builds::retry_request(
        &build,
        Some(crate::services::builds::requester(&state, &caller).await?),
    )?;
    let triggered = state.scheduler.trigger(&project, request).await?;
    Ok(Redirect::to(&format!("/builds/{}", triggered.run_id)).into_response())
}

/// `GET /builds/{runId}/jobs/{job}/raw`: the job's whole log as a download, read from
/// the store a megabyte at a time.
pub(crate) async fn raw_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((run_id, job_id)): Path<(String, String)>,
) -> PageResult {
    let build = readable_build(&state, &caller, &run_id).await?;
    let job = job_id.parse::<i64>().ok();
    let jobs = state.store.jobs_of_build(build.id).await?;
    let job = jobs
        .into_iter()
        .find(|candidate| Some(candidate.id) == job || candidate.step == job_id)
        .ok_or_else(|| {
            PageError(ApiError::NotFound(format!(
                "build {run_id} has no job '{job_id}'; pick one of its steps on the build page"
            )))
        })?;
    let store = state.store.clone();
    let job_id = job.id;
    let chunks = futures_stream(store, job_id);
    let file_name = format!(
        "{}-{}-{}.log",
        build.project_slug,
        build.number,
        job.step
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            })
            .collect::<String>()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// The log from offset 0 to its size at the time of the request, a chunk at a time.
fn futures_stream(
    store: std::sync::Arc<dyn kiln_store::Store>,
    job_id: i64,
) -> impl tokio_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut offset = 0;
        loop {
            match store.read_log(job_id, offset, RAW_CHUNK).await {
                Ok((bytes, _)) if bytes.is_empty() => return,
                Ok((bytes, _)) => {
                    offset += bytes.len() as i64;
                    if sender.send(Ok(bytes)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender
                        .send(Err(std::io::Error::other(error.to_string())))
                        .await;
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, exit_code: Option<i64>, reason: Option<&str>) -> JobRecord {
        JobRecord {
            id: 1,
            build_id: 1,
            project_id: 1,
            project_slug: "web".into(),
            repo: None,
            run_id: "r".into(),
            build_number: 1,
            branch: None,
            commit: None,
            step: "test".into(),
            position: 0,
            state,
            priority: 5,
            depends_on: vec!["build".into()],
            labels: Vec::new(),
            spec: serde_json::json!({}),
            attempt: 1,
            agent_id: None,
            agent_name: None,
            lease_expires_at: None,
            cancel_requested: false,
            created_at: Millis(0),
            queued_at: None,
            started_at: None,
            finished_at: None,
            exit_code,
            reason: reason.map(str::to_owned),
            reported: false,
            has_repo_credentials: false,
            log_size: 0,
        }
    }

    #[test]
    fn steps_end_in_the_same_words() {
        let outcome = |job: JobRecord, message: Option<&str>| job_outcome(&job, message);
        assert_eq!(
            outcome(job(JobState::Passed, Some(0), None), None),
            "exit code 0"
        );
        assert_eq!(
            outcome(
                job(JobState::Failed, Some(2), Some("exit_status")),
                Some("exit status 2")
            ),
            "exit code 2"
        );
        assert_eq!(
            outcome(
                job(JobState::Failed, Some(137), Some("exit_status")),
                Some("killed by signal 9")
            ),
            "killed by signal 9"
        );
        assert_eq!(
            outcome(job(JobState::Failed, Some(1), Some("exit_status")), None),
            "exit code 1"
        );
        assert_eq!(
            outcome(
                job(JobState::Failed, Some(143), Some("timeout")),
                Some("timed out after 10 min")
            ),
            "timed out after 10 min"
        );
        assert_eq!(
            outcome(job(JobState::Cancelled, Some(143), Some("cancelled")), None),
            "cancelled"
        );
        assert_eq!(
            outcome(job(JobState::Blocked, None, None), None),
            "waits for build"
        );
        assert_eq!(exit_words("exit status 3"), "exit code 3");
        assert_eq!(exit_words("exit status unknown"), "exit status unknown");
    }
}
