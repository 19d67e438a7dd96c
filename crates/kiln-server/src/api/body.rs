//! Request bodies and query strings parsed with Kiln's limits and error shape, instead
//! of axum's plain-text rejections.
//!
//! A body past its limit is refused with 413, but read on (and thrown away) for up to
//! `DRAIN_BYTES` more or `DRAIN_TIME` first: a server that answers and closes while the
//! client is still sending resets the connection (the kernel answers unread bytes with
//! RST), and a client still writing its body then sees the reset instead of the 413.
//! Drained to its end, the connection even stays open for the next request.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use futures_util::StreamExt;
use kiln_core::limits::MAX_BODY_BYTES;
use serde_json::Value;

use crate::error::ApiError;

/// How much of a body past its limit is read and dropped before the 413 is sent.
pub(crate) const DRAIN_BYTES: usize = 8 << 20;
/// How long the rest of a body past its limit is read before the 413 is sent.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The body was longer than the limit (or could not be read to its end).
pub(crate) struct TooLarge;

/// Reads `body` whole when it has at most `limit` bytes; past that (or when it cannot be
/// read), drains up to `DRAIN_BYTES` more within `DRAIN_TIME` and refuses it.
pub(crate) async fn read_limited(body: Body, limit: usize) -> Result<Bytes, TooLarge> {
    let mut chunks = body.into_data_stream();
    let mut collected = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return Err(TooLarge);
        };
        if collected.len() + chunk.len() > limit {
            let mut drained = collected.len() + chunk.len() - limit;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while drained <= DRAIN_BYTES {
                    match chunks.next().await {
                        Some(Ok(chunk)) => drained += chunk.len(),
                        Some(Err(_)) | None => break,
                    }
                }
            })
            .await;
            return Err(TooLarge);
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

/// A JSON body of at most `MAX_BODY_BYTES`.
pub(crate) struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_limited(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|TooLarge| {
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
        parse_json(&bytes).map(JsonBody)
    }
}

/// A raw body of at most `LIMIT` bytes (a signed webhook payload, whose exact bytes the
/// signature covers); a larger one is 413 `body_too_large` with Kiln's error body.
pub(crate) struct RawBody<const LIMIT: usize>(pub axum::body::Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for RawBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        read_limited(request.into_body(), LIMIT)
            .await
            .map(RawBody)
            .map_err(|TooLarge| {
                ApiError::PayloadTooLarge(format!(
                    "the body is larger than {LIMIT} bytes, the limit of this route"
                ))
            })
    }
}

/// Parses a JSON body. A string (or member name) holding U+0000 is refused with the
/// field that holds it: no name, message or filter needs one, SQLite and PostgreSQL
/// would store it differently (PostgreSQL's text refuses it), and in an event batch it
/// would fail the group commit of every request beside it.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            Some("body"),
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    // JSON text can carry U+0000 only as the escape `\u0000` (a raw control character
    // inside a string is invalid JSON), so a body without it needs no walk: the walk,
    // which builds each member's path, stays off the ingest path of ordinary bodies.
    let may_hold_nul = bytes.windows(6).any(|window| window == b"\\u0000");
    if let Some(field) = may_hold_nul.then(|| field_with_nul(&value, "")).flatten() {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some(&field),
            holds_nul(&field),
        ));
    }
    // serde_json reads an integer beyond 64 bits as a float, which would come back as
    // `1.2345678901234568e+29`: refused, naming the field, rather than stored changed.
    // Only a body with a run of 19 digits can hold one (a negative literal below −2^63
    // has 19), so others need no walk.
    let big_integers = big_integer_literals(bytes);
    if let Some(field) = (!big_integers.is_empty())
        .then(|| field_with_inexact_integer(&value, "", &big_integers))
        .flatten()
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some(&field),
            format!(
                "{field}: integers beyond 64 bits are not kept exactly; send this one as a string"
            ),
        ));
    }
    Ok(value)
}

/// The values of the integer literals of a JSON text (outside strings) that fit neither
/// i64 nor u64; serde_json reads those as floats. Only a run of 19 digits or more can be
/// one (−9223372036854775809 has 19), so ordinary bodies are not tokenized.
fn big_integer_literals(bytes: &[u8]) -> Vec<f64> {
    if !bytes
        .split(|byte| !byte.is_ascii_digit())
        .any(|digits| digits.len() >= 19)
    {
        return Vec::new();
    }
    let mut literals = Vec::new();
    let (mut index, mut in_string, mut escaped) = (0, false, false);
    while index < bytes.len() {
        let byte = bytes[index];
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            index += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            index += 1;
            continue;
        }
        if byte == b'-' || byte.is_ascii_digit() {
            let start = index;
            while index < bytes.len()
                && (bytes[index].is_ascii_digit() || b"+-.eE".contains(&bytes[index]))
            {
                index += 1;
            }
            let token = std::str::from_utf8(&bytes[start..index]).unwrap_or_default();
            let integer = !token.contains(['.', 'e', 'E']);
            if integer
                && token.parse::<i64>().is_err()
                && token.parse::<u64>().is_err()
                && let Ok(float) = token.parse::<f64>()
            {
                literals.push(float);
            }
            continue;
        }
        index += 1;
    }
    literals
}

