//! The builds overview (`/`): the newest builds of every project the caller may read,
//! in one query, with filters (project, branch, status) and paging (`before=`), live
//! through `assets/build.js`; and the "Build" form behind it
//! (`POST /projects/{slug}/build`).

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect};
use kiln_core::BuildStatus;
use kiln_core::limits::MAX_BRANCH_LEN;
use kiln_store::{BuildFilter, Project};

use super::view::{BuildView, build_views};
use super::{Chrome, PageError, PageResult, check_csrf, encode_query, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::scheduler::TriggerRequest;

/// Builds per page: 50 rows keep the page far below 150 KB.
pub(crate) const PAGE_SIZE: i64 = 50;
/// Live streams the overview opens at most (browsers allow six connections per host
/// over HTTP/1.1; the rest of the page needs some). More projects: a slow refresh.
const MAX_PROJECT_STREAMS: usize = 4;

/// A project the caller may build, with the branch its form proposes.
#[derive(Debug)]
struct BuildTarget {
    slug: String,
    name: String,
    default_branch: String,
}

#[derive(Debug)]
struct ProjectOption {
    slug: String,
    name: String,
    selected: bool,
}

#[derive(Debug)]
struct StatusOption {
    name: &'static str,
    selected: bool,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    builds: Vec<BuildView>,
    projects: Vec<ProjectOption>,
    statuses: Vec<StatusOption>,
    branch: String,
    filtered: bool,
    targets: Vec<BuildTarget>,
    /// Link to the next (older) page, with the filters kept.
    older: Option<String>,
    /// Link back to the newest page when paging.
    newest: Option<String>,
    /// Projects whose event streams the script follows (space-separated slugs).
    stream_projects: String,
    /// Too many projects to follow live: the script refreshes slowly instead.
    stream_all: bool,
    /// The newest event id when the page was read: the streams resume after it.
    last_event_id: i64,
}

/// The filters of the overview, parsed with field-named errors (a 400 page).
struct Filters {
    project: Option<Project>,
    branch: Option<String>,
    status: Option<BuildStatus>,
    before: Option<i64>,
}

async fn filters(state: &AppState, caller: &Caller, uri: &Uri) -> Result<Filters, PageError> {
    let params = QueryParams::from_uri(uri.query());
    let project = match params.string("project") {
        Some(slug) => Some(crate::services::projects::readable_project(state, caller, slug).await?),
        None => None,
    };
    let branch = params
        .string("branch")
        .map(str::trim)
        .filter(|b| !b.is_empty());
    if let Some(branch) = branch
        && (branch.len() > MAX_BRANCH_LEN || branch.chars().any(char::is_control))
    {
        return Err(PageError(ApiError::bad_request(
            "invalid_field",
            Some("branch"),
            format!("branch: must be a branch name of at most {MAX_BRANCH_LEN} characters"),
        )));
    }
    let status = match params.string("status") {
        Some(raw) => Some(BuildStatus::from_name(raw).ok_or_else(|| {
            PageError(ApiError::bad_request(
                "invalid_field",
                Some("status"),
                format!(
                    "status: '{raw}' is not one of {}; pick one from the list",
                    BuildStatus::ALL.map(BuildStatus::as_str).join(", ")
                ),
            ))
        })?),
        None => None,
    };
    let before = params.integer("before", 1, i64::MAX)?;
    Ok(Filters {
        project,
        branch: branch.map(str::to_owned),
        status,
        before,
    })
}

/// The query string of the overview with these filters (and a cursor).
fn overview_link(filters: &Filters, before: Option<i64>) -> String {
    let mut parts = Vec::new();
    if let Some(project) = &filters.project {
        parts.push(format!("project={}", encode_query(&project.slug)));
    }
    if let Some(branch) = &filters.branch {
        parts.push(format!("branch={}", encode_query(branch)));
    }
    if let Some(status) = filters.status {
        parts.push(format!("status={}", status.as_str()));
    }
    if let Some(before) = before {
        parts.push(format!("before={before}"));
    }
    if parts.is_empty() {
        "/".into()
    } else {
        format!("/?{}", parts.join("&"))
    }
}

/// `GET /`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> PageResult {
    let filters = filters(&state, &caller, &uri).await?;
    let chrome = Chrome::load(&state, &caller, "builds", "Builds").await?;
    let readable: Vec<Project> = state
        .store
        .list_projects()
        .await?
        .into_iter()
        .filter(|project| caller.can_read(project.id))
        .collect();
    // One query for every readable project: instance admins read all (no set), others
    // the projects they have a role in.
    let filter = BuildFilter {
        project_id: filters.project.as_ref().map(|p| p.id),
        project_ids: (!caller.is_admin()).then(|| readable.iter().map(|p| p.id).collect()),
        branch: filters.branch.clone(),
        status: filters.status,
        before: filters.before,
        limit: PAGE_SIZE,
    };
    let builds = state.store.list_builds(&filter).await?;
    let older = (builds.len() as i64 == PAGE_SIZE)
        .then(|| builds.last().map(|b| overview_link(&filters, Some(b.id))))
        .flatten();
    let newest = filters.before.map(|_| overview_link(&filters, None));
    let views = build_views(&state, &builds).await?;
    let last_event_id = state.store.max_event_id().await?;

    let mut stream_slugs: Vec<String> = match &filters.project {
        Some(project) => vec![project.slug.clone()],
        None => readable.iter().map(|p| p.slug.clone()).collect(),
    };
    let stream_all = stream_slugs.len() <= MAX_PROJECT_STREAMS;
    stream_slugs.truncate(MAX_PROJECT_STREAMS);
    let targets = readable
        .iter()
        .filter(|p| p.repo.is_some() && caller.can_write(p.id))
        .filter(|p| filters.project.as_ref().is_none_or(|f| f.id == p.id))
        .map(|p| BuildTarget {
            slug: p.slug.clone(),
            name: p.name.clone(),
            default_branch: filters
                .branch
                .clone()
                .unwrap_or_else(|| p.default_branch.clone()),
        })
        .collect();
    let page = OverviewPage {
        chrome,
        projects: readable
            .iter()
            .map(|p| ProjectOption {
                slug: p.slug.clone(),
                name: p.name.clone(),
                selected: filters.project.as_ref().is_some_and(|f| f.id == p.id),
            })
            .collect(),
        statuses: BuildStatus::ALL
            .iter()
            .map(|s| StatusOption {
                name: s.as_str(),
                selected: filters.status == Some(*s),
            })
            .collect(),
        branch: filters.branch.clone().unwrap_or_default(),
        filtered: filters.project.is_some() || filters.branch.is_some() || filters.status.is_some(),
        builds: views,
        targets,
        older,
        newest,
        stream_projects: if stream_all {
            stream_slugs.join(" ")
        } else {
            String::new()
        },
        stream_all,
        last_event_id,
    };
    Ok(render(&page))
}

/// `POST /projects/{slug}/build` (form: `_csrf`, `branch`): triggers a build like
/// `POST /api/v1/projects/{slug}/builds` and shows its page (303).
pub(crate) async fn trigger(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: axum::body::Bytes,
) -> PageResult {
    let form = QueryParams::from_uri(Some(&String::from_utf8_lossy(&body)));
    check_csrf(&caller, form.string("_csrf").unwrap_or_default())?;
    let project = crate::services::builds::writable_project(&state, &caller, &slug).await?;
    let by = Some(crate::services::builds::requester(&state, &caller).await?);
    let request = TriggerRequest {
        branch: form
            .string("branch")
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty()),
        commit: None,
        priority: None,
        cause: "api",
        retry_of: None,
        by,
        deploys_to: None,
        avoid_agents_of: None,
    };
    let build = state.scheduler.trigger(&project, request).await?;
    Ok(Redirect::to(&format!("/builds/{}", build.run_id)).into_response())
}
