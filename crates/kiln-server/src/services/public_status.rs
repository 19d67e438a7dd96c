//! A project's public status, opted into by its admins: the setting, the read-only page
//! (latest build per branch, success rate, duration trend — never logs, messages,
//! commands, hosts or anything secret) and the badge of a branch. A project that did not
//! opt in answers exactly as one that does not exist, so the public routes tell nobody
//! which projects exist.

use kiln_core::public_status::{self, BadgeState};
use kiln_core::{BuildStatus, Millis};
use kiln_protocol::PublicStatusDto;
use kiln_store::{BuildSummary, Project};

use crate::AppState;
use crate::auth::Caller;
use crate::service_error::ServiceError;

/// The newest builds of a project a public page or badge looks at: their cost stays
/// bounded however long the history is (a branch not built among them shows no build).
pub(crate) const WINDOW: i64 = 1000;
/// Ended builds the success rate and the duration trend cover.
pub(crate) const TREND_BUILDS: usize = 30;
/// Branches the page lists at most.
const BRANCHES: usize = 50;

fn not_public() -> ServiceError {
    ServiceError::NotFound(
        "no public status here: the project does not exist or its admins have not published it"
            .into(),
    )
}

/// Path segments of a branch, percent-encoded but for its slashes.
fn branch_path(branch: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(branch, SEGMENT).to_string()
}

/// The setting as the API answers it.
pub(crate) fn setting(project: &Project) -> PublicStatusDto {
    PublicStatusDto {
        enabled: project.public_status,
        page: format!("/status/{}", project.slug),
        badge: format!(
            "/badge/{}/{}.svg",
            project.slug,
            branch_path(&project.default_branch)
        ),
    }
}

/// Publishes or withdraws `project`'s status (its admin, checked by the caller of
/// this); recorded in the audit log.
pub(crate) async fn set_public_status(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    enabled: bool,
) -> Result<Project, ServiceError> {
    let updated = state.store.set_public_status(project.id, enabled).await?;
    let action = if enabled {
        "project.status_published"
    } else {
        "project.status_withdrawn"
    };
    crate::services::accounts::audit(state, caller, action, Some(project.id), Some(&project.slug))
        .await;
    Ok(updated)
}

/// The project behind a public route, if it opted in; otherwise "not found", whether
/// or not it exists.
async fn public_project(state: &AppState, slug: &str) -> Result<Project, ServiceError> {
    match state.store.project_by_slug(slug).await? {
        Some(project) if project.public_status => Ok(project),
        _ => Err(not_public()),
    }
}

/// A branch's badge: its latest build's state (`unknown` without one).
pub(crate) async fn badge(
    state: &AppState,
    slug: &str,
    branch: &str,
) -> Result<BadgeState, ServiceError> {
    let project = public_project(state, slug).await?;
    let latest = state
        .store
        .recent_build_summaries(project.id, WINDOW, Some(branch), 1)
        .await?;
    Ok(BadgeState::of(latest.first().map(|build| build.status)))
}

/// A branch's latest build, as the page lists it.
#[derive(Clone, Debug)]
pub(crate) struct BranchStatus {
    pub branch: String,
    pub badge: BadgeState,
    pub number: i64,
    pub commit: Option<String>,
    pub started_at: Millis,
    pub duration_ms: Option<i64>,
    /// `/badge/{slug}/{branch}.svg`.
    pub badge_path: String,
}

/// One ended build of the trend, oldest first.
#[derive(Clone, Debug)]
pub(crate) struct TrendPoint {
    pub number: i64,
    pub duration_ms: i64,
}

/// Everything the public page shows.
#[derive(Clone, Debug)]
pub(crate) struct PublicStatus {
    pub slug: String,
    pub name: String,
    pub branches: Vec<BranchStatus>,
    /// Successes and counted builds among the last `TREND_BUILDS` ended ones.
    pub successes: u64,
    pub counted: u64,
    pub trend: Vec<TrendPoint>,
}

/// The public page of a project that opted in.
pub(crate) async fn page(state: &AppState, slug: &str) -> Result<PublicStatus, ServiceError> {
    let project = public_project(state, slug).await?;
    let builds = state
        .store
        .recent_build_summaries(project.id, WINDOW, None, WINDOW)
        .await?;
    let branches = public_status::latest_per_key(
        builds.iter().filter(|build| build.branch.is_some()),
        |build| build.branch.clone(),
    )
    .into_iter()
    .take(BRANCHES)
    .map(|build: &BuildSummary| {
        let branch = build.branch.clone().unwrap_or_default();
        BranchStatus {
            badge_path: format!("/badge/{}/{}.svg", project.slug, branch_path(&branch)),
            branch,
            badge: BadgeState::of(Some(build.status)),
            number: build.number,
            commit: build.commit.clone(),
            started_at: build.started_at,
            duration_ms: build.duration_ms,
        }
    })
    .collect();
    let ended: Vec<&BuildSummary> = builds
        .iter()
        .filter(|build| build.ended_at.is_some())
        .take(TREND_BUILDS)
        .collect();
    let (successes, counted) = public_status::success_rate(ended.iter().map(|build| build.status));
    let trend = ended
        .iter()
        .rev()
        .filter(|build| build.status == BuildStatus::Success)
        .filter_map(|build| {
            build.duration_ms.map(|duration_ms| TrendPoint {
                number: build.number,
                duration_ms,
            })
        })
        .collect();
    Ok(PublicStatus {
        slug: project.slug,
        name: project.name,
        branches,
        successes,
        counted,
        trend,
    })
}

#[cfg(test)]
mod tests {
    use super::branch_path;

    #[test]
    fn branch_paths_keep_slashes_and_encode_the_rest() {
        assert_eq!(branch_path("main"), "main");
        assert_eq!(branch_path("feature/a b"), "feature/a%20b");
        assert_eq!(branch_path("x?y#z"), "x%3Fy%23z");
    }
}
