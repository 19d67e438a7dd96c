//! The dashboard: server-rendered pages (askama templates in `templates/`, compiled into
//! the binary), the embedded assets, and the form actions behind its buttons.
//!
//! Every page is a route in the one route table (`routes::route_list`) with
//! `Access::Page` (or `Access::PageInstanceAdmin` for the Users page): the guard
//! resolves the caller as for `Access::User`, but sends an anonymous browser to
//! `/login?next=…` and renders refusals as HTML. Pages read fine
//! without JavaScript; `assets/kiln.js` makes them live with `EventSource` on the API's
//! streams. Forms post with a hidden `_csrf` field (checked by `check_csrf`), scripts
//! call the JSON API with `X-CSRF-Token` from `<meta name="csrf-token">`.

mod analytics;
mod ansi;
mod assets;
mod build;
mod charts;
mod deployments;
mod fleet;
mod form;
mod login;
mod notifications;
mod overview;
mod public_status;
mod settings;
mod users;
mod view;
mod when;

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};

use crate::AppState;
use crate::auth::{Access, Caller};
use crate::error::ApiError;

pub(crate) use assets::ASSET_VERSION;
pub(crate) use build::LogLineCache;

/// The dashboard's routes, merged into the API's route table.
pub(crate) fn route_list() -> Vec<(&'static str, &'static str, Access, MethodRouter<AppState>)> {
    vec![
        ("GET", "/", Access::Page, get(overview::page)),
        ("GET", "/login", Access::Public, get(login::form)),
        ("POST", "/login", Access::Public, post(login::submit)),
        ("POST", "/logout", Access::Page, post(login::logout)),
        ("GET", "/assets/{name}", Access::Public, get(assets::serve)),
        // Public status of projects whose admins published it (404 for the others).
        (
            "GET",
            "/status/{slug}",
            Access::Public,
            get(public_status::page),
        ),
        (
            "GET",
            "/badge/{slug}/{*branch}",
            Access::Public,
            get(public_status::badge),
        ),
        // Builds: the overview's Build form, the build page, its buttons, raw logs.
        (
            "POST",
            "/projects/{slug}/build",
            Access::Page,
            post(overview::trigger),
        ),
        ("GET", "/builds/{run_id}", Access::Page, get(build::page)),
        (
            "POST",
            "/builds/{run_id}/cancel",
            Access::Page,
            post(build::cancel),
        ),
        (
            "POST",
            "/builds/{run_id}/retry",
            Access::Page,
            post(build::retry),
        ),
        (
            "GET",
            "/builds/{run_id}/jobs/{job}/raw",
            Access::Page,
            get(build::raw_log),
        ),
        // Agents, queue, notifications, projects and their settings, the account.
        ("GET", "/agents", Access::Page, get(fleet::agents_page)),
        ("GET", "/queue", Access::Page, get(fleet::queue_page)),
        (
            "GET",
            "/notifications",
            Access::Page,
            get(notifications::page),
        ),
        (
            "POST",
            "/notifications/{id}/read",
            Access::Page,
            post(notifications::mark_read),
        ),
        (
            "POST",
            "/notifications/read-all",
            Access::Page,
            post(notifications::mark_all_read),
        ),
        (
            "POST",
            "/notifications/{id}/archive",
            Access::Page,
            post(notifications::archive),
        ),
        (
            "GET",
            "/projects",
            Access::Page,
            get(settings::projects::projects_page),
        ),
        (
            "GET",
            "/projects/{slug}/analytics",
            Access::Page,
            get(analytics::page),
        ),
        // Deployments: environments, history, the Deploy, Roll back and Cancel forms.
        (
            "GET",
            "/projects/{slug}/deployments",
            Access::Page,
            get(deployments::page),
        ),
        (
            "POST",
            "/projects/{slug}/deploy",
            Access::Page,
            post(deployments::deploy),
        ),
        (
            "POST",
            "/projects/{slug}/rollback",
            Access::Page,
            post(deployments::rollback),
        ),
        (
            "POST",
            "/projects/{slug}/deployments/{id}/cancel",
            Access::Page,
            post(deployments::cancel),
        ),
        (
            "GET",
            "/projects/{slug}/settings",
            Access::Page,
            get(settings::page),
        ),
        (
            "POST",
            "/projects/{slug}/settings/tokens",
            Access::Page,
            post(settings::tokens::create_token),
        ),
        (
            "POST",
            "/projects/{slug}/settings/tokens/{id}/revoke",
            Access::Page,
            post(settings::tokens::revoke_token),
        ),
        (
            "POST",
            "/projects/{slug}/settings/members",
            Access::Page,
            post(settings::members::add_member),
        ),
        (
            "POST",
            "/projects/{slug}/settings/members/{user}/role",
            Access::Page,
            post(settings::members::set_role),
        ),
        (
            "POST",
            "/projects/{slug}/settings/members/{user}/remove",
            Access::Page,
            post(settings::members::remove_member),
        ),
        (
            "POST",
            "/projects/{slug}/settings/branches",
            Access::Page,
            post(settings::repo::add_branch),
        ),
        (
            "POST",
            "/projects/{slug}/settings/branches/delete",
            Access::Page,
            post(settings::repo::delete_branch),
        ),
        (
            "POST",
            "/projects/{slug}/settings/repo",
            Access::Page,
            post(settings::repo::set_repo),
        ),
        (
            "POST",
            "/projects/{slug}/settings/public-status",
            Access::Page,
            post(settings::public_status::set),
        ),
        (
            "POST",
            "/projects/{slug}/settings/webhooks",
            Access::Page,
            post(settings::webhooks::create_webhook),
        ),
        (
            "GET",
            "/projects/{slug}/settings/webhooks/{id}",
            Access::Page,
            get(settings::webhooks::webhook_page),
        ),
        (
            "POST",
            "/projects/{slug}/settings/webhooks/{id}/active",
            Access::Page,
            post(settings::webhooks::set_webhook_active),
        ),
        (
            "POST",
            "/projects/{slug}/settings/webhooks/{id}/rotate-secret",
            Access::Page,
            post(settings::webhooks::rotate_webhook_secret),
        ),
        (
            "POST",
            "/projects/{slug}/settings/webhooks/{id}/test",
            Access::Page,
            post(settings::webhooks::test_webhook),
        ),
        (
            "POST",
            "/projects/{slug}/settings/webhooks/{id}/delete",
            Access::Page,
            post(settings::webhooks::delete_webhook),
        ),
        (
            "POST",
            "/projects/{slug}/settings/webhooks/{id}/deliveries/{delivery}/redeliver",
            Access::Page,
            post(settings::webhooks::redeliver),
        ),
        // Users (instance admins).
        ("GET", "/users", Access::PageInstanceAdmin, get(users::page)),
        (
            "POST",
            "/users",
            Access::PageInstanceAdmin,
            post(users::create),
        ),
        (
            "POST",
            "/users/{user}/deactivate",
            Access::PageInstanceAdmin,
            post(users::deactivate),
        ),
        (
            "POST",
            "/users/{user}/reactivate",
            Access::PageInstanceAdmin,
            post(users::reactivate),
        ),
        (
            "POST",
            "/users/{user}/reset-password",
            Access::PageInstanceAdmin,
            post(users::reset_password),
        ),
        (
            "GET",
            "/account",
            Access::Page,
            get(settings::account::account_page),
        ),
        (
            "POST",
            "/account/password",
            Access::Page,
            post(settings::account::change_password_form),
        ),
    ]
}

