//! Build reads: lists, one build, its events after a cursor, its status, and seed 000's
//! project status.

use axum::extract::State;

use super::path::Path;
use axum::http::Uri;
use axum::{Extension, Json};
use kiln_core::BuildStatus;
use kiln_core::limits::{
    DEFAULT_BUILD_PAGE_LIMIT, DEFAULT_EVENT_PAGE_LIMIT, MAX_HEARTBEAT_TIMEOUT_SECS, MAX_PAGE_LIMIT,
};
use kiln_protocol::{BuildDto, BuildList, BuildStatusDto, EventPage, ProjectStatus};
use kiln_store::BuildFilter;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::builds::readable_build;
use crate::services::projects::readable_project;
use crate::wire::{build_dto, event_json, status_dto};

/// The project a read is about: the `project` parameter, or the token's own project.
pub(crate) async fn project_filter(
    state: &AppState,
    caller: &Caller,
    params: &QueryParams,
) -> Result<Option<i64>, ApiError> {
    match params.string("project") {
        Some(slug) => Ok(Some(readable_project(state, caller, slug).await?.id)),
        None if caller.is_admin() => Ok(None),
        // A user in exactly one project means that one; otherwise they must say.
        None if caller.user_id.is_some() && caller.roles.len() == 1 => {
            Ok(caller.roles.keys().next().copied())
        }
        None if caller.user_id.is_some() => Err(ApiError::bad_request(
            "invalid_field",
            Some("project"),
            "project: is required (you are a member of several projects, or of none)",
        )),
        None => Ok(caller.project_id),
    }
}

/// Like `project_filter`, for routes about exactly one project: an instance admin must
/// name it.
pub(crate) async fn required_project(
    state: &AppState,
    caller: &Caller,
    params: &QueryParams,
) -> Result<i64, ApiError> {
    project_filter(state, caller, params).await?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            Some("project"),
            "project: is required with an instance-admin token",
        )
    })
}

pub(crate) async fn list_builds(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<BuildList>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let project_id = project_filter(&state, &caller, &params).await?;
    let status = params
        .string("status")
        .map(|raw| {
            BuildStatus::from_name(raw).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_field",
                    Some("status"),
                    format!(
                        "status: '{raw}' is not one of {}",
                        BuildStatus::ALL.map(BuildStatus::as_str).join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let limit = params
        .integer("limit", 1, MAX_PAGE_LIMIT)?
        .unwrap_or(DEFAULT_BUILD_PAGE_LIMIT);
    let filter = BuildFilter {
        project_id,
        project_ids: None,
        branch: params.string("branch").map(str::to_owned),
        status,
        before: params.integer("before", 1, i64::MAX)?,
        limit,
    };
    let builds = state.store.list_builds(&filter).await?;
    let next_before = (builds.len() as i64 == limit)
        .then(|| builds.last().map(|b| b.id))
        .flatten();
    Ok(Json(BuildList {
        builds: builds
            .iter()
            .map(|build| build_dto(build, state.config.heartbeat_timeout_secs, false))
            .collect(),
        next_before,
    }))
}

pub(crate) async fn get_build(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<BuildDto>, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    Ok(Json(build_dto(
        &build,
        state.config.heartbeat_timeout_secs,
        true,
    )))
}

/// `GET /api/v1/builds/{runId}/metrics`: the custom metrics its events reported.
pub(crate) async fn build_metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<kiln_protocol::BuildMetrics>, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    Ok(Json(kiln_protocol::BuildMetrics {
        run_id: build.state.run_id.to_string(),
        metrics: build.state.metrics,
    }))
}

pub(crate) async fn build_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
    uri: Uri,
) -> Result<Json<EventPage>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let after = params.integer("lastEventId", 0, i64::MAX)?.unwrap_or(0);
    let limit = params
        .integer("limit", 1, MAX_PAGE_LIMIT)?
        .unwrap_or(DEFAULT_EVENT_PAGE_LIMIT);
    let build = readable_build(&state, &caller, &run_id).await?;
    let events = state.store.events_after(build.id, after, limit).await?;
    let last_event_id = events.last().map_or(after, |event| event.id);
    Ok(Json(EventPage {
        has_more: events.len() as i64 == limit,
        events: events.iter().map(event_json).collect(),
        last_event_id,
    }))
}

pub(crate) async fn build_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(run_id): Path<String>,
) -> Result<Json<BuildStatusDto>, ApiError> {
    let build = readable_build(&state, &caller, &run_id).await?;
    Ok(Json(status_dto(&build)))
}

/// Seed 000: is a build of the project running, and heard from within the timeout?
pub(crate) async fn project_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<ProjectStatus>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let project_id = required_project(&state, &caller, &params).await?;
    // Seed 000 guards the status behind the admin role.
    if !caller.can_admin(project_id) {
        return Err(crate::service_error::missing_role(&caller, kiln_core::Role::Admin).into());
    }
    let timeout_secs = params
        .integer("heartbeatTimeout", 1, MAX_HEARTBEAT_TIMEOUT_SECS)?
        .unwrap_or(state.config.heartbeat_timeout_secs);
    let now = state.clock.now();
    let running = state
        .store
        .list_builds(&BuildFilter {
            project_id: Some(project_id),
            status: Some(BuildStatus::Running),
            limit: 20,
            ..BuildFilter::default()
        })
        .await?;
    let active = running
        .into_iter()
        .find(|build| now.saturating_sub(build.state.last_event_at) < timeout_secs * 1000);
    let active_run = match active {
        Some(build) => state
            .store
            .build_by_run_id(build.state.run_id.as_str())
            .await?
            .map(|with_stages| status_dto(&with_stages)),
        None => None,
    };
    Ok(Json(ProjectStatus {
        success: true,
        running: active_run.is_some(),
        active_run,
        updated_at: now.to_rfc3339(),
    }))
}
