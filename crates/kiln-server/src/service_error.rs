//! `ServiceError`: what the services and the scheduler refuse and why, in Kiln's words,
//! independent of HTTP. The JSON API maps it to a status and `{"error":{…}}`
//! (`From<ServiceError> for ApiError`, in `api/mod.rs`) and the dashboard to a page with
//! the message; a store error keeps its cause until that mapping logs it.

use kiln_core::FieldError;
use kiln_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A value the caller gave is malformed; `field` names it.
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// No live credential.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may see it but not do this; the message names what is missing.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what is stored (an ended build, your own account).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// Well-formed, but naming something that does not exist or cannot be used.
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// Too many attempts (failed logins); wait.
    #[error("{0}")]
    RateLimited(String),
    /// Kiln cannot do it now; trying again may work.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed; its cause is logged where this is mapped, never shown.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn invalid_field(error: FieldError) -> Self {
        Self::BadRequest {
            code: "invalid_field",
            message: error.to_string(),
            field: Some(error.field),
        }
    }

    pub fn bad_request(
        code: &'static str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }
}

/// The refusal for a project the caller may see but not change: names the role missing.
pub(crate) fn missing_role(caller: &crate::auth::Caller, needed: kiln_core::Role) -> ServiceError {
    ServiceError::Forbidden(format!(
        "this needs the {needed} role in the project (or an instance admin){}",
        match caller.kind {
            kiln_core::token::TokenKind::Project => "; project tokens cannot do it",
            _ => "",
        }
    ))
}

impl From<FieldError> for ServiceError {
    fn from(error: FieldError) -> Self {
        Self::invalid_field(error)
    }
}

impl From<crate::accounts::PasswordsBusy> for ServiceError {
    fn from(busy: crate::accounts::PasswordsBusy) -> Self {
        Self::Unavailable(busy.to_string())
    }
}
