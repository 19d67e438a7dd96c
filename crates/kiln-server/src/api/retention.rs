//! Artifact retention over HTTP: a project's rule (`GET`/`PUT
//! /api/v1/projects/{slug}/artifact-retention`), a run or dry run of it, and pins
//! (`POST`/`DELETE /api/v1/builds/{runId}/pin`).

use axum::extract::State;

use super::path::Path;
use axum::http::Uri;
use axum::{Extension, Json};
use kiln_protocol::{ArtifactRetention, BuildPin, RetentionRun, SetArtifactRetention};

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::builds::writable_build;
use crate::services::members::administered_project;
use crate::services::projects::readable_project;
use crate::services::retention;

/// `GET /api/v1/projects/{slug}/artifact-retention`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<ArtifactRetention>, ApiError> {
    let project = readable_project(&state, &caller, &slug).await?;
    Ok(Json(retention::show(&state, &project).await?))
}

/// `PUT /api/v1/projects/{slug}/artifact-retention` `{"keepBuilds": N, "keepDays": D}`.
pub(crate) async fn set(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<ArtifactRetention>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let request: SetArtifactRetention = parse(body)?;
    Ok(Json(
        retention::set(&state, &caller, &project, request).await?,
    ))
}

/// `POST /api/v1/projects/{slug}/artifact-retention/run[?dryRun=true]`.
pub(crate) async fn run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> Result<Json<RetentionRun>, ApiError> {
    let dry_run = match QueryParams::from_uri(uri.query()).string("dryRun") {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some("dryRun"),
                format!("dryRun: must be true or false, got '{other}'"),
            ));
        }
    };
    let project = administered_project(&state, &caller, &slug).await?;
    Ok(Json(retention::run_now(&state, &project, dry_run).await?))
}

/// `POST /api/v1/builds/{runId}/pin`.
pub(crate) async fn pin(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<BuildPin>, ApiError> {
    let build = writable_build(&state, &caller, &run_id).await?;
    Ok(Json(retention::pin(&state, &caller, &build).await?))
}

/// `DELETE /api/v1/builds/{runId}/pin`.
pub(crate) async fn unpin(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<BuildPin>, ApiError> {
    let build = writable_build(&state, &caller, &run_id).await?;
    Ok(Json(retention::unpin(&state, &caller, &build).await?))
}
