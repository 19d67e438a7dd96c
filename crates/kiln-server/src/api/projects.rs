//! Projects and their tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_core::limits::MAX_NAME_LEN;
use kiln_core::token::{Scope, TokenKind};
use kiln_core::{FieldError, ProjectSlug};
use kiln_protocol::{CreateToken, CreatedToken, ProjectDto, ProjectList, TokenDto, TokenList};
use kiln_store::{NewToken, Project, StoreError};
use serde_json::Value;

use super::body::{JsonBody, parse, required_string};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::wire::{project_dto, token_dto};
use crate::{AppState, generate_token};

fn display_name(body: &Value, field: &str) -> Result<String, ApiError> {
    checked_name(required_string(body, field)?, field)
}

fn checked_name(name: &str, field: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(FieldError::new(field, format!("must be 1-{MAX_NAME_LEN} characters")).into());
    }
    Ok(name.to_owned())
}

/// The project named by a path, if the caller may see it; otherwise 404, so other
/// projects' existence does not leak.
pub(crate) async fn readable_project(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<Project, ApiError> {
    match state.store.project_by_slug(slug).await? {
        Some(project) if caller.can_read(project.id) => Ok(project),
        _ => Err(ApiError::NotFound(format!("project '{slug}' not found"))),
    }
}

pub(crate) async fn create_project(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<ProjectDto>), ApiError> {
    let slug = ProjectSlug::parse("slug", required_string(&body, "slug")?)?;
    let name = display_name(&body, "name")?;
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
    let project = super::members::administered_project(&state, &caller, &slug).await?;
    let (token, record) = create_project_token(&state, &caller, &project, &parse(body)?).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            info: token_dto(&record, Some(&project.slug)),
        }),
    ))
}

/// Creates a project token from `{name, scopes?}` (the API and the settings page): the
/// secret (shown once) and its record.
pub(crate) async fn create_project_token(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    request: &CreateToken,
) -> Result<(String, kiln_store::TokenRecord), ApiError> {
    let name = checked_name(&request.name, "name")?;
    let scopes = match &request.scopes {
        None => vec![Scope::Ingest],
        Some(items) if !items.is_empty() => {
            let mut scopes = items
                .iter()
                .enumerate()
                .map(|(index, raw)| Scope::parse(&format!("scopes[{index}]"), raw))
                .collect::<Result<Vec<_>, _>>()?;
            scopes.sort();
            scopes.dedup();
            scopes
        }
        Some(_) => {
            return Err(FieldError::new(
                "scopes",
                "must be a non-empty array of \"ingest\" and/or \"read\"",
            )
            .into());
        }
    };
    let token = generate_token();
    let record = state
        .store
        .create_token(
            &NewToken::new(&token, TokenKind::Project, Some(project.id), name, scopes),
            state.clock.now(),
        )
        .await?;
    super::users::audit(
        state,
        caller,
        "token.create",
        Some(project.id),
        Some(&record.name),
    )
    .await;
    Ok((token, record))
}

pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<TokenList>, ApiError> {
    let project = super::members::administered_project(&state, &caller, &slug).await?;
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
    let project = super::members::administered_project(&state, &caller, &slug).await?;
    let record = revoke_project_token(&state, &caller, &project, &token_id).await?;
    Ok(Json(token_dto(&record, Some(&project.slug))))
}

/// Revokes a project token by its id (the API and the settings page), ending its open
/// streams on this replica.
pub(crate) async fn revoke_project_token(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    token_id: &str,
) -> Result<kiln_store::TokenRecord, ApiError> {
    let slug = &project.slug;
    let token_id: i64 = token_id.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_field",
            Some("id"),
            "id: must be a token id from the token list",
        )
    })?;
    let record = state
        .store
        .revoke_token(Some(project.id), token_id, state.clock.now())
        .await
        .map_err(|error| match error {
            StoreError::NotFound(_) => {
                ApiError::NotFound(format!("token {token_id} not found in project '{slug}'"))
            }
            other => other.into(),
        })?;
    state.authenticator.forget_all();
    // Open streams were authorised when they opened; end them now (on this replica).
    state.streams.revoke(record.id);
    super::users::audit(
        state,
        caller,
        "token.revoke",
        Some(project.id),
        Some(&record.name),
    )
    .await;
    Ok(record)
}
