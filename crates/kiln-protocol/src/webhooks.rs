//! Outbound webhooks on the wire (docs/api.md, "Webhooks (outbound)"): endpoints, their
//! delivery log, test events and the delivery status.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /api/v1/projects/{slug}/webhooks`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct CreateWebhook {
    pub url: String,
    /// Event types or `prefix*` patterns; absent or empty means every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `kiln` (default) or `cdevents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

/// `PATCH /api/v1/projects/{slug}/webhooks/{id}`: only the fields given change;
/// activating clears the reason it was disabled.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateWebhook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// With `active: true`: the deliveries held while it was disabled are marked failed
    /// instead of going out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_held: bool,
}

/// An endpoint as served: never its secret, only the secret's first characters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDto {
    pub id: i64,
    pub project: String,
    pub url: String,
    pub events: Vec<String>,
    pub format: String,
    pub active: bool,
    /// Why Kiln disabled it (a `410 Gone`), until it is activated again.
    pub disabled_reason: Option<String>,
    /// Events not queued while it was disabled and held as many deliveries as it may.
    #[serde(default)]
    pub dropped_while_disabled: i64,
    pub secret_prefix: String,
    /// Until when the secret before the last rotation still signs.
    pub previous_secret_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The answer to creation and to a secret rotation: the only time the secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct WebhookWithSecret {
    /// `whsec_` + base64 of the key.
    pub secret: String,
    #[serde(flatten)]
    pub webhook: WebhookDto,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookDto>,
}

/// `POST …/webhooks/{id}/test`: the queued `webhook_test` delivery.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTestQueued {
    pub delivery_id: Option<i64>,
    /// An inactive endpoint keeps the test pending until it is activated.
    pub active: bool,
}

/// One attempt of a delivery, as logged.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAttemptDto {
    pub attempt: i64,
    pub started_at: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// The headers sent, signatures included.
    pub request_headers: Value,
    /// At most 1 KiB of the answer's body.
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
}

/// One delivery: an event (or a test) for one endpoint, with its attempts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDeliveryDto {
    pub id: i64,
    /// The `webhook-id` header of every attempt and redelivery (`msg_…`, unique across
    /// Kiln instances).
    pub webhook_id: String,
    pub endpoint_id: i64,
    pub event_id: Option<i64>,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    /// When a pending delivery is due next.
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub body: Value,
    pub attempt_log: Vec<WebhookAttemptDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct WebhookDeliveryList {
    pub deliveries: Vec<WebhookDeliveryDto>,
}

/// `GET /api/v1/webhooks/status`: totals over the endpoints the caller may read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatusDto {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
    pub oldest_pending_age_seconds: Option<i64>,
    pub endpoints: Vec<WebhookEndpointStatusDto>,
    /// Instance admins only: events of every project no consumer has looked at yet
    /// (deliveries not even queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unqueued_events: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointStatusDto {
    pub id: i64,
    pub url: String,
    pub active: bool,
    /// Events not queued while it was disabled and full.
    #[serde(default)]
    pub dropped_while_disabled: i64,
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
    /// Over the endpoint's last 100 attempts; absent before the first.
    pub success_rate: Option<f64>,
    pub p50_latency_ms: Option<i64>,
    pub oldest_pending_age_seconds: Option<i64>,
}

/// `PUT /api/v1/projects/{slug}/hooks/github`: what to paste into GitHub's webhook
/// settings (the secret is shown only here).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubHookSecret {
    pub secret: String,
    /// The payload URL's path on this server.
    pub path: String,
    pub content_type: String,
    pub events: Vec<String>,
}

/// `POST /api/v1/hooks/github/{slug}` answering GitHub's `ping`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct HookPing {
    pub ok: bool,
    pub project: String,
}

/// An inbound hook event Kiln takes no action on (202), and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct HookIgnored {
    pub ignored: String,
}
