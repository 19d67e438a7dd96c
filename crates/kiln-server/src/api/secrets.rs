//! Project secrets: write-only values (set, listed by name and time, deleted), encrypted
//! at rest (`crate::secret_box`), handed to the steps that name them (`scheduler`), every
//! change audited. Project admins only.

use axum::extract::State;

use super::path::Path;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_core::limits::{MAX_SECRET_VALUE_BYTES, MAX_SECRETS_PER_PROJECT};
use kiln_core::{FieldError, SecretName};
use kiln_protocol::{SecretDto, SecretList, SetSecret};
use kiln_store::SecretRecord;

use super::body::JsonBody;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::secret_box::secret_context;
use crate::services::accounts::audit;
use crate::services::members::administered_project;

fn secret_dto(record: &SecretRecord) -> SecretDto {
    SecretDto {
        name: record.name.clone(),
        created_at: record.created_at.to_rfc3339(),
        updated_at: record.updated_at.to_rfc3339(),
    }
}

/// `PUT /api/v1/projects/{slug}/secrets/{name}` `{value}` → the secret without its value.
pub(crate) async fn set_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<SecretDto>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let name = SecretName::parse("name", &name)?;
    let request: SetSecret = super::body::parse(body)?;
    if request.value.is_empty() || request.value.len() > MAX_SECRET_VALUE_BYTES {
        return Err(FieldError::new(
            "value",
            format!("must be 1 to {MAX_SECRET_VALUE_BYTES} bytes"),
        )
        .into());
    }
    let existing = state.store.list_project_secrets(project.id).await?;
    if existing.len() >= MAX_SECRETS_PER_PROJECT
        && !existing.iter().any(|secret| secret.name == name.as_str())
    {
        return Err(ApiError::Conflict {
            code: "too_many_secrets",
            message: format!(
                "project '{slug}' already has {MAX_SECRETS_PER_PROJECT} secrets, the limit; delete one it no longer uses"
            ),
            field: None,
        });
    }
    let sealed = state
        .config
        .secret_key
        .seal(
            &secret_context(project.id, name.as_str()),
            request.value.as_bytes(),
        )
        .map_err(ApiError::Unavailable)?;
    let record = state
        .store
        .set_project_secret(project.id, name.as_str(), &sealed, state.clock.now())
        .await?;
    audit(
        &state,
        &caller,
        "secret.set",
        Some(project.id),
        Some(name.as_str()),
    )
    .await;
    Ok(Json(secret_dto(&record)))
}

/// `GET /api/v1/projects/{slug}/secrets`: names and times only.
pub(crate) async fn list_secrets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let secrets = state.store.list_project_secrets(project.id).await?;
    Ok(Json(SecretList {
        secrets: secrets.iter().map(secret_dto).collect(),
    }))
}

/// `DELETE /api/v1/projects/{slug}/secrets/{name}` → 204.
pub(crate) async fn delete_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let name = SecretName::parse("name", &name)?;
    if !state
        .store
        .delete_project_secret(project.id, name.as_str())
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "project '{slug}' has no secret {}; list them with GET /api/v1/projects/{slug}/secrets",
            name.as_str()
        )));
    }
    audit(
        &state,
        &caller,
        "secret.delete",
        Some(project.id),
        Some(name.as_str()),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
