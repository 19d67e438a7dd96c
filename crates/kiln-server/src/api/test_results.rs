//! Test results: a JUnit report uploaded for a build (ingest tokens), a build's tests,
//! and a project's flaky tests, slowest tests and one test's history.

use axum::extract::State;

use super::path::Path;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_protocol::{BuildTests, FlakyTests, SlowestTests, TestHistory, TestReportStored};

use super::body::RawBody;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::builds::{ingest_build, readable_build};
use crate::services::projects::readable_project;
use crate::services::test_results::{
    self, MAX_REPORT_BYTES, build_tests, flaky_tests, slowest_tests, store_report,
};

/// `POST /api/v1/builds/{runId}/tests` with a JUnit XML body: 201 with what it added.
pub(crate) async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    RawBody(report): RawBody<MAX_REPORT_BYTES>,
) -> Result<(StatusCode, Json<TestReportStored>), ApiError> {
    let build = ingest_build(&state, &caller, &run_id, "upload test reports").await?;
    let stored = store_report(&state, &build, report).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `GET /api/v1/builds/{runId}/tests`.
pub(crate) async fn of_build(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<BuildTests>, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    Ok(Json(build_tests(&state, &build, None).await?))
}

/// `GET /api/v1/projects/{slug}/tests/flaky?days=`.
pub(crate) async fn flaky(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> Result<Json<FlakyTests>, ApiError> {
    let days = QueryParams::from_uri(uri.query()).integer("days", 1, 366)?;
    let project = readable_project(&state, &caller, &slug).await?;
    Ok(Json(flaky_tests(&state, &project, days).await?))
}

/// `GET /api/v1/projects/{slug}/tests/slowest?days=&limit=`.
pub(crate) async fn slowest(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> Result<Json<SlowestTests>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let days = params.integer("days", 1, 366)?;
    let limit = params.integer("limit", 1, 1000)?;
    let project = readable_project(&state, &caller, &slug).await?;
    Ok(Json(slowest_tests(&state, &project, days, limit).await?))
}

/// `GET /api/v1/projects/{slug}/tests/history?key=&days=`.
pub(crate) async fn history(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> Result<Json<TestHistory>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let days = params.integer("days", 1, 366)?;
    let key = params.string("key").unwrap_or_default().to_owned();
    let project = readable_project(&state, &caller, &slug).await?;
    Ok(Json(
        test_results::test_history(&state, &project, &key, days).await?,
    ))
}
