//! Which repositories a project may build (`RepoPolicy`), checked when a repository is
//! set and again before every git command the server runs for it (a policy or a DNS
//! answer can change in between).
//!
//! - Remote repositories (http(s), ssh, git) must resolve to public addresses that are
//!   not the server's own, as webhooks must (`crate::address`), unless the instance
//!   allows private ones (`--repos-allow-private`). An http(s) fetch is pinned to the
//!   address that was checked and follows no redirect.
//! - Local repositories (a path or `file://`) are refused unless an instance admin
//!   allowed their directory (`--allow-local-repos DIR`); the path is resolved through
//!   symlinks first. Kiln's own git mirrors are never a repository, and nothing inside
//!   Kiln's data directory is unless an allowed directory lies inside it (what
//!   `kiln up --demo` makes), so one project cannot point at another project's mirror.
//! - Remote helpers (`ext::`, `fd::`) and other transports are refused outright, and the
//!   server's git runs with `GIT_ALLOW_PROTOCOL` set to the one transport checked.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kiln_core::net::RepoLocation;

use crate::address::{Purpose, resolve_host};

/// The instance's rules for repositories (`kiln serve` flags).
#[derive(Clone, Debug)]
pub struct RepoPolicy {
    /// Directories whose repositories projects may build (`--allow-local-repos`).
    pub allow_local: Vec<PathBuf>,
    /// Let repositories be at private, loopback and link-local addresses.
    pub allow_private: bool,
    /// Kiln's data directory: nothing in it is a repository, except inside an allowed
    /// directory that lies within it.
    pub data_dir: Option<PathBuf>,
    /// Most time one git command of a trigger or a poll may take (`--git-timeout`).
    pub git_timeout: Duration,
}

impl Default for RepoPolicy {
    fn default() -> Self {
        Self {
            allow_local: Vec::new(),
            allow_private: false,
            data_dir: None,
            git_timeout: Duration::from_secs(kiln_core::limits::DEFAULT_SERVER_GIT_TIMEOUT_SECS),
        }
    }
}

/// How the server's git may reach a repository that passed the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RepoAccess {
    /// `GIT_ALLOW_PROTOCOL`.
    pub allow_protocol: &'static str,
    /// `-c` settings: the checked address for http(s), no redirects.
    pub config: Vec<String>,
    pub timeout: Duration,
    /// Given to git through its environment and a credential helper, never argv.
    pub credentials: Option<kiln_protocol::RepoCredentials>,
}

impl RepoPolicy {
    /// Checks `repo` against the policy; `mirrors` is the server's git mirror directory.
    /// The error says what to do instead.
    pub(crate) async fn check(&self, repo: &str, mirrors: &Path) -> Result<RepoAccess, String> {
        match RepoLocation::parse(repo)? {
            RepoLocation::Local(path) => {
                self.check_local(&path, mirrors).await?;
                Ok(RepoAccess {
                    allow_protocol: "file",
                    config: Vec::new(),
                    timeout: self.git_timeout,
                    credentials: None,
                })
            }
            RepoLocation::Remote { scheme, host, port } => {
                let address = resolve_host(&host, port, self.allow_private, Purpose::Repository)
                    .await
                    .map_err(|error| format!("repository {error}"))?;
                Ok(remote_access(
                    scheme,
                    &host,
                    port,
                    address,
                    self.git_timeout,
                ))
            }
        }
    }

    async fn check_local(&self, path: &Path, mirrors: &Path) -> Result<(), String> {
        let refused = || {
            format!(
                "local repositories are refused unless an instance admin allows their directory (kiln serve --allow-local-repos DIR); {} is not inside one. Use an https://, ssh:// or git:// URL",
                path.display()
            )
        };
        if !path.is_absolute() {
            return Err(format!(
                "give a local repository as an absolute path, not '{}'",
                path.display()
            ));
        }
        // Lexically first, so a path outside every allowed directory is refused without
        // touching the file system (its existence does not leak).
        let lexical = normalize(path);
        let roots: Vec<PathBuf> = self
            .allow_local
            .iter()
            .map(|root| normalize(root))
            .collect();
        if !roots.iter().any(|root| lexical.starts_with(root)) {
            return Err(refused());
        }
        // A path that does not exist (yet) is judged by its deepest existing ancestor;
        // the trigger checks again, and git then reports what is missing.
        let real = canonical_or_lexical(&lexical).await;
        let mut real_roots = Vec::new();
        for root in &self.allow_local {
            if let Ok(root) = tokio::fs::canonicalize(root).await {
                real_roots.push(root);
            }
        }
        let real_mirrors = canonical_or_lexical(mirrors).await;
        if real.starts_with(&real_mirrors) || lexical.starts_with(normalize(mirrors)) {
            return Err(format!(
                "{} is inside Kiln's own git mirrors ({}); point the project at its own repository",
                path.display(),
                mirrors.display()
            ));
        }
        let data_dir = match &self.data_dir {
            Some(dir) => Some(canonical_or_lexical(dir).await),
            None => None,
        };
        let allowed = real_roots.iter().any(|root| {
            real.starts_with(root)
                && match &data_dir {
                    // Inside the data directory only through an allowed directory that
                    // is itself strictly inside it.
                    Some(data_dir) if real.starts_with(data_dir) => {
                        root.starts_with(data_dir) && root != data_dir
                    }
                    _ => true,
                }
        });
        if !allowed {
            if data_dir.as_ref().is_some_and(|dir| real.starts_with(dir)) {
                return Err(format!(
                    "{} is inside Kiln's data directory; point the project at its own repository",
                    path.display()
                ));
            }
            return Err(refused());
        }
        Ok(())
    }
}

