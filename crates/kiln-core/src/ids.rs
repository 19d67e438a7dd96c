//! Identifier newtypes, each parsed once from untrusted text.

use std::fmt;

use crate::event::FieldError;
use crate::limits;

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A build's run id, chosen by the client (usually a UUID): 1–128 characters from
    /// `A-Z a-z 0-9 . _ - :`. Unique across the instance.
    RunId
);
string_newtype!(
    /// A project's URL-safe slug: 1–64 characters, lowercase letters, digits and `-`,
    /// starting with a letter or digit.
    ProjectSlug
);
string_newtype!(
    /// A stage's display name: 1–200 characters, no control characters.
    StageName
);
string_newtype!(
    /// The client's idempotency key for one event: 1–128 printable ASCII characters.
    ClientEventId
);
string_newtype!(
    /// A label an agent offers and a pipeline step asks for (`linux`, `gpu`, `arch=arm64`):
    /// 1–64 characters from `A-Z a-z 0-9 - _ . : = /`, compared exactly.
    AgentLabel
);

impl RunId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if raw.len() > limits::MAX_RUN_ID_LEN {
            return Err(FieldError::new(
                field,
                format!("is longer than {} characters", limits::MAX_RUN_ID_LEN),
            ));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        {
            return Err(FieldError::new(
                field,
                "may contain only letters, digits, '.', '_', '-' and ':' (a UUID works)",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

impl ProjectSlug {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let valid_chars = raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let valid_start = raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if raw.len() > limits::MAX_SLUG_LEN || !valid_chars || !valid_start {
            return Err(FieldError::new(
                field,
                format!(
                    "must be 1-{} characters of lowercase letters, digits and '-', starting with a letter or digit",
                    limits::MAX_SLUG_LEN
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

impl StageName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if trimmed.chars().count() > limits::MAX_STAGE_LEN {
            return Err(FieldError::new(
                field,
                format!("is longer than {} characters", limits::MAX_STAGE_LEN),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

impl ClientEventId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > limits::MAX_CLIENT_EVENT_ID_LEN {
            return Err(FieldError::new(
                field,
                format!("must be 1-{} characters", limits::MAX_CLIENT_EVENT_ID_LEN),
            ));
        }
        if !raw.chars().all(|c| c.is_ascii_graphic()) {
            return Err(FieldError::new(
                field,
                "must be printable ASCII without spaces",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

impl AgentLabel {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let valid_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '=' | '/'));
        if raw.is_empty() || raw.len() > limits::MAX_AGENT_LABEL_LEN || !valid_chars {
            return Err(FieldError::new(
                field,
                format!(
                    "must be 1-{} characters of letters, digits and '-', '_', '.', ':', '=', '/' (for example 'linux' or 'arch=arm64')",
                    limits::MAX_AGENT_LABEL_LEN
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project slug of 64 characters is one; 65 is refused (docs/operations.md's limits).
    #[test]
    fn slugs_are_capped_at_their_limit() {
        let slug = |n: usize| format!("a{}", "b".repeat(n - 1));
        assert!(ProjectSlug::parse("slug", &slug(limits::MAX_SLUG_LEN)).is_ok());
        assert_eq!(
            ProjectSlug::parse("slug", &slug(limits::MAX_SLUG_LEN + 1))
                .unwrap_err()
                .field,
            "slug"
        );
    }

    #[test]
    fn run_ids() {
        assert!(RunId::parse("runId", "3f2a9c1e-8d2b-4a57-9c1e-1b2a3c4d5e6f").is_ok());
        assert!(RunId::parse("runId", "build:42.main_x").is_ok());
        assert_eq!(
            RunId::parse("runId", "").unwrap_err().field,
            "runId".to_owned()
        );
        assert!(RunId::parse("runId", "a b").is_err());
        assert!(RunId::parse("runId", &"a".repeat(129)).is_err());
        assert!(RunId::parse("runId", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn slugs() {
        assert!(ProjectSlug::parse("slug", "web-app2").is_ok());
        assert!(ProjectSlug::parse("slug", "-web").is_err());
        assert!(ProjectSlug::parse("slug", "Web").is_err());
        assert!(ProjectSlug::parse("slug", "").is_err());
    }

    #[test]
    fn stage_names_are_trimmed_and_bounded() {
        assert_eq!(
            StageName::parse("stage", "  Backend Clean ")
                .unwrap()
                .as_str(),
            "Backend Clean"
        );
        assert!(StageName::parse("stage", "   ").is_err());
        assert!(StageName::parse("stage", "a\nb").is_err());
        assert!(StageName::parse("stage", &"é".repeat(200)).is_ok());
        assert!(StageName::parse("stage", &"é".repeat(201)).is_err());
    }

    #[test]
    fn agent_labels() {
        assert_eq!(
            AgentLabel::parse("label", "arch=arm64").unwrap().as_str(),
            "arch=arm64"
        );
        assert!(AgentLabel::parse("label", "").is_err());
        assert!(AgentLabel::parse("label", "a,b").is_err());
        assert!(AgentLabel::parse("label", "has space").is_err());
        assert!(AgentLabel::parse("label", &"a".repeat(65)).is_err());
    }
}

/// A project secret's name: an environment variable name (`A-Z`, `0-9`, `_`, not
/// starting with a digit, 1–128), not starting with `KILN_` (Kiln's own variables).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(field: &str, name: &str) -> Result<Self, crate::FieldError> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !name.starts_with("KILN_");
        if !valid {
            return Err(crate::FieldError::new(
                field,
                format!(
                    "'{name}' is not a secret name: use an environment variable name in capitals (A-Z, 0-9, _; not starting with a digit or KILN_), at most 128 characters"
                ),
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
