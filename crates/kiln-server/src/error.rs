//! `ApiError`: every failure a handler can return, mapped to a status code and the JSON
//! body `{"error":{"code","message","field"}}`. Database details never reach a response.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_core::FieldError;
use kiln_protocol::{ErrorBody, ErrorDetail};
use kiln_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    /// Well-formed, but naming something that does not exist or cannot be used (an
    /// unknown branch or commit, a project without a repository).
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
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
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

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            Self::BadRequest { code, field, .. } => {
                (StatusCode::BAD_REQUEST, code, field.as_deref())
            }
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            Self::Conflict { code, field, .. } => (StatusCode::CONFLICT, code, field.as_deref()),
            Self::Unprocessable { code, field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, field.as_deref())
            }
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            Self::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams", None),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
        }
    }
}

impl From<crate::accounts::PasswordsBusy> for ApiError {
    fn from(busy: crate::accounts::PasswordsBusy) -> Self {
        Self::Unavailable(busy.to_string())
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::invalid_field(error)
    }
}

/// What a caller is told when the database's disk is full.
pub(crate) const DISK_FULL: &str = "the server's disk is full, so the database cannot grow; \
     nothing was stored. Retry later: an operator must free space on the database's disk \
     (see docs/operations.md, \"Disk full\")";

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::Conflict(message) => Self::Conflict {
                code: "conflict",
                message,
                field: None,
            },
            StoreError::Busy(_) => {
                tracing::warn!(error = %error.chain(), "database busy");
                Self::Unavailable("the database is busy with other writes; retry shortly".into())
            }
            StoreError::Full(_) => {
                tracing::error!(error = %error.chain(), "database disk full");
                Self::Unavailable(DISK_FULL.into())
            }
            StoreError::Database(_) | StoreError::Unavailable(_) => {
                tracing::error!(error = %error.chain(), "database operation failed");
                Self::Unavailable(
                    "the database is unavailable; retry shortly (the server log has the cause)"
                        .into(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                field: field.map(str::to_owned),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            // A 503 can come before the request's body was read (the caller's token
            // looked up while the database is down), after which the server cannot keep
            // the connection; saying so keeps a client from reusing it (a retry on it
            // would meet a closed socket), and its retry may reach another replica.
            response
                .headers_mut()
                .insert("connection", axum::http::HeaderValue::from_static("close"));
        }
        if matches!(self, Self::RateLimited(_)) {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("60"));
        }
        response
    }
}
