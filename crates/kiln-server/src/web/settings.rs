//! Projects and their settings: `/projects` (the projects the caller may read, with a
//! settings link where the caller is an admin), `/projects/{slug}/settings` (tokens,
//! members, branches, repository, webhooks) with the forms behind its buttons, a
//! webhook endpoint's delivery log, and `/account` (change your password).
//!
//! Every action calls the helper its JSON API route calls (`api::projects`,
//! `api::members`, `api::repos`, `api::webhooks`, `api::users`), so validation, store
//! calls and the audit log are the API's. Project pages need the admin role
//! (`administered_project`: 404 for a project the caller may not see, 403 naming the
//! role otherwise; instance admins pass). A refused form shows the page again with
//! the reason and the refusal's status. New secrets (a token, a webhook's signing
//! secret) are shown once, on the page that answers the form, with `no-store`.

use std::collections::HashMap;
use std::net::SocketAddr;

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use kiln_store::{Project, WebhookDeliveryState};
use serde_json::{Map, Value, json};

use super::form::{FormFields, fields, invalid};
use super::when::When;
use super::{Chrome, PageError, PageResult, encode_query, render};
use crate::AppState;
use crate::api::members::{administered_project, remove_member_of, set_member_role};
use crate::api::projects::{create_project_token, revoke_project_token};
use crate::api::repos::{delete_branch_of, set_repo_of, upsert_branch_of};
use crate::api::users::change_password;
use crate::api::webhooks::{
    LOG_LIMIT, create_endpoint, parse_id, queue_test_event, redeliver_one, rotate_endpoint_secret,
    update_endpoint,
};
use crate::auth::Caller;
use crate::error::ApiError;

// ---- The projects list.

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
            repo: crate::api::repos::shown_repo(&project).unwrap_or_default(),
            slug: project.slug,
            name: project.name,
        })
        .collect();
    Ok(render(&ProjectsPage { chrome, projects }))
}

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
        repo: crate::api::repos::shown_repo(project).unwrap_or_default(),
        default_branch: project.default_branch.clone(),
        max_concurrency: project
            .max_concurrency
            .map(|n| n.to_string())
            .unwrap_or_default(),
        webhooks,
        roles: ["viewer", "developer", "admin"],
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

/// Runs a settings form: the caller must administer the project and echo the CSRF
/// token; a refusal of the action itself shows the settings page with the reason.
async fn settings_action<F, Fut>(
    state: AppState,
    caller: Caller,
    slug: String,
    body: Bytes,
    action: F,
) -> PageResult
where
    F: FnOnce(AppState, Caller, Project, FormFields) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let project = administered_project(&state, &caller, &slug).await?;
    let form = fields(&body);
    form.check_csrf(&caller)?;
    match action(state.clone(), caller.clone(), project.clone(), form).await {
        Ok(response) => Ok(response),
        Err(error) if error.status().is_server_error() => Err(PageError(error)),
        Err(error) => settings_response(&state, &caller, &project, None, Some(error)).await,
    }
}

// ---- Tokens.

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

