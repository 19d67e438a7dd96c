//! A project's settings page (`/projects/{slug}/settings`: tokens, members, branches,
//! repository, webhooks) and what its pages share: the page render, the notices a
//! completed form shows and the page that shows a new secret once. The forms of each
//! area live in the submodules, with the `/projects` list, a webhook endpoint's
//! delivery log and `/account`; `admin_form.rs` is the preamble of every admin form.
//!
//! Every action calls the helper its JSON API route calls (`api::projects`,
//! `api::members`, `api::repos`, `api::webhooks`, `api::users`), so validation, store
//! calls and the audit log are the API's. Project pages need the admin role
//! (`administered_project`: 404 for a project the caller may not see, 403 naming the
//! role otherwise; instance admins pass). A refused form shows the page again with
//! the reason and the refusal's status. New secrets (a token, a webhook's signing
//! secret) are shown once, on the page that answers the form, with `no-store`.

pub(super) mod account;
mod admin_form;
pub(super) mod members;
pub(super) mod projects;
pub(super) mod public_status;
pub(super) mod repo;
pub(super) mod tokens;
pub(super) mod webhooks;

use std::collections::HashMap;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use kiln_store::Project;

use super::form::FormFields;
use super::when::When;
use super::{Chrome, PageError, PageResult, encode_query, render};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::members::administered_project;

use admin_form::{AdminForm, AdminPage};

// ---- The settings page.

#[derive(Debug)]
struct TokenRow {
    id: i64,
    name: String,
    prefix: String,
    scopes: String,
    created: When,
    /// None: never used.
    last_used: Option<When>,
    revoked: bool,
}

#[derive(Debug)]
struct MemberRow {
    user_id: i64,
    email: String,
    name: String,
    role: &'static str,
}

#[derive(Debug)]
struct BranchRow {
    name: String,
    /// Empty: the default priority.
    priority: String,
    auto_build: bool,
    last_commit: String,
}

#[derive(Debug)]
struct WebhookRow {
    id: i64,
    url: String,
    format: &'static str,
    events: String,
    active: bool,
    disabled_reason: String,
    success_rate: String,
    pending: i64,
    delivered: i64,
    failed: i64,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    slug: String,
    project_name: String,
    notice: Option<&'static str>,
    error: Option<String>,
    tokens: Vec<TokenRow>,
    members: Vec<MemberRow>,
    branches: Vec<BranchRow>,
    repo: String,
    default_branch: String,
    max_concurrency: String,
    webhooks: Vec<WebhookRow>,
    roles: [&'static str; 3],
    /// The project's public status page and badges are published.
    public_status: bool,
    public_page: String,
    public_badge: String,
}

/// What a completed form says on the page it returns to (a fixed list, so nothing from
/// the query string is echoed).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "token-revoked" => "Token revoked: it stops working within seconds.",
        "member-saved" => "Member saved.",
        "member-removed" => "Member removed.",
        "branch-saved" => "Branch saved.",
        "branch-deleted" => "Branch deleted.",
        "repo-saved" => "Repository settings saved.",
        "webhook-enabled" => "Webhook enabled: pending deliveries go out now.",
        "webhook-disabled" => "Webhook disabled: deliveries wait until it is enabled again.",
        "webhook-deleted" => "Webhook deleted with its delivery log.",
        "test-queued" => "Test event queued: it appears in the delivery log below in a moment.",
        "redelivery-queued" => "Redelivery queued.",
        "password-changed" => "Password changed. Use the new one next time you log in.",
        "status-published" => "Public status published: the page and badges answer anyone now.",
        "status-withdrawn" => "Public status withdrawn: the page and badges answer 404 now.",
        _ => return None,
    })
}

fn query_notice(uri: &Uri) -> Option<&'static str> {
    FormFields::parse(uri.query().unwrap_or_default().as_bytes())
        .get("notice")
        .and_then(notice_text)
}

