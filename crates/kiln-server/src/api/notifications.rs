//! A user's notifications: the inbox (unread, archived, paging), mark read, archive,
//! stats and mutes. Every route acts on the caller's own user only.

use axum::extract::State;

use super::path::Path;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_protocol::{
    MarkedRead, MuteDto, MuteList, MuteRemoved, MuteTarget, NotificationDto, NotificationList,
    NotificationStats,
};
use kiln_store::{NotificationFilter, NotificationKind};

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::notify::kind_names;
use crate::params::QueryParams;
use crate::services::notifications::{not_found, notification_id};
use crate::wire::{mute_dto, notification_dto};

const DEFAULT_LIMIT: i64 = 50;
pub(super) const MAX_LIMIT: i64 = 200;

/// The caller's user; project, agent and admin tokens have none.
fn user_of(caller: &Caller) -> Result<i64, ApiError> {
    caller.user_id.ok_or_else(|| {
        ApiError::Forbidden("notifications belong to users; log in or use a personal token".into())
    })
}

fn boolean(params: &QueryParams, key: &str) -> Result<Option<bool>, ApiError> {
    match params.string(key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(
            "invalid_field",
            Some(key),
            format!("{key}: must be true or false, got '{other}'"),
        )),
    }
}

/// `GET /api/v1/notifications?unread=true|false&archived=true|false&limit=&before=`:
/// newest first; without `archived`, the inbox (not archived).
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<NotificationList>, ApiError> {
    let user_id = user_of(&caller)?;
    let params = QueryParams::from_uri(uri.query());
    let limit = params
        .integer("limit", 1, MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT);
    let filter = NotificationFilter {
        user_id,
        unread: boolean(&params, "unread")?,
        archived: Some(boolean(&params, "archived")?.unwrap_or(false)),
        before: params.integer("before", 1, i64::MAX)?,
        limit,
    };
    let records = state.store.list_notifications(&filter).await?;
    let next_before = (records.len() as i64 == limit)
        .then(|| records.last().map(|record| record.id))
        .flatten();
    Ok(Json(NotificationList {
        notifications: records.iter().map(notification_dto).collect(),
        next_before,
    }))
}

/// `POST /api/v1/notifications/{id}/read`.
pub(crate) async fn mark_read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<NotificationDto>, ApiError> {
    let user_id = user_of(&caller)?;
    let id = notification_id(&id)?;
    let record = state
        .store
        .mark_notification_read(user_id, id, state.clock.now())
        .await
        .map_err(not_found(id))?;
    Ok(Json(notification_dto(&record)))
}

/// `POST /api/v1/notifications/read-all`: `{"marked": N}`.
pub(crate) async fn mark_all_read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<MarkedRead>, ApiError> {
    let user_id = user_of(&caller)?;
    let marked = state
        .store
        .mark_all_notifications_read(user_id, state.clock.now())
        .await?;
    Ok(Json(MarkedRead { marked }))
}

/// `POST /api/v1/notifications/{id}/archive`.
pub(crate) async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<NotificationDto>, ApiError> {
    let user_id = user_of(&caller)?;
    let id = notification_id(&id)?;
    let record = state
        .store
        .archive_notification(user_id, id, state.clock.now())
        .await
        .map_err(not_found(id))?;
    Ok(Json(notification_dto(&record)))
}

/// `GET /api/v1/notifications/stats`: `{"unread": N, "byKind": {"build_failed": n, …}}`
/// (every kind listed, unread in the inbox only).
pub(crate) async fn stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<NotificationStats>, ApiError> {
    let user_id = user_of(&caller)?;
    let stats = state.store.notification_stats(user_id).await?;
    let mut by_kind = std::collections::BTreeMap::new();
    for kind in NotificationKind::ALL {
        let count = stats
            .unread_by_kind
            .iter()
            .find(|(counted, _)| *counted == kind)
            .map_or(0, |(_, count)| *count);
        by_kind.insert(kind.as_str().to_owned(), count);
    }
    Ok(Json(NotificationStats {
        unread: stats.unread,
        by_kind,
    }))
}

/// `GET /api/v1/notifications/mutes`.
pub(crate) async fn list_mutes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<MuteList>, ApiError> {
    let user_id = user_of(&caller)?;
    let mutes = state.store.notification_mutes(user_id).await?;
    Ok(Json(MuteList {
        mutes: mutes.iter().map(mute_dto).collect(),
    }))
}

/// What a mute names: a project the caller may read and/or a kind; at least one.
async fn mute_target(
    state: &AppState,
    caller: &Caller,
    project: Option<&str>,
    kind: Option<&str>,
) -> Result<(Option<i64>, Option<NotificationKind>), ApiError> {
    let kind = kind
        .map(|kind| {
            NotificationKind::parse(kind).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_field",
                    Some("kind"),
                    format!("kind: must be one of {}, got '{kind}'", kind_names()),
                )
            })
        })
        .transpose()?;
    let project_id = match project {
        None => None,
        Some(slug) => {
            let project = state
                .store
                .project_by_slug(slug)
                .await?
                .filter(|project| caller.can_read(project.id))
                .ok_or_else(|| ApiError::NotFound(format!("project '{slug}' not found")))?;
            Some(project.id)
        }
    };
    if project_id.is_none() && kind.is_none() {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("project"),
            "name a project, a kind, or both (e.g. {\"project\": \"web\", \"kind\": \"build_started\"})",
        ));
    }
    Ok((project_id, kind))
}

/// `POST /api/v1/notifications/mutes` `{project?: slug, kind?}`: 201 with the mute (an
/// existing identical mute is answered as it is).
pub(crate) async fn add_mute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<MuteDto>), ApiError> {
    let user_id = user_of(&caller)?;
    let target: MuteTarget = parse(body)?;
    let (project_id, kind) = mute_target(
        &state,
        &caller,
        target.project.as_deref(),
        target.kind.as_deref(),
    )
    .await?;
    let mute = state
        .store
        .add_notification_mute(user_id, project_id, kind, state.clock.now())
        .await?;
    Ok((StatusCode::CREATED, Json(mute_dto(&mute))))
}

/// `DELETE /api/v1/notifications/mutes` with `{project?, kind?}` as a JSON body or as
/// query parameters.
pub(crate) async fn remove_mute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    // At most MAX_BODY_BYTES; a larger body is 413 with the error body.
    super::body::RawBody(body): super::body::RawBody<{ kiln_core::limits::MAX_BODY_BYTES }>,
) -> Result<Json<MuteRemoved>, ApiError> {
    let user_id = user_of(&caller)?;
    let target: MuteTarget = if body.is_empty() {
        let params = QueryParams::from_uri(uri.query());
        MuteTarget {
            project: params.string("project").map(str::to_owned),
            kind: params.string("kind").map(str::to_owned),
        }
    } else {
        parse(super::body::parse_json(&body)?)?
    };
    let (project_id, kind) = mute_target(
        &state,
        &caller,
        target.project.as_deref(),
        target.kind.as_deref(),
    )
    .await?;
    state
        .store
        .remove_notification_mute(user_id, project_id, kind)
        .await
        .map_err(|error| match error {
            kiln_store::StoreError::NotFound(_) => ApiError::NotFound(
                "no such mute; GET /api/v1/notifications/mutes lists them".into(),
            ),
            other => other.into(),
        })?;
    Ok(Json(MuteRemoved { removed: true }))
}
