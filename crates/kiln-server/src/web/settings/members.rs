//! The settings page's member forms: add a user by email, change a member's role,
//! remove a member.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};

use super::{done, settings_action};
use crate::AppState;
use crate::api::members::{remove_member_of, set_member_role};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::web::PageResult;

/// `POST /projects/{slug}/settings/members` (form: `email`, `role`): adds a user or
/// changes the role of one.
pub(crate) async fn add_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(state, caller, slug, body, |state, caller, project, form| async move {
        let email = form.text("email").trim().to_ascii_lowercase();
        if !crate::api::users::valid_email(&email) {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some("email"),
                "email: give the email address of a Kiln user, such as ada@example.com (an instance admin creates users with kiln user create)",
            ));
        }
        set_member_role(&state, &caller, &project, &email, form.text("role")).await?;
        Ok(done(&project.slug, "member-saved", "members"))
    })
    .await
}

/// `POST /projects/{slug}/settings/members/{user}/role` (form: `role`).
pub(crate) async fn set_role(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, user)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            set_member_role(&state, &caller, &project, &user, form.text("role")).await?;
            Ok(done(&project.slug, "member-saved", "members"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/members/{user}/remove`.
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, user)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, _| async move {
            remove_member_of(&state, &caller, &project, &user).await?;
            Ok(done(&project.slug, "member-removed", "members"))
        },
    )
    .await
}
