//! Starting and stopping builds Kiln runs, for users: trigger, retry, cancel (a build's
//! jobs and their logs are `jobs.rs`; reads of any build, `builds.rs`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_protocol::{TriggerBuild, TriggeredBuild};
use kiln_store::{BuildRecord, Project};
use serde_json::{Value, json};

use super::body::parse;
use super::projects::readable_project;
use crate::AppState;
use crate::auth::{Caller, Requester};
use crate::error::ApiError;
use crate::scheduler::TriggerRequest;

/// The project, if the caller may trigger its builds (404 when it may not even read it).
pub(crate) async fn writable_project(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<Project, ApiError> {
    let project = readable_project(state, caller, slug).await?;
    if !caller.can_write(project.id) {
        return Err(caller.missing(kiln_core::Role::Developer));
    }
    Ok(project)
}

/// Who is calling, recorded as who triggered, retried or cancelled a build.
pub(crate) async fn requester(state: &AppState, caller: &Caller) -> Result<Requester, ApiError> {
    Requester::of(state.store.as_ref(), caller).await
}

pub(crate) async fn project_build(
    state: &AppState,
    project: &Project,
    run_id: &str,
) -> Result<BuildRecord, ApiError> {
    match state.store.build_by_run_id(run_id).await? {
        Some(build) if build.project_id == project.id => Ok(build),
        _ => Err(ApiError::NotFound(format!(
            "build '{run_id}' not found in project '{}'",
            project.slug
        ))),
    }
}

pub(crate) async fn trigger(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TriggeredBuild>), ApiError> {
    let project = writable_project(&state, &caller, &slug).await?;
    // An empty body builds the default branch's tip.
    let body: TriggerBuild = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBuild::default()
    } else {
        let value = super::body::parse_json(&body)?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "invalid_json",
                Some("body"),
                "the body must be a JSON object such as {\"branch\":\"main\"}",
            ));
        }
        parse(value).map_err(|error| match error {
            ApiError::BadRequest { field, .. } if field.as_deref() == Some("priority") => {
                ApiError::bad_request(
                    "invalid_field",
                    Some("priority"),
                    "priority: must be a whole number from 1 (highest) to 10",
                )
            }
            error => error,
        })?
    };
    let trimmed = |text: Option<String>| text.map(|text| text.trim().to_owned());
    let request = TriggerRequest {
        branch: trimmed(body.branch),
        commit: trimmed(body.commit),
        priority: body.priority,
        cause: "api",
        retry_of: None,
        by: Some(requester(&state, &caller).await?),
    };
    let build = state.scheduler.trigger(&project, request).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

pub(crate) async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, run_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<TriggeredBuild>), ApiError> {
    let project = writable_project(&state, &caller, &slug).await?;
    let build = project_build(&state, &project, &run_id).await?;
    let request = retry_request(&build, Some(requester(&state, &caller).await?))?;
    let build = state.scheduler.trigger(&project, request).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

/// What retrying `build` asks the scheduler for: its branch at its commit, again. Only an
/// ended build that Kiln ran (it has both) can be retried.
pub(crate) fn retry_request(
    build: &BuildRecord,
    by: Option<Requester>,
) -> Result<TriggerRequest, ApiError> {
    let run_id = build.state.run_id.to_string();
    if !build.state.status.is_terminal() {
        return Err(ApiError::Conflict {
            code: "build_running",
            message: format!("build {run_id} has not ended; cancel it first or wait"),
            field: None,
        });
    }
    let (Some(branch), Some(commit)) = (build.state.branch.clone(), build.state.commit.clone())
    else {
        return Err(ApiError::Unprocessable {
            code: "unprocessable",
            message: format!(
                "build {run_id} has no branch and commit to build again (it reported itself; Kiln did not run it)"
            ),
            field: Some("runId".into()),
        });
    };
    Ok(TriggerRequest {
        branch: Some(branch),
        commit: Some(commit),
        priority: None,
        cause: "retry",
        retry_of: Some(run_id),
        by,
    })
}

pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project = writable_project(&state, &caller, &slug).await?;
    let build = project_build(&state, &project, &run_id).await?;
    let by = requester(&state, &caller).await?.words();
    let stopping = state.scheduler.cancel(&build, &by).await?;
    Ok(Json(json!({
        "runId": run_id,
        "status": "cancelled",
        "stoppingJobs": stopping,
    })))
}
