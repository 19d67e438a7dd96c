//! The settings page's branch and repository forms: add or change a branch, delete
//! one, set the repository, default branch and concurrency limit.

use kiln_protocol::{RepoSettings, SetBranch};

use super::{AdminForm, done};
use crate::error::ApiError;
use crate::services::repos::{self, set_branch, set_repo_settings};
use crate::web::PageResult;
use crate::web::form::FormFields;

/// A whole number field: absent or empty is `None`, anything else must parse.
fn number_field(form: &FormFields, field: &str, json_field: &str) -> Result<Option<i64>, ApiError> {
    match form.text(field).trim() {
        "" => Ok(None),
        raw => raw.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                Some(json_field),
                format!("{json_field}: must be a whole number, not '{raw}'"),
            )
        }),
    }
}

/// `POST /projects/{slug}/settings/branches` (form: `name`, `priority`, `auto_build`).
pub(crate) async fn add_branch(admin: AdminForm) -> PageResult {
    admin
        .run(async |admin| {
            let request = SetBranch {
                name: admin.form.text("name").to_owned(),
                priority: number_field(&admin.form, "priority", "priority")?,
                auto_build: Some(admin.form.checked("auto_build")),
            };
            set_branch(&admin.state, &admin.caller, &admin.project, &request).await?;
            Ok(done(&admin.project.slug, "branch-saved", "branches"))
        })
        .await
}

/// `POST /projects/{slug}/settings/branches/delete` (form: `name`; branch names hold
/// slashes, so the name is not in the path).
pub(crate) async fn delete_branch(admin: AdminForm) -> PageResult {
    admin
        .run(async |admin| {
            repos::delete_branch(
                &admin.state,
                &admin.caller,
                &admin.project,
                admin.form.text("name"),
            )
            .await?;
            Ok(done(&admin.project.slug, "branch-deleted", "branches"))
        })
        .await
}

/// `POST /projects/{slug}/settings/repo` (form: `repo` — empty keeps the current one,
/// whose URL is shown masked —, `clear_repo`, `default_branch`, `max_concurrency` —
/// empty for no limit).
pub(crate) async fn set_repo(admin: AdminForm) -> PageResult {
    admin
        .run(async |admin| {
            let repo = match admin.form.text("repo").trim() {
                _ if admin.form.checked("clear_repo") => None,
                "" => admin.project.repo.clone(),
                repo => Some(repo.to_owned()),
            };
            let default_branch = admin.form.text("default_branch").trim();
            let settings = RepoSettings {
                repo,
                default_branch: (!default_branch.is_empty()).then(|| default_branch.to_owned()),
                // An empty field is no limit.
                max_concurrency: Some(number_field(
                    &admin.form,
                    "max_concurrency",
                    "maxConcurrency",
                )?),
            };
            set_repo_settings(&admin.state, &admin.project, &settings).await?;
            crate::services::accounts::audit(
                &admin.state,
                &admin.caller,
                "repo.set",
                Some(admin.project.id),
                None,
            )
            .await;
            Ok(done(&admin.project.slug, "repo-saved", "repository"))
        })
        .await
}
