//! Path parameters read with Kiln's error shape: axum's own `Path` answers a parameter it
//! cannot read (an id that is not a number, bytes that are not UTF-8) in plain text; this
//! one answers 400 `invalid_field` naming the parameter, like every other refusal.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A route's path parameters as `T` (a `String`, an `i64`, a tuple of them).
pub(crate) struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                // A tuple's failure names the parameter by position; the route names it.
                let names: Vec<String> = RawPathParams::from_request_parts(parts, state)
                    .await
                    .map(|params| params.iter().map(|(name, _)| name.to_owned()).collect())
                    .unwrap_or_default();
                Err(refusal(rejection, &names))
            }
        }
    }
}

fn refusal(rejection: PathRejection, names: &[String]) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(failure) = rejection else {
        // Only a route without parameters reaches this: a bug in the route table, not the
        // caller's; still answered in Kiln's shape.
        return ApiError::bad_request("invalid_url", Some("url"), rejection.body_text());
    };
    match failure.into_kind() {
        ErrorKind::ParseErrorAtKey {
            key,
            value,
            expected_type,
        } => unreadable(&key, &value, expected_type),
        ErrorKind::ParseErrorAtIndex {
            index,
            value,
            expected_type,
        } => {
            let name = names.get(index).map_or("url", String::as_str);
            unreadable(name, &value, expected_type)
        }
        // One parameter read as one value.
        ErrorKind::ParseError {
            value,
            expected_type,
        } => {
            let name = names.first().map_or("url", String::as_str);
            unreadable(name, &value, expected_type)
        }
        ErrorKind::InvalidUtf8InPathParam { key } => ApiError::bad_request(
            "invalid_field",
            Some(&key),
            format!("{key}: the URL's percent-encoding is not UTF-8 text"),
        ),
        other => ApiError::bad_request("invalid_url", Some("url"), other.to_string()),
    }
}

fn unreadable(name: &str, value: &str, expected_type: &str) -> ApiError {
    let expected = if expected_type.starts_with('i') || expected_type.starts_with('u') {
        "a whole number"
    } else {
        expected_type
    };
    ApiError::bad_request(
        "invalid_field",
        Some(name),
        format!("{name}: must be {expected}, not '{value}'"),
    )
}
