//! Users: login and logout (session cookie + CSRF token), the caller's own account and
//! personal tokens, and user management for instance admins (create, list, deactivate,
//! reset a password: `create_account`, `set_account_disabled` and
//! `reset_account_password` serve the API, and so `kiln user`, and the Users page).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_core::FieldError;
use kiln_core::token::TokenKind;
use kiln_store::{NewToken, StoreError};
use serde_json::{Value, json};

use super::body::{JsonBody, required_string};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::accounts::{
    NewAccount, audit, change_password, checked_email, checked_password, close_session,
    create_account, open_session, reset_account_password, set_account_disabled, user_json,
};
use crate::services::members::user_by_path;
use crate::wire::token_dto;
use crate::{AppState, generate_token};

fn email_field(body: &Value) -> Result<String, ApiError> {
    Ok(checked_email(required_string(body, "email")?)?)
}

fn password_field(body: &Value, field: &str) -> Result<String, ApiError> {
    Ok(checked_password(
        required_string(body, field)?.to_owned(),
        field,
    )?)
}

/// `POST /api/v1/session` `{email, password}`: sets the session cookie; answers the user
/// and the CSRF token that unsafe requests must send in `X-CSRF-Token`.
pub(crate) async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let email = email_field(&body)?;
    let password = required_string(&body, "password")?.to_owned();
    let session = open_session(&state, peer, &headers, &email, password).await?;
    let mut response =
        Json(json!({"user": user_json(&session.user), "csrfToken": session.csrf})).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session.cookie);
    Ok(response)
}

/// `DELETE /api/v1/session`: ends the session of the cookie.
pub(crate) async fn logout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if caller.csrf_token.is_none() {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("Cookie"),
            "there is no session to end: logout is for dashboard sessions (revoke tokens instead)",
        ));
    }
    let cleared = close_session(&state, &headers).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, cleared);
    Ok(response)
}

/// `GET /api/v1/me`: the caller's account and roles.
pub(crate) async fn me(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let user_id = caller.user_id.unwrap_or_default();
    let user = state
        .store
        .user_by_id(user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("user not found".into()))?;
    let mut roles = Vec::new();
    for (project_id, role) in caller.roles.iter() {
        if let Some(project) = state.store.project_by_id(*project_id).await? {
            roles.push(json!({"project": project.slug, "role": role.as_str()}));
        }
    }
    Ok(Json(
        json!({"user": user_json(&user), "roles": roles, "csrfToken": caller.csrf_token}),
    ))
}

