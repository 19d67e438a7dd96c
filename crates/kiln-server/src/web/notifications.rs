//! The notifications inbox (`/notifications`): the caller's notifications with their
//! read/unread state, filtered (unread, all, archived) and paged, and the "Mark read",
//! "Mark all read" and "Archive" forms. The forms post to page routes that call the
//! same store functions as `api/notifications.rs` and come back to the list (303);
//! `assets/admin.js` sends them to the JSON API instead and updates the row and the
//! header's unread count in place.

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect};
use kiln_store::NotificationFilter;

use super::form::{FormFields, fields};
use super::when::When;
use super::{Chrome, PageError, PageResult, encode_query, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::notifications::not_found;
use crate::services::notifications::notification_id;

/// Notifications per page.
const PAGE_SIZE: i64 = 50;

/// Which notifications the page lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Show {
    /// The inbox: everything not archived.
    All,
    Unread,
    Archived,
}

impl Show {
    fn parse(raw: Option<&str>) -> Result<Show, PageError> {
        match raw.unwrap_or("all") {
            "all" | "" => Ok(Show::All),
            "unread" => Ok(Show::Unread),
            "archived" => Ok(Show::Archived),
            other => Err(PageError(ApiError::bad_request(
                "invalid_field",
                Some("show"),
                format!("show: use all, unread or archived, not '{other}'"),
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Show::All => "all",
            Show::Unread => "unread",
            Show::Archived => "archived",
        }
    }
}

/// One notification as an item of the list.
#[derive(Debug)]
struct Item {
    id: i64,
    kind: &'static str,
    title: String,
    body: String,
    project: String,
    run_id: String,
    unread: bool,
    archived: bool,
    created: When,
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct NotificationsPage {
    chrome: Chrome,
    show: &'static str,
    items: Vec<Item>,
    next_before: Option<i64>,
}

fn user_of(caller: &Caller) -> i64 {
    // Pages are `Access::Page`: a user is signed in.
    caller.user_id.unwrap_or_default()
}

/// `GET /notifications?show=all|unread|archived&before=`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> PageResult {
    let query = FormFields::parse(uri.query().unwrap_or_default().as_bytes());
    let show = Show::parse(query.get("show"))?;
    let before = match query.get("before") {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    PageError(ApiError::bad_request(
                        "invalid_field",
                        Some("before"),
                        "before: must be a notification id (follow the \"Older\" link)",
                    ))
                })?,
        ),
    };
    let chrome = Chrome::load(&state, &caller, "notifications", "Notifications").await?;
    let filter = NotificationFilter {
        user_id: user_of(&caller),
        unread: (show == Show::Unread).then_some(true),
        archived: Some(show == Show::Archived),
        before,
        limit: PAGE_SIZE,
    };
    let records = state.store.list_notifications(&filter).await?;
    let now = state.clock.now();
    let next_before = (records.len() as i64 == PAGE_SIZE)
        .then(|| records.last().map(|record| record.id))
        .flatten();
    let items = records
        .into_iter()
        .map(|record| Item {
            id: record.id,
            kind: record.kind.as_str(),
            title: record.title,
            body: record.body,
            project: record.project_slug,
            run_id: record.run_id,
            unread: record.read_at.is_none(),
            archived: record.archived_at.is_some(),
            created: When::new(record.created_at, now),
        })
        .collect();
    Ok(render(&NotificationsPage {
        chrome,
        show: show.as_str(),
        items,
        next_before,
    }))
}

/// Back to the list the form was posted from.
fn back(show: &str) -> axum::response::Response {
    let show = Show::parse(Some(show)).unwrap_or(Show::All);
    Redirect::to(&format!(
        "/notifications?show={}",
        encode_query(show.as_str())
    ))
    .into_response()
}

/// `POST /notifications/{id}/read` (form: `_csrf`, `show`).
pub(crate) async fn mark_read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    let form = fields(&body);
    form.check_csrf(&caller)?;
    let id = notification_id(&id)?;
    state
        .store
        .mark_notification_read(user_of(&caller), id, state.clock.now())
        .await
        .map_err(not_found(id))?;
    Ok(back(form.text("show")))
}

/// `POST /notifications/read-all` (form: `_csrf`, `show`).
pub(crate) async fn mark_all_read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> PageResult {
    let form = fields(&body);
    form.check_csrf(&caller)?;
    state
        .store
        .mark_all_notifications_read(user_of(&caller), state.clock.now())
        .await?;
    Ok(back(form.text("show")))
}

/// `POST /notifications/{id}/archive` (form: `_csrf`, `show`).
pub(crate) async fn archive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    let form = fields(&body);
    form.check_csrf(&caller)?;
    let id = notification_id(&id)?;
    state
        .store
        .archive_notification(user_of(&caller), id, state.clock.now())
        .await
        .map_err(not_found(id))?;
    Ok(back(form.text("show")))
}
