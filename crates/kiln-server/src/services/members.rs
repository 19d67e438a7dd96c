//! Project members as a service: who administers a project, roles given and taken, a
//! user named by a path (the API's member routes and the settings page call these).

use crate::AppState;
use crate::auth::Caller;
use crate::service_error::ServiceError;
use crate::services::accounts::audit;
use crate::services::projects::readable_project;
use kiln_core::Role;

/// The project, if the caller administers it (404 when it may not even see it).
pub(crate) async fn administered_project(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<kiln_store::Project, ServiceError> {
    let project = readable_project(state, caller, slug).await?;
    if !caller.can_admin(project.id) {
        return Err(crate::service_error::missing_role(caller, Role::Admin));
    }
    Ok(project)
}

/// Gives a user (by id or email) a role in the project (the API and the settings page).
pub(crate) async fn set_member_role(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    user: &str,
    role: &str,
) -> Result<(kiln_store::UserRecord, Role), ServiceError> {
    let role = Role::parse("role", role)?;
    let user = user_by_path(state, user).await?;
    let membership = state
        .store
        .set_membership(project.id, user.id, role, state.clock.now())
        .await?;
    state.authenticator.forget_all();
    audit(
        state,
        caller,
        "member.set",
        Some(project.id),
        Some(&format!("{} as {role}", user.email)),
    )
    .await;
    Ok((user, membership.role))
}

/// Removes a user (by id or email) from the project (the API and the settings page).
pub(crate) async fn remove_from_project(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    user: &str,
) -> Result<kiln_store::UserRecord, ServiceError> {
    let user = user_by_path(state, user).await?;
    state
        .store
        .remove_membership(project.id, user.id)
        .await
        .map_err(|_| {
            ServiceError::NotFound(format!(
                "{} is not a member of {}",
                user.email, project.slug
            ))
        })?;
    state.authenticator.forget_all();
    audit(
        state,
        caller,
        "member.remove",
        Some(project.id),
        Some(&user.email),
    )
    .await;
    Ok(user)
}

/// A user named by id or email.
pub(crate) async fn user_by_path(
    state: &AppState,
    raw: &str,
) -> Result<kiln_store::UserRecord, ServiceError> {
    let user = match raw.parse::<i64>() {
        Ok(id) => state.store.user_by_id(id).await?,
        Err(_) => state.store.user_by_email(&raw.to_ascii_lowercase()).await?,
    };
    user.ok_or_else(|| ServiceError::NotFound(format!("user '{raw}' not found")))
}
