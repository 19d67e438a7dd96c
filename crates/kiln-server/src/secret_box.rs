//! Encryption at rest of project secrets and repository credentials: ChaCha20-Poly1305
//! (AEAD) under the instance's key (`--secret-key-file`), a random nonce per value, and
//! the value's owner and name as associated data, so a ciphertext moved to another row
//! does not decrypt. Stored as `kiln1:` + hex(nonce ‖ ciphertext ‖ tag). Also `Secret`,
//! a configured secret string (an admin token, an SMTP password) whose `Debug` hides it.

use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const PREFIX: &str = "kiln1:";

/// The instance's secret key; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A new random key.
    pub fn generate() -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|error| format!("no randomness: {error}"))?;
        Ok(Self(bytes))
    }

    /// Reads the key file's text (64 hex digits).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or("the secret key file must hold 64 hex digits (32 bytes)")?;
        Ok(Self(bytes))
    }

    /// The key file's text.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A keyed digest of `label` (HMAC-SHA256 under the key): the same on every replica
    /// of one instance, unguessable and different on any other instance.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.0).expect("a 32-byte key"))
    }

    /// Encrypts `plaintext`, bound to `context` (e.g. `secret:12:DEPLOY_TOKEN`).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|error| format!("no randomness: {error}"))?;
        let mut in_out = plaintext.to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| "encryption failed".to_owned())?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&in_out);
        Ok(format!("{PREFIX}{}", hex::encode(stored)))
    }

    /// Decrypts what `seal` made for the same `context`; fails for another key, another
    /// context or altered text.
    pub fn open(&self, context: &str, stored: &str) -> Result<Vec<u8>, String> {
        let bytes = stored
            .strip_prefix(PREFIX)
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .filter(|bytes| bytes.len() >= NONCE_LEN)
            .ok_or("not a Kiln ciphertext")?;
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut in_out = sealed.to_vec();
        let plaintext = self
            .key()
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| {
                "cannot decrypt: the value was stored under another --secret-key-file (every replica needs the same key) or altered".to_owned()
            })?;
        Ok(plaintext.to_vec())
    }
}

/// The associated data of a project secret.
pub(crate) fn secret_context(project_id: i64, name: &str) -> String {
    format!("secret:{project_id}:{name}")
}

/// The associated data of a project's repository credentials.
pub(crate) fn repo_credentials_context(project_id: i64) -> String {
    format!("repo-credentials:{project_id}")
}

/// A secret string whose `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal("secret:1:A", b"hunter2").unwrap();
        assert!(sealed.starts_with("kiln1:"));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open("secret:1:A", &sealed).unwrap(), b"hunter2");
        assert_ne!(
            sealed,
            key.seal("secret:1:A", b"hunter2").unwrap(),
            "fresh nonce"
        );
        assert!(key.open("secret:2:A", &sealed).is_err(), "another row");
        let other = SecretKey::generate().unwrap();
        assert!(other.open("secret:1:A", &sealed).is_err(), "another key");
        // One hex digit of the tag changed (to another digit: writing "00" over the last
        // two left a sealed value that already ended in "00" — one in 256 — unchanged).
        let mut altered = sealed.clone();
        let last = if sealed.ends_with('0') { "1" } else { "0" };
        altered.replace_range(sealed.len() - 1.., last);
        assert_ne!(altered, sealed);
        assert!(key.open("secret:1:A", &altered).is_err());
        assert_eq!(
            SecretKey::parse(&key.to_hex())
                .unwrap()
                .open("secret:1:A", &sealed)
                .unwrap(),
            b"hunter2"
        );
        assert!(SecretKey::parse("abc").is_err());
    }
}
