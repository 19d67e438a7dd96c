//! Users: login and logout (session cookie + CSRF token), the caller's own account and
//! personal tokens, and user management for instance admins (create, list, deactivate,
//! reset a password: `create_account`, `set_account_disabled` and
//! `reset_account_password` serve the API, and so `kiln user`, and the Users page).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_core::FieldError;
use kiln_core::token::{TokenKind, hash_token};
use kiln_store::{NewToken, StoreError, UserRecord};
use serde_json::{Value, json};

use super::body::{JsonBody, required_string};
use super::members::user_by_path;
use crate::accounts::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, hash_password, verify_password};
use crate::auth::{Caller, SESSION_COOKIE, session_cookie};
use crate::error::ApiError;
use crate::wire::token_dto;
use crate::{AppState, generate_token};

/// How long a dashboard session lasts.
const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
const MAX_EMAIL_LEN: usize = 254;

pub(crate) fn user_json(user: &UserRecord) -> Value {
    json!({
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "instanceAdmin": user.instance_admin,
        "createdAt": user.created_at.to_rfc3339(),
        "disabled": user.disabled_at.is_some(),
    })
}

fn email_field(body: &Value) -> Result<String, ApiError> {
    checked_email(required_string(body, "email")?)
}

/// An email address, trimmed and lower-cased, or a refusal naming `email`.
fn checked_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_ascii_lowercase();
    if !valid_email(&email) {
        return Err(
            FieldError::new("email", "must be an email address such as ada@example.com").into(),
        );
    }
    Ok(email)
}

fn password_field(body: &Value, field: &str) -> Result<String, ApiError> {
    checked_password(required_string(body, field)?.to_owned(), field)
}

/// A new password of an allowed length, or a refusal naming `field`.
fn checked_password(password: String, field: &str) -> Result<String, ApiError> {
    if password.len() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(FieldError::new(
            field,
            format!("must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} bytes"),
        )
        .into());
    }
    Ok(password)
}

fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("kiln_session=; Path=/; Max-Age=0"))
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

/// A session just opened: its user, CSRF token and `Set-Cookie` value.
pub(crate) struct OpenedSession {
    pub user: UserRecord,
    pub csrf: String,
    pub cookie: HeaderValue,
}

/// Checks a password (with the login limiter) and opens a session: the API's login and
/// the dashboard's login form share it.
pub(crate) async fn open_session(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    email: &str,
    password: String,
) -> Result<OpenedSession, ApiError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(FieldError::new(
            "password",
            format!("must be at most {MAX_PASSWORD_LEN} bytes"),
        )
        .into());
    }
    let address = Some(peer.ip());
    let Some(_in_flight) = state.logins.begin(email, address) else {
        return Err(ApiError::RateLimited(
            "too many failed or concurrent logins for this account or address; wait 15 minutes"
                .into(),
        ));
    };
    let user = state.store.user_by_email(email).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let matches = verify_password(password, hash).await?;
    let user = match user {
        Some(user) if matches && user.disabled_at.is_none() => user,
        _ => {
            state.logins.failed(email, address);
            return Err(ApiError::Unauthorized("wrong email or password".into()));
        }
    };
    state.logins.succeeded(email);
    let secret = generate_token();
    let csrf = generate_token();
    let now = state.clock.now();
    state
        .store
        .create_session(
            user.id,
            &hash_token(&secret),
            &csrf,
            now,
            now.plus_ms(SESSION_TTL_MS),
        )
        .await?;
    Ok(OpenedSession {
        user,
        csrf,
        cookie: cookie(&secret, SESSION_TTL_MS / 1000, secure(state, headers)),
    })
}

/// Ends the session of the request's cookie, if any; answers the `Set-Cookie` value that
/// clears it.
pub(crate) async fn close_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<HeaderValue, ApiError> {
    if let Some(session) = session_cookie(headers)
        && let Some(record) = state.store.session_by_hash(&hash_token(session)).await?
    {
        state
            .store
            .revoke_session(record.id, state.clock.now())
            .await?;
    }
    state.authenticator.forget_all();
    Ok(cookie("", 0, secure(state, headers)))
}

