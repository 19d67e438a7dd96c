//! Build reports over HTTP: `GET /api/v1/builds/{runId}/report.json` and `report.md`
//! (the same, as Markdown).

use axum::extract::State;

use super::path::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_protocol::BuildReport;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::builds::readable_build;
use crate::services::reports;

/// `GET /api/v1/builds/{runId}/report.json`.
pub(crate) async fn json(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<BuildReport>, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    Ok(Json(reports::report(&state, &build).await?))
}

/// `GET /api/v1/builds/{runId}/report.md`.
pub(crate) async fn markdown(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    let report = reports::report(&state, &build).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        )],
        reports::markdown(&report),
    )
        .into_response())
}
