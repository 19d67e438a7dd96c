//! `/projects`: the projects the caller may read, with a settings link where the
//! caller is an admin.

use askama::Template;
use axum::Extension;
use axum::extract::State;

use crate::AppState;
use crate::auth::Caller;
use crate::web::{Chrome, PageResult, render};

#[derive(Debug)]
struct ProjectRow {
    slug: String,
    name: String,
    role: String,
    admin: bool,
    repo: String,
}

#[derive(Template)]
#[template(path = "projects.html")]
struct ProjectsPage {
    chrome: Chrome,
    projects: Vec<ProjectRow>,
}

/// `GET /projects`.
pub(crate) async fn projects_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> PageResult {
    let chrome = Chrome::load(&state, &caller, "projects", "Projects").await?;
    let projects = state
        .store
        .list_projects()
        .await?
        .into_iter()
        .filter(|project| caller.can_read(project.id))
        .map(|project| ProjectRow {
            role: match caller.role(project.id) {
                Some(role) => role.as_str().to_owned(),
                None if caller.is_admin() => "instance admin".to_owned(),
                None => "viewer".to_owned(),
            },
            admin: caller.can_admin(project.id),
            repo: crate::services::repos::shown_repo(&project).unwrap_or_default(),
            slug: project.slug,
            name: project.name,
        })
        .collect();
    Ok(render(&ProjectsPage { chrome, projects }))
}
