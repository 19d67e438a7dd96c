//! Projects and their tokens as a service: who may see a project, tokens created and
//! revoked (the API and the settings page call these).

use crate::auth::Caller;
use crate::service_error::ServiceError;
use crate::{AppState, generate_token};
use kiln_core::FieldError;
use kiln_core::limits::MAX_NAME_LEN;
use kiln_core::token::{Scope, TokenKind};
use kiln_protocol::CreateToken;
use kiln_store::{NewToken, Project, StoreError};

/// The project named by a path, if the caller may see it; otherwise 404, so other
/// projects' existence does not leak.
pub(crate) async fn readable_project(
    state: &AppState,
    caller: &Caller,
    slug: &str,
) -> Result<Project, ServiceError> {
    match state.store.project_by_slug(slug).await? {
        Some(project) if caller.can_read(project.id) => Ok(project),
        _ => Err(ServiceError::NotFound(format!(
            "project '{slug}' not found"
        ))),
    }
}

pub(crate) fn checked_name(name: &str, field: &str) -> Result<String, ServiceError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(FieldError::new(field, format!("must be 1-{MAX_NAME_LEN} characters")).into());
    }
    Ok(name.to_owned())
}

/// Creates a project token from `{name, scopes?}` (the API and the settings page): the
/// secret (shown once) and its record.
pub(crate) async fn create_project_token(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    request: &CreateToken,
) -> Result<(String, kiln_store::TokenRecord), ServiceError> {
    let name = checked_name(&request.name, "name")?;
    let scopes = match &request.scopes {
        None => vec![Scope::Ingest],
        Some(items) if !items.is_empty() => {
            let mut scopes = items
                .iter()
                .enumerate()
                .map(|(index, raw)| Scope::parse(&format!("scopes[{index}]"), raw))
                .collect::<Result<Vec<_>, _>>()?;
            scopes.sort();
            scopes.dedup();
            scopes
        }
        Some(_) => {
            return Err(FieldError::new(
                "scopes",
                "must be a non-empty array of \"ingest\" and/or \"read\"",
            )
            .into());
        }
    };
    let token = generate_token();
    let record = state
        .store
        .create_token(
            &NewToken::new(&token, TokenKind::Project, Some(project.id), name, scopes),
            state.clock.now(),
        )
        .await?;
    crate::services::accounts::audit(
        state,
        caller,
        "token.create",
        Some(project.id),
        Some(&record.name),
    )
    .await;
    Ok((token, record))
}

/// Revokes a project token by its id (the API and the settings page), ending its open
/// streams on this replica.
pub(crate) async fn revoke_project_token(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    token_id: &str,
) -> Result<kiln_store::TokenRecord, ServiceError> {
    let slug = &project.slug;
    let token_id: i64 = token_id.parse().map_err(|_| {
        ServiceError::bad_request(
            "invalid_field",
            Some("id"),
            "id: must be a token id from the token list",
        )
    })?;
    let record = state
        .store
        .revoke_token(Some(project.id), token_id, state.clock.now())
        .await
        .map_err(|error| match error {
            StoreError::NotFound(_) => {
                ServiceError::NotFound(format!("token {token_id} not found in project '{slug}'"))
            }
            other => other.into(),
        })?;
    state.authenticator.forget_all();
    // Open streams were authorised when they opened; end them now (on this replica).
    state.streams.revoke(record.id);
    crate::services::accounts::audit(
        state,
        caller,
        "token.revoke",
        Some(project.id),
        Some(&record.name),
    )
    .await;
    Ok(record)
}
