//! A project's outbound webhook endpoints, their delivery logs, redelivery, test events
//! and the delivery status (`crate::webhooks` sends them).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_protocol::{CreateWebhook, UpdateWebhook, WebhookDto, WebhookList, WebhookWithSecret};
use kiln_store::{
    NewWebhookDelivery, WebhookDeliveryRecord, WebhookEndpoint, WebhookEndpointPatch,
    WebhookEndpointStatus, WebhookFormat,
};
use serde_json::{Value, json};

use super::body::{JsonBody, QueryParams, parse};
use super::members::administered_project;
use super::projects::readable_project;
use super::users::audit;
use crate::AppState;
use crate::address;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::webhooks::payload;
use crate::wire::webhook_dto;

/// Deliveries shown by the log.
pub(crate) const LOG_LIMIT: i64 = 100;
/// The most deliveries one request of the delivery log may ask for.
const MAX_LOG_LIMIT: i64 = 1000;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_field", Some(field), message)
}

fn unprocessable(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_url",
        message: message.into(),
        field: Some(field.into()),
    }
}

pub(crate) fn parse_id(value: &str, what: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid("id", format!("{what}: give the numeric id")))
}

/// Checks a URL: http(s) with a host; its addresses must be public unless allowed.
async fn checked_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    let target = address::parse(url).map_err(|error| unprocessable("url", error))?;
    if !state.config.webhooks_allow_private {
        address::resolve(&target, false)
            .await
            .map_err(|error| unprocessable("url", error))?;
    }
    Ok(target.url.to_string())
}

fn checked_events(events: Option<&Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(patterns) = events else {
        return Ok(None);
    };
    patterns
        .iter()
        .map(|pattern| {
            let valid = !pattern.is_empty()
                && pattern.len() <= 64
                && pattern.trim_end_matches('*').chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
                });
            if valid {
                Ok(pattern.clone())
            } else {
                Err(invalid(
                    "events",
                    "events: give event types or prefix patterns like [\"build_*\", \"stage_failed\"]",
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn checked_format(format: Option<&String>) -> Result<Option<WebhookFormat>, ApiError> {
    format
        .map(|value| {
            WebhookFormat::parse(value)
                .ok_or_else(|| invalid("format", "format: use \"kiln\" or \"cdevents\""))
        })
        .transpose()
}

fn object(body: &Value) -> Result<(), ApiError> {
    if body.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_json",
            Some("body"),
            "send a JSON object {\"url\", \"events\"?, \"format\"?, \"active\"?}",
        ))
    }
}

/// An endpoint as served (never its secrets).
fn delivery_json(state: &AppState, delivery: &WebhookDeliveryRecord) -> Value {
    let attempts: Vec<Value> = delivery
        .attempt_log
        .iter()
        .map(|attempt| {
            json!({
                "attempt": attempt.attempt,
                "startedAt": attempt.started_at.to_rfc3339(),
                "statusCode": attempt.status_code,
                "latencyMs": attempt.latency_ms,
                "requestHeaders": serde_json::from_str::<Value>(&attempt.request_headers).unwrap_or(Value::Null),
                "responseExcerpt": attempt.response_excerpt,
                "error": attempt.error,
            })
        })
        .collect();
    json!({
        "id": delivery.id,
        "webhookId": crate::webhooks::payload::message_id(
            &state.config.secret_key,
            delivery.id,
            delivery.created_at,
        ),
        "endpointId": delivery.endpoint_id,
        "eventId": delivery.event_id,
        "type": delivery.event_type,
        "state": delivery.state.as_str(),
        "attempts": delivery.attempts,
        "nextAttemptAt": (delivery.state == kiln_store::WebhookDeliveryState::Pending)
            .then(|| delivery.next_attempt_at.to_rfc3339()),
        "createdAt": delivery.created_at.to_rfc3339(),
        "finishedAt": delivery.finished_at.map(|at| at.to_rfc3339()),
        "lastStatus": delivery.last_status,
        "lastError": delivery.last_error,
        "body": serde_json::from_str::<Value>(&delivery.body).unwrap_or(Value::Null),
        "attemptLog": attempts,
    })
}

/// `POST /api/v1/projects/{slug}/webhooks` `{url, events?, format?, active?}`: 201 with
/// the endpoint and its secret (shown only here).
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<WebhookWithSecret>), ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    object(&body)?;
    let request: CreateWebhook = parse(body).map_err(|error| match error {
        ApiError::BadRequest { field, .. } if field.as_deref() == Some("url") => {
            invalid("url", "url: give the receiver's http(s) URL")
        }
        error => error,
    })?;
    let endpoint = create_endpoint(&state, &caller, &project, &request).await?;
    Ok((
        StatusCode::CREATED,
        Json(WebhookWithSecret {
            secret: endpoint.secret.clone(),
            webhook: webhook_dto(&endpoint, &project.slug),
        }),
    ))
}

