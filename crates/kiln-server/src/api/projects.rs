//! Projects and their tokens.

use axum::extract::State;

use super::path::Path;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_core::ProjectSlug;
use kiln_protocol::{CreateProject, CreatedToken, ProjectDto, ProjectList, TokenDto, TokenList};
use kiln_store::StoreError;

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::projects::{
    checked_name, create_project_token, readable_project, revoke_project_token,
};
use crate::wire::{project_dto, token_dto};

pub(crate) async fn create_project(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<ProjectDto>), ApiError> {
    let request: CreateProject = parse(body)?;
    let slug = ProjectSlug::parse("slug", &request.slug)?;
    let name = checked_name(&request.name, "name")?;
    let project = state
        .store
        .create_project(&slug, &name, state.clock.now())
        .await
        .map_err(|error| match error {
            StoreError::Conflict(message) => ApiError::Conflict {
                code: "project_exists",
                message: format!("{message}; pick another slug"),
                field: Some("slug".into()),
            },
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(project_dto(&project))))
}

pub(crate) async fn list_projects(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ProjectList>, ApiError> {
    let projects = state.store.list_projects().await?;
    Ok(Json(ProjectList {
        projects: projects
            .iter()
            .filter(|project| caller.can_read(project.id))
            .map(project_dto)
            .collect(),
    }))
}

pub(crate) async fn get_project(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<ProjectDto>, ApiError> {
    Ok(Json(project_dto(
        &readable_project(&state, &caller, &slug).await?,
    )))
}

pub(crate) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let project = crate::services::members::administered_project(&state, &caller, &slug).await?;
    let (token, record) = create_project_token(&state, &caller, &project, &parse(body)?).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            info: token_dto(&record, Some(&project.slug)),
        }),
    ))
}

pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<TokenList>, ApiError> {
    let project = crate::services::members::administered_project(&state, &caller, &slug).await?;
    let tokens = state.store.list_tokens(Some(project.id)).await?;
    Ok(Json(TokenList {
        tokens: tokens
            .iter()
            .map(|t| token_dto(t, Some(&project.slug)))
            .collect(),
    }))
}

pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, token_id)): Path<(String, String)>,
) -> Result<Json<TokenDto>, ApiError> {
    let project = crate::services::members::administered_project(&state, &caller, &slug).await?;
    let record = revoke_project_token(&state, &caller, &project, &token_id).await?;
    Ok(Json(token_dto(&record, Some(&project.slug))))
}
