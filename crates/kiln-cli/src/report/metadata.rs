//! What `kiln run` learns about its surroundings: git repository, branch and commit,
//! host, and CI provider metadata (GitHub Actions, GitLab CI, CircleCI).

use std::path::Path;
use std::process::Command;

use serde_json::{Map, Value, json};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct BuildMetadata {
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub host: Option<String>,
    /// `{"provider": …, "url": …, …}` when running under a known CI.
    pub ci: Option<Value>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// The repository name from a remote URL (`git@host:org/app.git` → `org/app`).
fn repo_from_remote(url: &str) -> String {
    let trimmed = url.trim_end_matches('/').trim_end_matches(".git");
    let path = trimmed.rsplit_once("://").map_or(trimmed, |(_, rest)| {
        rest.split_once('/').map_or(rest, |(_, path)| path)
    });
    let path = path.rsplit_once(':').map_or(path, |(_, p)| p);
    path.trim_start_matches('/').to_owned()
}

pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| env("HOSTNAME"))
}

/// Metadata from a known CI provider's variables (`host` left empty).
fn ci_metadata() -> Option<BuildMetadata> {
    if env("GITHUB_ACTIONS").as_deref() == Some("true") {
        let url = match (
            env("GITHUB_SERVER_URL"),
            env("GITHUB_REPOSITORY"),
            env("GITHUB_RUN_ID"),
        ) {
            (Some(server), Some(repo), Some(run)) => {
                Some(format!("{server}/{repo}/actions/runs/{run}"))
            }
            _ => None,
        };
        let branch = env("GITHUB_HEAD_REF").or_else(|| env("GITHUB_REF_NAME"));
        return Some(BuildMetadata {
            ci: Some(
                json!({"provider": "github_actions", "url": url, "workflow": env("GITHUB_WORKFLOW"),
                   "job": env("GITHUB_JOB"), "runId": env("GITHUB_RUN_ID"), "actor": env("GITHUB_ACTOR")}),
            ),
            repo: env("GITHUB_REPOSITORY"),
            branch,
            commit: env("GITHUB_SHA"),
            host: None,
        });
    }
    if env("GITLAB_CI").as_deref() == Some("true") {
        return Some(BuildMetadata {
            ci: Some(
                json!({"provider": "gitlab_ci", "url": env("CI_JOB_URL").or_else(|| env("CI_PIPELINE_URL")),
                   "pipelineId": env("CI_PIPELINE_ID"), "job": env("CI_JOB_NAME"), "user": env("GITLAB_USER_LOGIN")}),
            ),
            repo: env("CI_PROJECT_PATH"),
            branch: env("CI_COMMIT_REF_NAME"),
            commit: env("CI_COMMIT_SHA"),
            host: None,
        });
    }
    if env("CIRCLECI").as_deref() == Some("true") {
        let repo = match (
            env("CIRCLE_PROJECT_USERNAME"),
            env("CIRCLE_PROJECT_REPONAME"),
        ) {
            (Some(user), Some(name)) => Some(format!("{user}/{name}")),
            (None, name) => name,
            (Some(_), None) => None,
        };
        return Some(BuildMetadata {
            ci: Some(
                json!({"provider": "circleci", "url": env("CIRCLE_BUILD_URL"), "job": env("CIRCLE_JOB"),
                   "buildNum": env("CIRCLE_BUILD_NUM"), "user": env("CIRCLE_USERNAME")}),
            ),
            repo,
            branch: env("CIRCLE_BRANCH"),
            commit: env("CIRCLE_SHA1"),
            host: None,
        });
    }
    None
}

/// Drops null members so the stored event stays compact.
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

/// Collects metadata for a build run from `dir`. CI variables win over git, since CI
/// checkouts are often detached heads.
pub fn collect(dir: &Path) -> BuildMetadata {
    let mut metadata = BuildMetadata {
        host: hostname(),
        ..BuildMetadata::default()
    };
    if let Some(toplevel) = git(dir, &["rev-parse", "--show-toplevel"]) {
        metadata.commit = git(dir, &["rev-parse", "HEAD"]);
        metadata.branch = git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD");
        metadata.repo = git(dir, &["config", "--get", "remote.origin.url"])
            .map(|url| repo_from_remote(&url))
            .or_else(|| {
                Path::new(&toplevel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            });
    }
    if let Some(ci) = ci_metadata() {
        metadata.ci = ci.ci.map(without_nulls);
        metadata.repo = ci.repo.or(metadata.repo);
        metadata.branch = ci.branch.or(metadata.branch);
        metadata.commit = ci.commit.or(metadata.commit);
    }
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_name_the_repository() {
        assert_eq!(repo_from_remote("git@github.com:org/app.git"), "org/app");
        assert_eq!(
            repo_from_remote("https://gitlab.com/group/sub/app.git"),
            "group/sub/app"
        );
        assert_eq!(repo_from_remote("ssh://git@host:2222/org/app"), "org/app");
        assert_eq!(repo_from_remote("file:///srv/git/app.git"), "srv/git/app");
    }

    #[test]
    fn reads_a_real_git_repository() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let status = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        run(&["init", "-q", "-b", "feature/x"]);
        run(&[
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "first",
        ]);
        run(&[
            "remote",
            "add",
            "origin",
            "git@example.com:acme/widgets.git",
        ]);
        let metadata = collect(dir.path());
        if metadata.ci.is_none() {
            assert_eq!(metadata.branch.as_deref(), Some("feature/x"));
            assert_eq!(metadata.repo.as_deref(), Some("acme/widgets"));
        }
        assert_eq!(metadata.commit.as_ref().map(String::len), Some(40));
        assert!(metadata.host.is_some());
    }
}
