//! The Users page (`/users`, instance admins): every user with their role and state,
//! and the forms to create a user, deactivate or reactivate one and reset a password.
//!
//! Each form calls the function its JSON API route calls (`api::users::create_account`,
//! `set_account_disabled`, `reset_account_password` — the API `kiln user` uses), so
//! checks, the store and the audit log are the API's. A generated password is shown
//! once, on the page that answers the form (`no-store`). A refused form shows the page
//! again with the reason and the refusal's status.

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect};

use super::form::{FormFields, fields};
use super::settings::SecretPage;
use super::when::When;
use super::{Chrome, PageError, PageResult, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::accounts::create_account;
use crate::services::accounts::reset_account_password;
use crate::services::accounts::set_account_disabled;
use crate::services::members::user_by_path;
use kiln_protocol::CreateUser;

#[derive(Debug)]
struct UserRow {
    id: i64,
    email: String,
    name: String,
    instance_admin: bool,
    created: When,
    deactivated: Option<When>,
    /// The caller's own row: no buttons (you cannot lock yourself out here).
    is_you: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    error: Option<String>,
    users: Vec<UserRow>,
    /// The create form's fields, kept when it was refused.
    form_email: String,
    form_name: String,
}

/// What a completed form says (a fixed list, so nothing from the query is echoed).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "user-created" => "User created with the password you chose.",
        "user-deactivated" => {
            "User deactivated: logged out everywhere; their logins and tokens are refused."
        }
        "user-reactivated" => "User reactivated: they can log in again.",
        _ => return None,
    })
}

/// The page, with a notice or a refusal (and its status); a refused create form keeps
/// what was typed (but the password).
async fn users_response(
    state: &AppState,
    caller: &Caller,
    notice: Option<&'static str>,
    refusal: Option<ApiError>,
    form: Option<&FormFields>,
) -> PageResult {
    let chrome = Chrome::load(state, caller, "users", "Users").await?;
    let now = state.clock.now();
    let users = state
        .store
        .list_users()
        .await?
        .into_iter()
        .map(|user| UserRow {
            is_you: caller.user_id == Some(user.id),
            id: user.id,
            email: user.email,
            name: user.name,
            instance_admin: user.instance_admin,
            created: When::new(user.created_at, now),
            deactivated: user.disabled_at.map(|at| When::new(at, now)),
        })
        .collect();
    let status = refusal
        .as_ref()
        .map_or(StatusCode::OK, |refusal| refusal.status());
    let page = UsersPage {
        chrome,
        notice,
        error: refusal.map(|refusal| refusal.to_string()),
        users,
        form_email: form.map(|f| f.text("email").to_owned()).unwrap_or_default(),
        form_name: form.map(|f| f.text("name").to_owned()).unwrap_or_default(),
    };
    Ok((status, render(&page)).into_response())
}

/// A form's outcome: done → where to go; refused → the page again with the reason
/// (server failures stay error pages).
async fn after_form(
    state: &AppState,
    caller: &Caller,
    outcome: Result<axum::response::Response, ApiError>,
    form: Option<&FormFields>,
) -> PageResult {
    match outcome {
        Ok(response) => Ok(response),
        Err(error) if error.status().is_server_error() => Err(PageError(error)),
        Err(error) => users_response(state, caller, None, Some(error), form).await,
    }
}

/// `GET /users?notice=`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> PageResult {
    let notice = FormFields::parse(uri.query().unwrap_or_default().as_bytes())
        .get("notice")
        .and_then(notice_text);
    users_response(&state, &caller, notice, None, None).await
}

/// A generated password, shown once.
async fn password_page(
    state: &AppState,
    caller: &Caller,
    heading: String,
    email: &str,
    password: String,
    status: StatusCode,
) -> Result<axum::response::Response, ApiError> {
    let chrome = Chrome::load(state, caller, "users", "New password")
        .await
        .map_err(|error| error.0)?;
    let page = SecretPage {
        chrome,
        heading,
        what: "password",
        secret: password,
        usage: format!("log in at /login as {email}, then change it on the Account page"),
        back: "/users".into(),
        back_label: "Done: back to the users",
    };
    Ok((status, render(&page)).into_response())
}

/// `POST /users` (form: `email`, `name`, `password` (empty: generated), `instance_admin`).
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> PageResult {
    let form = fields(&body);
    form.check_csrf(&caller)?;
    let account = CreateUser {
        email: form.text("email").to_owned(),
        name: form.text("name").to_owned(),
        instance_admin: Some(form.checked("instance_admin")),
        password: Some(form.text("password").to_owned()).filter(|p| !p.is_empty()),
    };
    let outcome = async {
        let (user, generated) = create_account(&state, &caller, account).await?;
        match generated {
            Some(password) => {
                password_page(
                    &state,
                    &caller,
                    format!("User created: {}", user.email),
                    &user.email,
                    password,
                    StatusCode::CREATED,
                )
                .await
            }
            None => Ok(Redirect::to("/users?notice=user-created").into_response()),
        }
    }
    .await;
    after_form(&state, &caller, outcome, Some(&form)).await
}

/// `POST /users/{user}/deactivate` (`{user}`: id or email).
pub(crate) async fn deactivate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    body: Bytes,
) -> PageResult {
    set_disabled(state, caller, user, body, true).await
}

/// `POST /users/{user}/reactivate`.
pub(crate) async fn reactivate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    body: Bytes,
) -> PageResult {
    set_disabled(state, caller, user, body, false).await
}

async fn set_disabled(
    state: AppState,
    caller: Caller,
    user: String,
    body: Bytes,
    disabled: bool,
) -> PageResult {
    fields(&body).check_csrf(&caller)?;
    let outcome = async {
        let user = user_by_path(&state, &user).await?;
        set_account_disabled(&state, &caller, &user, disabled).await?;
        let notice = if disabled {
            "user-deactivated"
        } else {
            "user-reactivated"
        };
        Ok(Redirect::to(&format!("/users?notice={notice}")).into_response())
    }
    .await;
    after_form(&state, &caller, outcome, None).await
}

/// `POST /users/{user}/reset-password`: a new one-time password, shown once.
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    body: Bytes,
) -> PageResult {
    fields(&body).check_csrf(&caller)?;
    let outcome = async {
        let user = user_by_path(&state, &user).await?;
        let password = reset_account_password(&state, &caller, &user, None)
            .await?
            .unwrap_or_default();
        password_page(
            &state,
            &caller,
            format!("New password for {}", user.email),
            &user.email,
            password,
            StatusCode::OK,
        )
        .await
    }
    .await;
    after_form(&state, &caller, outcome, None).await
}
