//! `/projects/{slug}/deployments`: a project's environments (what each serves, its last
//! known good deployment, the one on its way), the Deploy, "Roll back to #N" and Cancel
//! forms (developers), the deployment history (newest first, paged) and the last successful
//! build of each branch. A thin adapter over `services::deployments`: the rules (who
//! may deploy, one deployment per environment at a time, what a rollback may target,
//! the audit log) are the service's; a refused form shows this page again with the
//! reason and the refusal's status.

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect};
use kiln_core::Millis;
use kiln_core::eta::format_duration;
use kiln_protocol::{DeployRequest, DeploymentDto, RollbackRequest};
use kiln_store::Project;

use super::form::{FormFields, fields};
use super::when::When;
use super::{Chrome, PageError, PageResult, encode_query, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::service_error::ServiceError;
use crate::services::builds::writable_project;
use crate::services::deployments::{self, environments_of, history};
use crate::services::projects::readable_project;

/// Deployments per page of the history.
pub(crate) const PAGE_SIZE: i64 = 50;
/// Earlier good deployments offered as rollback targets per environment.
const MAX_ROLLBACK_TARGETS: usize = 5;

/// One deployment as the page shows it.
#[derive(Debug)]
struct DeploymentView {
    id: i64,
    environment: String,
    status: String,
    /// The badge's class: the build statuses' colours (`status-running` for the steps
    /// on the way, `status-success` for deployed).
    badge: &'static str,
    run_id: String,
    build_number: i64,
    branch: String,
    /// The first 10 characters; `commit_full` in the tooltip.
    commit: String,
    commit_full: String,
    requested_by: String,
    started: When,
    duration: String,
    url: String,
    message: String,
    /// The deployment whose build this rollback serves again.
    rollback_of: Option<i64>,
    /// That build's number, when known.
    rollback_build_number: Option<i64>,
    /// A script deployment (`deploy.url`): its rollback re-runs a step.
    script: bool,
    live: bool,
    /// Still on its way (queued … uploading): it can be cancelled.
    running: bool,
}

impl DeploymentView {
    fn new(dto: &DeploymentDto, now: Millis) -> DeploymentView {
        let commit_full = dto.commit.clone().unwrap_or_default();
        DeploymentView {
            id: dto.id,
            environment: dto.environment.clone(),
            status: dto.status.clone(),
            badge: badge(&dto.status),
            run_id: dto.run_id.clone(),
            build_number: dto.build_number,
            branch: dto.branch.clone().unwrap_or_default(),
            commit: commit_full.chars().take(10).collect(),
            commit_full,
            requested_by: dto.requested_by.clone().unwrap_or_default(),
            started: When::new(Millis(dto.created_at), now),
            duration: dto.duration_ms.map(format_duration).unwrap_or_default(),
            url: dto.url.clone().unwrap_or_default(),
            message: dto.message.clone().unwrap_or_default(),
            rollback_of: dto.rollback_of,
            rollback_build_number: dto.rollback_build_number,
            script: dto.publish.is_none(),
            live: dto.current,
            running: matches!(
                dto.status.as_str(),
                "queued" | "cloning" | "building" | "uploading"
            ),
        }
    }
}

/// The badge class of a deployment status, from the build badges' set.
fn badge(status: &str) -> &'static str {
    match status {
        "queued" => "status-queued",
        "deployed" => "status-success",
        "failed" => "status-failed",
        "cancelled" => "status-cancelled",
        _ => "status-running",
    }
}

/// An earlier deployed build an environment can switch back to.
#[derive(Debug)]
struct RollbackTarget {
    run_id: String,
    build_number: i64,
    commit: String,
    when: When,
    /// A script deployment: rolling back runs the build's deploy step again.
    script: bool,
}

#[derive(Debug)]
struct EnvironmentView {
    name: String,
    live: Option<DeploymentView>,
    last_good: Option<DeploymentView>,
    running: Option<DeploymentView>,
    /// Why Deploy is disabled (a deployment of this environment is on its way).
    busy: String,
    rollback_targets: Vec<RollbackTarget>,
}

#[derive(Debug)]
struct BranchBuildView {
    branch: String,
    run_id: String,
    number: i64,
    commit: String,
    ended: Option<When>,
}

#[derive(Template)]
#[template(path = "deployments.html")]
struct DeploymentsPage {
    chrome: Chrome,
    slug: String,
    project_name: String,
    default_branch: String,
    /// Developers, project admins and instance admins see the forms.
    can_deploy: bool,
    /// Kiln builds this project (it has a repository): a deploy can start here.
    has_repo: bool,
    notice: Option<&'static str>,
    error: Option<String>,
    environments: Vec<EnvironmentView>,
    /// Some environment has a deployment on its way (the script reloads when it ends).
    any_running: bool,
    deployments: Vec<DeploymentView>,
    branch_builds: Vec<BranchBuildView>,
    older: Option<String>,
    newest: Option<String>,
    /// The environment and branch the "Deploy" form of a refused post proposes again.
    form_environment: String,
    form_branch: String,
}

