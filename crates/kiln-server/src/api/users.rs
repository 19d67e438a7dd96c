//! Users: login and logout (session cookie + CSRF token), the caller's own account and
//! personal tokens, and user management for instance admins (create, list, deactivate,
//! reset a password: `create_account`, `set_account_disabled` and
//! `reset_account_password` serve the API, and so `kiln user`, and the Users page).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};

use super::path::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_core::token::TokenKind;
use kiln_protocol::{
    ChangePassword, CreateNamedToken, CreateUser, CreatedToken, Login, Me, ProjectRole,
    ResetPassword, Session, TokenDto, TokenList, UserAnswer, UserList,
};
use kiln_store::{NewToken, StoreError};

use super::body::{JsonBody, parse};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::accounts::{
    audit, change_password, checked_email, checked_password, close_session, create_account,
    open_session, reset_account_password, set_account_disabled,
};
use crate::services::members::user_by_path;
use crate::services::projects::checked_name;
use crate::wire::{token_dto, user_dto};
use crate::{AppState, generate_token};

/// `POST /api/v1/session` `{email, password}`: sets the session cookie; answers the user
/// and the CSRF token that unsafe requests must send in `X-CSRF-Token`.
pub(crate) async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let Login { email, password } = parse(body)?;
    let email = checked_email(&email)?;
    let session = open_session(&state, peer, &headers, &email, password).await?;
    let mut response = Json(Session {
        user: user_dto(&session.user),
        csrf_token: session.csrf,
    })
    .into_response();
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
) -> Result<Json<Me>, ApiError> {
    let user_id = caller.user_id.unwrap_or_default();
    let user = state
        .store
        .user_by_id(user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("user not found".into()))?;
    let mut roles = Vec::new();
    for (project_id, role) in caller.roles.iter() {
        if let Some(project) = state.store.project_by_id(*project_id).await? {
            roles.push(ProjectRole {
                project: project.slug,
                role: role.as_str().to_owned(),
            });
        }
    }
    Ok(Json(Me {
        user: user_dto(&user),
        roles,
        csrf_token: caller.csrf_token.clone(),
    }))
}

/// `POST /api/v1/me/password` `{current, new}`: changes the caller's own password
/// (204); the current one must be given (a wrong one counts as a failed login).
pub(crate) async fn change_my_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    let ChangePassword { current, new } = parse(body)?;
    let new = checked_password(new, "new")?;
    change_password(&state, &caller, peer, current, new).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/me/tokens` `{name}`: a personal token, shown once.
pub(crate) async fn create_my_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let request: CreateNamedToken = parse(body)?;
    let name = checked_name(&request.name, "name")?;
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
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            info: token_dto(&record, None),
        }),
    ))
}

pub(crate) async fn list_my_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state
        .store
        .user_tokens(caller.user_id.unwrap_or_default())
        .await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(|t| token_dto(t, None)).collect(),
    }))
}

pub(crate) async fn revoke_my_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(token_id): Path<String>,
) -> Result<Json<TokenDto>, ApiError> {
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
    Ok(Json(token_dto(&record, None)))
}

/// `POST /api/v1/users` `{email, name, password?, instanceAdmin?}` (instance admin): a
/// new user; without `password`, a one-time password is generated and answered once.
pub(crate) async fn create_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<UserAnswer>), ApiError> {
    let request: CreateUser = parse(body)?;
    let (user, password) = create_account(&state, &caller, request).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserAnswer {
            user: user_dto(&user),
            password,
        }),
    ))
}

pub(crate) async fn list_users(State(state): State<AppState>) -> Result<Json<UserList>, ApiError> {
    let users = state.store.list_users().await?;
    Ok(Json(UserList {
        users: users.iter().map(user_dto).collect(),
    }))
}

/// `POST /api/v1/users/{user}/disable` (instance admin): the user can no longer log in
/// and their sessions, personal tokens and live streams stop working; `{user}` is an
/// id or an email. Answers `{"user"}`.
pub(crate) async fn disable_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Result<Json<UserAnswer>, ApiError> {
    set_disabled(state, caller, user, true).await
}

/// `POST /api/v1/users/{user}/enable` (instance admin): undoes a deactivation.
pub(crate) async fn enable_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Result<Json<UserAnswer>, ApiError> {
    set_disabled(state, caller, user, false).await
}

async fn set_disabled(
    state: AppState,
    caller: Caller,
    user: String,
    disabled: bool,
) -> Result<Json<UserAnswer>, ApiError> {
    let user = user_by_path(&state, &user).await?;
    let user = set_account_disabled(&state, &caller, &user, disabled).await?;
    Ok(Json(UserAnswer {
        user: user_dto(&user),
        password: None,
    }))
}

/// `POST /api/v1/users/{user}/password` `{password?}` (instance admin): sets a user's
/// password (without `password`, a one-time one is generated and answered once) and
/// ends their sessions. Answers `{"user", "password"?}`.
pub(crate) async fn reset_user_password(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    // At most MAX_BODY_BYTES; a larger body is 413 with the error body.
    super::body::RawBody(body): super::body::RawBody<{ kiln_core::limits::MAX_BODY_BYTES }>,
) -> Result<Json<UserAnswer>, ApiError> {
    let user = user_by_path(&state, &user).await?;
    // An empty body generates a password.
    let request: ResetPassword = if body.iter().all(u8::is_ascii_whitespace) {
        ResetPassword::default()
    } else {
        parse(super::body::parse_json(&body)?)?
    };
    let password = reset_account_password(&state, &caller, &user, request.password).await?;
    Ok(Json(UserAnswer {
        user: user_dto(&user),
        password,
    }))
}
