//! Deployments over HTTP: a project's environments and deployment history, one
//! deployment, and deploy, rollback and cancel (developers). The service does the work.

use axum::extract::State;

use super::path::Path;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_protocol::{
    DeployRequest, DeployStarted, DeploymentDto, DeploymentList, EnvironmentList, RollbackRequest,
};

use super::body::{JsonBody, parse, parse_json};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::deployments;

/// `GET /api/v1/projects/{slug}/environments`.
pub(crate) async fn environments(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<EnvironmentList>, ApiError> {
    Ok(Json(
        deployments::environments(&state, &caller, &slug).await?,
    ))
}

/// `GET /api/v1/projects/{slug}/deployments?environment=&before=&limit=`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> Result<Json<DeploymentList>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let limit = params
        .integer("limit", 1, deployments::MAX_PAGE)?
        .unwrap_or(50);
    let before = params.integer("before", 1, i64::MAX)?;
    let environment = params.string("environment").filter(|e| !e.is_empty());
    Ok(Json(
        deployments::list(&state, &caller, &slug, environment, before, limit).await?,
    ))
}

/// `GET /api/v1/deployments/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentDto>, ApiError> {
    Ok(Json(
        deployments::get(&state, &caller, deployment_id(&id)?).await?,
    ))
}

/// `POST /api/v1/deployments/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeploymentDto>, ApiError> {
    Ok(Json(
        deployments::cancel(&state, &caller, deployment_id(&id)?).await?,
    ))
}

fn deployment_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("deployment '{raw}' not found")))
}

/// `POST /api/v1/projects/{slug}/environments/{environment}/deploy` (an empty body
/// deploys the default branch).
pub(crate) async fn deploy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, environment)): Path<(String, String)>,
    // At most MAX_BODY_BYTES; a larger body is 413 with the error body.
    super::body::RawBody(body): super::body::RawBody<{ kiln_core::limits::MAX_BODY_BYTES }>,
) -> Result<(StatusCode, Json<DeployStarted>), ApiError> {
    let request: DeployRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeployRequest::default()
    } else {
        parse(parse_json(&body)?)?
    };
    let started = deployments::deploy(&state, &caller, &slug, &environment, request).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

/// `POST /api/v1/projects/{slug}/environments/{environment}/rollback` `{"to": runId}`.
pub(crate) async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, environment)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<DeploymentDto>), ApiError> {
    let request: RollbackRequest = parse(body)?;
    let deployment = deployments::rollback(&state, &caller, &slug, &environment, request).await?;
    Ok((StatusCode::CREATED, Json(deployment)))
}
