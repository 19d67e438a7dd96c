//! The settings page's public status form: publish or withdraw the project's public
//! page and badges.

use super::{AdminForm, done};
use crate::error::ApiError;
use crate::services::public_status::set_public_status;
use crate::web::PageResult;

/// `POST /projects/{slug}/settings/public-status` (form: `enabled`, `true` or `false`).
pub(crate) async fn set(admin: AdminForm) -> PageResult {
    admin
        .run(async |admin| {
            let enabled = match admin.form.text("enabled") {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_field",
                        Some("enabled"),
                        format!("enabled: must be true or false, not '{other}'"),
                    ));
                }
            };
            set_public_status(&admin.state, &admin.caller, &admin.project, enabled).await?;
            let notice = if enabled {
                "status-published"
            } else {
                "status-withdrawn"
            };
            Ok(done(&admin.project.slug, notice, "public-status"))
        })
        .await
}
