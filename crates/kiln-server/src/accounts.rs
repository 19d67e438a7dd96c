//! Passwords (argon2id, hashed off the async threads) and the login limiter.
//!
//! A failed login costs the same whether the account exists or not (a dummy hash is
//! verified), and failures are limited per account and per client address. Logins in
//! flight count against the address's limit too, and argon2 runs in a fixed number of
//! slots (`PasswordConfig`: one per core by default; each takes ~19 MiB and tens of
//! milliseconds): a burst of logins waits its turn for a bounded time or is refused with
//! 503 and `Retry-After`, so memory stays bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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

/// How many passwords are hashed at once, and how long a check waits for a turn
/// (`ServerConfig::passwords`).
#[derive(Clone, Debug)]
pub struct PasswordConfig {
    /// Argon2 computations at once; each holds ~19 MiB while it runs. At least 1.
    pub slots: usize,
    /// How long a password check waits for a free slot before it is refused as busy
    /// (503 `unavailable` with `Retry-After`).
    pub queue_wait: Duration,
}

impl PasswordConfig {
    /// How long a check waits for a slot by default.
    pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(10);
}

impl Default for PasswordConfig {
    /// One slot per core (at most 8), a 10 s wait.
    fn default() -> Self {
        Self {
            slots: std::thread::available_parallelism()
                .map(|cores| cores.get())
                .unwrap_or(1)
                .clamp(1, 8),
            queue_wait: Self::DEFAULT_QUEUE_WAIT,
        }
    }
}

/// Every password slot stayed taken for the configured wait.
#[derive(Debug, thiserror::Error)]
#[error("the server is busy checking other passwords; retry in a few seconds")]
pub(crate) struct PasswordsBusy;

/// Argon2 working memory kept between checks (one per slot at most): a check reuses a
/// buffer instead of allocating ~19 MiB, which the allocator would keep per thread.
static PASSWORD_MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Hashes and checks passwords off the async threads, at most `slots` at once; a check
/// that finds every slot taken waits at most `queue_wait`, then is refused as busy.
pub(crate) struct Passwords {
    slots: Semaphore,
    queue_wait: Duration,
}

impl Passwords {
    pub fn new(config: &PasswordConfig) -> Self {
        Self {
            slots: Semaphore::new(config.slots.max(1)),
            queue_wait: config.queue_wait,
        }
    }

    /// Runs argon2 work off the async threads in a slot, with a reused buffer.
    async fn in_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, PasswordsBusy> {
        let permit = tokio::time::timeout(self.queue_wait, self.slots.acquire())
            .await
            .map_err(|_| PasswordsBusy)?
            .map_err(|_| PasswordsBusy)?;
        let result = tokio::task::spawn_blocking(move || {
            let mut memory = PASSWORD_MEMORY
                .lock()
                .expect("password memory lock")
                .pop()
                .unwrap_or_default();
            let result = work(&mut memory);
            PASSWORD_MEMORY
                .lock()
                .expect("password memory lock")
                .push(memory);
            result
        })
        .await;
        drop(permit);
        result.map_err(|_| PasswordsBusy)
    }

    /// The argon2id PHC string of a password.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        self.in_slot(move |_| {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|error| format!("cannot hash the password: {error}"))
        })
        .await
        .map_err(|busy| busy.to_string())?
    }

    /// Whether `password` matches `hash` (the dummy hash when the account has none).
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordsBusy> {
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        self.in_slot(move |memory| matches_hash(password.as_bytes(), &hash, memory) && real)
            .await
    }
}

/// Checks `password` against a PHC string, computing into `memory` (grown as needed).
fn matches_hash(password: &[u8], hash: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut computed = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(password, salt, &mut computed, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&computed).is_ok_and(|computed| &computed == expected)
}

/// Counts failed logins per account and per address in a sliding window, and the
/// password checks in flight per address.
#[derive(Default)]
pub(crate) struct LoginLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    in_flight: Mutex<HashMap<IpAddr, u32>>,
}

/// A password check in flight from one address; counted until dropped.
pub(crate) struct LoginInFlight {
    limiter: Arc<LoginLimiter>,
    address: Option<IpAddr>,
}

impl Drop for LoginInFlight {
    fn drop(&mut self) {
        if let Some(ip) = self.address {
            let mut in_flight = self.limiter.in_flight.lock().expect("limiter lock");
            if let Some(count) = in_flight.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    in_flight.remove(&ip);
                }
            }
        }
    }
}

impl LoginLimiter {
    fn failures_of(&self, key: &str) -> u32 {
        let failures = self.failures.lock().expect("limiter lock");
        failures
            .get(key)
            .filter(|(_, since)| since.elapsed() < WINDOW)
            .map_or(0, |(count, _)| *count)
    }

    /// Starts a password check: refused (`None`) when the account or the address is
    /// over its limit, counting the address's checks still in flight as failures (a
    /// burst of concurrent guesses cannot outrun the count).
    pub fn begin(self: &Arc<Self>, email: &str, address: Option<IpAddr>) -> Option<LoginInFlight> {
        if self.failures_of(&format!("account:{email}")) >= MAX_FAILURES_PER_ACCOUNT {
            return None;
        }
        if let Some(ip) = address {
            let failures = self.failures_of(&format!("ip:{ip}"));
            let mut in_flight = self.in_flight.lock().expect("limiter lock");
            let count = in_flight.entry(ip).or_insert(0);
            if failures + *count >= MAX_FAILURES_PER_ADDRESS {
                return None;
            }
            *count += 1;
        }
        Some(LoginInFlight {
            limiter: self.clone(),
            address,
        })
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
        let passwords = Passwords::new(&PasswordConfig::default());
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("kiln-no-such-account".into(), None)
                .await
                .unwrap(),
            "the dummy never logs in"
        );
    }

    #[test]
    fn checks_in_flight_count_against_the_address() {
        let limiter = Arc::new(LoginLimiter::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<LoginInFlight> = (0..MAX_FAILURES_PER_ADDRESS)
            .map(|n| limiter.begin(&format!("u{n}@x"), Some(ip)).unwrap())
            .collect();
        assert!(
            limiter.begin("new@x", Some(ip)).is_none(),
            "the address is full"
        );
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(limiter.begin("new@x", Some(other)).is_some());
        drop(held);
        assert!(
            limiter.begin("new@x", Some(ip)).is_some(),
            "released when done"
        );
    }

    #[test]
    fn failures_are_limited_per_account_and_address() {
        let limiter = Arc::new(LoginLimiter::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let allowed = |email: &str| limiter.begin(email, Some(ip)).is_some();
        for _ in 0..MAX_FAILURES_PER_ACCOUNT {
            assert!(allowed("a@x"));
            limiter.failed("a@x", Some(ip));
        }
        assert!(!allowed("a@x"));
        assert!(allowed("b@x"), "other accounts from the address still may");
        limiter.succeeded("a@x");
        assert!(allowed("a@x"));
        for n in 0..MAX_FAILURES_PER_ADDRESS {
            limiter.failed(&format!("u{n}@x"), Some(ip));
        }
        assert!(!allowed("new@x"), "the address is over its limit");
    }
}
