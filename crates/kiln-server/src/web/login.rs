//! The login form and logout: a session cookie, opened the same way as by
//! `POST /api/v1/session` (same password check and login limiter).

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{ASSET_VERSION, PageResult, check_csrf, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::accounts::close_session;
use crate::services::accounts::open_session;
use crate::services::accounts::valid_email;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    email: String,
    error: Option<String>,
    asset_version: &'static str,
}

#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Only a plain local path is a place to go back to after logging in: it starts with
/// one `/`, holds visible ASCII only (no control character, space or backslash, which a
/// `Location` header cannot carry or a browser may read as another host), and is at
/// most 2,048 bytes; anything else goes to `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next.starts_with("//")
                && next.len() <= 2048
                && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            next.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// `GET /login`.
pub(crate) async fn form(Query(query): Query<NextQuery>) -> Response {
    render(&LoginPage {
        next: safe_next(query.next.as_deref()),
        email: String::new(),
        error: None,
        asset_version: ASSET_VERSION,
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login` (form): opens a session and goes to `next`, or shows the form again
/// with what went wrong.
pub(crate) async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let email = form.email.trim().to_ascii_lowercase();
    let outcome = if !valid_email(&email) {
        Err(ApiError::bad_request(
            "invalid_field",
            Some("email"),
            "enter the email address of your Kiln account, such as ada@example.com",
        ))
    } else {
        open_session(&state, peer, &headers, &email, form.password)
            .await
            .map_err(ApiError::from)
    };
    match outcome {
        Ok(session) => {
            let mut response = Redirect::to(&next).into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session.cookie);
            response
        }
        Err(error) => {
            let status = error.status();
            let message = match status {
                StatusCode::UNAUTHORIZED => "Wrong email or password.".to_owned(),
                _ => error.to_string(),
            };
            let page = render(&LoginPage {
                next,
                email,
                error: Some(message),
                asset_version: ASSET_VERSION,
            });
            (status, page).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default, rename = "_csrf")]
    csrf: String,
}

/// `POST /logout` (form with `_csrf`): ends the session and shows the login form.
pub(crate) async fn logout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    check_csrf(&caller, &form.csrf)?;
    let cleared = close_session(&state, &headers).await?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, cleared);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_is_a_local_path() {
        assert_eq!(safe_next(Some("/builds/abc")), "/builds/abc");
        assert_eq!(safe_next(Some("//evil.example/x")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some("/builds/x?a=1#L2")), "/builds/x?a=1#L2");
        // A Location header cannot carry these: they were a 500 before.
        for refused in ["/\n", "/\r", "/\u{1}", "/\u{7f}", "/a b", "/é", ""] {
            assert_eq!(safe_next(Some(refused)), "/", "{refused:?}");
        }
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(3000)))), "/");
    }
}
