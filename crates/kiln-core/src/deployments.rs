//! Deployments: environment names, a step's `deploy:` target, a deployment's status and
//! how it follows its build, and how a published site's request path maps to a file of
//! the release (index pages, refused traversal, content types). No I/O.

use std::fmt;

use crate::build::BuildStatus;
use crate::event::FieldError;
use crate::jobs::JobState;

/// The longest environment name.
pub const MAX_ENVIRONMENT_LEN: usize = 40;

/// An environment's name: 1-40 lowercase letters, digits and single `-`, starting with a
/// letter, not ending with `-` (so `{project}--{environment}` host names split one way).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvironmentName(String);

impl EnvironmentName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_ENVIRONMENT_LEN
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && !raw.ends_with('-')
            && !raw.contains("--")
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(FieldError::new(
                field,
                format!(
                    "must be 1-{MAX_ENVIRONMENT_LEN} lowercase letters, digits and single '-', starting with a letter (for example 'production' or 'staging-eu')"
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvironmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a deploy step's result goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployTarget {
    /// Kiln serves the build's artifacts under this workspace-relative directory.
    Publish(String),
    /// The step's own script deploys; Kiln records the deployment and this URL.
    Url(String),
}

/// A step's `deploy:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploySpec {
    pub environment: EnvironmentName,
    pub target: DeployTarget,
}

impl DeploySpec {
    /// The directory Kiln publishes, if it publishes.
    pub fn publish_dir(&self) -> Option<&str> {
        match &self.target {
            DeployTarget::Publish(dir) => Some(dir),
            DeployTarget::Url(_) => None,
        }
    }

    /// The URL a script deployment declares.
    pub fn url(&self) -> Option<&str> {
        match &self.target {
            DeployTarget::Url(url) => Some(url),
            DeployTarget::Publish(_) => None,
        }
    }
}

/// A publish directory as stored and matched against artifact paths: no `./`, no
/// trailing `/`; `.` (the whole workspace) is the empty string.
pub fn normalize_publish_dir(raw: &str) -> String {
    let trimmed = raw.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    if trimmed == "." {
        String::new()
    } else {
        trimmed.to_owned()
    }
}

/// Whether `url` is an absolute http(s) URL with a host, as `deploy: {url: …}` needs.
pub fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty()
            && !host.contains('@')
            && url.len() <= 2048
            && !url.chars().any(|c| c.is_control() || c.is_whitespace())
    })
}

/// Where a deployment is (the seed's statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeploymentStatus {
    Queued,
    Cloning,
    Building,
    Uploading,
    Deployed,
    Failed,
    Cancelled,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 7] = [
        Self::Queued,
        Self::Cloning,
        Self::Building,
        Self::Uploading,
        Self::Deployed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Cloning => "cloning",
            Self::Building => "building",
            Self::Uploading => "uploading",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Deployed | Self::Failed | Self::Cancelled)
    }

    /// The statuses a deployment passes through from `self` to `to`, `to` last: on the
    /// way to `deployed` every status after `self` (a build can finish between two looks,
    /// and followers still see each stage once, in order); otherwise `to` alone.
    pub fn path_to(self, to: DeploymentStatus) -> Vec<DeploymentStatus> {
        if to != Self::Deployed || self.is_terminal() {
            return vec![to];
        }
        [
            Self::Cloning,
            Self::Building,
            Self::Uploading,
            Self::Deployed,
        ]
        .into_iter()
        .filter(|status| status.rank() > self.rank())
        .collect()
    }

    /// The order statuses move in; a deployment never moves back.
    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Cloning => 1,
            Self::Building => 2,
            Self::Uploading => 3,
            Self::Deployed | Self::Failed | Self::Cancelled => 4,
        }
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a deployment's status is derived from: its build's status and its jobs.
#[derive(Clone, Debug)]
pub struct BuildProgress<'a> {
    pub build: BuildStatus,
    /// Every job of the build: its step and state.
    pub jobs: Vec<(&'a str, JobState)>,
    /// The step that deploys.
    pub deploy_step: &'a str,
}