/// What a completed form says on the page it returns to (a fixed list, so nothing from
/// the query string is echoed).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "deploy-started" => {
            "Deploy started: its build is queued, and the deployment below follows it."
        }
        "rolled-back" => "Rolled back: the environment serves the chosen build now.",
        "rollback-started" => {
            "Rollback started: a build runs the chosen build's deploy step again; the environment switches to it once the step succeeds."
        }
        "deploy-cancelled" => {
            "Cancelled: the deployment's build is stopping; the environment keeps what it served."
        }
        _ => return None,
    })
}

/// What a form posted, for the page shown again after a refusal.
#[derive(Debug, Default)]
struct Posted {
    environment: String,
    branch: String,
}

async fn deployments_response(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    before: Option<i64>,
    notice: Option<&'static str>,
    refusal: Option<ApiError>,
    posted: Posted,
) -> PageResult {
    let chrome = Chrome::load(
        state,
        caller,
        "projects",
        format!("Deployments of {}", project.slug),
    )
    .await?;
    let now = state.clock.now();
    let overview = environments_of(state, project).await?;
    let mut environments = Vec::new();
    for environment in &overview.environments {
        let live = environment.current.as_ref();
        // The environment's newest deployments, for the builds it served before: each
        // build once, without the one it serves now. A script rollback's build served
        // the build whose step it ran again: that build is the target.
        let served = |deployment: &DeploymentDto| -> (String, i64) {
            match (
                &deployment.rollback_run_id,
                deployment.rollback_build_number,
            ) {
                (Some(run_id), Some(number)) if deployment.publish.is_none() => {
                    (run_id.clone(), number)
                }
                _ => (deployment.run_id.clone(), deployment.build_number),
            }
        };
        let live_build = live.map(|live| served(live).0);
        let recent = history(state, project, Some(&environment.name), None, 100).await?;
        let mut rollback_targets: Vec<RollbackTarget> = Vec::new();
        for deployment in &recent.deployments {
            let (run_id, build_number) = served(deployment);
            if deployment.status != "deployed"
                || live_build.as_deref() == Some(run_id.as_str())
                || rollback_targets
                    .iter()
                    .any(|target| target.run_id == run_id)
            {
                continue;
            }
            rollback_targets.push(RollbackTarget {
                script: deployment.publish.is_none(),
                run_id,
                build_number,
                commit: deployment
                    .commit
                    .as_deref()
                    .unwrap_or_default()
                    .chars()
                    .take(10)
                    .collect(),
                when: When::new(
                    Millis(deployment.finished_at.unwrap_or(deployment.created_at)),
                    now,
                ),
            });
            if rollback_targets.len() == MAX_ROLLBACK_TARGETS {
                break;
            }
        }
        let busy = environment
            .running
            .as_ref()
            .map(|running| {
                format!(
                    "Deployment {} of build #{} is {}: Deploy is available again once it ends.",
                    running.id, running.build_number, running.status
                )
            })
            .unwrap_or_default();
        environments.push(EnvironmentView {
            name: environment.name.clone(),
            live: live.map(|dto| DeploymentView::new(dto, now)),
            last_good: environment
                .last_good
                .as_ref()
                .map(|dto| DeploymentView::new(dto, now)),
            running: environment
                .running
                .as_ref()
                .map(|dto| DeploymentView::new(dto, now)),
            busy,
            rollback_targets,
        });
    }
    let page_of_history = history(state, project, None, before, PAGE_SIZE).await?;
    let link = |before: Option<i64>| match before {
        Some(before) => format!(
            "/projects/{}/deployments?before={before}#history",
            encode_query(&project.slug)
        ),
        None => format!(
            "/projects/{}/deployments#history",
            encode_query(&project.slug)
        ),
    };
    let older = (page_of_history.deployments.len() as i64 == PAGE_SIZE)
        .then(|| page_of_history.deployments.last().map(|d| link(Some(d.id))))
        .flatten();
    let newest = before.map(|_| link(None));
    let branch_builds = overview
        .last_successful_builds
        .iter()
        .map(|build| BranchBuildView {
            branch: build.branch.clone(),
            run_id: build.run_id.clone(),
            number: build.number,
            commit: build
                .commit
                .as_deref()
                .unwrap_or_default()
                .chars()
                .take(10)
                .collect(),
            ended: build.ended_at.map(|at| When::new(Millis(at), now)),
        })
        .collect();
    let status = refusal
        .as_ref()
        .map_or(StatusCode::OK, |refusal| refusal.status());
    let any_running = environments.iter().any(|e| e.running.is_some());
    let form_environment = if posted.environment.is_empty() && environments.is_empty() {
        "production".to_owned()
    } else {
        posted.environment
    };
    let page = DeploymentsPage {
        chrome,
        slug: project.slug.clone(),
        project_name: project.name.clone(),
        form_branch: if posted.branch.is_empty() {
            project.default_branch.clone()
        } else {
            posted.branch
        },
        default_branch: project.default_branch.clone(),
        can_deploy: caller.can_write(project.id),
        has_repo: project.repo.is_some(),
        notice,
        error: refusal.map(|refusal| refusal.to_string()),
        environments,
        any_running,
        deployments: page_of_history
            .deployments
            .iter()
            .map(|dto| DeploymentView::new(dto, now))
            .collect(),
        branch_builds,
        older,
        newest,
        form_environment,
    };
    Ok((status, render(&page)).into_response())
}

