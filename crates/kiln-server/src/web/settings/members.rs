//! The settings page's member forms: add a user by email, change a member's role,
//! remove a member.

use axum::extract::Path;

use super::{AdminForm, done};
use crate::error::ApiError;
use crate::services::members::remove_from_project;
use crate::services::members::set_member_role;
use crate::web::PageResult;

/// `POST /projects/{slug}/settings/members` (form: `email`, `role`): adds a user or
/// changes the role of one.
pub(crate) async fn add_member(admin: AdminForm) -> PageResult {
    admin.run(async |admin| {
        let email = admin.form.text("email").trim().to_ascii_lowercase();
        if !crate::services::accounts::valid_email(&email) {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some("email"),
                "email: give the email address of a Kiln user, such as ada@example.com (an instance admin creates users with kiln user create)",
            ));
        }
        set_member_role(
            &admin.state,
            &admin.caller,
            &admin.project,
            &email,
            admin.form.text("role"),
        )
        .await?;
        Ok(done(&admin.project.slug, "member-saved", "members"))
    })
    .await
}

/// `POST /projects/{slug}/settings/members/{user}/role` (form: `role`).
pub(crate) async fn set_role(
    Path((_, user)): Path<(String, String)>,
    admin: AdminForm,
) -> PageResult {
    admin
        .run(async |admin| {
            set_member_role(
                &admin.state,
                &admin.caller,
                &admin.project,
                &user,
                admin.form.text("role"),
            )
            .await?;
            Ok(done(&admin.project.slug, "member-saved", "members"))
        })
        .await
}

/// `POST /projects/{slug}/settings/members/{user}/remove`.
pub(crate) async fn remove_member(
    Path((_, user)): Path<(String, String)>,
    admin: AdminForm,
) -> PageResult {
    admin
        .run(async |admin| {
            remove_from_project(&admin.state, &admin.caller, &admin.project, &user).await?;
            Ok(done(&admin.project.slug, "member-removed", "members"))
        })
        .await
}