/// Renders a project's settings, with a notice or a refusal (and its status).
async fn settings_response(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    notice: Option<&'static str>,
    refusal: Option<ApiError>,
) -> PageResult {
    let chrome = Chrome::load(
        state,
        caller,
        "projects",
        format!("{} settings", project.name),
    )
    .await?;
    let now = state.clock.now();
    let tokens = state
        .store
        .list_tokens(Some(project.id))
        .await?
        .into_iter()
        .map(|token| TokenRow {
            id: token.id,
            name: token.name,
            prefix: token.display_prefix,
            scopes: token
                .scopes
                .iter()
                .map(|scope| scope.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            created: When::new(token.created_at, now),
            last_used: token.last_used_at.map(|at| When::new(at, now)),
            revoked: token.revoked_at.is_some(),
        })
        .collect();
    let mut members = Vec::new();
    for membership in state.store.members_of_project(project.id).await? {
        if let Some(user) = state.store.user_by_id(membership.user_id).await? {
            members.push(MemberRow {
                user_id: user.id,
                email: user.email,
                name: user.name,
                role: membership.role.as_str(),
            });
        }
    }
    let branches = state
        .store
        .list_branches(project.id)
        .await?
        .into_iter()
        .map(|branch| BranchRow {
            name: branch.name,
            priority: branch
                .priority
                .map(|priority| priority.to_string())
                .unwrap_or_default(),
            auto_build: branch.auto_build,
            last_commit: branch
                .last_commit
                .map(|commit| commit.chars().take(10).collect())
                .unwrap_or_default(),
        })
        .collect();
    let statuses: HashMap<i64, _> = state
        .store
        .webhook_status(Some(project.id))
        .await?
        .into_iter()
        .map(|status| (status.endpoint_id, status))
        .collect();
    let webhooks = state
        .store
        .webhook_endpoints(Some(project.id))
        .await?
        .into_iter()
        .map(|endpoint| {
            let status = statuses.get(&endpoint.id);
            WebhookRow {
                id: endpoint.id,
                url: endpoint.url,
                format: endpoint.format.as_str(),
                events: if endpoint.events.is_empty() {
                    "all events".into()
                } else {
                    endpoint.events.join(", ")
                },
                active: endpoint.active,
                disabled_reason: endpoint.disabled_reason.unwrap_or_default(),
                success_rate: success_rate(
                    status.map_or(0, |s| s.successful_attempts),
                    status.map_or(0, |s| s.total_attempts),
                ),
                pending: status.map_or(0, |s| s.pending),
                delivered: status.map_or(0, |s| s.delivered),
                failed: status.map_or(0, |s| s.failed),
            }
        })
        .collect();
    let status = refusal
        .as_ref()
        .map_or(StatusCode::OK, |refusal| refusal.status());
    let page = SettingsPage {
        chrome,
        slug: project.slug.clone(),
        project_name: project.name.clone(),
        notice,
        error: refusal.map(|refusal| refusal.to_string()),
        tokens,
        members,
        branches,
        repo: crate::services::repos::shown_repo(project).unwrap_or_default(),
        default_branch: project.default_branch.clone(),
        max_concurrency: project
            .max_concurrency
            .map(|n| n.to_string())
            .unwrap_or_default(),
        webhooks,
        roles: ["viewer", "developer", "admin"],
        public_status: project.public_status,
        public_page: crate::services::public_status::setting(project).page,
        public_badge: crate::services::public_status::setting(project).badge,
    };
    Ok((status, render(&page)).into_response())
}

fn success_rate(successful: i64, total: i64) -> String {
    if total == 0 {
        "no attempts yet".into()
    } else {
        format!(
            "{:.0}% of {total} attempt{}",
            successful as f64 * 100.0 / total as f64,
            if total == 1 { "" } else { "s" }
        )
    }
}

/// `GET /projects/{slug}/settings?notice=`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> PageResult {
    let project = administered_project(&state, &caller, &slug).await?;
    settings_response(&state, &caller, &project, query_notice(&uri), None).await
}

/// Back to the settings page, at a section, saying what was done.
fn done(slug: &str, notice: &str, section: &str) -> Response {
    Redirect::to(&format!(
        "/projects/{}/settings?notice={notice}#{section}",
        encode_query(slug)
    ))
    .into_response()
}

/// The settings page as the page of its forms (`AdminForm`'s default): a refused form
/// shows the settings page again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProjectSettingsPage;

impl AdminPage for ProjectSettingsPage {
    fn from_path(_params: &HashMap<String, String>) -> Result<Self, PageError> {
        Ok(ProjectSettingsPage)
    }

    async fn refused(
        &self,
        state: &AppState,
        caller: &Caller,
        project: &Project,
        refusal: ApiError,
    ) -> PageResult {
        settings_response(state, caller, project, None, Some(refusal)).await
    }
}

/// A new secret shown once: a project token, a webhook's signing secret, a user's
/// generated password (`web/users.rs`).
#[derive(Template)]
#[template(path = "secret_once.html")]
pub(super) struct SecretPage {
    pub chrome: Chrome,
    pub heading: String,
    pub what: &'static str,
    pub secret: String,
    pub usage: String,
    pub back: String,
    /// The back link's words.
    pub back_label: &'static str,
}
