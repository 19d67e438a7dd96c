//! The JSON shapes of Kiln's HTTP API (camelCase on the wire). Serialized by the server,
//! deserialized by `kiln-client`; domain types never cross the wire directly.

mod accounts;
mod analytics;
mod artifact_lifecycle;
mod artifacts;
mod deployments;
mod test_results;
mod webhooks;

pub use accounts::*;
pub use analytics::*;
pub use artifact_lifecycle::*;
pub use artifacts::*;
pub use deployments::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use test_results::*;
pub use webhooks::*;

/// Every error answer: `{"error":{"code","message","field"}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateProject {
    /// Lowercase letters, digits and `-`, starting with a letter or digit (kiln-core's
    /// `ProjectSlug`).
    #[schemars(pattern(r"^[a-z0-9][a-z0-9-]{0,63}$"))]
    pub slug: String,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectDto {
    pub slug: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectDto>,
}

/// `GET /api/v1/whoami`: the calling credential and the projects it reaches.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// `admin`, `project` or `user`.
    pub kind: String,
    /// A project token's project; a user's projects (those they have a role in). An
    /// instance admin reaches every project, listed as none.
    pub projects: Vec<String>,
    /// A project token's scopes (`ingest`, `read`).
    pub scopes: Vec<String>,
    pub instance_admin: bool,
}

/// `POST /api/v1/projects/{slug}/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateToken {
    pub name: String,
    /// `ingest` and/or `read`; `["ingest"]` when absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenDto,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenDto>,
}

/// One event as a client sends it (the seed's payload plus Kiln's additions). Every
/// field but `runId` and `event` is optional and omitted when `None`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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
    /// Custom metrics (`{"bundle_kb": 412}`); the build keeps the last value of each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::collections::BTreeMap<String, f64>>,
}

/// The answer to an ingest request, one entry per submitted event, in order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct IngestResponse {
    pub events: Vec<EventAck>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageDto {
    pub name: String,
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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
    /// Custom metrics reported by its events (last value of each name); omitted when
    /// none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// `GET /api/v1/builds/{runId}/metrics`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetrics {
    pub run_id: String,
    pub metrics: std::collections::BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildList {
    pub builds: Vec<BuildDto>,
    /// Pass as `before=` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// A page of events after a cursor (seed 004's incremental poll).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    /// Each event as received plus `id`, `seq` and `receivedAt`.
    pub events: Vec<Value>,
    /// The cursor for the next poll: the last returned id, or the one given.
    pub last_event_id: i64,
    /// True when the page was full and more events may follow at once.
    pub has_more: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatus {
    pub success: bool,
    pub running: bool,
    pub active_run: Option<BuildStatusDto>,
    pub updated_at: String,
}

// ---- Builds Kiln runs (docs/api.md, "Running builds").

/// `PUT /api/v1/projects/{slug}/repo`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoSettings {
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    /// Absent: keep the current limit; `null` (`Some(None)`): no limit; a number: at
    /// most that many of the project's jobs run at once.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrency: Option<Option<i64>>,
}

/// A project's repository settings as stored (`PUT`/`GET …/repo`): the URL without
/// its credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoDto {
    pub project: ProjectDto,
    pub repo: Option<String>,
    pub default_branch: String,
    pub max_concurrency: Option<i64>,
}

/// `GET /api/v1/projects/{slug}/branches`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct BranchList {
    pub branches: Vec<BranchDto>,
}

/// `POST /api/v1/projects/{slug}/branches`: adds a branch or changes one.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetBranch {
    pub name: String,
    /// 1 (highest) to 10; `null` or absent for the project's default.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Build each new commit by itself (false when absent or `null`).
    #[serde(default)]
    pub auto_build: Option<bool>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value: serde reads
/// an absent field through `default` and a present one through this.
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchDto {
    pub name: String,
    pub priority: Option<i64>,
    pub auto_build: bool,
    pub last_commit: Option<String>,
}

/// `POST /api/v1/projects/{slug}/builds`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerBuild {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

