//! Query strings, for the JSON API and the dashboard alike: parsed once into a map,
//! read by the handler into typed values with an error that names the parameter.

use std::collections::HashMap;

use crate::error::ApiError;

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

    /// An instant: RFC 3339 (`2026-11-24T17:03:09Z`) or a date (`2026-11-24`, midnight
    /// UTC).
    pub fn instant(&self, key: &str) -> Result<Option<kiln_core::Millis>, ApiError> {
        let Some(raw) = self.string(key) else {
            return Ok(None);
        };
        kiln_core::Millis::parse_rfc3339(raw).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                Some(key),
                format!("{key}: must be a date (2026-11-24) or an RFC 3339 time (2026-11-24T17:03:09Z), got '{raw}'"),
            )
        })
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
