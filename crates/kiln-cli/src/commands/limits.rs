//! Process limits the server needs: the open-files limit raised to its hard limit, so
//! connections (each a file descriptor) run into `--max-connections`, not into EMFILE.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft open-files limit to the hard limit; returns the limit now in force
/// (`None` when it cannot be read).
pub fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise the open-files limit");
            }
        }
    }
    Some(soft)
}
