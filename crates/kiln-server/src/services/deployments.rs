//! Deployments as a service: a project's environments (what each serves, the last good
//! deployment, the one running, the last successful build per branch), its deployment
//! history, a deploy (a build of a branch's tip, refused while one of that environment
//! runs), a rollback (an earlier deployed build served again: a site switched atomically,
//! a script deployment's step run again with that build's artifacts; audited) and a
//! deployment's cancel (its build's). The API and the project page call these.

use kiln_core::BuildStatus;
use kiln_core::deployments::{DeploymentStatus, EnvironmentName};
use kiln_protocol::{
    BranchBuildDto, DeployRequest, DeployStarted, DeploymentDto, DeploymentList, EnvironmentDto,
    EnvironmentList, RollbackRequest,
};
use kiln_store::{BuildFilter, DeploymentRecord, NewDeployment, Project};

use crate::AppState;
use crate::auth::Caller;
use crate::scheduler::TriggerRequest;
use crate::service_error::ServiceError;
use crate::services::accounts::audit;
use crate::services::builds::{project_build, requester, writable_project};
use crate::services::projects::readable_project;

/// The most deployments one page lists.
pub(crate) const MAX_PAGE: i64 = 200;

pub(crate) fn dto(
    state: &AppState,
    project_slug: &str,
    record: &DeploymentRecord,
    current_id: Option<i64>,
) -> DeploymentDto {
    DeploymentDto {
        id: record.id,
        project: project_slug.to_owned(),
        environment: record.environment.clone(),
        status: record.status.clone(),
        run_id: record.run_id.clone(),
        build_number: record.build_number,
        branch: record.branch.clone(),
        commit: record.commit.clone(),
        step: record.step.clone(),
        publish: record.publish_dir.clone(),
        url: state.deployer.url_of(project_slug, record),
        message: record.message.clone(),
        requested_by: record.requested_by.clone(),
        rollback_of: record.rollback_of,
        rollback_run_id: record.rollback_run_id.clone(),
        rollback_build_number: record.rollback_build_number,
        replaces: record.replaces,
        current: current_id == Some(record.id),
        created_at: record.created_at.0,
        finished_at: record.finished_at.map(|at| at.0),
        duration_ms: record
            .finished_at
            .map(|at| at.0.saturating_sub(record.created_at.0).max(0)),
    }
}

fn is_running(record: &DeploymentRecord) -> bool {
    DeploymentStatus::from_name(&record.status).is_some_and(|status| !status.is_terminal())
}

fn environment_name(raw: &str) -> Result<EnvironmentName, ServiceError> {
    EnvironmentName::parse("environment", raw).map_err(ServiceError::invalid_field)
}