/// Creates an endpoint from `{url, events?, format?, active?}` (the API and the settings
/// page); its `secret` is to be shown once.
pub(crate) async fn create_endpoint(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    request: &CreateWebhook,
) -> Result<WebhookEndpoint, ApiError> {
    let url = checked_url(state, &request.url).await?;
    let endpoint = state
        .store
        .create_webhook_endpoint(&kiln_store::NewWebhookEndpoint {
            project_id: project.id,
            url,
            secret: payload::generate_secret(),
            events: checked_events(request.events.as_ref())?.unwrap_or_default(),
            format: checked_format(request.format.as_ref())?.unwrap_or(WebhookFormat::Kiln),
            active: request.active.unwrap_or(true),
            created_at: state.clock.now(),
        })
        .await?;
    audit(
        state,
        caller,
        "webhook.create",
        Some(project.id),
        Some(&endpoint.url),
    )
    .await;
    Ok(endpoint)
}

/// `GET /api/v1/projects/{slug}/webhooks`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<Json<WebhookList>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let endpoints = state.store.webhook_endpoints(Some(project.id)).await?;
    Ok(Json(WebhookList {
        webhooks: endpoints
            .iter()
            .map(|endpoint| webhook_dto(endpoint, &project.slug))
            .collect(),
    }))
}

/// `GET /api/v1/projects/{slug}/webhooks/{id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<Json<WebhookDto>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let endpoint = state
        .store
        .webhook_endpoint(project.id, parse_id(&id, "webhook")?)
        .await?;
    Ok(Json(webhook_dto(&endpoint, &project.slug)))
}

/// `PATCH /api/v1/projects/{slug}/webhooks/{id}` `{url?, events?, format?, active?,
/// discardHeld?}`.
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<WebhookDto>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    object(&body)?;
    let request: UpdateWebhook = parse(body)?;
    let endpoint = update_endpoint(&state, &project, parse_id(&id, "webhook")?, &request).await?;
    Ok(Json(webhook_dto(&endpoint, &project.slug)))
}

/// Changes an endpoint from `{url?, events?, format?, active?, discardHeld?}` (the API
/// and the settings page); enabling it wakes the sender, which sends what it held while
/// disabled unless `discardHeld` marked those failed.
pub(crate) async fn update_endpoint(
    state: &AppState,
    project: &kiln_store::Project,
    id: i64,
    request: &UpdateWebhook,
) -> Result<WebhookEndpoint, ApiError> {
    let url = match &request.url {
        None => None,
        Some(url) => Some(checked_url(state, url).await?),
    };
    let patch = WebhookEndpointPatch {
        url,
        events: checked_events(request.events.as_ref())?,
        format: checked_format(request.format.as_ref())?,
        active: request.active,
        discard_held: request.discard_held,
    };
    if patch.discard_held && patch.active != Some(true) {
        return Err(invalid(
            "discardHeld",
            "discardHeld: give it with \"active\": true (it drops what a disabled endpoint held when re-activating it)",
        ));
    }
    let endpoint = state
        .store
        .update_webhook_endpoint(project.id, id, &patch, state.clock.now())
        .await?;
    if patch.active == Some(true) {
        state.webhook_sender.notify_one();
    }
    Ok(endpoint)
}