/// The answer to a trigger (and to a retry).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggeredBuild {
    pub run_id: String,
    pub number: i64,
    pub status: String,
    pub branch: String,
    pub commit: String,
    pub commit_message: Option<String>,
    pub project: String,
    pub priority: i64,
    pub jobs: Vec<JobDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDto {
    pub id: i64,
    pub run_id: String,
    /// The build's number in its project (`web #12`).
    #[serde(default)]
    pub build_number: i64,
    pub project: String,
    pub step: String,
    pub state: String,
    pub priority: i64,
    pub depends_on: Vec<String>,
    pub labels: Vec<String>,
    pub attempt: i64,
    pub agent: Option<String>,
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub log_size: i64,
    /// Reported by a `kiln run` (its wrapped command's output), not run by an agent.
    #[serde(default)]
    pub reported: bool,
    /// In the queue view: why the job is waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// In the queue view, for a queued job: the connected, eligible agent expected to
    /// finish it soonest (its name)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_agent: Option<String>,
    /// …and why ("fast: expected to finish in 12 s: 12 s median of 3 runs of this step
    /// on it, idle, warm cache for key 3f2a9c1b0d4e…").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct JobList {
    pub jobs: Vec<JobDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentDto {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub concurrency: i64,
    pub executor: String,
    pub hostname: Option<String>,
    pub version: Option<String>,
    /// `connected` (heard from within a lease), else `lost`.
    pub health: String,
    pub registered_at: String,
    pub last_seen_at: String,
    pub metrics: Option<Value>,
    pub jobs: Vec<JobDto>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct AgentList {
    pub agents: Vec<AgentDto>,
}

/// `POST /api/v1/agent/register`, sent by `kiln agent` at start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterAgent {
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub concurrency: i64,
    pub executor: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistered {
    pub agent_id: i64,
    pub lease_secs: u64,
    pub heartbeat_interval_ms: u64,
    pub max_claim_wait_secs: u64,
}

/// `POST /api/v1/agent/claim`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequest {
    pub agent_id: i64,
    /// Seconds to wait for a job (long poll), at most 30 (kiln-core's
    /// `MAX_CLAIM_WAIT_SECS`); 30 when absent.
    #[serde(default)]
    #[schemars(range(max = 30))]
    pub wait_secs: Option<u64>,
}

/// A job handed to an agent: everything it needs to run the step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentJob {
    pub job_id: i64,
    pub attempt: i64,
    pub run_id: String,
    pub build_number: i64,
    pub project: String,
    pub step: String,
    pub repo: String,
    pub commit: String,
    pub branch: Option<String>,
    pub commands: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub timeout_secs: u64,
    pub checkout_timeout_secs: u64,
    pub cache: Option<JobCache>,
    pub image: Option<String>,
    pub network: bool,
    /// Where this attempt's log continues (earlier attempts' output comes first).
    pub log_offset: i64,
    pub log_cap_bytes: u64,
    /// The project secrets the step named (`secrets:` in `.kiln.yml`), by name: given to
    /// the step as environment variables and masked in its log.
    #[serde(default)]
    pub secrets: SecretValues,
    /// Secrets the step named that the project does not have (the agent says so in the
    /// log).
    #[serde(default)]
    pub missing_secrets: Vec<String>,
    /// Credentials for the repository, kept out of `repo` and out of git's command line.
    #[serde(default)]
    pub repo_credentials: Option<RepoCredentials>,
    /// Globs (relative to the workspace) of JUnit reports to upload after the step ran
    /// (`test_reports:` in `.kiln.yml`).
    #[serde(default)]
    pub test_reports: Vec<String>,
    /// Globs (relative to the workspace) of the files uploaded as artifacts after the step
    /// succeeds (`artifacts:`); a directory takes everything under it.
    #[serde(default)]
    pub artifact_globs: Vec<String>,
    /// Whether globs matching no file fail the step (`artifacts_required: true`).
    #[serde(default)]
    pub artifacts_required: bool,
    /// The artifacts of the steps this one depends on (transitively), to download into
    /// the workspace before it runs (empty with `needs_artifacts: false`).
    #[serde(default)]
    pub artifacts: Vec<ArtifactFile>,
}

/// Secret values by name; `Debug` shows the names only.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SecretValues(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCache {
    pub key_files: Vec<String>,
    pub paths: Vec<String>,
}

/// `POST /api/v1/agent/heartbeat`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentHeartbeat {
    pub agent_id: i64,
    #[serde(default)]
    pub jobs: Vec<i64>,
    /// Resource use: `cpuPercent`, `memoryBytes`, `memoryTotalBytes`, `diskFreeBytes`,
    /// `diskTotalBytes`.
    #[serde(default)]
    pub metrics: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReply {
    /// Jobs to stop: cancelled by a user.
    pub cancel: Vec<i64>,
    /// Jobs this agent no longer holds (lease expired, given to another agent): stop
    /// them without reporting.
    pub lost: Vec<i64>,
}

/// `POST /api/v1/agent/jobs/{id}/finish`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinishJob {
    pub agent_id: i64,
    pub attempt: i64,
    /// `passed`, `failed` or `cancelled`.
    pub state: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why it failed: `exit_status`, `timeout`, `checkout`, `cancelled`, `error`.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<i64>,
}