/// `POST /projects/{slug}/settings/tokens` (form: `name`, `scopes` = ingest and/or read).
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            let scopes = form.all("scopes");
            if scopes.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    Some("scopes"),
                    "scopes: tick ingest, read or both",
                ));
            }
            let request = json!({"name": form.text("name"), "scopes": scopes});
            let (token, record) = create_project_token(&state, &caller, &project, &request).await?;
            let chrome = Chrome::load(&state, &caller, "projects", "New token")
                .await
                .map_err(|error| error.0)?;
            let page = SecretPage {
                chrome,
                heading: format!("Token “{}” created", record.name),
                what: "token",
                usage: format!(
                    "export KILN_TOKEN={token}   # then: kiln run -- make test (project {})",
                    project.slug
                ),
                secret: token,
                back: format!("/projects/{}/settings#tokens", encode_query(&project.slug)),
                back_label: "Done: back to the settings",
            };
            Ok((StatusCode::CREATED, render(&page)).into_response())
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/tokens/{id}/revoke`.
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, _| async move {
            revoke_project_token(&state, &caller, &project, &id).await?;
            Ok(done(&project.slug, "token-revoked", "tokens"))
        },
    )
    .await
}

// ---- Members.

/// `POST /projects/{slug}/settings/members` (form: `email`, `role`): adds a user or
/// changes the role of one.
pub(crate) async fn add_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(state, caller, slug, body, |state, caller, project, form| async move {
        let email = form.text("email").trim().to_ascii_lowercase();
        if !crate::api::users::valid_email(&email) {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some("email"),
                "email: give the email address of a Kiln user, such as ada@example.com (an instance admin creates users with kiln user create)",
            ));
        }
        set_member_role(&state, &caller, &project, &email, form.text("role")).await?;
        Ok(done(&project.slug, "member-saved", "members"))
    })
    .await
}

/// `POST /projects/{slug}/settings/members/{user}/role` (form: `role`).
pub(crate) async fn set_role(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, user)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            set_member_role(&state, &caller, &project, &user, form.text("role")).await?;
            Ok(done(&project.slug, "member-saved", "members"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/members/{user}/remove`.
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, user)): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, _| async move {
            remove_member_of(&state, &caller, &project, &user).await?;
            Ok(done(&project.slug, "member-removed", "members"))
        },
    )
    .await
}

// ---- Branches and the repository.

/// A whole number field: absent or empty is `Null`, anything else must parse.
fn number_field(form: &FormFields, field: &str, json_field: &str) -> Result<Value, ApiError> {
    match form.text(field).trim() {
        "" => Ok(Value::Null),
        raw => raw.parse::<i64>().map(Value::from).map_err(|_| {
            ApiError::bad_request(
                "invalid_field",
                Some(json_field),
                format!("{json_field}: must be a whole number, not '{raw}'"),
            )
        }),
    }
}

/// `POST /projects/{slug}/settings/branches` (form: `name`, `priority`, `auto_build`).
pub(crate) async fn add_branch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            let request = json!({
                "name": form.text("name"),
                "priority": number_field(&form, "priority", "priority")?,
                "autoBuild": form.checked("auto_build"),
            });
            upsert_branch_of(&state, &caller, &project, &request).await?;
            Ok(done(&project.slug, "branch-saved", "branches"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/branches/delete` (form: `name`; branch names hold
/// slashes, so the name is not in the path).
pub(crate) async fn delete_branch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            delete_branch_of(&state, &caller, &project, form.text("name")).await?;
            Ok(done(&project.slug, "branch-deleted", "branches"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/repo` (form: `repo` — empty keeps the current one,
/// whose URL is shown masked —, `clear_repo`, `default_branch`, `max_concurrency` —
/// empty for no limit).
pub(crate) async fn set_repo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            let repo = match form.text("repo").trim() {
                _ if form.checked("clear_repo") => Value::Null,
                "" => project.repo.clone().map_or(Value::Null, Value::from),
                repo => Value::from(repo),
            };
            let mut request = Map::new();
            request.insert("repo".into(), repo);
            if !form.text("default_branch").trim().is_empty() {
                request.insert(
                    "defaultBranch".into(),
                    form.text("default_branch").trim().into(),
                );
            }
            request.insert(
                "maxConcurrency".into(),
                number_field(&form, "max_concurrency", "maxConcurrency")?,
            );
            set_repo_of(&state, &project, &Value::Object(request)).await?;
            crate::api::users::audit(&state, &caller, "repo.set", Some(project.id), None).await;
            Ok(done(&project.slug, "repo-saved", "repository"))
        },
    )
    .await
}

// ---- Webhooks.

/// The `events` field: patterns separated by commas or spaces; empty is every event.
fn events_of(form: &FormFields) -> Value {
    let patterns: Vec<&str> = form
        .text("events")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|pattern| !pattern.is_empty())
        .collect();
    json!(patterns)
}