/// The git settings for a checked remote: http(s) is pinned to the checked address
/// (`http.curloptResolve`) and follows no redirect; ssh and git connect by name (the
/// check ran just before).
fn remote_access(
    scheme: &'static str,
    host: &str,
    port: u16,
    address: SocketAddr,
    timeout: Duration,
) -> RepoAccess {
    let mut config = Vec::new();
    if matches!(scheme, "http" | "https") && host.parse::<std::net::IpAddr>().is_err() {
        let ip = match address.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        config.push(format!("http.curloptResolve={host}:{port}:{ip}"));
    }
    if matches!(scheme, "http" | "https") {
        config.push("http.followRedirects=false".into());
    }
    RepoAccess {
        allow_protocol: match scheme {
            "http" => "http",
            "https" => "https",
            "ssh" => "ssh",
            _ => "git",
        },
        config,
        timeout,
        credentials: None,
    }
}

/// Made absolute (against the working directory) with `..` and `.` resolved, without
/// reading the file system.
fn normalize(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

/// The path with symlinks resolved as far as it exists; the missing rest is appended
/// as written (already normalized).
async fn canonical_or_lexical(path: &Path) -> PathBuf {
    let path = normalize(path);
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = tokio::fs::canonicalize(existing).await {
            let mut real = real;
            for component in rest.iter().rev() {
                real.push(component);
            }
            return real;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_init(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("git")
            .args(["init", "-q", "--bare"])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn local_repositories_need_an_allowed_directory_outside_the_data_dir() {
        let base = tempfile::tempdir().unwrap();
        let allowed = base.path().join("allowed");
        let elsewhere = base.path().join("elsewhere");
        let data = base.path().join("data");
        let mirrors = data.join("git");
        for dir in [
            allowed.join("a.git"),
            elsewhere.join("b.git"),
            mirrors.join("project-2.git"),
            data.join("demo-repo"),
        ] {
            git_init(&dir);
        }
        std::os::unix::fs::symlink(elsewhere.join("b.git"), allowed.join("link.git")).unwrap();
        let policy = RepoPolicy {
            allow_local: vec![allowed.clone(), data.join("demo-repo")],
            data_dir: Some(data.clone()),
            ..RepoPolicy::default()
        };
        let check = |repo: PathBuf| {
            let policy = policy.clone();
            let mirrors = mirrors.clone();
            async move { policy.check(&repo.display().to_string(), &mirrors).await }
        };
        let access = check(allowed.join("a.git")).await.unwrap();
        assert_eq!(access.allow_protocol, "file");
        assert!(
            policy
                .check(
                    &format!("file://{}", allowed.join("a.git").display()),
                    &mirrors
                )
                .await
                .is_ok()
        );
        assert!(
            check(data.join("demo-repo")).await.is_ok(),
            "allowed inside the data dir"
        );

        let error = check(elsewhere.join("b.git")).await.unwrap_err();
        assert!(error.contains("--allow-local-repos"), "{error}");
        let error = check(allowed.join("link.git")).await.unwrap_err();
        assert!(
            error.contains("--allow-local-repos"),
            "a symlink out: {error}"
        );
        let error = check(allowed.join("../elsewhere/b.git")).await.unwrap_err();
        assert!(
            error.contains("--allow-local-repos"),
            "dot-dot out: {error}"
        );
        let error = check(mirrors.join("project-2.git")).await.unwrap_err();
        assert!(error.contains("--allow-local-repos"), "{error}");
        let error = policy.check("relative/path", &mirrors).await.unwrap_err();
        assert!(error.contains("absolute path"), "{error}");

        // Allowing the whole data directory still keeps the mirrors out.
        let careless = RepoPolicy {
            allow_local: vec![base.path().to_owned()],
            data_dir: Some(data.clone()),
            ..RepoPolicy::default()
        };
        let error = careless
            .check(
                &mirrors.join("project-2.git").display().to_string(),
                &mirrors,
            )
            .await
            .unwrap_err();
        assert!(error.contains("git mirrors"), "{error}");
        let error = careless
            .check(&data.join("demo-repo").display().to_string(), &mirrors)
            .await
            .unwrap_err();
        assert!(error.contains("data directory"), "{error}");
    }

    #[tokio::test]
    async fn remote_repositories_must_be_public_unless_allowed() {
        let policy = RepoPolicy::default();
        let mirrors = Path::new("/nonexistent/git");
        for repo in [
            "http://127.0.0.1:9/x",
            "git://127.0.0.1:9/x",
            "ssh://[::1]/x",
            "git@10.0.0.1:x.git",
            "https://[64:ff9b::a9fe:a9fe]/x",
            "http://localhost:9/x",
        ] {
            let error = policy.check(repo, mirrors).await.unwrap_err();
            assert!(error.contains("--repos-allow-private"), "{repo}: {error}");
        }
        let error = policy.check("ext::sh -c id", mirrors).await.unwrap_err();
        assert!(error.contains("remote helpers"), "{error}");

        let open = RepoPolicy {
            allow_private: true,
            ..RepoPolicy::default()
        };
        let access = open.check("http://localhost:9/x", mirrors).await.unwrap();
        assert_eq!(access.allow_protocol, "http");
        assert!(
            access
                .config
                .iter()
                .any(|c| c.starts_with("http.curloptResolve=localhost:9:")),
            "{access:?}"
        );
        assert!(
            access
                .config
                .contains(&"http.followRedirects=false".to_owned())
        );
    }
}
