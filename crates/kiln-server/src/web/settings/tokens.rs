//! The settings page's token forms: create a project token (shown once) and revoke one.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kiln_protocol::CreateToken;

use super::{AdminForm, SecretPage, done};
use crate::error::ApiError;
use crate::services::projects::create_project_token;
use crate::services::projects::revoke_project_token;
use crate::web::{Chrome, PageResult, encode_query, render};

/// `POST /projects/{slug}/settings/tokens` (form: `name`, `scopes` = ingest and/or read).
pub(crate) async fn create_token(admin: AdminForm) -> PageResult {
    admin
        .run(async |admin| {
            let scopes = admin.form.all("scopes");
            if scopes.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    Some("scopes"),
                    "scopes: tick ingest, read or both",
                ));
            }
            let request = CreateToken {
                name: admin.form.text("name").to_owned(),
                scopes: Some(scopes.iter().map(|scope| scope.to_string()).collect()),
            };
            let (token, record) =
                create_project_token(&admin.state, &admin.caller, &admin.project, &request).await?;
            let chrome = Chrome::load(&admin.state, &admin.caller, "projects", "New token")
                .await
                .map_err(|error| error.0)?;
            let page = SecretPage {
                chrome,
                heading: format!("Token “{}” created", record.name),
                what: "token",
                usage: format!(
                    "export KILN_TOKEN={token}   # then: kiln run -- make test (&admin.project {})",
                    admin.project.slug
                ),
                secret: token,
                back: format!(
                    "/projects/{}/settings#tokens",
                    encode_query(&admin.project.slug)
                ),
                back_label: "Done: back to the settings",
            };
            Ok((StatusCode::CREATED, render(&page)).into_response())
        })
        .await
}

/// `POST /projects/{slug}/settings/tokens/{id}/revoke`.
pub(crate) async fn revoke_token(
    Path((_, id)): Path<(String, String)>,
    admin: AdminForm,
) -> PageResult {
    admin
        .run(async |admin| {
            revoke_project_token(&admin.state, &admin.caller, &admin.project, &id).await?;
            Ok(done(&admin.project.slug, "token-revoked", "tokens"))
        })
        .await
}
