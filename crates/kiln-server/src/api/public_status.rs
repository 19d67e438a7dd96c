//! A project's public status setting (`/api/v1/projects/{slug}/public-status`): read
//! and changed by its admins. The public page and badges themselves are in
//! `web::public_status`.

use axum::extract::State;

use super::path::Path;
use axum::{Extension, Json};
use kiln_protocol::{PublicStatusDto, SetPublicStatus};

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::members::administered_project;
use crate::services::public_status::{set_public_status, setting};

/// `GET /api/v1/projects/{slug}/public-status`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<PublicStatusDto>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    Ok(Json(setting(&project)))
}

/// `PUT /api/v1/projects/{slug}/public-status` `{"enabled": true|false}`.
pub(crate) async fn set(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<PublicStatusDto>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let request: SetPublicStatus = parse(body)?;
    let updated = set_public_status(&state, &caller, &project, request.enabled).await?;
    Ok(Json(setting(&updated)))
}