/// `GET /projects/{slug}/deployments?before=&notice=`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> PageResult {
    let project = readable_project(&state, &caller, &slug).await?;
    let params = QueryParams::from_uri(uri.query());
    let before = params.integer("before", 1, i64::MAX)?;
    let notice = params.string("notice").and_then(notice_text);
    deployments_response(
        &state,
        &caller,
        &project,
        before,
        notice,
        None,
        Posted::default(),
    )
    .await
}

/// A developer's form about project `{slug}`: who calls is checked first (404 for a
/// project the caller may not see, 403 naming the developer role), then the `_csrf`
/// field; a refusal of the action shows the page again with its reason.
async fn developer_form(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    body: &Bytes,
) -> Result<(Project, FormFields), PageError> {
    let project = writable_project(state, caller, slug).await?;
    let form = fields(body);
    form.check_csrf(caller)?;
    Ok((project, form))
}

/// The page again after a refused action (4xx); a server error is an error page.
async fn refused(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    error: ApiError,
    posted: Posted,
) -> PageResult {
    if error.status().is_server_error() {
        return Err(PageError(error));
    }
    deployments_response(state, caller, project, None, None, Some(error), posted).await
}

fn done(slug: &str, notice: &str) -> PageResult {
    Ok(Redirect::to(&format!(
        "/projects/{}/deployments?notice={notice}#history",
        encode_query(slug)
    ))
    .into_response())
}

/// `POST /projects/{slug}/deploy` (form: `_csrf`, `environment`, `branch`): builds the
/// branch's tip and deploys it (`services::deployments::deploy`), then shows the page.
pub(crate) async fn deploy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    let (project, form) = developer_form(&state, &caller, &slug, &body).await?;
    let environment = form.text("environment").trim().to_owned();
    let branch = form.text("branch").trim().to_owned();
    let request = DeployRequest {
        branch: (!branch.is_empty()).then(|| branch.clone()),
    };
    match deployments::deploy(&state, &caller, &project.slug, &environment, request).await {
        Ok(_) => done(&project.slug, "deploy-started"),
        Err(error) => {
            let posted = Posted {
                environment,
                branch,
            };
            refused(&state, &caller, &project, error.into(), posted).await
        }
    }
}

/// `POST /projects/{slug}/rollback` (form: `_csrf`, `environment`, `to`: a run id):
/// serves an earlier deployed build again (`services::deployments::rollback`).
pub(crate) async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    let (project, form) = developer_form(&state, &caller, &slug, &body).await?;
    let environment = form.text("environment").trim().to_owned();
    let request = RollbackRequest {
        to: form.text("to").trim().to_owned(),
    };
    match deployments::rollback(&state, &caller, &project.slug, &environment, request).await {
        Ok(deployment) if deployment.status == "deployed" => done(&project.slug, "rolled-back"),
        Ok(_) => done(&project.slug, "rollback-started"),
        Err(error) => refused(&state, &caller, &project, error.into(), Posted::default()).await,
    }
}

/// `POST /projects/{slug}/deployments/{id}/cancel` (form: `_csrf`): cancels a deployment
/// on its way, by cancelling its build (`services::deployments::cancel`); one that
/// ended, or of another project, is refused on the page.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    let (project, _form) = developer_form(&state, &caller, &slug, &body).await?;
    let outcome = async {
        let id: i64 = id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            ServiceError::bad_request(
                "invalid_field",
                Some("id"),
                format!("id: '{id}' is not a deployment id (a positive integer)"),
            )
        })?;
        let (owner, _) = deployments::one(&state, &caller, id).await?;
        if owner.id != project.id {
            return Err(ServiceError::NotFound(format!(
                "deployment {id} not found in project '{}'",
                project.slug
            )));
        }
        deployments::cancel(&state, &caller, id).await
    }
    .await;
    match outcome {
        Ok(_) => done(&project.slug, "deploy-cancelled"),
        Err(error) => refused(&state, &caller, &project, error.into(), Posted::default()).await,
    }
}
