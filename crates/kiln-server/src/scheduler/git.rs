//! The server's git: resolving a branch to its commit (`git ls-remote`), and a bare
//! mirror per project from which a trigger reads the commit's message and pipeline
//! file without a checkout. Agents do their own checkout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::policy::RepoAccess;

/// Most time a git command on the server's own mirror may take.
const LOCAL_GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why git could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GitError {
    /// The repository could not be reached or read; git's own message.
    #[error("{0}")]
    Unreachable(String),
    /// The repository answered, without that branch or commit.
    #[error("{0}")]
    NotFound(String),
}

/// Hides the credentials of `https://user:token@host/…` URLs.
pub(crate) fn mask_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.split_once('@')
        && !credentials.contains('/')
    {
        return format!("{scheme}://***@{host}");
    }
    url.to_owned()
}

/// Runs git on the mirror (`access` None: no transport allowed) or against a repository
/// that passed the policy (`access`: its one transport, its settings and timeout).
async fn git(
    args: &[&str],
    cwd: Option<&Path>,
    access: Option<&RepoAccess>,
) -> Result<Vec<u8>, String> {
    let mut command = Command::new("git");
    let timeout = access.map_or(LOCAL_GIT_TIMEOUT, |access| access.timeout);
    for setting in access.map(|access| access.config.as_slice()).unwrap_or(&[]) {
        command.args(["-c", setting]);
    }
    if let Some(credentials) = access.and_then(|access| access.credentials.as_ref()) {
        for setting in kiln_core::net::GIT_CREDENTIAL_SETTINGS {
            command.args(["-c", setting]);
        }
        command
            .env("KILN_GIT_USERNAME", &credentials.username)
            .env("KILN_GIT_PASSWORD", &credentials.password);
    }
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // Only the transport the policy checked; never `ext::` and the like.
        .env(
            "GIT_ALLOW_PROTOCOL",
            access.map_or("none", |access| access.allow_protocol),
        )
        .env("GIT_PROTOCOL_FROM_USER", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| {
            format!(
                "git {} took longer than {} s (the server's --git-timeout)",
                args[0],
                timeout.as_secs()
            )
        })?
        .map_err(|error| format!("cannot run git ({error}); install git on the server"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(stderr.trim().to_owned())
    }
}

/// The commit each `refs/heads/*` branch points at.
pub(crate) async fn remote_branches(
    repo: &str,
    access: &RepoAccess,
) -> Result<Vec<(String, String)>, GitError> {
    let output = git(&["ls-remote", "--heads", "--", repo], None, Some(access))
        .await
        .map_err(|message| GitError::Unreachable(scrub(&message, repo)))?;
    Ok(String::from_utf8_lossy(&output)
        .lines()
        .filter_map(|line| {
            let (sha, reference) = line.split_once('\t')?;
            Some((
                reference.strip_prefix("refs/heads/")?.to_owned(),
                sha.to_owned(),
            ))
        })
        .collect())
}

/// The commit `branch` points at in `repo`.
pub(crate) async fn resolve_branch(
    repo: &str,
    branch: &str,
    access: &RepoAccess,
) -> Result<String, GitError> {
    remote_branches(repo, access)
        .await?
        .into_iter()
        .find(|(name, _)| name == branch)
        .map(|(_, sha)| sha)
        .ok_or_else(|| {
            GitError::NotFound(format!(
                "branch '{branch}' does not exist in {}",
                mask_url(repo)
            ))
        })
}

/// Git's messages may repeat the URL with its credentials.
fn scrub(message: &str, repo: &str) -> String {
    message.replace(repo, &mask_url(repo))
}

/// A bare repository holding the commits triggers read.
pub(crate) struct Mirror {
    path: PathBuf,
}

/// What a trigger reads from a commit.
pub(crate) struct CommitFiles {
    pub message: String,
    /// `.kiln.yml`, when the commit has one.
    pub pipeline_file: Option<String>,
    /// Names at the repository's root.
    pub top_level: Vec<String>,
    pub package_json: Option<String>,
}

impl Mirror {
    pub(crate) async fn open(path: PathBuf) -> Result<Mirror, GitError> {
        if !path.join("HEAD").exists() {
            tokio::fs::create_dir_all(&path).await.map_err(|e| {
                GitError::Unreachable(format!("cannot create {}: {e}", path.display()))
            })?;
            git(&["init", "--bare", "-q", "."], Some(&path), None)
                .await
                .map_err(GitError::Unreachable)?;
        }
        Ok(Mirror { path })
    }

    /// Fetches `commit` (full sha) from `repo` unless the mirror has it.
    pub(crate) async fn fetch(
        &self,
        repo: &str,
        commit: &str,
        access: &RepoAccess,
    ) -> Result<(), GitError> {
        let object = format!("{commit}^{{commit}}");
        if git(&["cat-file", "-e", &object], Some(&self.path), None)
            .await
            .is_ok()
        {
            return Ok(());
        }
        match git(
            &["fetch", "-q", "--depth=1", "--no-tags", "--", repo, commit],
            Some(&self.path),
            Some(access),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(message) => {
                let message = scrub(&message, repo);
                let lower = message.to_lowercase();
                if lower.contains("not our ref")
                    || lower.contains("couldn't find remote ref")
                    || lower.contains("no such remote ref")
                    || lower.contains("unadvertised object")
                    || lower.contains("not a valid object")
                {
                    Err(GitError::NotFound(format!(
                        "commit {commit} does not exist in {}: {message}",
                        mask_url(repo)
                    )))
                } else {
                    Err(GitError::Unreachable(message))
                }
            }
        }
    }

    /// A file of the commit; `None` when it has none by that path (or git fails).
    pub(crate) async fn read_file(&self, commit: &str, path: &str) -> Option<Vec<u8>> {
        git(
            &["show", &format!("{commit}:{path}")],
            Some(&self.path),
            None,
        )
        .await
        .ok()
    }

    pub(crate) async fn read(&self, commit: &str) -> Result<CommitFiles, GitError> {
        let message = git(
            &["log", "-1", "--format=%B", commit],
            Some(&self.path),
            None,
        )
        .await
        .map_err(GitError::Unreachable)?;
        let show = |file: &str| format!("{commit}:{file}");
        let pipeline_file = git(&["show", &show(".kiln.yml")], Some(&self.path), None)
            .await
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let listing = git(&["ls-tree", "--name-only", commit], Some(&self.path), None)
            .await
            .map_err(GitError::Unreachable)?;
        let top_level: Vec<String> = String::from_utf8_lossy(&listing)
            .lines()
            .map(str::to_owned)
            .collect();
        let package_json = if top_level.iter().any(|name| name == "package.json") {
            git(&["show", &show("package.json")], Some(&self.path), None)
                .await
                .ok()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        } else {
            None
        };
        Ok(CommitFiles {
            message: String::from_utf8_lossy(&message).trim().to_owned(),
            pipeline_file,
            top_level,
            package_json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn credentials_are_masked() {
        assert_eq!(
            mask_url("https://user:secret@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(mask_url("file:///tmp/repo"), "file:///tmp/repo");
        assert_eq!(mask_url("/srv/repo"), "/srv/repo");
        assert_eq!(mask_url("ssh://git@host/r"), "ssh://***@host/r");
    }
}
