//! A project's members and their roles, and the audit log.

use axum::extract::State;

use super::path::Path;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_core::FieldError;
use kiln_protocol::{AuditEntryDto, AuditLog, MemberDto, MemberList, SetMemberRole};

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::members::{administered_project, remove_from_project, set_member_role};
use crate::wire::user_dto;

pub(crate) async fn list_members(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<MemberList>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let mut members = Vec::new();
    for membership in state.store.members_of_project(project.id).await? {
        if let Some(user) = state.store.user_by_id(membership.user_id).await? {
            members.push(MemberDto {
                user: user_dto(&user),
                role: membership.role.as_str().to_owned(),
            });
        }
    }
    Ok(Json(MemberList { members }))
}

/// `PUT /api/v1/projects/{slug}/members/{userId}` `{role}`.
pub(crate) async fn set_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<MemberDto>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let request: SetMemberRole = parse(body)?;
    let (user, role) = set_member_role(&state, &caller, &project, &user_id, &request.role).await?;
    Ok(Json(MemberDto {
        user: user_dto(&user),
        role: role.as_str().to_owned(),
    }))
}

pub(crate) async fn remove_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    remove_from_project(&state, &caller, &project, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/audit?project=&before=&limit=`: instance admins see everything, project
/// admins their project's entries (then `project` is required).
pub(crate) async fn audit_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<AuditLog>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let project_id = match params.string("project") {
        Some(slug) => Some(administered_project(&state, &caller, slug).await?.id),
        None if caller.is_admin() => None,
        None => {
            return Err(
                FieldError::new("project", "is required unless you are an instance admin").into(),
            );
        }
    };
    let before = params.integer("before", 1, i64::MAX)?;
    let limit = params.integer("limit", 1, 1000)?.unwrap_or(100);
    let entries = state.store.audit_log(project_id, before, limit).await?;
    // Who the actors are: a user's email, a token's name (the id stays in `actor`).
    let mut names: std::collections::HashMap<String, String> = Default::default();
    if entries.iter().any(|entry| entry.actor.starts_with("user:")) {
        for user in state.store.list_users().await? {
            names.insert(format!("user:{}", user.id), user.email);
        }
    }
    if entries
        .iter()
        .any(|entry| entry.actor.starts_with("token:"))
    {
        let mut tokens = state.store.list_tokens(None).await?;
        if let Some(project_id) = project_id {
            tokens.extend(state.store.list_tokens(Some(project_id)).await?);
        }
        for token in tokens {
            names.insert(format!("token:{}", token.id), token.name);
        }
    }
    Ok(Json(AuditLog {
        entries: entries
            .into_iter()
            .map(|entry| AuditEntryDto {
                actor_name: names.get(&entry.actor).cloned(),
                id: entry.id,
                at: entry.at.to_rfc3339(),
                actor: entry.actor,
                action: entry.action,
                target: entry.target,
                detail: entry.detail,
            })
            .collect(),
    }))
}