/// `POST /api/v1/me/password` `{current, new}`: changes the caller's own password
/// (204); the current one must be given (a wrong one counts as a failed login).
pub(crate) async fn change_my_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    let current = required_string(&body, "current")?.to_owned();
    let new = password_field(&body, "new")?;
    change_password(&state, &caller, peer, current, new).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/me/tokens` `{name}`: a personal token, shown once.
pub(crate) async fn create_my_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = required_string(&body, "name")?.trim().to_owned();
    if name.is_empty() || name.len() > kiln_core::limits::MAX_NAME_LEN {
        return Err(FieldError::new("name", "must be 1-200 characters").into());
    }
    let user_id = caller.user_id.unwrap_or_default();
    // A cap, so one user cannot multiply the per-token limits (live streams) with
    // tokens; not atomic with the insert, which at worst lets a race add one or two.
    let active = state
        .store
        .user_tokens(user_id)
        .await?
        .iter()
        .filter(|token| token.revoked_at.is_none())
        .count();
    if active >= kiln_core::limits::MAX_PERSONAL_TOKENS_PER_USER {
        return Err(ApiError::Conflict {
            code: "too_many_tokens",
            message: format!(
                "you already have {active} personal tokens, the limit; revoke one you no longer use (DELETE /api/v1/me/tokens/{{id}})"
            ),
            field: None,
        });
    }
    let token = generate_token();
    let record = state
        .store
        .create_user_token(
            user_id,
            &NewToken::new(&token, TokenKind::User, None, name, vec![]),
            state.clock.now(),
        )
        .await?;
    audit(
        &state,
        &caller,
        "user_token.create",
        None,
        Some(&record.name),
    )
    .await;
    let mut answer = serde_json::to_value(token_dto(&record, None)).unwrap_or_default();
    answer["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(answer)))
}

pub(crate) async fn list_my_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let tokens = state
        .store
        .user_tokens(caller.user_id.unwrap_or_default())
        .await?;
    Ok(Json(
        json!({"tokens": tokens.iter().map(|t| token_dto(t, None)).collect::<Vec<_>>()}),
    ))
}

pub(crate) async fn revoke_my_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(token_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let token_id: i64 = token_id.parse().map_err(|_| {
        ApiError::bad_request("invalid_field", Some("id"), "id: must be a token id")
    })?;
    let record = state
        .store
        .revoke_user_token(
            caller.user_id.unwrap_or_default(),
            token_id,
            state.clock.now(),
        )
        .await
        .map_err(|error| match error {
            StoreError::NotFound(_) => ApiError::NotFound(format!("token {token_id} not found")),
            other => other.into(),
        })?;
    state.authenticator.forget_all();
    state.streams.revoke(record.id);
    audit(
        &state,
        &caller,
        "user_token.revoke",
        None,
        Some(&record.name),
    )
    .await;
    Ok(Json(
        serde_json::to_value(token_dto(&record, None)).unwrap_or_default(),
    ))
}

/// `POST /api/v1/users` `{email, name, password?, instanceAdmin?}` (instance admin): a
/// new user; without `password`, a one-time password is generated and answered once.
pub(crate) async fn create_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let instance_admin = match body.get("instanceAdmin") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(FieldError::new("instanceAdmin", "must be true or false").into()),
    };
    let account = NewAccount {
        email: required_string(&body, "email")?.to_owned(),
        name: required_string(&body, "name")?.to_owned(),
        instance_admin,
        password: match body.get("password") {
            None | Some(Value::Null) => None,
            Some(_) => Some(required_string(&body, "password")?.to_owned()),
        },
    };
    let (user, generated) = create_account(&state, &caller, account).await?;
    let mut answer = json!({"user": user_json(&user)});
    if let Some(password) = generated {
        answer["password"] = json!(password);
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

pub(crate) async fn list_users(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let users = state.store.list_users().await?;
    Ok(Json(
        json!({"users": users.iter().map(user_json).collect::<Vec<_>>()}),
    ))
}

/// `POST /api/v1/users/{user}/disable` (instance admin): the user can no longer log in
/// and their sessions, personal tokens and live streams stop working; `{user}` is an
/// id or an email. Answers `{"user"}`.
pub(crate) async fn disable_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = user_by_path(&state, &user).await?;
    let user = set_account_disabled(&state, &caller, &user, true).await?;
    Ok(Json(json!({"user": user_json(&user)})))
}

/// `POST /api/v1/users/{user}/enable` (instance admin): undoes a deactivation.
pub(crate) async fn enable_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = user_by_path(&state, &user).await?;
    let user = set_account_disabled(&state, &caller, &user, false).await?;
    Ok(Json(json!({"user": user_json(&user)})))
}

/// `POST /api/v1/users/{user}/password` `{password?}` (instance admin): sets a user's
/// password (without `password`, a one-time one is generated and answered once) and
/// ends their sessions. Answers `{"user", "password"?}`.
pub(crate) async fn reset_user_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let user = user_by_path(&state, &user).await?;
    // An empty body generates a password.
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        super::body::parse_json(&body)?
    };
    let password = match body.get("password") {
        None | Some(Value::Null) => None,
        Some(_) => Some(required_string(&body, "password")?.to_owned()),
    };
    let generated = reset_account_password(&state, &caller, &user, password).await?;
    let mut answer = json!({"user": user_json(&user)});
    if let Some(password) = generated {
        answer["password"] = json!(password);
    }
    Ok(Json(answer))
}