/// A project's environments and the last successful build of each branch.
pub(crate) async fn environments(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<EnvironmentList, ServiceError> {
    let project = readable_project(state, caller, slug).await?;
    environments_of(state, &project).await
}

pub(crate) async fn environments_of(
    state: &AppState,
    project: &Project,
) -> Result<EnvironmentList, ServiceError> {
    let mut environments = Vec::new();
    for environment in state.store.list_environments(project.id).await? {
        let history = state
            .store
            .list_deployments(project.id, Some(&environment.name), None, 100)
            .await?;
        let current_id = environment.current_deployment_id;
        let as_dto = |record: &DeploymentRecord| dto(state, &project.slug, record, current_id);
        let current = match current_id {
            Some(id) => match history.iter().find(|record| record.id == id) {
                Some(record) => Some(as_dto(record)),
                None => state.store.deployment(id).await?.as_ref().map(as_dto),
            },
            None => None,
        };
        environments.push(EnvironmentDto {
            name: environment.name.clone(),
            current,
            last_good: history
                .iter()
                .find(|record| record.status == DeploymentStatus::Deployed.as_str())
                .map(as_dto),
            running: history.iter().find(|record| is_running(record)).map(as_dto),
        });
    }
    let successes = state
        .store
        .list_builds(&BuildFilter {
            project_id: Some(project.id),
            status: Some(BuildStatus::Success),
            limit: 500,
            ..BuildFilter::default()
        })
        .await?;
    let mut last_successful_builds: Vec<BranchBuildDto> = Vec::new();
    for build in successes {
        let Some(branch) = build.state.branch.clone() else {
            continue;
        };
        if last_successful_builds
            .iter()
            .any(|seen| seen.branch == branch)
        {
            continue;
        }
        last_successful_builds.push(BranchBuildDto {
            branch,
            run_id: build.state.run_id.to_string(),
            number: build.number,
            commit: build.state.commit.clone(),
            ended_at: build.state.ended_at.map(|at| at.0),
        });
    }
    Ok(EnvironmentList {
        environments,
        last_successful_builds,
    })
}

/// A project's deployments, newest first.
pub(crate) async fn history(
    state: &AppState,
    project: &Project,
    environment: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<DeploymentList, ServiceError> {
    if let Some(environment) = environment {
        environment_name(environment)?;
    }
    let records = state
        .store
        .list_deployments(project.id, environment, before, limit.clamp(1, MAX_PAGE))
        .await?;
    let environments = state.store.list_environments(project.id).await?;
    let current = |record: &DeploymentRecord| {
        environments
            .iter()
            .find(|environment| environment.id == record.environment_id)
            .and_then(|environment| environment.current_deployment_id)
    };
    Ok(DeploymentList {
        deployments: records
            .iter()
            .map(|record| dto(state, &project.slug, record, current(record)))
            .collect(),
    })
}

pub(crate) async fn list(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    environment: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<DeploymentList, ServiceError> {
    let project = readable_project(state, caller, slug).await?;
    history(state, &project, environment, before, limit).await
}

/// One deployment, if the caller may read its project (404 alike otherwise).
pub(crate) async fn one(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<(Project, DeploymentRecord), ServiceError> {
    let not_found = || ServiceError::NotFound(format!("deployment {id} not found"));
    let record = state.store.deployment(id).await?.ok_or_else(not_found)?;
    if !caller.can_read(record.project_id) {
        return Err(not_found());
    }
    let project = state
        .store
        .project_by_id(record.project_id)
        .await?
        .ok_or_else(not_found)?;
    Ok((project, record))
}

pub(crate) async fn get(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<DeploymentDto, ServiceError> {
    let (project, record) = one(state, caller, id).await?;
    let current = state
        .store
        .environment(project.id, &record.environment)
        .await?
        .and_then(|environment| environment.current_deployment_id);
    Ok(dto(state, &project.slug, &record, current))
}

/// Builds the branch's tip and deploys it to `environment` (the pipeline's deploy step
/// for it does); refused while a deployment of that environment runs.
pub(crate) async fn deploy(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    environment: &str,
    request: DeployRequest,
) -> Result<DeployStarted, ServiceError> {
    let project = writable_project(state, caller, slug).await?;
    let environment = environment_name(environment)?;
    let recent = state
        .store
        .list_deployments(project.id, Some(environment.as_str()), None, 20)
        .await?;
    if let Some(running) = recent.iter().find(|record| is_running(record)) {
        return Err(ServiceError::Conflict {
            code: "deployment_running",
            message: format!(
                "deployment {} of build #{} to '{}' is {}; wait for it or cancel it (POST /api/v1/deployments/{}/cancel) first",
                running.id, running.build_number, environment, running.status, running.id
            ),
            field: None,
        });
    }
    let trigger = TriggerRequest {
        branch: request.branch.map(|branch| branch.trim().to_owned()),
        commit: None,
        priority: None,
        cause: "deploy",
        retry_of: None,
        by: Some(requester(state, caller).await?),
        deploys_to: Some(environment.as_str().to_owned()),
        avoid_agents_of: None,
    };
    let build = state.scheduler.trigger(&project, trigger).await?;
    let record = state
        .store
        .build_by_run_id(&build.run_id)
        .await?
        .ok_or_else(|| ServiceError::Unavailable("the new build vanished; retry".into()))?;
    let deployment = state
        .store
        .deployments_of_build(record.id)
        .await?
        .into_iter()
        .find(|deployment| deployment.environment == environment.as_str());
    let Some(deployment) = deployment else {
        if !record.state.status.is_terminal() {
            let by = requester(state, caller).await?.words();
            let _ = state.scheduler.cancel(&record, &by).await;
        }
        return Err(ServiceError::Unprocessable {
            code: "no_deploy_step",
            message: format!(
                "the pipeline of branch '{}' at {} has no step deploying to '{environment}' (add `deploy: {{environment: {environment}, publish: dist}}` to a step of .kiln.yml); build {} was cancelled",
                build.branch,
                &build.commit[..build.commit.len().min(12)],
                build.run_id
            ),
            field: Some("environment".into()),
        });
    };
    audit(
        state,
        caller,
        "deployment.deploy",
        Some(project.id),
        Some(&format!("{environment}: build {}", build.run_id)),
    )
    .await;
    let current = state
        .store
        .environment(project.id, environment.as_str())
        .await?
        .and_then(|environment| environment.current_deployment_id);
    Ok(DeployStarted {
        deployment: dto(state, &project.slug, &deployment, current),
        build,
    })
}

/// Serves the files of an earlier deployed build again, without rebuilding: one
/// switch of the environment's deployment, recorded as a deployment that names what it
/// rolled back to and what it replaced, and audited.
pub(crate) async fn rollback(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    environment: &str,
    request: RollbackRequest,
) -> Result<DeploymentDto, ServiceError> {
    let project = writable_project(state, caller, slug).await?;
    let environment = environment_name(environment)?;
    let stored = state
        .store
        .environment(project.id, environment.as_str())
        .await?
        .ok_or_else(|| {
            ServiceError::NotFound(format!(
                "project '{}' has no environment '{environment}' (it appears with its first deployment)",
                project.slug
            ))
        })?;
    let build = project_build(state, &project, request.to.trim())
        .await
        .map_err(|_| ServiceError::Unprocessable {
            code: "invalid_field",
            message: format!(
                "to: build '{}' not found in project '{}'; `kiln deployments {environment}` lists the builds deployed there",
                request.to, project.slug
            ),
            field: Some("to".into()),
        })?;
    let deployed = state
        .store
        .deployments_of_build(build.id)
        .await?
        .into_iter()
        .find(|record| {
            record.environment == environment.as_str()
                && record.status == DeploymentStatus::Deployed.as_str()
        })
        .ok_or_else(|| ServiceError::Unprocessable {
            code: "not_deployed",
            message: format!(
                "to: build #{} ({}) was never deployed to '{environment}' successfully, so there is nothing to roll back to; pick a build whose deployment there reached 'deployed'",
                build.number, build.state.run_id
            ),
            field: Some("to".into()),
        })?;
    if deployed.publish_dir.is_none() {
        return rerun_script_deployment(
            state,
            caller,
            &project,
            &environment,
            stored.current_deployment_id,
            &build,
            &deployed,
        )
        .await;
    }
    if let Some(current_id) = stored.current_deployment_id
        && let Some(current) = state.store.deployment(current_id).await?
        && current.build_id == build.id
    {
        return Err(ServiceError::Conflict {
            code: "already_live",
            message: format!(
                "'{environment}' already serves build #{} (deployment {current_id})",
                build.number
            ),
            field: Some("to".into()),
        });
    }
    let requested_by = requester(state, caller).await?;
    let new = NewDeployment {
        project_id: project.id,
        environment: environment.as_str().to_owned(),
        build_id: build.id,
        step: deployed.step.clone(),
        publish_dir: deployed.publish_dir.clone(),
        url: None,
        status: DeploymentStatus::Deployed.as_str().to_owned(),
        requested_by: requested_by.label(),
        rollback_of: Some(deployed.id),
    };
    let record = state
        .store
        .roll_back(&new, stored.current_deployment_id, state.clock.now())
        .await?
        .ok_or_else(|| ServiceError::Conflict {
            code: "environment_changed",
            message: format!(
                "'{environment}' switched to another deployment while this rollback was asked; look again and retry"
            ),
            field: None,
        })?;
    audit(
        state,
        caller,
        "deployment.rollback",
        Some(project.id),
        Some(&format!(
            "{environment}: build {} (deployment {} replaces {})",
            build.state.run_id,
            record.id,
            stored
                .current_deployment_id
                .map_or("none".to_owned(), |id| id.to_string())
        )),
    )
    .await;
    tracing::info!(deployment = record.id, environment = %environment, run_id = %build.state.run_id, "rolled back");
    state
        .deployer
        .announce(
            &record,
            &project.slug,
            DeploymentStatus::Deployed,
            Some(format!("rollback to build #{}", build.number)),
        )
        .await;
    Ok(dto(state, &project.slug, &record, Some(record.id)))
}

/// The build whose deploy step a deployment ran: its own, or for a script rollback's
/// re-run the earlier build whose step it ran again (and whose artifacts it used).
async fn step_build_of(state: &AppState, record: &DeploymentRecord) -> Result<i64, ServiceError> {
    if record.publish_dir.is_none()
        && let Some(of) = record.rollback_of
        && let Some(original) = state.store.deployment(of).await?
    {
        return Ok(original.build_id);
    }
    Ok(record.build_id)
}

/// Rolls a script deployment (`deploy.url`) back by running `deployed`'s deploy step
/// again, at its build's commit, with its build's artifacts, as a build of its own
/// (`Scheduler::rerun_deploy_step`): the answer is that build's deployment, `queued`,
/// naming `deployed` (or, when `deployed` was itself such a re-run, the deployment it
/// re-ran) in `rollbackOf`; the environment switches to it only when the step succeeds.
async fn rerun_script_deployment(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    environment: &EnvironmentName,
    current_id: Option<i64>,
    build: &kiln_store::BuildRecord,
    deployed: &DeploymentRecord,
) -> Result<DeploymentDto, ServiceError> {
    // Rolling back to a re-run is rolling back to the build whose step it re-ran.
    let original = match (deployed.rollback_of, &deployed.rollback_run_id) {
        (Some(of), Some(run_id)) => match (
            state.store.deployment(of).await?,
            state.store.build_by_run_id(run_id).await?,
        ) {
            (Some(deployment), Some(build)) => Some((build, deployment)),
            _ => None,
        },
        _ => None,
    };
    let (build, deployed) = match &original {
        Some((build, deployment)) => (build, deployment),
        None => (build, deployed),
    };
    let target_step_build = step_build_of(state, deployed).await?;
    if let Some(current_id) = current_id
        && let Some(current) = state.store.deployment(current_id).await?
        && step_build_of(state, &current).await? == target_step_build
    {
        return Err(ServiceError::Conflict {
            code: "already_live",
            message: format!(
                "'{environment}' already runs the deployment of build #{}'s step '{}' (deployment {current_id})",
                build.number, deployed.step
            ),
            field: Some("to".into()),
        });
    }
    let recent = state
        .store
        .list_deployments(project.id, Some(environment.as_str()), None, 20)
        .await?;
    if let Some(running) = recent.iter().find(|record| is_running(record)) {
        return Err(ServiceError::Conflict {
            code: "deployment_running",
            message: format!(
                "deployment {} of build #{} to '{}' is {}; wait for it or cancel it (POST /api/v1/deployments/{}/cancel) first",
                running.id, running.build_number, environment, running.status, running.id
            ),
            field: None,
        });
    }
    let jobs = state.store.jobs_of_build(build.id).await?;
    let Some(deploy_job) = jobs.iter().find(|job| job.step == deployed.step) else {
        return Err(ServiceError::Unprocessable {
            code: "script_deployment",
            message: format!(
                "to: build #{} ({}) has no job of its deploy step '{}' to run again; deploy that commit again (`kiln trigger --commit {}`)",
                build.number,
                build.state.run_id,
                deployed.step,
                deployed.commit.as_deref().unwrap_or("SHA")
            ),
            field: Some("to".into()),
        });
    };
    let spec = kiln_core::jobs::JobSpec::from_json(&deploy_job.spec);
    let rerun = match spec.rerun {
        // A re-run whose original could not be read: the same step and artifacts.
        Some(rerun) => rerun,
        None => kiln_core::jobs::Rerun {
            deployment_id: deployed.id,
            build_id: build.id,
            artifact_steps: if spec.needs_artifacts {
                kiln_core::jobs::ancestors(&deploy_job.step, |step| {
                    jobs.iter()
                        .find(|other| other.step == step)
                        .map(|other| other.depends_on.as_slice())
                })
                .into_iter()
                .collect()
            } else {
                Vec::new()
            },
        },
    };
    let requested_by = requester(state, caller).await?;
    let rerun_of = rerun.deployment_id;
    let triggered = state
        .scheduler
        .rerun_deploy_step(
            project,
            build,
            deploy_job,
            rerun,
            Some(requested_by.clone()),
        )
        .await?;
    let rerun_build = state
        .store
        .build_by_run_id(&triggered.run_id)
        .await?
        .ok_or_else(|| ServiceError::Unavailable("the new build vanished; retry".into()))?;
    let find = |records: Vec<DeploymentRecord>| {
        records
            .into_iter()
            .find(|record| record.environment == environment.as_str())
    };
    let mut record = find(state.store.deployments_of_build(rerun_build.id).await?);
    if record.is_none() {
        // The scheduler's refresh logs a failure; this answer needs the record.
        state
            .deployer
            .refresh(rerun_build.id, requested_by.label())
            .await?;
        record = find(state.store.deployments_of_build(rerun_build.id).await?);
    }
    let record = record.ok_or_else(|| {
        ServiceError::Unavailable(format!(
            "build {} re-runs the deploy step, but its deployment is not recorded yet; GET /api/v1/projects/{}/deployments shows it shortly",
            triggered.run_id, project.slug
        ))
    })?;
    audit(
        state,
        caller,
        "deployment.rollback",
        Some(project.id),
        Some(&format!(
            "{environment}: step '{}' of build {} run again as build {} (deployment {} rolls back to {rerun_of}; replaces {} once deployed)",
            deployed.step,
            build.state.run_id,
            triggered.run_id,
            record.id,
            current_id.map_or("none".to_owned(), |id| id.to_string())
        )),
    )
    .await;
    tracing::info!(deployment = record.id, environment = %environment, run_id = %triggered.run_id, rollback_of = rerun_of, "script rollback queued");
    Ok(dto(state, &project.slug, &record, current_id))
}

/// Cancels a running deployment's build.
pub(crate) async fn cancel(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<DeploymentDto, ServiceError> {
    let (project, record) = one(state, caller, id).await?;
    let project = writable_project(state, caller, &project.slug).await?;
    if !is_running(&record) {
        return Err(ServiceError::Conflict {
            code: "deployment_ended",
            message: format!(
                "deployment {id} already ended with status '{}'; nothing to cancel",
                record.status
            ),
            field: None,
        });
    }
    let build = project_build(state, &project, &record.run_id).await?;
    if !build.state.status.is_terminal() {
        let by = requester(state, caller).await?.words();
        state.scheduler.cancel(&build, &by).await?;
    }
    state.deployer.refresh_quietly(build.id, None).await;
    get(state, caller, id).await
}
