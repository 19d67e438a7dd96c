//! Dashboard form bodies (`application/x-www-form-urlencoded`), read leniently: a page
//! handler checks who calls before it looks at the body, so a missing or malformed body
//! is answered by the handler's own checks (403/404 first, then a 400 page naming the
//! field), never by an extractor's rejection.

use axum::body::Bytes;

use super::{PageError, check_csrf};
use crate::auth::Caller;
use crate::error::ApiError;

/// The fields of a posted form, in order; a name may repeat (checkbox groups).
#[derive(Debug, Default)]
pub(crate) struct FormFields {
    fields: Vec<(String, String)>,
}

impl FormFields {
    /// Parses a urlencoded body; undecodable bytes become U+FFFD, never an error.
    pub fn parse(body: &[u8]) -> FormFields {
        let fields = body
            .split(|byte| *byte == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let mut parts = pair.splitn(2, |byte| *byte == b'=');
                let name = decode(parts.next().unwrap_or_default());
                let value = decode(parts.next().unwrap_or_default());
                (name, value)
            })
            .collect();
        FormFields { fields }
    }

    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of a field, or "".
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or_default()
    }

    /// Every value of a field (a group of checkboxes).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// Whether a checkbox was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|value| !value.is_empty())
    }

    /// Checks the hidden `_csrf` field against the caller's session.
    pub fn check_csrf(&self, caller: &Caller) -> Result<(), PageError> {
        check_csrf(caller, self.text("_csrf"))
    }
}

/// Reads the form of a request body.
pub(crate) fn fields(body: &Bytes) -> FormFields {
    FormFields::parse(body)
}

fn decode(raw: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut index = 0;
    while index < raw.len() {
        match raw[index] {
            b'+' => bytes.push(b' '),
            b'%' => match (
                raw.get(index + 1).and_then(|b| hex(*b)),
                raw.get(index + 2).and_then(|b| hex(*b)),
            ) {
                (Some(high), Some(low)) => {
                    bytes.push(high * 16 + low);
                    index += 2;
                }
                _ => bytes.push(b'%'),
            },
            byte => bytes.push(byte),
        }
        index += 1;
    }
    // U+0000 is no character of any name or text Kiln keeps (PostgreSQL's text refuses
    // it): it reads as the replacement character, so a field holding it is refused or
    // matches nothing, never fails a statement.
    String::from_utf8_lossy(&bytes).replace('\0', "\u{FFFD}")
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// A 400 page for a form field the handler refuses.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> PageError {
    PageError(ApiError::bad_request(
        "invalid_field",
        Some(field),
        message.into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_and_encoded_fields() {
        let form =
            FormFields::parse(b"_csrf=a%2Bb&scopes=read&scopes=ingest&name=my+token&x=%zz&y=%4");
        assert_eq!(form.text("_csrf"), "a+b");
        assert_eq!(form.all("scopes"), vec!["read", "ingest"]);
        assert_eq!(form.text("name"), "my token");
        assert_eq!(form.text("x"), "%zz");
        assert_eq!(form.text("y"), "%4");
        assert_eq!(form.get("missing"), None);
        assert!(FormFields::parse(b"").get("a").is_none());
        assert_eq!(FormFields::parse(b"a=%C3%A9").text("a"), "é");
    }
}
