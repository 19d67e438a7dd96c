//! Comparing builds' artifacts over HTTP: `GET /api/v1/compare?a=RUN&b=RUN`, and rebuild
//! to verify (`POST /api/v1/builds/{runId}/rebuild-verify`, `GET …/verification`).

use axum::extract::State;

use super::path::Path;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_protocol::{ArtifactComparison, RebuildVerification};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::builds::{readable_build, writable_build};
use crate::services::{compare, verification};

/// `GET /api/v1/compare?a=RUN&b=RUN`.
pub(crate) async fn compare(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<ArtifactComparison>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let run = |key: &'static str| {
        params.string(key).map(str::to_owned).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                Some(key),
                format!("{key}: is required (a build's run id: /api/v1/compare?a=RUN&b=RUN)"),
            )
        })
    };
    let (a, b) = (run("a")?, run("b")?);
    Ok(Json(compare::compare_runs(&state, &caller, &a, &b).await?))
}

/// `POST /api/v1/builds/{runId}/rebuild-verify`.
pub(crate) async fn rebuild_verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<(StatusCode, Json<RebuildVerification>), ApiError> {
    let build = writable_build(&state, &caller, &run_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(verification::rebuild(&state, &caller, &build).await?),
    ))
}

/// `GET /api/v1/builds/{runId}/verification`.
pub(crate) async fn verification(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<RebuildVerification>, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    Ok(Json(verification::answer(&state, &build).await?))
}
