//! Builds as a service: who may start or stop a project's builds, who is asking, a
//! build of a project, and what a retry asks the scheduler for (the API and the build
//! pages call these).

use crate::AppState;
use crate::auth::{Caller, Requester};
use crate::scheduler::TriggerRequest;
use crate::service_error::ServiceError;
use crate::services::projects::readable_project;
use kiln_store::{BuildRecord, Project};

/// The project, if the caller may trigger its builds (404 when it may not even read it).
pub(crate) async fn writable_project(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<Project, ServiceError> {
    let project = readable_project(state, caller, slug).await?;
    if !caller.can_write(project.id) {
        return Err(crate::service_error::missing_role(
            caller,
            kiln_core::Role::Developer,
        ));
    }
    Ok(project)
}

/// A build, if the caller may act on its project as a developer (404 when it may not
/// even read it).
pub(crate) async fn writable_build(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
) -> Result<BuildRecord, ServiceError> {
    let build = readable_build(state, caller, run_id).await?;
    if !caller.can_write(build.project_id) {
        return Err(crate::service_error::missing_role(
            caller,
            kiln_core::Role::Developer,
        ));
    }
    Ok(build)
}

/// Who is calling, recorded as who triggered, retried or cancelled a build.
pub(crate) async fn requester(
    state: &AppState,
    caller: &Caller,
) -> Result<Requester, ServiceError> {
    Ok(Requester::of(state.store.as_ref(), caller).await?)
}

pub(crate) async fn project_build(
    state: &AppState,
    project: &Project,
    run_id: &str,
) -> Result<BuildRecord, ServiceError> {
    match state.store.build_by_run_id(run_id).await? {
        Some(build) if build.project_id == project.id => Ok(build),
        _ => Err(ServiceError::NotFound(format!(
            "build '{run_id}' not found in project '{}'",
            project.slug
        ))),
    }
}

/// What retrying `build` asks the scheduler for: its branch at its commit, again. Only an
/// ended build that Kiln ran (it has both) can be retried.
pub(crate) fn retry_request(
    build: &BuildRecord,
    by: Option<Requester>,
) -> Result<TriggerRequest, ServiceError> {
    let run_id = build.state.run_id.to_string();
    if !build.state.status.is_terminal() {
        return Err(ServiceError::Conflict {
            code: "build_running",
            message: format!("build {run_id} has not ended; cancel it first or wait"),
            field: None,
        });
    }
    let (Some(branch), Some(commit)) = (build.state.branch.clone(), build.state.commit.clone())
    else {
        return Err(ServiceError::Unprocessable {
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
        deploys_to: None,
        avoid_agents_of: None,
    })
}

/// The build a project token writes to (events, logs, test reports, artifacts): one of
/// its own project's, already started.
pub(crate) async fn ingest_build(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
    what: &str,
) -> Result<BuildRecord, ServiceError> {
    let project_id = caller
        .project_id
        .ok_or_else(|| ServiceError::Forbidden(format!("only project tokens {what}")))?;
    match state.store.build_by_run_id(run_id).await? {
        Some(build) if build.project_id == project_id => Ok(build),
        _ => Err(ServiceError::NotFound(format!(
            "build '{run_id}' not found in this token's project; send its build_started event first"
        ))),
    }
}

pub(crate) async fn readable_build(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
) -> Result<BuildRecord, ServiceError> {
    match state.store.build_by_run_id(run_id).await? {
        Some(build) if caller.can_read(build.project_id) => Ok(build),
        _ => Err(ServiceError::NotFound(format!(
            "build '{run_id}' not found"
        ))),
    }
}
