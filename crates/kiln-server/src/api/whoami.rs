//! `GET /api/v1/whoami`: what the calling credential is and which projects it reaches, so
//! a client can take the project from its token instead of asking for `--project`.

use axum::extract::State;
use axum::{Extension, Json};
use kiln_protocol::WhoAmI;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// A project token reaches its project; a user, the projects they have a role in (an
/// instance admin reaches every project, listed as none: the client must name one).
pub(crate) async fn whoami(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<WhoAmI>, ApiError> {
    let mut project_ids: Vec<i64> = caller.project_id.into_iter().collect();
    project_ids.extend(caller.roles.keys().copied());
    project_ids.sort_unstable();
    project_ids.dedup();
    let mut projects = Vec::with_capacity(project_ids.len());
    for id in project_ids {
        if let Some(project) = state.store.project_by_id(id).await? {
            projects.push(project.slug);
        }
    }
    Ok(Json(WhoAmI {
        kind: caller.kind.as_str().to_owned(),
        projects,
        scopes: caller
            .scopes
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect(),
        instance_admin: caller.instance_admin,
    }))
}
