//! Passwords (argon2id, hashed off the async threads) and the login limiter.
//!
//! A failed login costs the same whether the account exists or not (a dummy hash is
//! verified), and failures are limited per account and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Failed logins allowed per account, and per client address, within `WINDOW`.
pub(crate) const MAX_FAILURES_PER_ACCOUNT: u32 = 5;
pub(crate) const MAX_FAILURES_PER_ADDRESS: u32 = 20;
pub(crate) const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Passwords are 8–1024 bytes.
pub(crate) const MIN_PASSWORD_LEN: usize = 8;
pub(crate) const MAX_PASSWORD_LEN: usize = 1024;

/// Verified when no account matches, so a wrong email costs what a wrong password does.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"kiln-no-such-account")
        .map(|hash| hash.to_string())
        .unwrap_or_default()
});

/// The argon2id PHC string of a password.
pub(crate) async fn hash_password(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| format!("cannot hash the password: {error}"))
    })
    .await
    .map_err(|error| format!("cannot hash the password: {error}"))?
}

/// Whether `password` matches `hash` (the dummy hash when the account has none).
pub(crate) async fn verify_password(password: String, hash: Option<String>) -> bool {
    let real = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
    tokio::task::spawn_blocking(move || {
        let matches = PasswordHash::new(&hash).ok().is_some_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        });
        matches && real
    })
    .await
    .unwrap_or(false)
}

/// Counts failed logins per account and per address in a sliding window.
#[derive(Default)]
pub(crate) struct LoginLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginLimiter {
    fn over(&self, key: &str, limit: u32) -> bool {
        let failures = self.failures.lock().expect("limiter lock");
        failures
            .get(key)
            .is_some_and(|(count, since)| since.elapsed() < WINDOW && *count >= limit)
    }

    /// Refuses before checking the password when either key is over its limit.
    pub fn allowed(&self, email: &str, address: Option<IpAddr>) -> bool {
        !self.over(&format!("account:{email}"), MAX_FAILURES_PER_ACCOUNT)
            && !address.is_some_and(|ip| self.over(&format!("ip:{ip}"), MAX_FAILURES_PER_ADDRESS))
    }

    pub fn failed(&self, email: &str, address: Option<IpAddr>) {
        let mut failures = self.failures.lock().expect("limiter lock");
        if failures.len() > 100_000 {
            failures.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        let mut keys = vec![format!("account:{email}")];
        if let Some(ip) = address {
            keys.push(format!("ip:{ip}"));
        }
        for key in keys {
            let entry = failures.entry(key).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }

    pub fn succeeded(&self, email: &str) {
        self.failures
            .lock()
            .expect("limiter lock")
            .remove(&format!("account:{email}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong horse".into(), Some(hash)).await);
        assert!(
            !verify_password("kiln-no-such-account".into(), None).await,
            "the dummy never logs in"
        );
    }

    #[test]
    fn failures_are_limited_per_account_and_address() {
        let limiter = LoginLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES_PER_ACCOUNT {
            assert!(limiter.allowed("a@x", Some(ip)));
            limiter.failed("a@x", Some(ip));
        }
        assert!(!limiter.allowed("a@x", Some(ip)));
        assert!(
            limiter.allowed("b@x", Some(ip)),
            "other accounts from the address still may"
        );
        limiter.succeeded("a@x");
        assert!(limiter.allowed("a@x", Some(ip)));
        for n in 0..MAX_FAILURES_PER_ADDRESS {
            limiter.failed(&format!("u{n}@x"), Some(ip));
        }
        assert!(
            !limiter.allowed("new@x", Some(ip)),
            "the address is over its limit"
        );
    }
}
