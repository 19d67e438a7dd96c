//! A project's outbound webhook endpoints, their delivery logs, redelivery, test events
//! and the delivery status (`crate::webhooks` sends them).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_protocol::{CreateWebhook, UpdateWebhook, WebhookDto, WebhookList, WebhookWithSecret};
use kiln_store::{WebhookDeliveryRecord, WebhookEndpointStatus};
use serde_json::{Value, json};

use super::body::{JsonBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::params::QueryParams;
use crate::services::accounts::audit;
use crate::services::members::administered_project;
use crate::services::projects::readable_project;
use crate::services::webhooks::{
    LOG_LIMIT, create_endpoint, invalid, parse_id, queue_test_event, redeliver_one,
    rotate_endpoint_secret, update_endpoint,
};
use crate::wire::webhook_dto;

/// The most deliveries one request of the delivery log may ask for.
const MAX_LOG_LIMIT: i64 = 1000;

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
            invalid("url", "url: give the receiver's http(s) URL").into()
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