/// `DELETE /api/v1/projects/{slug}/webhooks/{id}`: 204; its deliveries go with it.
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let id = parse_id(&id, "webhook")?;
    let endpoint = state.store.webhook_endpoint(project.id, id).await?;
    state.store.delete_webhook_endpoint(project.id, id).await?;
    audit(
        &state,
        &caller,
        "webhook.delete",
        Some(project.id),
        Some(&endpoint.url),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/projects/{slug}/webhooks/{id}/rotate-secret`: the new secret, shown
/// once; the old one keeps signing (a second `v1,` signature) for the overlap window.
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let endpoint =
        rotate_endpoint_secret(&state, &caller, &project, parse_id(&id, "webhook")?).await?;
    let answer = WebhookWithSecret {
        secret: endpoint.secret.clone(),
        webhook: webhook_dto(&endpoint, &project.slug),
    };
    Ok(Json(answer))
}

/// Gives an endpoint a new secret (to be shown once); the old one keeps signing for the
/// overlap window (the API and the settings page).
pub(crate) async fn rotate_endpoint_secret(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    id: i64,
) -> Result<WebhookEndpoint, ApiError> {
    let now = state.clock.now();
    let overlap_ms = state.config.webhooks.secret_overlap.as_millis() as i64;
    let endpoint = state
        .store
        .rotate_webhook_secret(
            project.id,
            id,
            &payload::generate_secret(),
            now.plus_ms(overlap_ms),
            now,
        )
        .await?;
    audit(
        state,
        caller,
        "webhook.rotate_secret",
        Some(project.id),
        Some(&endpoint.url),
    )
    .await;
    Ok(endpoint)
}

/// `POST /api/v1/projects/{slug}/webhooks/{id}/test`: 202 with a queued `webhook_test`
/// delivery.
pub(crate) async fn send_test(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let (delivery_id, endpoint) =
        queue_test_event(&state, &project, parse_id(&id, "webhook")?).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deliveryId": delivery_id, "active": endpoint.active })),
    ))
}

/// Queues a `webhook_test` delivery to an endpoint (the API and the settings page): its
/// id (as the store answers it) and the endpoint.
pub(crate) async fn queue_test_event(
    state: &AppState,
    project: &kiln_store::Project,
    id: i64,
) -> Result<(Option<i64>, WebhookEndpoint), ApiError> {
    let endpoint = state.store.webhook_endpoint(project.id, id).await?;
    let now = state.clock.now();
    let delivery_id = state
        .store
        .insert_webhook_delivery(&NewWebhookDelivery {
            endpoint_id: endpoint.id,
            event_id: None,
            event_type: payload::TEST_EVENT.into(),
            body: payload::test_body(endpoint.format, &project.slug, now),
            created_at: now,
        })
        .await?;
    state.webhook_sender.notify_one();
    Ok((delivery_id, endpoint))
}

/// `GET /api/v1/projects/{slug}/webhooks/{id}/deliveries?limit=`: the newest deliveries
/// (100, or `limit` from 1 to 1,000) with their attempts (request headers, status,
/// latency, response excerpt).
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let limit = QueryParams::from_uri(uri.query())
        .integer("limit", 1, MAX_LOG_LIMIT)?
        .unwrap_or(LOG_LIMIT);
    let project = administered_project(&state, &caller, &slug).await?;
    let endpoint = state
        .store
        .webhook_endpoint(project.id, parse_id(&id, "webhook")?)
        .await?;
    let deliveries = state.store.webhook_deliveries(endpoint.id, limit).await?;
    let items: Vec<Value> = deliveries
        .iter()
        .map(|delivery| delivery_json(&state, delivery))
        .collect();
    Ok(Json(json!({ "deliveries": items })))
}

/// `POST /api/v1/projects/{slug}/webhooks/{id}/deliveries/{delivery}/redeliver`: queues
/// a delivered or failed delivery once more (409 while it is pending).
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id, delivery)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let delivery = redeliver_one(
        &state,
        &project,
        parse_id(&id, "webhook")?,
        parse_id(&delivery, "delivery")?,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_json(&state, &delivery))))
}

/// Queues a finished delivery of an endpoint once more (the API and the settings page).
pub(crate) async fn redeliver_one(
    state: &AppState,
    project: &kiln_store::Project,
    endpoint_id: i64,
    delivery_id: i64,
) -> Result<WebhookDeliveryRecord, ApiError> {
    let endpoint = state
        .store
        .webhook_endpoint(project.id, endpoint_id)
        .await?;
    let delivery = state
        .store
        .redeliver_webhook(endpoint.id, delivery_id, state.clock.now())
        .await?;
    state.webhook_sender.notify_one();
    Ok(delivery)
}

/// `GET /api/v1/webhooks/status?project=`: pending, delivered and failed deliveries,
/// and per endpoint its success rate, median latency and oldest pending delivery.
/// Without `project`, every project the caller may read.
pub(crate) async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let params = QueryParams::from_uri(uri.query());
    let statuses: Vec<WebhookEndpointStatus> = match params.string("project") {
        Some(slug) => {
            let project = readable_project(&state, &caller, slug).await?;
            state.store.webhook_status(Some(project.id)).await?
        }
        None => state
            .store
            .webhook_status(None)
            .await?
            .into_iter()
            .filter(|status| caller.can_read(status.project_id))
            .collect(),
    };
    let now = state.clock.now();
    let (pending, delivered, failed) = statuses.iter().fold((0, 0, 0), |totals, status| {
        (
            totals.0 + status.pending,
            totals.1 + status.delivered,
            totals.2 + status.failed,
        )
    });
    let oldest_pending = statuses
        .iter()
        .filter_map(|status| status.oldest_pending_at)
        .min();
    let endpoints: Vec<Value> = statuses
        .iter()
        .map(|status| {
            json!({
                "id": status.endpoint_id,
                "url": status.url,
                "active": status.active,
                "droppedWhileDisabled": status.dropped_while_disabled,
                "pending": status.pending,
                "delivered": status.delivered,
                "failed": status.failed,
                "successRate": (status.total_attempts > 0)
                    .then(|| status.successful_attempts as f64 / status.total_attempts as f64),
                "p50LatencyMs": status.p50_latency_ms,
                "oldestPendingAgeSeconds": status
                    .oldest_pending_at
                    .map(|at| now.saturating_sub(at).max(0) / 1000),
            })
        })
        .collect();
    let mut body = json!({
        "pending": pending,
        "delivered": delivered,
        "failed": failed,
        "oldestPendingAgeSeconds": oldest_pending.map(|at| now.saturating_sub(at).max(0) / 1000),
        "endpoints": endpoints,
    });
    // Events of every project that no consumer has looked at yet (deliveries not even
    // queued: the backlog while ingest is busy); an instance-wide figure, so only for
    // instance admins.
    if caller.is_admin() {
        let unqueued = state.store.max_event_id().await? - state.store.webhook_cursor().await?;
        body["unqueuedEvents"] = json!(unqueued.max(0));
    }
    Ok(Json(body))
}
