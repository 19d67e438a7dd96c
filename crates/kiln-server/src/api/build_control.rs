//! Starting and stopping builds Kiln runs, for users: trigger, retry, cancel (a build's
//! jobs and their logs are `jobs.rs`; reads of any build, `builds.rs`).

use axum::extract::State;

use super::path::Path;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_protocol::{CancelledBuild, TriggerBuild, TriggeredBuild};

use super::body::parse;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::scheduler::TriggerRequest;
use crate::services::builds::{project_build, requester, retry_request, writable_project};

pub(crate) async fn trigger(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    // At most MAX_BODY_BYTES; a larger body is 413 with the error body.
    super::body::RawBody(body): super::body::RawBody<{ kiln_core::limits::MAX_BODY_BYTES }>,
) -> Result<(StatusCode, Json<TriggeredBuild>), ApiError> {
    let project = writable_project(&state, &caller, &slug).await?;
    // An empty body builds the default branch's tip.
    let body: TriggerBuild = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBuild::default()
    } else {
        let value = super::body::parse_json(&body)?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "invalid_json",
                Some("body"),
                "the body must be a JSON object such as {\"branch\":\"main\"}",
            ));
        }
        parse(value).map_err(|error| match error {
            ApiError::BadRequest { field, .. } if field.as_deref() == Some("priority") => {
                ApiError::bad_request(
                    "invalid_field",
                    Some("priority"),
                    "priority: must be a whole number from 1 (highest) to 10",
                )
            }
            error => error,
        })?
    };
    let trimmed = |text: Option<String>| text.map(|text| text.trim().to_owned());
    let request = TriggerRequest {
        branch: trimmed(body.branch),
        commit: trimmed(body.commit),
        priority: body.priority,
        cause: "api",
        retry_of: None,
        by: Some(requester(&state, &caller).await?),
        deploys_to: None,
        avoid_agents_of: None,
    };
    let build = state.scheduler.trigger(&project, request).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

pub(crate) async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, run_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<TriggeredBuild>), ApiError> {
    let project = writable_project(&state, &caller, &slug).await?;
    let build = project_build(&state, &project, &run_id).await?;
    let request = retry_request(&build, Some(requester(&state, &caller).await?))?;
    let build = state.scheduler.trigger(&project, request).await?;
    Ok((StatusCode::CREATED, Json(build)))
}

pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, run_id)): Path<(String, String)>,
) -> Result<Json<CancelledBuild>, ApiError> {
    let project = writable_project(&state, &caller, &slug).await?;
    let build = project_build(&state, &project, &run_id).await?;
    let by = requester(&state, &caller).await?.words();
    let stopping_jobs = state.scheduler.cancel(&build, &by).await?;
    Ok(Json(CancelledBuild {
        run_id,
        status: "cancelled".into(),
        stopping_jobs,
    }))
}
