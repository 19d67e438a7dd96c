//! The JSON shapes of Kiln's HTTP API (camelCase on the wire). Serialized by the server,
//! deserialized by `kiln-client`; domain types never cross the wire directly.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every error answer: `{"error":{"code","message","field"}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateProject {
    pub slug: String,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProjectDto {
    pub slug: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProjectList {
    pub projects: Vec<ProjectDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateToken {
    pub name: String,
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenDto {
    pub id: i64,
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub scopes: Vec<String>,
    /// The first characters of the token, enough to recognise it in a list.
    pub prefix: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// The answer to token creation: the only time the secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenDto,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenDto>,
}

/// One event as a client sends it (the seed's payload plus Kiln's additions). Every
/// field but `runId` and `event` is optional and omitted when `None`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventPayload {
    pub run_id: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// The answer to an ingest request, one entry per submitted event, in order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IngestResponse {
    pub events: Vec<EventAck>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventAck {
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `stored`, `duplicate` (stored earlier; the ids are that event's) or `ignored`.
    pub status: String,
    pub id: Option<i64>,
    pub seq: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageDto {
    pub name: String,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildDto {
    pub run_id: String,
    pub project: String,
    pub number: i64,
    pub status: String,
    pub progress: Option<f64>,
    pub current_stage: Option<String>,
    pub env: Option<String>,
    pub origin: Option<String>,
    pub command: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub message: Option<String>,
    pub created_at: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub last_event_at: String,
    pub last_event_id: i64,
    pub heartbeat_timeout_secs: i64,
    /// Present on the single-build read; omitted in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageDto>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildList {
    pub builds: Vec<BuildDto>,
    /// Pass as `before=` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// A page of events after a cursor (seed 004's incremental poll).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    /// Each event as received plus `id`, `seq` and `receivedAt`.
    pub events: Vec<Value>,
    /// The cursor for the next poll: the last returned id, or the one given.
    pub last_event_id: i64,
    /// True when the page was full and more events may follow at once.
    pub has_more: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatusDto {
    pub run_id: String,
    pub project: String,
    pub status: String,
    pub progress: Option<f64>,
    pub current_stage: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub last_event_at: String,
    pub last_event_id: i64,
    pub stages_total: usize,
    pub stages_completed: usize,
}

/// Seed 000's project status: is something building right now?
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatus {
    pub success: bool,
    pub running: bool,
    pub active_run: Option<BuildStatusDto>,
    pub updated_at: String,
}
