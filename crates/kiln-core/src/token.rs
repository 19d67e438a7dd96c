//! API tokens: kinds, scopes, the `kiln_` format and the hash that is stored instead.

use sha2::{Digest, Sha256};

use crate::event::FieldError;

/// Every token starts with this, so leaked tokens are recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "kiln_";

/// What a token may act as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Instance administrator: manages projects and tokens, reads everything.
    Admin,
    /// A project token; what it may do is given by its scopes.
    Project,
    /// An agent token (instance-wide): registers agents, claims and runs jobs. It works
    /// only on the agent endpoints.
    Agent,
    /// A user's personal API token: acts as its user (their roles, their instance-admin
    /// flag).
    User,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Project => "project",
            Self::Agent => "agent",
            Self::User => "user",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "admin" => Some(Self::Admin),
            "project" => Some(Self::Project),
            "agent" => Some(Self::Agent),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// What a project token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Write events to the project (and read it).
    Ingest,
    /// Read the project's builds and events.
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        match raw {
            "ingest" => Ok(Self::Ingest),
            "read" => Ok(Self::Read),
            other => Err(FieldError::new(
                field,
                format!("unknown scope '{other}': use \"ingest\" or \"read\""),
            )),
        }
    }

    /// Scopes stored as a comma-separated list.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn split(stored: &str) -> Vec<Scope> {
        stored
            .split(',')
            .filter_map(|raw| Scope::parse("scopes", raw).ok())
            .collect()
    }
}

/// The SHA-256 of a token, hex-encoded: what the database keeps.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Formats random bytes as a token: `kiln_` followed by 32 characters from [A-Za-z0-9].
pub fn format_token(random: &[u8; 32]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut token = String::from(TOKEN_PREFIX);
    // Each byte indexes the 62-letter alphabet after folding; 256 is not a multiple of
    // 62, so the distribution is slightly uneven, which 256 bits of input make harmless.
    for byte in random {
        token.push(ALPHABET[usize::from(*byte) % ALPHABET.len()] as char);
    }
    token
}

/// The part of a token that may be shown again after creation (for lists): the prefix
/// and the first four secret characters.
pub fn display_prefix(token: &str) -> String {
    token.chars().take(TOKEN_PREFIX.len() + 4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_and_hashed() {
        let token = format_token(&[7u8; 32]);
        assert!(token.starts_with("kiln_"));
        assert_eq!(token.len(), 5 + 32);
        assert_eq!(hash_token(&token).len(), 64);
        assert_ne!(hash_token(&token), hash_token("kiln_other"));
        assert_eq!(display_prefix(&token).len(), 9);
    }

    #[test]
    fn scopes_round_trip() {
        let scopes = [Scope::Ingest, Scope::Read];
        assert_eq!(Scope::split(&Scope::join(&scopes)), scopes);
        assert!(Scope::parse("scopes[0]", "admin").is_err());
    }
}
