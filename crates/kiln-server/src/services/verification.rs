//! Rebuild to verify: an ended build Kiln ran is built again at the same commit (as a
//! retry with cause `verify`, through the same queue), the pair is recorded, and once the
//! rebuild has ended its artifacts are compared with the original's. Each of the
//! rebuild's jobs avoids the agent that ran its step in the original build for the first
//! `kiln_store::AVOIDED_AGENT_HOLD_MS` (10 s) of its wait, when another agent that could
//! run it (its labels, heard from within a lease) is registered: another agent that
//! claims meanwhile rebuilds it; after that any agent may, the first one included. With
//! no such agent nothing is held (a fleet of one verifies at once, on the same agent).

use kiln_protocol::RebuildVerification;
use kiln_store::BuildRecord;

use crate::AppState;
use crate::auth::Caller;
use crate::service_error::ServiceError;
use crate::services::builds::{requester, retry_request};
use crate::services::compare::compare_builds;

/// `POST …/builds/{runId}/rebuild-verify`: the rebuild, queued.
pub(crate) async fn rebuild(
    state: &AppState,
    caller: &Caller,
    build: &BuildRecord,
) -> Result<RebuildVerification, ServiceError> {
    let mut request = retry_request(build, Some(requester(state, caller).await?))?;
    request.cause = "verify";
    request.avoid_agents_of = Some(build.id);
    let project = state
        .store
        .project_by_id(build.project_id)
        .await?
        .ok_or_else(|| ServiceError::NotFound("the build's project is gone".into()))?;
    let triggered = state.scheduler.trigger(&project, request).await?;
    let rebuild = state
        .store
        .build_by_run_id(&triggered.run_id)
        .await?
        .ok_or_else(|| {
            ServiceError::Unavailable("the rebuild was queued but cannot be read back".into())
        })?;
    state
        .store
        .record_verification(build.id, rebuild.id, state.clock.now())
        .await?;
    answer(state, build).await
}

/// `GET …/builds/{runId}/verification`: the newest rebuild and, once it ended, the
/// comparison; all `None` for a build never rebuilt to verify it.
pub(crate) async fn answer(
    state: &AppState,
    build: &BuildRecord,
) -> Result<RebuildVerification, ServiceError> {
    let run_id = build.state.run_id.to_string();
    let Some(verification) = state.store.latest_verification(build.id).await? else {
        return Ok(RebuildVerification {
            run_id,
            rebuild_run_id: None,
            rebuild_status: None,
            requested_at: None,
            comparison: None,
        });
    };
    let rebuild = state
        .store
        .build_by_run_id(&verification.rebuild_run_id)
        .await?
        .ok_or_else(|| ServiceError::NotFound("the rebuild is gone".into()))?;
    let comparison = if rebuild.state.status.is_terminal() {
        Some(compare_builds(state, build, &rebuild).await?)
    } else {
        None
    };
    Ok(RebuildVerification {
        run_id,
        rebuild_run_id: Some(verification.rebuild_run_id),
        rebuild_status: Some(rebuild.state.status.as_str().to_owned()),
        requested_at: Some(verification.requested_at.to_rfc3339()),
        comparison,
    })
}
