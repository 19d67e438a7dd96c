//! Outbound webhook endpoints as a service: created, changed, re-keyed, tested and
//! redelivered with their checks and audit entries (the API and the settings page call
//! these).

use crate::AppState;
use crate::address;
use crate::auth::Caller;
use crate::service_error::ServiceError;
use crate::services::accounts::audit;
use crate::webhooks::payload;
use kiln_protocol::{CreateWebhook, UpdateWebhook};
use kiln_store::{
    NewWebhookDelivery, WebhookDeliveryRecord, WebhookEndpoint, WebhookEndpointPatch, WebhookFormat,
};

/// Deliveries shown by the log.
pub(crate) const LOG_LIMIT: i64 = 100;

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::bad_request("invalid_field", Some(field), message)
}

pub(crate) fn unprocessable(field: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::Unprocessable {
        code: "invalid_url",
        message: message.into(),
        field: Some(field.into()),
    }
}

pub(crate) fn parse_id(value: &str, what: &str) -> Result<i64, ServiceError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid("id", format!("{what}: give the numeric id")))
}

/// Checks a URL: http(s) with a host; its addresses must be public unless allowed.
pub(crate) async fn checked_url(state: &AppState, url: &str) -> Result<String, ServiceError> {
    let target = address::parse(url).map_err(|error| unprocessable("url", error))?;
    if !state.config.webhooks_allow_private {
        address::resolve(&target, false)
            .await
            .map_err(|error| unprocessable("url", error))?;
    }
    Ok(target.url.to_string())
}

pub(crate) fn checked_events(
    events: Option<&Vec<String>>,
) -> Result<Option<Vec<String>>, ServiceError> {
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

pub(crate) fn checked_format(
    format: Option<&String>,
) -> Result<Option<WebhookFormat>, ServiceError> {
    format
        .map(|value| {
            WebhookFormat::parse(value)
                .ok_or_else(|| invalid("format", "format: use \"kiln\" or \"cdevents\""))
        })
        .transpose()
}

/// Creates an endpoint from `{url, events?, format?, active?}` (the API and the settings
/// page); its `secret` is to be shown once.
pub(crate) async fn create_endpoint(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    request: &CreateWebhook,
) -> Result<WebhookEndpoint, ServiceError> {
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

/// Changes an endpoint from `{url?, events?, format?, active?, discardHeld?}` (the API
/// and the settings page); enabling it wakes the sender, which sends what it held while
/// disabled unless `discardHeld` marked those failed.
pub(crate) async fn update_endpoint(
    state: &AppState,
    project: &kiln_store::Project,
    id: i64,
    request: &UpdateWebhook,
) -> Result<WebhookEndpoint, ServiceError> {
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

/// Gives an endpoint a new secret (to be shown once); the old one keeps signing for the
/// overlap window (the API and the settings page).
pub(crate) async fn rotate_endpoint_secret(
    state: &AppState,
    caller: &Caller,
    project: &kiln_store::Project,
    id: i64,
) -> Result<WebhookEndpoint, ServiceError> {
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

/// Queues a `webhook_test` delivery to an endpoint (the API and the settings page): its
/// id (as the store answers it) and the endpoint.
pub(crate) async fn queue_test_event(
    state: &AppState,
    project: &kiln_store::Project,
    id: i64,
) -> Result<(Option<i64>, WebhookEndpoint), ServiceError> {
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

/// Queues a finished delivery of an endpoint once more (the API and the settings page).
pub(crate) async fn redeliver_one(
    state: &AppState,
    project: &kiln_store::Project,
    endpoint_id: i64,
    delivery_id: i64,
) -> Result<WebhookDeliveryRecord, ServiceError> {
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
