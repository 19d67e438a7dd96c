//! The dependency cache's key: one hash of a step's name and its lockfiles' contents.
//! The agent computes it from its checkout, the server from the commit in its mirror
//! (to know which agents hold a queued job's cache); both call this one function.

use sha2::{Digest, Sha256};

/// The key of a step's cache entry: the step name and, for each key file in order, its
/// path and contents (`None`: the file does not exist, which counts as "missing", so a
/// step whose lockfile does not exist yet still gets a stable key). Hex, 64 characters.
pub fn cache_key<'a>(
    step: &str,
    key_files: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"kiln-cache-v1\0");
    hash_field(&mut hasher, step.as_bytes());
    for (path, contents) in key_files {
        hash_field(&mut hasher, path.as_bytes());
        match contents {
            Some(contents) => {
                hasher.update(b"present\0");
                hash_field(&mut hasher, contents);
            }
            None => hasher.update(b"missing\0"),
        }
    }
    hex::encode(hasher.finalize())
}

/// Length-prefixed, so that ("ab", "c") and ("a", "bc") hash differently.
fn hash_field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::cache_key;

    #[test]
    fn key_depends_on_step_paths_and_contents() {
        let lock: &[u8] = b"lock v1";
        let key = cache_key("test", [("Cargo.lock", Some(lock))]);
        assert_eq!(key.len(), 64);
        assert_eq!(key, cache_key("test", [("Cargo.lock", Some(lock))]));
        assert_ne!(key, cache_key("build", [("Cargo.lock", Some(lock))]));
        assert_ne!(
            key,
            cache_key("test", [("Cargo.lock", Some(&b"lock v2"[..]))])
        );
        assert_ne!(key, cache_key("test", [("Cargo.lock", None)]));
        assert_ne!(
            cache_key("t", [("ab", Some(&b"c"[..]))]),
            cache_key("t", [("a", Some(&b"bc"[..]))])
        );
    }
}
