//! The builds overview (`/`): recent builds of every project the caller may read.

use askama::Template;
use axum::Extension;
use axum::extract::State;
use kiln_store::BuildFilter;

use super::{Chrome, PageResult, render};
use crate::AppState;
use crate::auth::Caller;

/// One build as a row of the overview.
#[derive(Debug)]
struct BuildRow {
    run_id: String,
    project: String,
    number: i64,
    status: &'static str,
    branch: String,
    commit: String,
    started_at: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    builds: Vec<BuildRow>,
}

/// `GET /`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> PageResult {
    let chrome = Chrome::load(&state, &caller, "builds", "Builds").await?;
    let mut builds = Vec::new();
    for project in state.store.list_projects().await? {
        if !caller.can_read(project.id) {
            continue;
        }
        let filter = BuildFilter {
            project_id: Some(project.id),
            limit: 20,
            ..BuildFilter::default()
        };
        for build in state.store.list_builds(&filter).await? {
            builds.push(BuildRow {
                run_id: build.state.run_id.to_string(),
                project: build.project_slug.clone(),
                number: build.number,
                status: build.state.status.as_str(),
                branch: build.state.branch.clone().unwrap_or_default(),
                commit: build
                    .state
                    .commit
                    .as_deref()
                    .map(|c| c.chars().take(10).collect())
                    .unwrap_or_default(),
                started_at: build.state.started_at.to_rfc3339(),
            });
        }
    }
    Ok(render(&OverviewPage { chrome, builds }))
}
