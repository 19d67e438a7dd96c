//! Accounts as a service: users created, deactivated and given new passwords, passwords
//! changed, sessions opened and closed, and the audit log written (the API, the login
//! page, the account page and the Users page call these).

use crate::accounts::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::auth::{Caller, SESSION_COOKIE, session_cookie};
use crate::service_error::ServiceError;
use crate::{AppState, generate_token};
use axum::http::{HeaderMap, HeaderValue};
use kiln_core::FieldError;
use kiln_core::token::hash_token;
use kiln_protocol::CreateUser;
use kiln_store::{StoreError, UserRecord};
use std::net::SocketAddr;

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

/// Checks an email address's form (the login form and user creation).
pub(crate) fn valid_email(email: &str) -> bool {
    email.len() <= MAX_EMAIL_LEN
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(crate) const MAX_EMAIL_LEN: usize = 254;

/// An email address, trimmed and lower-cased, or a refusal naming `email`.
pub(crate) fn checked_email(raw: &str) -> Result<String, ServiceError> {
    let email = raw.trim().to_ascii_lowercase();
    if !valid_email(&email) {
        return Err(
            FieldError::new("email", "must be an email address such as ada@example.com").into(),
        );
    }
    Ok(email)
}

/// A new password of an allowed length, or a refusal naming `field`.
pub(crate) fn checked_password(password: String, field: &str) -> Result<String, ServiceError> {
    if password.len() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(FieldError::new(
            field,
            format!("must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} bytes"),
        )
        .into());
    }
    Ok(password)
}

/// Checks the caller's current password (through the login limiter) and stores the new
/// one's hash (the API and the dashboard's account page).
pub(crate) async fn change_password(
    state: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    current: String,
    new: String,
) -> Result<(), ServiceError> {
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
        ServiceError::Forbidden("passwords belong to users; log in or use a personal token".into())
    })?;
    let user = state
        .store
        .user_by_id(user_id)
        .await?
        .ok_or_else(|| ServiceError::NotFound("user not found".into()))?;
    let address = Some(peer.ip());
    let Some(_in_flight) = state.logins.begin(&user.email, address) else {
        return Err(ServiceError::RateLimited(
            "too many failed or concurrent password checks for this account or address; wait 15 minutes".into(),
        ));
    };
    if !state
        .passwords
        .verify(current, user.password_hash.clone())
        .await?
    {
        state.logins.failed(&user.email, address);
        return Err(ServiceError::bad_request(
            "wrong_password",
            Some("current"),
            "current: that is not your current password; type it again",
        ));
    }
    state.logins.succeeded(&user.email);
    let hash = state
        .passwords
        .hash(new)
        .await
        .map_err(ServiceError::Unavailable)?;
    state.store.set_password(user.id, &hash).await?;
    audit(state, caller, "user.password", None, Some(&user.email)).await;
    Ok(())
}

/// Checks and creates a user (the API, and so `kiln user create`, and the Users page);
/// answers the user and the generated password, if one was generated.
pub(crate) async fn create_account(
    state: &AppState,
    caller: &Caller,
    account: CreateUser,
) -> Result<(UserRecord, Option<String>), ServiceError> {
    let email = checked_email(&account.email)?;
    let name = crate::services::projects::checked_name(&account.name, "name")?;
    let (password, generated) = match account.password {
        None => (generate_token(), true),
        Some(password) => (checked_password(password, "password")?, false),
    };
    let hash = state
        .passwords
        .hash(password.clone())
        .await
        .map_err(ServiceError::Unavailable)?;
    let user = state
        .store
        .create_user(
            &email,
            &name,
            Some(&hash),
            account.instance_admin.unwrap_or(false),
            state.clock.now(),
        )
        .await
        .map_err(|error| match error {
            StoreError::Conflict(message) => ServiceError::Conflict {
                code: "user_exists",
                message,
                field: Some("email".into()),
            },
            other => other.into(),
        })?;
    audit(state, caller, "user.create", None, Some(&email)).await;
    Ok((user, generated.then_some(password)))
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
) -> Result<UserRecord, ServiceError> {
    if disabled && caller.user_id == Some(user.id) {
        return Err(ServiceError::Conflict {
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

/// Sets another user's password (the API and the Users page) and ends their sessions,
/// so whoever was logged in as them must log in with the new one; their personal
/// tokens keep working. Answers the generated password, if one was generated. Your
/// own password is changed on the Account page, which asks for the current one.
pub(crate) async fn reset_account_password(
    state: &AppState,
    caller: &Caller,
    user: &UserRecord,
    password: Option<String>,
) -> Result<Option<String>, ServiceError> {
    if caller.user_id == Some(user.id) {
        return Err(ServiceError::Conflict {
            code: "own_account",
            message: "change your own password on the Account page (/account) or with POST /api/v1/me/password, which ask for the current one".into(),
            field: Some("user".into()),
        });
    }
    let (password, generated) = match password {
        None => (generate_token(), true),
        Some(password) => (checked_password(password, "password")?, false),
    };
    let hash = state
        .passwords
        .hash(password.clone())
        .await
        .map_err(ServiceError::Unavailable)?;
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
pub(crate) async fn end_access(
    state: &AppState,
    user_id: i64,
    tokens: bool,
) -> Result<(), ServiceError> {
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

/// How long a dashboard session lasts.
pub(crate) const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

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
) -> Result<OpenedSession, ServiceError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(FieldError::new(
            "password",
            format!("must be at most {MAX_PASSWORD_LEN} bytes"),
        )
        .into());
    }
    let address = Some(peer.ip());
    let Some(_in_flight) = state.logins.begin(email, address) else {
        return Err(ServiceError::RateLimited(
            "too many failed or concurrent logins for this account or address; wait 15 minutes"
                .into(),
        ));
    };
    let user = state.store.user_by_email(email).await?;
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let matches = state.passwords.verify(password, hash).await?;
    let user = match user {
        Some(user) if matches && user.disabled_at.is_none() => user,
        _ => {
            state.logins.failed(email, address);
            return Err(ServiceError::Unauthorized("wrong email or password".into()));
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
) -> Result<HeaderValue, ServiceError> {
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

pub(crate) fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

pub(crate) fn cookie(value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("kiln_session=; Path=/; Max-Age=0"))
}
