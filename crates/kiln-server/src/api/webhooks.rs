//! A project's outbound webhook endpoints, their delivery logs, redelivery, test events
//! and the delivery status (`crate::webhooks` sends them).

use axum::extract::State;

use super::path::Path;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use kiln_protocol::{
    CreateWebhook, UpdateWebhook, WebhookAttemptDto, WebhookDeliveryDto, WebhookDeliveryList,
    WebhookDto, WebhookEndpointStatusDto, WebhookList, WebhookStatusDto, WebhookTestQueued,
    WebhookWithSecret,
};
use kiln_store::{WebhookDeliveryRecord, WebhookEndpointStatus};
use serde_json::Value;

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
pub(super) const MAX_LOG_LIMIT: i64 = 1000;

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
fn delivery_dto(state: &AppState, delivery: &WebhookDeliveryRecord) -> WebhookDeliveryDto {
    let attempt_log = delivery
        .attempt_log
        .iter()
        .map(|attempt| WebhookAttemptDto {
            attempt: attempt.attempt,
            started_at: attempt.started_at.to_rfc3339(),
            status_code: attempt.status_code,
            latency_ms: attempt.latency_ms,
            request_headers: serde_json::from_str(&attempt.request_headers).unwrap_or(Value::Null),
            response_excerpt: attempt.response_excerpt.clone(),
            error: attempt.error.clone(),
        })
        .collect();
    WebhookDeliveryDto {
        id: delivery.id,
        webhook_id: crate::webhooks::payload::message_id(
            &state.config.secret_key,
            delivery.id,
            delivery.created_at,
        ),
        endpoint_id: delivery.endpoint_id,
        event_id: delivery.event_id,
        event_type: delivery.event_type.clone(),
        state: delivery.state.as_str().into(),
        attempts: delivery.attempts,
        next_attempt_at: (delivery.state == kiln_store::WebhookDeliveryState::Pending)
            .then(|| delivery.next_attempt_at.to_rfc3339()),
        created_at: delivery.created_at.to_rfc3339(),
        finished_at: delivery.finished_at.map(|at| at.to_rfc3339()),
        last_status: delivery.last_status,
        last_error: delivery.last_error.clone(),
        body: serde_json::from_str(&delivery.body).unwrap_or(Value::Null),
        attempt_log,
    }
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
) -> Result<(StatusCode, Json<WebhookTestQueued>), ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let (delivery_id, endpoint) =
        queue_test_event(&state, &project, parse_id(&id, "webhook")?).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(WebhookTestQueued {
            delivery_id,
            active: endpoint.active,
        }),
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
) -> Result<Json<WebhookDeliveryList>, ApiError> {
    let limit = QueryParams::from_uri(uri.query())
        .integer("limit", 1, MAX_LOG_LIMIT)?
        .unwrap_or(LOG_LIMIT);
    let project = administered_project(&state, &caller, &slug).await?;
    let endpoint = state
        .store
        .webhook_endpoint(project.id, parse_id(&id, "webhook")?)
        .await?;
    let deliveries = state.store.webhook_deliveries(endpoint.id, limit).await?;
    Ok(Json(WebhookDeliveryList {
        deliveries: deliveries
            .iter()
            .map(|delivery| delivery_dto(&state, delivery))
            .collect(),
    }))
}

/// `POST /api/v1/projects/{slug}/webhooks/{id}/deliveries/{delivery}/redeliver`: queues
/// a delivered or failed delivery once more (409 while it is pending).
pub(crate) async fn redeliver(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((slug, id, delivery)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<WebhookDeliveryDto>), ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let delivery = redeliver_one(
        &state,
        &project,
        parse_id(&id, "webhook")?,
        parse_id(&delivery, "delivery")?,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_dto(&state, &delivery))))
}

/// `GET /api/v1/webhooks/status?project=`: pending, delivered and failed deliveries,
/// and per endpoint its success rate, median latency and oldest pending delivery.
/// Without `project`, every project the caller may read.
pub(crate) async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<WebhookStatusDto>, ApiError> {
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
    let age = |at: kiln_core::Millis| now.saturating_sub(at).max(0) / 1000;
    let endpoints = statuses
        .iter()
        .map(|status| WebhookEndpointStatusDto {
            id: status.endpoint_id,
            url: status.url.clone(),
            active: status.active,
            dropped_while_disabled: status.dropped_while_disabled,
            pending: status.pending,
            delivered: status.delivered,
            failed: status.failed,
            success_rate: (status.total_attempts > 0)
                .then(|| status.successful_attempts as f64 / status.total_attempts as f64),
            p50_latency_ms: status.p50_latency_ms,
            oldest_pending_age_seconds: status.oldest_pending_at.map(age),
        })
        .collect();
    // Events of every project that no consumer has looked at yet (deliveries not even
    // queued: the backlog while ingest is busy); an instance-wide figure, so only for
    // instance admins.
    let unqueued_events = if caller.is_admin() {
        let unqueued = state.store.max_event_id().await? - state.store.webhook_cursor().await?;
        Some(unqueued.max(0))
    } else {
        None
    };
    Ok(Json(WebhookStatusDto {
        pending,
        delivered,
        failed,
        oldest_pending_age_seconds: oldest_pending.map(age),
        endpoints,
        unqueued_events,
    }))
}
