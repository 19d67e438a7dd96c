//! A project's analytics and its builds' predicted durations.

use axum::extract::State;

use super::path::Path;
use axum::http::Uri;
use axum::{Extension, Json};
use kiln_protocol::{PipelinePrediction, ProjectAnalytics};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::analytics::{AnalyticsQuery, predict_pipeline, project_analytics};
use crate::services::projects::readable_project;

/// `GET /api/v1/projects/{slug}/analytics?from=&to=&branch=&pipeline=`.
pub(crate) async fn analytics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> Result<Json<ProjectAnalytics>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let query = AnalyticsQuery {
        from: params.instant("from")?,
        to: params.instant("to")?,
        branch: params.string("branch").map(str::to_owned),
        pipeline: params.string("pipeline").map(str::to_owned),
    };
    let project = readable_project(&state, &caller, &slug).await?;
    let (_, answer) = project_analytics(&state, &project, query).await?;
    Ok(Json(answer))
}

/// `GET /api/v1/projects/{slug}/prediction?branch=&pipeline=&at=`.
pub(crate) async fn prediction(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> Result<Json<PipelinePrediction>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let at = params.instant("at")?;
    let project = readable_project(&state, &caller, &slug).await?;
    let answer = predict_pipeline(
        &state,
        &project,
        params.string("branch").map(str::to_owned),
        params.string("pipeline").map(str::to_owned),
        at,
    )
    .await?;
    Ok(Json(answer))
}