/// `POST /projects/{slug}/settings/webhooks` (form: `url`, `format`, `events`,
/// `active`): the new endpoint's signing secret, shown once.
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    body: Bytes,
) -> PageResult {
    settings_action(
        state,
        caller,
        slug,
        body,
        |state, caller, project, form| async move {
            let request = json!({
                "url": form.text("url").trim(),
                "format": match form.text("format") { "" => "kiln", format => format },
                "events": events_of(&form),
                "active": form.checked("active"),
            });
            let endpoint = create_endpoint(&state, &caller, &project, &request).await?;
            secret_page(
                &state,
                &caller,
                &project,
                endpoint.id,
                &endpoint.url,
                endpoint.secret,
                "created",
            )
            .await
        },
    )
    .await
}

async fn secret_page(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    endpoint_id: i64,
    url: &str,
    secret: String,
    what_happened: &str,
) -> Result<Response, ApiError> {
    let chrome = Chrome::load(state, caller, "projects", "Webhook secret")
        .await
        .map_err(|error| error.0)?;
    let page = SecretPage {
        chrome,
        heading: format!("Webhook {what_happened}: {url}"),
        what: "signing secret",
        usage: "Verify each delivery's webhook-signature header with this secret (Standard Webhooks; see docs/api.md).".into(),
        secret,
        back: format!(
            "/projects/{}/settings/webhooks/{endpoint_id}",
            encode_query(&project.slug)
        ),
        back_label: "Done: back to the settings",
    };
    let status = if what_happened == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, render(&page)).into_response())
}

/// The endpoint id of a path, as a page refusal.
fn endpoint_id(raw: &str) -> Result<i64, PageError> {
    parse_id(raw, "webhook").map_err(PageError)
}

/// Runs a form of one webhook endpoint's page; a refused action shows that page again.
async fn webhook_action<F, Fut>(
    state: AppState,
    caller: Caller,
    (slug, id): (String, String),
    body: Bytes,
    action: F,
) -> PageResult
where
    F: FnOnce(AppState, Caller, Project, i64, FormFields) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let project = administered_project(&state, &caller, &slug).await?;
    let id = endpoint_id(&id)?;
    let form = fields(&body);
    form.check_csrf(&caller)?;
    match action(state.clone(), caller.clone(), project.clone(), id, form).await {
        Ok(response) => Ok(response),
        Err(error) if error.status().is_server_error() => Err(PageError(error)),
        Err(error) => webhook_response(&state, &caller, &project, id, None, Some(error)).await,
    }
}

fn to_webhook(slug: &str, id: i64, notice: &str) -> Response {
    Redirect::to(&format!(
        "/projects/{}/settings/webhooks/{id}?notice={notice}",
        encode_query(slug)
    ))
    .into_response()
}

