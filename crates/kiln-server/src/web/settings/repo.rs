//! The settings page's branch and repository forms: add or change a branch, delete
//! one, set the repository, default branch and concurrency limit.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Map, Value, json};

use super::{done, settings_action};
use crate::AppState;
use crate::api::repos::{delete_branch_of, set_repo_of, upsert_branch_of};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::web::PageResult;
use crate::web::form::FormFields;

/// A whole number field: absent or empty is `Null`, anything else must parse.
fn number_field(form: &FormFields, field: &str, json_field: &str) -> Result<Value, ApiError> {
    match form.text(field).trim() {
        "" => Ok(Value::Null),
        raw => raw.parse::<i64>().map(Value::from).map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                Some(json_field),
                format!("{json_field}: must be a whole number, not '{raw}'"),
            )
        }),
    }
}

/// `POST /projects/{slug}/settings/branches` (form: `name`, `priority`, `auto_build`).
pub(crate) async fn add_branch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            let request = json!({
                "name": form.text("name"),
                "priority": number_field(&form, "priority", "priority")?,
                "autoBuild": form.checked("auto_build"),
            });
            upsert_branch_of(&state, &caller, &project, &request).await?;
            Ok(done(&project.slug, "branch-saved", "branches"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/branches/delete` (form: `name`; branch names hold
/// slashes, so the name is not in the path).
pub(crate) async fn delete_branch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            delete_branch_of(&state, &caller, &project, form.text("name")).await?;
            Ok(done(&project.slug, "branch-deleted", "branches"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/repo` (form: `repo` — empty keeps the current one,
/// whose URL is shown masked —, `clear_repo`, `default_branch`, `max_concurrency` —
/// empty for no limit).
pub(crate) async fn set_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            let repo = match form.text("repo").trim() {
                _ if form.checked("clear_repo") => Value::Null,
                "" => project.repo.clone().map_or(Value::Null, Value::from),
                repo => Value::from(repo),
            };
            let mut request = Map::new();
            request.insert("repo".into(), repo);
            if !form.text("default_branch").trim().is_empty() {
                request.insert(
                    "defaultBranch".into(),
                    form.text("default_branch").trim().into(),
                );
            }
            request.insert(
                "maxConcurrency".into(),
                number_field(&form, "max_concurrency", "maxConcurrency")?,
            );
            set_repo_of(&state, &project, &Value::Object(request)).await?;
            crate::api::users::audit(&state, &caller, "repo.set", Some(project.id), None).await;
            Ok(done(&project.slug, "repo-saved", "repository"))
        },
    )
    .await
}