/// The path of the first number that holds one of `literals` as a float (an integer
/// literal too large for 64 bits).
fn field_with_inexact_integer(value: &Value, path: &str, literals: &[f64]) -> Option<String> {
    match value {
        Value::Number(number) => number
            .as_f64()
            .filter(|float| number.is_f64() && literals.contains(float))
            .map(|_| {
                if path.is_empty() {
                    "body".to_owned()
                } else {
                    path.to_owned()
                }
            }),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            field_with_inexact_integer(item, &format!("{path}[{index}]"), literals)
        }),
        Value::Object(members) => members.iter().find_map(|(name, member)| {
            let member_path = match path {
                "" => name.clone(),
                path => format!("{path}.{name}"),
            };
            field_with_inexact_integer(member, &member_path, literals)
        }),
        _ => None,
    }
}

/// The message for a field holding U+0000 (JSON bodies, Socket.IO requests).
pub(crate) fn holds_nul(field: &str) -> String {
    format!("{field}: contains a NUL character (\\u0000), which Kiln does not store; remove it")
}

/// The path (`[2].message`, `data.key`; `body` for the whole) of the first string or
/// member name holding U+0000.
fn field_with_nul(value: &Value, path: &str) -> Option<String> {
    let here = || match path {
        "" => "body".to_owned(),
        path => path.to_owned(),
    };
    match value {
        Value::String(text) => text.contains('\0').then(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| field_with_nul(item, &format!("{path}[{index}]"))),
        Value::Object(members) => members.iter().find_map(|(name, member)| {
            let member_path = match path {
                "" => name.clone(),
                path => format!("{path}.{name}"),
            };
            if name.contains('\0') {
                return Some(member_path);
            }
            field_with_nul(member, &member_path)
        }),
        _ => None,
    }
}

/// A JSON body as the typed request `T` (kiln-protocol's wire types), with the field
/// path named on error (`invalid_field`).
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    body: serde_json::Value,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|error| {
        let message = error.inner().to_string();
        let path = error.path().to_string();
        // A missing member is reported at its parent; name the member itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        let field = match (missing, path.as_str()) {
            (Some(name), ".") => name,
            (Some(name), parent) => format!("{parent}.{name}"),
            (None, ".") => "body".to_owned(),
            (None, path) => path.to_owned(),
        };
        ApiError::bad_request("invalid_field", Some(&field), format!("{field}: {message}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three ways a body can spell a NUL: the escape is refused with its field, a raw
    /// byte is not JSON at all, and an escaped backslash before `u0000` is no NUL.
    #[test]
    fn integers_beyond_64_bits_are_refused_with_their_field() {
        let field = |body: &str| match parse_json(body.as_bytes()) {
            Ok(_) => None,
            Err(ApiError::BadRequest { field, .. }) => field,
            Err(other) => panic!("{other}"),
        };
        assert_eq!(
            field(r#"{"data": {"big": 123456789012345678901234567890}}"#).as_deref(),
            Some("data.big")
        );
        assert_eq!(
            field(r#"[{"a": 1}, {"data": [-99999999999999999999]}]"#).as_deref(),
            Some("[1].data[0]")
        );
        // Within 64 bits, as a string, or a float: kept.
        assert_eq!(
            field(r#"{"max": 18446744073709551615, "min": -9223372036854775808}"#),
            None
        );
        assert_eq!(field(r#"{"id": "123456789012345678901234567890"}"#), None);
        assert_eq!(
            field(r#"{"x": 1.5, "y": 1e30, "z": "12345678901234567890"}"#),
            None
        );
    }

    #[test]
    fn nul_is_refused_with_its_field() {
        let field = |body: &[u8]| match parse_json(body) {
            Ok(_) => "accepted".to_owned(),
            Err(error) => error.to_string(),
        };
        assert!(field(br#"{"a": "b\u0000"}"#).contains("a: contains a NUL"));
        assert!(field(b"{\"a\": \"b\0\"}").contains("not valid JSON"));
        assert_eq!(field(br#"{"a": "b\\u0000"}"#), "accepted");
        assert!(
            field(br#"[{"a": 1}, {"data": {"steps": ["x", "y\u0000"]}}]"#)
                .contains("[1].data.steps[1]: contains a NUL")
        );
        assert!(field(br#"{"k\u0000": 1}"#).contains("contains a NUL"));
    }
}