/// What the deployment should become, given where it is. `Deployed` means "the build
/// succeeded": the caller still publishes (switches the environment) before recording it.
///
/// queued: no job of the build has been claimed; cloning: a job was claimed (its agent
/// checks out) and none ended; building: a job ended or the deploy step runs; uploading:
/// the deploy step passed (its files are uploaded) and the build has not ended yet.
/// A status never moves back, so replicas and repeats agree.
pub fn next_status(current: DeploymentStatus, progress: &BuildProgress<'_>) -> DeploymentStatus {
    if current.is_terminal() {
        return current;
    }
    let derived = match progress.build {
        BuildStatus::Success => DeploymentStatus::Deployed,
        BuildStatus::Failed | BuildStatus::Stale => DeploymentStatus::Failed,
        BuildStatus::Cancelled => DeploymentStatus::Cancelled,
        BuildStatus::Queued | BuildStatus::Running => {
            let deploy_state = progress
                .jobs
                .iter()
                .find(|(step, _)| *step == progress.deploy_step)
                .map(|(_, state)| *state);
            let any_started = progress
                .jobs
                .iter()
                .any(|(_, state)| *state != JobState::Queued && *state != JobState::Blocked);
            let any_ended = progress.jobs.iter().any(|(_, state)| state.is_terminal());
            match deploy_state {
                Some(JobState::Passed) => DeploymentStatus::Uploading,
                Some(JobState::Running) if any_ended => DeploymentStatus::Building,
                _ if any_ended => DeploymentStatus::Building,
                _ if any_started => DeploymentStatus::Cloning,
                _ => DeploymentStatus::Queued,
            }
        }
    };
    if derived.rank() >= current.rank() {
        derived
    } else {
        current
    }
}

/// Why a site path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SitePathError {
    /// `..`, a backslash, NUL, a control character or a bad percent-encoding: 400.
    Refused,
}

