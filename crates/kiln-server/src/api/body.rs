//! Request bodies and query strings parsed with Kiln's limits and error shape, instead
//! of axum's plain-text rejections.

use std::collections::HashMap;

use axum::extract::{FromRequest, Request};
use kiln_core::limits::MAX_BODY_BYTES;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON body of at most `MAX_BODY_BYTES`.
pub(crate) struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                ApiError::PayloadTooLarge(format!(
                    "the body is larger than {MAX_BODY_BYTES} bytes (1 MiB); send fewer events per request"
                ))
            })?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_json",
                Some("body"),
                "the body is empty; send a JSON object or array",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| {
                ApiError::bad_request(
                    "invalid_json",
                    Some("body"),
                    format!("the body is not valid JSON: {error}"),
                )
            })
    }
}

/// A required string member of a JSON object body.
pub(crate) fn required_string<'a>(body: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    match body.get(field) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ApiError::bad_request(
            "invalid_field",
            Some(field),
            format!("{field}: must be a string"),
        )),
        None => Err(ApiError::bad_request(
            "invalid_field",
            Some(field),
            format!("{field}: is required"),
        )),
    }
}

/// Query parameters, parsed by the handler into typed values with field-named errors.
pub(crate) struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub fn from_uri(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            })
            .collect();
        Self(pairs)
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(raw) = self.string(key) else {
            return Ok(None);
        };
        let value: i64 = raw.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                Some(key),
                format!("{key}: must be a whole number, got '{raw}'"),
            )
        })?;
        if value < min || value > max {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some(key),
                format!("{key}: must be between {min} and {max}"),
            ));
        }
        Ok(Some(value))
    }
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                match u8::from_str_radix(raw.get(index + 1..index + 3).unwrap_or("zz"), 16) {
                    Ok(byte) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    Err(_) => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_strings() {
        let params =
            QueryParams::from_uri(Some("branch=feature%2Fx&status=&limit=5&bad=%zz&tail=%4"));
        assert_eq!(params.string("branch"), Some("feature/x"));
        assert_eq!(params.string("status"), None);
        assert_eq!(params.integer("limit", 1, 10).unwrap(), Some(5));
        assert!(params.integer("limit", 6, 10).is_err());
        assert_eq!(params.string("bad"), Some("%zz"));
        assert_eq!(params.string("tail"), Some("%4"));
    }
}
