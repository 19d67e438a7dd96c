//! A project's repository and branches (what Kiln builds, and which branches it polls).

use axum::extract::State;

use super::path::Path;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_protocol::{BranchDto, BranchList, RepoDto};
use kiln_store::BranchRecord;

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::repos::{self, set_branch, set_repo_settings, shown_repo};
use crate::wire::project_dto;

fn branch_dto(branch: &BranchRecord) -> BranchDto {
    BranchDto {
        name: branch.name.clone(),
        priority: branch.priority,
        auto_build: branch.auto_build,
        last_commit: branch.last_commit.clone(),
    }
}

async fn project(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<kiln_store::Project, ApiError> {
    Ok(crate::services::members::administered_project(state, caller, slug).await?)
}

/// `PUT /api/v1/projects/{slug}/repo` `{repo, defaultBranch?, maxConcurrency?}`.
pub(crate) async fn set_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<RepoDto>, ApiError> {
    let project = project(&state, &caller, &slug).await?;
    let updated = set_repo_settings(&state, &project, &parse(body)?).await?;
    Ok(Json(repo_dto(&updated)))
}

pub(crate) fn repo_dto(project: &kiln_store::Project) -> RepoDto {
    RepoDto {
        project: project_dto(project),
        repo: shown_repo(project),
        default_branch: project.default_branch.clone(),
        max_concurrency: project.max_concurrency,
    }
}

/// `POST /api/v1/projects/{slug}/branches` `{name, priority?, autoBuild?}`: creates or
/// updates.
pub(crate) async fn upsert_branch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<BranchDto>), ApiError> {
    let project = project(&state, &caller, &slug).await?;
    let branch = set_branch(&state, &caller, &project, &parse(body)?).await?;
    Ok((StatusCode::OK, Json(branch_dto(&branch))))
}

pub(crate) async fn list_branches(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<BranchList>, ApiError> {
    let project = project(&state, &caller, &slug).await?;
    let branches = state.store.list_branches(project.id).await?;
    Ok(Json(BranchList {
        branches: branches.iter().map(branch_dto).collect(),
    }))
}

pub(crate) async fn delete_branch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project = project(&state, &caller, &slug).await?;
    repos::delete_branch(&state, &caller, &project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
