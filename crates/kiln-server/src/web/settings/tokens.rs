//! The settings page's token forms: create a project token (shown once) and revoke one.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::{SecretPage, done, settings_action};
use crate::AppState;
use crate::api::projects::{create_project_token, revoke_project_token};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::web::{Chrome, PageResult, encode_query, render};

/// `POST /projects/{slug}/settings/tokens` (form: `name`, `scopes` = ingest and/or read).
pub(crate) async fn create_token(
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
            let scopes = form.all("scopes");
            if scopes.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    Some("scopes"),
                    "scopes: tick ingest, read or both",
                ));
            }
            let request = json!({"name": form.text("name"), "scopes": scopes});
            let (token, record) = create_project_token(&state, &caller, &project, &request).await?;
            let chrome = Chrome::load(&state, &caller, "projects", "New token")
                .await
                .map_err(|error| error.0)?;
            let page = SecretPage {
                chrome,
                heading: format!("Token “{}” created", record.name),
                what: "token",
                usage: format!(
                    "export KILN_TOKEN={token}   # then: kiln run -- make test (project {})",
                    project.slug
                ),
                secret: token,
                back: format!("/projects/{}/settings#tokens", encode_query(&project.slug)),
                back_label: "Done: back to the settings",
            };
            Ok((StatusCode::CREATED, render(&page)).into_response())
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/tokens/{id}/revoke`.
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, _| async move {
            revoke_project_token(&state, &caller, &project, &id).await?;
            Ok(done(&project.slug, "token-revoked", "tokens"))
        },
    )
    .await
}
