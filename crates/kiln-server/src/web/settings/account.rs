//! `/account`: who you are, your roles, and the form that changes your password.

use std::net::SocketAddr;

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect};

use super::query_notice;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::accounts::change_password;
use crate::web::form::{fields, invalid};
use crate::web::{Chrome, PageError, PageResult, render};

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    error: Option<String>,
    roles: Vec<(String, String)>,
}

async fn account_response(
    state: &AppState,
    caller: &Caller,
    notice: Option<&'static str>,
    refusal: Option<ApiError>,
) -> PageResult {
    let chrome = Chrome::load(state, caller, "account", "Account").await?;
    let mut roles = Vec::new();
    for (project_id, role) in caller.roles.iter() {
        if let Some(project) = state.store.project_by_id(*project_id).await? {
            roles.push((project.slug, role.as_str().to_owned()));
        }
    }
    roles.sort();
    let status = refusal
        .as_ref()
        .map_or(StatusCode::OK, |refusal| refusal.status());
    let page = AccountPage {
        chrome,
        notice,
        error: refusal.map(|refusal| refusal.to_string()),
        roles,
    };
    Ok((status, render(&page)).into_response())
}

/// `GET /account?notice=`.
pub(crate) async fn account_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> PageResult {
    account_response(&state, &caller, query_notice(&uri), None).await
}

/// `POST /account/password` (form: `current`, `new`, `confirm`).
pub(crate) async fn change_password_form(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> PageResult {
    let form = fields(&body);
    form.check_csrf(&caller)?;
    if caller.user_id.is_none() {
        return Err(invalid("current", "log in with your password to change it"));
    }
    let outcome = if form.text("new") != form.text("confirm") {
        Err(ApiError::bad_request(
            "invalid_field",
            Some("confirm"),
            "confirm: the two new passwords differ; type the same one twice",
        ))
    } else {
        change_password(
            &state,
            &caller,
            peer,
            form.text("current").to_owned(),
            form.text("new").to_owned(),
        )
        .await
        .map_err(ApiError::from)
    };
    match outcome {
        Ok(()) => Ok(Redirect::to("/account?notice=password-changed").into_response()),
        Err(error) if error.status().is_server_error() => Err(PageError(error)),
        Err(error) => account_response(&state, &caller, None, Some(error)).await,
    }
}