/// `POST /projects/{slug}/settings/webhooks/{id}/active` (form: `active` = true|false).
pub(crate) async fn set_webhook_active(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    webhook_action(
        state,
        caller,
        path,
        body,
        |state, _, project, id, form| async move {
            let active = match form.text("active") {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_field",
                        Some("active"),
                        format!("active: must be true or false, not '{other}'"),
                    ));
                }
            };
            update_endpoint(&state, &project, id, &json!({ "active": active })).await?;
            Ok(to_webhook(
                &project.slug,
                id,
                if active {
                    "webhook-enabled"
                } else {
                    "webhook-disabled"
                },
            ))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/rotate-secret`: the new secret, shown
/// once.
pub(crate) async fn rotate_webhook_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    webhook_action(
        state,
        caller,
        path,
        body,
        |state, caller, project, id, _| async move {
            let endpoint = rotate_endpoint_secret(&state, &caller, &project, id).await?;
            secret_page(
                &state,
                &caller,
                &project,
                id,
                &endpoint.url,
                endpoint.secret,
                "secret rotated",
            )
            .await
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/test`.
pub(crate) async fn test_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    webhook_action(
        state,
        caller,
        path,
        body,
        |state, _, project, id, _| async move {
            queue_test_event(&state, &project, id).await?;
            Ok(to_webhook(&project.slug, id, "test-queued"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/delete`.
pub(crate) async fn delete_webhook(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<(String, String)>,
    body: Bytes,
) -> PageResult {
    webhook_action(
        state,
        caller,
        path,
        body,
        |state, caller, project, id, _| async move {
            let endpoint = state.store.webhook_endpoint(project.id, id).await?;
            state.store.delete_webhook_endpoint(project.id, id).await?;
            crate::api::users::audit(
                &state,
                &caller,
                "webhook.delete",
                Some(project.id),
                Some(&endpoint.url),
            )
            .await;
            Ok(done(&project.slug, "webhook-deleted", "webhooks"))
        },
    )
    .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/deliveries/{delivery}/redeliver`.
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id, delivery)): Path<(String, String, String)>,
    body: Bytes,
) -> PageResult {
    webhook_action(
        state,
        caller,
        (slug, id),
        body,
        |state, _, project, id, _| async move {
            let delivery = parse_id(&delivery, "delivery")?;
            redeliver_one(&state, &project, id, delivery).await?;
            Ok(to_webhook(&project.slug, id, "redelivery-queued"))
        },
    )
    .await
}

// ---- One endpoint and its delivery log.

#[derive(Debug)]
struct AttemptRow {
    attempt: i64,
    started: When,
    status_code: String,
    latency_ms: i64,
    headers: Vec<(String, String)>,
    response_excerpt: String,
    error: String,
}

#[derive(Debug)]
struct DeliveryRow {
    id: i64,
    event_type: String,
    state: &'static str,
    attempts: i64,
    created: When,
    last_status: String,
    body_excerpt: String,
    attempt_log: Vec<AttemptRow>,
    redeliverable: bool,
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    chrome: Chrome,
    slug: String,
    id: i64,
    url: String,
    format: &'static str,
    events: String,
    active: bool,
    disabled_reason: String,
    secret_prefix: String,
    /// While a rotated secret's predecessor still signs.
    rotating_until: Option<When>,
    notice: Option<&'static str>,
    error: Option<String>,
    success_rate: String,
    deliveries: Vec<DeliveryRow>,
}

/// At most this many characters of a body or response are shown.
const EXCERPT_CHARS: usize = 600;

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

/// A request's headers as stored with the attempt (signatures, never the secret).
fn header_pairs(json: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(headers)) => headers
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                (name, value)
            })
            .collect(),
        _ => Vec::new(),
    }
}

