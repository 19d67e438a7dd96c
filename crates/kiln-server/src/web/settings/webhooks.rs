//! Webhooks: the settings page's endpoint form, and one endpoint's page
//! (`/projects/{slug}/settings/webhooks/{id}`) with its delivery log and the forms
//! behind its buttons (enable or disable, rotate the secret, send a test, delete,
//! redeliver).

use std::collections::HashMap;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use kiln_protocol::{CreateWebhook, UpdateWebhook};
use kiln_store::{Project, WebhookDeliveryState};
use serde_json::Value;

use super::{AdminForm, AdminPage, SecretPage, done, query_notice, success_rate};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::members::administered_project;
use crate::services::webhooks::LOG_LIMIT;
use crate::services::webhooks::create_endpoint;
use crate::services::webhooks::parse_id;
use crate::services::webhooks::queue_test_event;
use crate::services::webhooks::redeliver_one;
use crate::services::webhooks::rotate_endpoint_secret;
use crate::services::webhooks::update_endpoint;
use crate::web::form::FormFields;
use crate::web::when::When;
use crate::web::{Chrome, PageError, PageResult, encode_query, render};

/// The `events` field: patterns separated by commas or spaces; empty is every event.
fn events_of(form: &FormFields) -> Vec<String> {
    form.text("events")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|pattern| !pattern.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `POST /projects/{slug}/settings/webhooks` (form: `url`, `format`, `events`,
/// `active`): the new endpoint's signing secret, shown once.
pub(crate) async fn create_webhook(admin: AdminForm) -> PageResult {
    admin
        .run(async |admin| {
            let request = CreateWebhook {
                url: admin.form.text("url").trim().to_owned(),
                format: Some(match admin.form.text("format") {
                    "" => "kiln".to_owned(),
                    format => format.to_owned(),
                }),
                events: Some(events_of(&admin.form)),
                active: Some(admin.form.checked("active")),
            };
            let endpoint =
                create_endpoint(&admin.state, &admin.caller, &admin.project, &request).await?;
            secret_page(
                &admin.state,
                &admin.caller,
                &admin.project,
                endpoint.id,
                &endpoint.url,
                endpoint.secret,
                "created",
            )
            .await
        })
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
    parse_id(raw, "webhook").map_err(PageError::from)
}

/// One webhook endpoint's page as the page of its forms: the endpoint's `{id}` comes
/// from the path, and a refused form shows the endpoint's page again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WebhookEndpointPage {
    id: i64,
}

impl AdminPage for WebhookEndpointPage {
    fn from_path(params: &HashMap<String, String>) -> Result<Self, PageError> {
        let raw = params.get("id").map(String::as_str).unwrap_or_default();
        Ok(WebhookEndpointPage {
            id: endpoint_id(raw)?,
        })
    }

    async fn refused(
        &self,
        state: &AppState,
        caller: &Caller,
        project: &Project,
        refusal: ApiError,
    ) -> PageResult {
        webhook_response(state, caller, project, self.id, None, Some(refusal)).await
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
pub(crate) async fn set_webhook_active(admin: AdminForm<WebhookEndpointPage>) -> PageResult {
    admin
        .run(async |admin| {
            let id = admin.page.id;
            let active = match admin.form.text("active") {
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
            update_endpoint(
                &admin.state,
                &admin.project,
                id,
                &UpdateWebhook {
                    active: Some(active),
                    ..UpdateWebhook::default()
                },
            )
            .await?;
            Ok(to_webhook(
                &admin.project.slug,
                id,
                if active {
                    "webhook-enabled"
                } else {
                    "webhook-disabled"
                },
            ))
        })
        .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/rotate-secret`: the new secret, shown
/// once.
pub(crate) async fn rotate_webhook_secret(admin: AdminForm<WebhookEndpointPage>) -> PageResult {
    admin
        .run(async |admin| {
            let id = admin.page.id;
            let endpoint =
                rotate_endpoint_secret(&admin.state, &admin.caller, &admin.project, id).await?;
            secret_page(
                &admin.state,
                &admin.caller,
                &admin.project,
                id,
                &endpoint.url,
                endpoint.secret,
                "secret rotated",
            )
            .await
        })
        .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/test`.
pub(crate) async fn test_webhook(admin: AdminForm<WebhookEndpointPage>) -> PageResult {
    admin
        .run(async |admin| {
            let id = admin.page.id;
            queue_test_event(&admin.state, &admin.project, id).await?;
            Ok(to_webhook(&admin.project.slug, id, "test-queued"))
        })
        .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/delete`.
pub(crate) async fn delete_webhook(admin: AdminForm<WebhookEndpointPage>) -> PageResult {
    admin
        .run(async |admin| {
            let id = admin.page.id;
            let endpoint = admin
                .state
                .store
                .webhook_endpoint(admin.project.id, id)
                .await?;
            admin
                .state
                .store
                .delete_webhook_endpoint(admin.project.id, id)
                .await?;
            crate::services::accounts::audit(
                &admin.state,
                &admin.caller,
                "webhook.delete",
                Some(admin.project.id),
                Some(&endpoint.url),
            )
            .await;
            Ok(done(&admin.project.slug, "webhook-deleted", "webhooks"))
        })
        .await
}

/// `POST /projects/{slug}/settings/webhooks/{id}/deliveries/{delivery}/redeliver`.
pub(crate) async fn redeliver(
    Path((_, _, delivery)): Path<(String, String, String)>,
    admin: AdminForm<WebhookEndpointPage>,
) -> PageResult {
    admin
        .run(async |admin| {
            let id = admin.page.id;
            let delivery = parse_id(&delivery, "delivery")?;
            redeliver_one(&admin.state, &admin.project, id, delivery).await?;
            Ok(to_webhook(&admin.project.slug, id, "redelivery-queued"))
        })
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