/// The answer to a log chunk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogAck {
    pub size: i64,
    pub cancel: bool,
}

/// The answer to a chunk of a reported log (`POST /api/v1/builds/{runId}/log`, what
/// `kiln run` sends): the job holding it, the log's size, and whether the build was
/// cancelled.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportedLogAck {
    pub job_id: i64,
    pub step: String,
    pub size: i64,
    /// `running` until the log is ended, then its outcome.
    pub state: String,
    pub cancel: bool,
}

/// `PUT /api/v1/projects/{slug}/secrets/{name}`: the value, written once, never shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetSecret {
    pub value: String,
}

/// A project secret as listed: its name and times, never its value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretDto {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretDto>,
}

/// Credentials for fetching a job's repository, passed to git through its environment.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepoCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RepoCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCredentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// A notification in a user's inbox (`GET /api/v1/notifications`, mark read, archive).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationDto {
    pub id: i64,
    /// `build_failed`, `build_stale`, `build_recovered`, … (docs/api.md).
    pub kind: String,
    pub title: String,
    pub body: String,
    pub project: String,
    pub run_id: String,
    pub event_id: i64,
    pub unread: bool,
    pub created_at: String,
    pub read_at: Option<String>,
    pub archived_at: Option<String>,
}

/// A page of the inbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationList {
    pub notifications: Vec<NotificationDto>,
    /// Pass as `before=` for the next (older) page; `null` on the last page.
    pub next_before: Option<i64>,
}

/// `POST /api/v1/notifications/read-all`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct MarkedRead {
    pub marked: u64,
}

/// `GET /api/v1/notifications/stats`: unread in the inbox, in total and by kind (every
/// kind listed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStats {
    pub unread: i64,
    pub by_kind: std::collections::BTreeMap<String, i64>,
}

/// A mute: a project, a kind, or both, that notify the user no more.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MuteDto {
    pub id: i64,
    pub project: Option<String>,
    pub kind: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct MuteList {
    pub mutes: Vec<MuteDto>,
}

/// `POST` and `DELETE /api/v1/notifications/mutes`: what to mute (or unmute); `null`
/// is the same as absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct MuteTarget {
    /// A project's slug; absent mutes every project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A notification kind; absent mutes every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `DELETE /api/v1/notifications/mutes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct MuteRemoved {
    pub removed: bool,
}

/// `GET /healthz` (with the storage engine) and `GET /readyz`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Health {
    /// `ok` (up) or `ready` (the database answers).
    pub status: String,
    /// `sqlite` or `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// `POST /api/v1/projects/{slug}/builds/{runId}/cancel`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelledBuild {
    pub run_id: String,
    /// Always `cancelled`.
    pub status: String,
    /// Running jobs told to stop (their agents end them within a heartbeat).
    pub stopping_jobs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `maxConcurrency` has three states on the wire, and the client can send each.
    #[test]
    fn repo_settings_tell_an_absent_limit_from_a_null_one() {
        let read = |json: &str| serde_json::from_str::<RepoSettings>(json).unwrap();
        assert_eq!(read(r#"{"repo": null}"#).max_concurrency, None);
        assert_eq!(
            read(r#"{"repo": null, "maxConcurrency": null}"#).max_concurrency,
            Some(None)
        );
        assert_eq!(
            read(r#"{"repo": null, "maxConcurrency": 3}"#).max_concurrency,
            Some(Some(3))
        );
        let write = |max_concurrency| {
            serde_json::to_value(RepoSettings {
                repo: None,
                default_branch: None,
                max_concurrency,
            })
            .unwrap()
        };
        assert_eq!(write(None), serde_json::json!({"repo": null}));
        assert_eq!(
            write(Some(None)),
            serde_json::json!({"repo": null, "maxConcurrency": null})
        );
        assert_eq!(
            write(Some(Some(2))),
            serde_json::json!({"repo": null, "maxConcurrency": 2})
        );
    }
}

/// `PUT /api/v1/projects/{slug}/public-status`: publishes or withdraws the project's
/// public status page and badges.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetPublicStatus {
    pub enabled: bool,
}

/// `GET`/`PUT /api/v1/projects/{slug}/public-status`: whether the project's status is
/// public, and where (paths on this server).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublicStatusDto {
    pub enabled: bool,
    /// `/status/{slug}`.
    pub page: String,
    /// `/badge/{slug}/{branch}.svg` with the default branch.
    pub badge: String,
}