async fn webhook_response(
    state: &AppState,
    caller: &Caller,
    project: &Project,
    id: i64,
    notice: Option<&'static str>,
    refusal: Option<ApiError>,
) -> PageResult {
    let endpoint = state.store.webhook_endpoint(project.id, id).await?;
    let chrome = Chrome::load(
        state,
        caller,
        "projects",
        format!("Webhook {}", endpoint.url),
    )
    .await?;
    let now = state.clock.now();
    let status = state
        .store
        .webhook_status(Some(project.id))
        .await?
        .into_iter()
        .find(|status| status.endpoint_id == id);
    let deliveries = state
        .store
        .webhook_deliveries(endpoint.id, LOG_LIMIT)
        .await?
        .into_iter()
        .map(|delivery| DeliveryRow {
            id: delivery.id,
            event_type: delivery.event_type,
            state: delivery.state.as_str(),
            attempts: delivery.attempts,
            created: When::new(delivery.created_at, now),
            last_status: delivery
                .last_status
                .map(|code| code.to_string())
                .or(delivery.last_error.clone())
                .unwrap_or_default(),
            body_excerpt: excerpt(&delivery.body),
            redeliverable: delivery.state != WebhookDeliveryState::Pending,
            attempt_log: delivery
                .attempt_log
                .into_iter()
                .map(|attempt| AttemptRow {
                    attempt: attempt.attempt,
                    started: When::new(attempt.started_at, now),
                    status_code: attempt
                        .status_code
                        .map(|code| code.to_string())
                        .unwrap_or_else(|| "no answer".into()),
                    latency_ms: attempt.latency_ms,
                    headers: header_pairs(&attempt.request_headers),
                    response_excerpt: excerpt(attempt.response_excerpt.as_deref().unwrap_or("")),
                    error: attempt.error.unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    let http_status = refusal
        .as_ref()
        .map_or(StatusCode::OK, |refusal| refusal.status());
    let page = WebhookPage {
        chrome,
        slug: project.slug.clone(),
        id: endpoint.id,
        format: endpoint.format.as_str(),
        events: if endpoint.events.is_empty() {
            "all events".into()
        } else {
            endpoint.events.join(", ")
        },
        active: endpoint.active,
        disabled_reason: endpoint.disabled_reason.unwrap_or_default(),
        secret_prefix: endpoint.secret.chars().take(10).collect(),
        rotating_until: endpoint
            .previous_secret_until
            .filter(|until| *until > now)
            .map(|until| When::new(until, now)),
        url: endpoint.url,
        notice,
        error: refusal.map(|refusal| refusal.to_string()),
        success_rate: success_rate(
            status.as_ref().map_or(0, |s| s.successful_attempts),
            status.as_ref().map_or(0, |s| s.total_attempts),
        ),
        deliveries,
    };
    Ok((http_status, render(&page)).into_response())
}

/// `GET /projects/{slug}/settings/webhooks/{id}?notice=`: the endpoint and its newest
/// deliveries with every attempt.
pub(crate) async fn webhook_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
    uri: Uri,
) -> PageResult {
    let project = administered_project(&state, &caller, &slug).await?;
    let id = endpoint_id(&id)?;
    webhook_response(&state, &caller, &project, id, query_notice(&uri), None).await
}

// ---- The account page.

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    error: Option<String>,
    roles: Vec<(String, String)>,
}

async fn account_response(
    state: &AppState,
    caller: &Caller,
    notice: Option<&'static str>,
    refusal: Option<ApiError>,
) -> PageResult {
    let chrome = Chrome::load(state, caller, "account", "Account").await?;
    let mut roles = Vec::new();
    for (project_id, role) in caller.roles.iter() {
        if let Some(project) = state.store.project_by_id(*project_id).await? {
            roles.push((project.slug, role.as_str().to_owned()));
        }
    }
    roles.sort();
    let status = refusal
        .as_ref()
        .map_or(StatusCode::OK, |refusal| refusal.status());
    let page = AccountPage {
        chrome,
        notice,
        error: refusal.map(|refusal| refusal.to_string()),
        roles,
    };
    Ok((status, render(&page)).into_response())
}

/// `GET /account?notice=`.
pub(crate) async fn account_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> PageResult {
    account_response(&state, &caller, query_notice(&uri), None).await
}

/// `POST /account/password` (form: `current`, `new`, `confirm`).
pub(crate) async fn change_password_form(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> PageResult {
    let form = fields(&body);
    form.check_csrf(&caller)?;
    if caller.user_id.is_none() {
        return Err(invalid("current", "log in with your password to change it"));
    }
    let outcome = if form.text("new") != form.text("confirm") {
        Err(ApiError::bad_request(
            "invalid_field",
            Some("confirm"),
            "confirm: the two new passwords differ; type the same one twice",
        ))
    } else {
        change_password(
            &state,
            &caller,
            peer,
            form.text("current").to_owned(),
            form.text("new").to_owned(),
        )
        .await
    };
    match outcome {
        Ok(()) => Ok(Redirect::to("/account?notice=password-changed").into_response()),
        Err(error) if error.status().is_server_error() => Err(PageError(error)),
        Err(error) => account_response(&state, &caller, None, Some(error)).await,
    }
}