/// Checks an email address's form (the login form and user creation).
pub(crate) fn valid_email(email: &str) -> bool {
    email.len() <= MAX_EMAIL_LEN
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
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

/// Checks the caller's current password (through the login limiter) and stores the new
/// one's hash (the API and the dashboard's account page).
pub(crate) async fn change_password(
    state: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    current: String,
    new: String,
) -> Result<(), ApiError> {
    if new.len() < MIN_PASSWORD_LEN || new.len() > MAX_PASSWORD_LEN {
        return Err(FieldError::new(
            "new",
            format!("must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} bytes"),
        )
        .into());
    }
    if current.len() > MAX_PASSWORD_LEN {
        return Err(FieldError::new(
            "current",
            format!("must be at most {MAX_PASSWORD_LEN} bytes"),
        )
        .into());
    }
    let user_id = caller.user_id.ok_or_else(|| {
        ApiError::Forbidden("passwords belong to users; log in or use a personal token".into())
    })?;
    let user = state
        .store
        .user_by_id(user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("user not found".into()))?;
    let address = Some(peer.ip());
    let Some(_in_flight) = state.logins.begin(&user.email, address) else {
        return Err(ApiError::RateLimited(
            "too many failed or concurrent password checks for this account or address; wait 15 minutes".into(),
        ));
    };
    if !verify_password(current, user.password_hash.clone()).await? {
        state.logins.failed(&user.email, address);
        return Err(ApiError::bad_request(
            "wrong_password",
            Some("current"),
            "current: that is not your current password; type it again",
        ));
    }
    state.logins.succeeded(&user.email);
    let hash = hash_password(new).await.map_err(ApiError::Unavailable)?;
    state.store.set_password(user.id, &hash).await?;
    audit(state, caller, "user.password", None, Some(&user.email)).await;
    Ok(())
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

/// A user to create: what `POST /api/v1/users`, `kiln user create` and the dashboard's
/// Users page send (checked by `create_account`).
#[derive(Debug)]
pub(crate) struct NewAccount {
    pub email: String,
    pub name: String,
    pub instance_admin: bool,
    /// `None`: generate a one-time password and answer it once.
    pub password: Option<String>,
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

/// Checks and creates a user (the API, and so `kiln user create`, and the Users page);
/// answers the user and the generated password, if one was generated.
pub(crate) async fn create_account(
    state: &AppState,
    caller: &Caller,
    account: NewAccount,
) -> Result<(UserRecord, Option<String>), ApiError> {
    let email = checked_email(&account.email)?;
    let name = account.name.trim().to_owned();
    if name.is_empty() || name.len() > kiln_core::limits::MAX_NAME_LEN {
        return Err(FieldError::new("name", "must be 1-200 characters").into());
    }
    let (password, generated) = match account.password {
        None => (generate_token(), true),
        Some(password) => (checked_password(password, "password")?, false),
    };
    let hash = hash_password(password.clone())
        .await
        .map_err(ApiError::Unavailable)?;
    let user = state
        .store
        .create_user(
            &email,
            &name,
            Some(&hash),
            account.instance_admin,
            state.clock.now(),
        )
        .await
        .map_err(|error| match error {
            StoreError::Conflict(message) => ApiError::Conflict {
                code: "user_exists",
                message,
                field: Some("email".into()),
            },
            other => other.into(),
        })?;
    audit(state, caller, "user.create", None, Some(&email)).await;
    Ok((user, generated.then_some(password)))
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

/// Deactivates or reactivates a user (the API and the Users page). Deactivating ends
/// their sessions and live streams at once; their personal tokens are refused from
/// then on (within the 5 s credential cache on other replicas). An admin cannot
/// deactivate their own account.
pub(crate) async fn set_account_disabled(
    state: &AppState,
    caller: &Caller,
    user: &UserRecord,
    disabled: bool,
) -> Result<UserRecord, ApiError> {
    if disabled && caller.user_id == Some(user.id) {
        return Err(ApiError::Conflict {
            code: "own_account",
            message: "you cannot deactivate your own account; ask another instance admin".into(),
            field: Some("user".into()),
        });
    }
    let now = state.clock.now();
    let updated = state
        .store
        .set_user_disabled(user.id, disabled.then_some(now))
        .await?;
    if disabled {
        end_access(state, user.id, true).await?;
    } else {
        state.authenticator.forget_all();
    }
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    audit(state, caller, action, None, Some(&user.email)).await;
    Ok(updated)
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

/// Sets another user's password (the API and the Users page) and ends their sessions,
/// so whoever was logged in as them must log in with the new one; their personal
/// tokens keep working. Answers the generated password, if one was generated. Your
/// own password is changed on the Account page, which asks for the current one.
pub(crate) async fn reset_account_password(
    state: &AppState,
    caller: &Caller,
    user: &UserRecord,
    password: Option<String>,
) -> Result<Option<String>, ApiError> {
    if caller.user_id == Some(user.id) {
        return Err(ApiError::Conflict {
            code: "own_account",
            message: "change your own password on the Account page (/account) or with POST /api/v1/me/password, which ask for the current one".into(),
            field: Some("user".into()),
        });
    }
    let (password, generated) = match password {
        None => (generate_token(), true),
        Some(password) => (checked_password(password, "password")?, false),
    };
    let hash = hash_password(password.clone())
        .await
        .map_err(ApiError::Unavailable)?;
    state.store.set_password(user.id, &hash).await?;
    end_access(state, user.id, false).await?;
    audit(
        state,
        caller,
        "user.password_reset",
        None,
        Some(&user.email),
    )
    .await;
    Ok(generated.then_some(password))
}

/// Ends a user's sessions and their live streams (and with `tokens`, the streams of
/// their personal tokens), and forgets cached credentials so this replica refuses them
/// at once.
async fn end_access(state: &AppState, user_id: i64, tokens: bool) -> Result<(), ApiError> {
    let now = state.clock.now();
    let sessions = state.store.revoke_user_sessions(user_id, now).await?;
    state.authenticator.forget_all();
    // A session's streams are keyed by minus its id (`Caller::token_id`).
    for session in sessions {
        state.streams.revoke(-session);
    }
    if tokens {
        for token in state.store.user_tokens(user_id).await? {
            state.streams.revoke(token.id);
        }
    }
    Ok(())
}

/// Records an admin action; a failure to record is logged, not fatal.
pub(crate) async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    project_id: Option<i64>,
    target: Option<&str>,
) {
    if let Err(error) = state
        .store
        .append_audit(
            &caller.actor(),
            action,
            project_id,
            target,
            None,
            state.clock.now(),
        )
        .await
    {
        tracing::error!(%error, action, "could not write the audit log");
    }
}