/// What every page's frame shows: who is signed in, the unread count, the active tab.
#[derive(Clone, Debug)]
pub(crate) struct Chrome {
    pub user_name: String,
    pub user_email: String,
    pub instance_admin: bool,
    /// Echoed by forms (`_csrf`) and scripts (`X-CSRF-Token`); empty for token callers.
    pub csrf: String,
    pub unread: i64,
    /// The nav entry to highlight: "builds", "agents", "queue", "notifications",
    /// "projects", "users", "account".
    pub nav: &'static str,
    pub title: String,
    pub asset_version: &'static str,
}

impl Chrome {
    /// Loads the frame for a signed-in caller (pages are `Access::Page`, so there is one).
    pub async fn load(
        state: &AppState,
        caller: &Caller,
        nav: &'static str,
        title: impl Into<String>,
    ) -> Result<Chrome, PageError> {
        let user_id = caller.user_id.unwrap_or_default();
        let user = state.store.user_by_id(user_id).await?;
        let unread = state.store.notification_stats(user_id).await?.unread;
        Ok(Chrome {
            user_name: user.as_ref().map(|u| u.name.clone()).unwrap_or_default(),
            user_email: user.map(|u| u.email).unwrap_or_default(),
            instance_admin: caller.instance_admin,
            csrf: caller.csrf_token.clone().unwrap_or_default(),
            unread,
            nav,
            title: title.into(),
            asset_version: ASSET_VERSION,
        })
    }
}

/// A page handler's failure: an `ApiError` shown as an HTML page with its status.
#[derive(Debug)]
pub(crate) struct PageError(pub ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(error: E) -> Self {
        PageError(error.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: String,
    asset_version: &'static str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message: self.0.to_string(),
            asset_version: ASSET_VERSION,
        };
        (status, render(&page)).into_response()
    }
}

/// A rendered page.
pub(crate) type PageResult = Result<Response, PageError>;

/// Renders a template; a template error (a bug) is logged and shown as a plain 500.
pub(crate) fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "a dashboard template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered; see the server log",
            )
                .into_response()
        }
    }
}

/// Where the guard sends an anonymous browser: the login page, then back.
pub(crate) fn to_login(path_and_query: &str) -> Response {
    let next = if path_and_query.starts_with('/') && !path_and_query.starts_with("//") {
        path_and_query
    } else {
        "/"
    };
    Redirect::to(&format!("/login?next={}", encode_query(next))).into_response()
}

/// Form posts prove they come from Kiln's own pages by the session's CSRF token in a
/// hidden `_csrf` field (the API's routes take it in `X-CSRF-Token` instead).
pub(crate) fn check_csrf(caller: &Caller, presented: &str) -> Result<(), PageError> {
    match &caller.csrf_token {
        Some(expected) if !constant_time_eq(expected.as_bytes(), presented.as_bytes()) => {
            Err(PageError(ApiError::Forbidden(
                "this form is out of date (its security token does not match your session): reload the page and try again"
                    .into(),
            )))
        }
        _ => Ok(()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-encodes a query value.
pub(crate) fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_redirects_only_to_local_paths() {
        let location = |target: &str| {
            to_login(target).headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(location("/builds/x?a=1"), "/login?next=/builds/x%3Fa%3D1");
        assert_eq!(location("//evil.example"), "/login?next=/");
        assert_eq!(location("https://evil.example"), "/login?next=/");
    }
}