/// The file of a release that a request path (still percent-encoded, after the site's
/// prefix, without the query) names: `""` and paths ending in `/` are their
/// `index.html`. Traversal (`..`, also encoded), backslashes, NUL and control characters
/// are refused, so the answer is always a plain relative path below the release.
pub fn site_file(raw: &str) -> Result<String, SitePathError> {
    let decoded = percent_decode(raw).ok_or(SitePathError::Refused)?;
    if decoded.contains('\\') || decoded.chars().any(char::is_control) {
        return Err(SitePathError::Refused);
    }
    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(SitePathError::Refused),
            _ => segments.push(segment),
        }
    }
    let wants_index = decoded.is_empty() || decoded.ends_with('/');
    let mut path = segments.join("/");
    if wants_index {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str("index.html");
    }
    Ok(path)
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` a published file is served with, by extension (text as UTF-8);
/// unknown extensions are `application/octet-stream`.
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let extension = match name.rsplit_once('.') {
        Some((_, extension)) => extension.to_ascii_lowercase(),
        None => return "application/octet-stream",
    };
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// The site a host name names under `--sites-domain`: `{project}--{environment}.{domain}`
/// (an environment name holds no `--`, so the last one splits). `None` for other hosts.
pub fn site_from_host<'a>(host: &'a str, domain: &str) -> Option<(&'a str, &'a str)> {
    let host = host.split(':').next().unwrap_or(host);
    let label = host
        .strip_suffix(domain)?
        .strip_suffix('.')
        .filter(|label| !label.contains('.'))?;
    let (project, environment) = label.rsplit_once("--")?;
    (!project.is_empty() && !environment.is_empty()).then_some((project, environment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_are_slugs_without_double_hyphens() {
        for good in ["production", "staging-eu", "p2"] {
            assert!(EnvironmentName::parse("e", good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "2prod", "a--b", "prod-", "a_b", &"x".repeat(41)] {
            assert!(EnvironmentName::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_dirs_and_urls() {
        assert_eq!(normalize_publish_dir("./dist/"), "dist");
        assert_eq!(normalize_publish_dir("."), "");
        assert!(is_http_url("https://staging.example.com/app"));
        assert!(is_http_url("http://localhost:8080"));
        assert!(!is_http_url("ftp://x"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("https://user@host/"));
        assert!(!is_http_url("https://a b"));
    }

    fn progress(build: BuildStatus, jobs: Vec<(&'static str, JobState)>) -> BuildProgress<'static> {
        BuildProgress {
            build,
            jobs,
            deploy_step: "publish",
        }
    }

    #[test]
    fn statuses_follow_the_build_and_never_move_back() {
        use DeploymentStatus as D;
        use JobState as J;
        let queued = progress(
            BuildStatus::Queued,
            vec![("build", J::Queued), ("publish", J::Blocked)],
        );
        assert_eq!(next_status(D::Queued, &queued), D::Queued);
        let cloning = progress(
            BuildStatus::Running,
            vec![("build", J::Running), ("publish", J::Blocked)],
        );
        assert_eq!(next_status(D::Queued, &cloning), D::Cloning);
        let building = progress(
            BuildStatus::Running,
            vec![("build", J::Passed), ("publish", J::Running)],
        );
        assert_eq!(next_status(D::Cloning, &building), D::Building);
        let uploading = progress(
            BuildStatus::Running,
            vec![("build", J::Passed), ("publish", J::Passed)],
        );
        assert_eq!(next_status(D::Building, &uploading), D::Uploading);
        assert_eq!(next_status(D::Uploading, &cloning), D::Uploading);
        let done = progress(BuildStatus::Success, vec![]);
        assert_eq!(next_status(D::Uploading, &done), D::Deployed);
        assert_eq!(
            next_status(D::Building, &progress(BuildStatus::Stale, vec![])),
            D::Failed
        );
        assert_eq!(
            next_status(D::Queued, &progress(BuildStatus::Cancelled, vec![])),
            D::Cancelled
        );
        assert_eq!(next_status(D::Failed, &done), D::Failed);
    }

    #[test]
    fn site_paths_map_to_release_files() {
        assert_eq!(site_file("").unwrap(), "index.html");
        assert_eq!(site_file("/").unwrap(), "index.html");
        assert_eq!(site_file("docs/").unwrap(), "docs/index.html");
        assert_eq!(site_file("app.js").unwrap(), "app.js");
        assert_eq!(site_file("a%20b.txt").unwrap(), "a b.txt");
        assert_eq!(site_file("./a//b").unwrap(), "a/b");
        for bad in [
            "../secret",
            "a/../../b",
            "%2e%2e/x",
            "%2E%2E%2Fx",
            "a%5cb",
            "a\\b",
            "%00",
            "%zz",
            "%c3",
        ] {
            assert_eq!(site_file(bad), Err(SitePathError::Refused), "{bad}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/app.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert_eq!(content_type("README"), "application/octet-stream");
        assert_eq!(content_type("x.unknown"), "application/octet-stream");
    }

    #[test]
    fn hosts_name_sites_under_the_domain() {
        assert_eq!(
            site_from_host("web--production.sites.test", "sites.test"),
            Some(("web", "production"))
        );
        assert_eq!(
            site_from_host("my--app--staging.sites.test:8080", "sites.test"),
            Some(("my--app", "staging"))
        );
        assert_eq!(site_from_host("sites.test", "sites.test"), None);
        assert_eq!(site_from_host("a.b--c.sites.test", "sites.test"), None);
        assert_eq!(site_from_host("web.evil.test", "sites.test"), None);
        assert_eq!(site_from_host("webprod.sites.test", "sites.test"), None);
    }

    #[test]
    fn the_way_to_deployed_passes_every_stage_once() {
        use DeploymentStatus as D;
        assert_eq!(
            D::Building.path_to(D::Deployed),
            [D::Uploading, D::Deployed]
        );
        assert_eq!(
            D::Queued.path_to(D::Deployed),
            [D::Cloning, D::Building, D::Uploading, D::Deployed]
        );
        assert_eq!(D::Uploading.path_to(D::Deployed), [D::Deployed]);
        assert_eq!(D::Cloning.path_to(D::Failed), [D::Failed]);
        assert_eq!(D::Queued.path_to(D::Building), [D::Building]);
    }
}
