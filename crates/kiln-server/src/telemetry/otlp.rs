//! OpenTelemetry export of ended builds as traces over OTLP/HTTP with the JSON encoding
//! (`--otlp-endpoint`): `trace_of` turns a build, its stages and its jobs into one
//! `ResourceSpans` (a SERVER span for the build, an INTERNAL span per stage and per
//! job, attributes from the CI/CD and VCS semantic conventions); `run_exporter` is the
//! task that posts them in batches and retries.
//!
//! Ingest never waits for any of this: the build-end consumer hands traces over with
//! `try_send` on a bounded queue (a full queue drops the trace and counts it), and the
//! exporter alone waits for the collector. Trace and span ids are derived from the run
//! id, so a trace sent twice (a retry after a lost answer) is the same trace.
//! A build that ends while the collector is unreachable for longer than the retries
//! last (about 15 s), or while the process stops (what is queued then gets one attempt
//! within 2 s), may not be exported: export is best effort, the event log stays the
//! record.

use std::sync::Arc;
use std::time::Duration;

use kiln_core::{BuildStatus, JobState, Millis, StageStatus};
use kiln_store::{BuildRecord, JobRecord};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::Metrics;

/// Traces waiting for the exporter at most; more are dropped (and counted).
pub(crate) const QUEUE_CAPACITY: usize = 1024;
/// Traces in one export request at most.
const BATCH: usize = 64;
/// How long the exporter may take at shutdown for what is still queued.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// Pauses between attempts at one batch; after the last the batch is dropped.
const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// Where and how traces go.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://collector:4318`); traces are posted to
    /// `{endpoint}/v1/traces` unless it already ends with that path.
    pub endpoint: String,
    /// How long one export request may take.
    pub timeout: Duration,
    /// Overrides the pauses between attempts (tests).
    pub retry_delays: Option<Vec<Duration>>,
}

impl OtlpConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            timeout: Duration::from_secs(10),
            retry_delays: None,
        }
    }

    /// Checks an `--otlp-endpoint` value: an http(s) URL.
    pub fn parse_endpoint(value: &str) -> Result<String, String> {
        let trimmed = value.trim().trim_end_matches('/');
        let parsed = url::Url::parse(trimmed).map_err(|error| {
            format!("not a URL ({error}); give one such as http://localhost:4318")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err("give an http(s) URL such as http://localhost:4318".into());
        }
        Ok(trimmed.to_owned())
    }

    fn traces_url(&self) -> String {
        if self.endpoint.ends_with("/v1/traces") {
            self.endpoint.clone()
        } else {
            format!("{}/v1/traces", self.endpoint)
        }
    }
}

/// Hex of the first `bytes` bytes of SHA-256 over `parts`.
fn id_of(parts: &[&str], bytes: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..bytes])
}

fn nanos(at: Millis) -> String {
    (i128::from(at.0.max(0)) * 1_000_000).to_string()
}

fn string_attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int_attribute(key: &str, value: i64) -> Value {
    // OTLP/JSON carries 64-bit integers as strings.
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

/// OpenTelemetry's span status: unset for a success, error (2) with a message otherwise.
fn status(error: Option<&str>) -> Value {
    match error {
        None => json!({}),
        Some(message) => json!({"code": 2, "message": message}),
    }
}

fn stage_result(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Success => "success",
        StageStatus::Failed => "failure",
        StageStatus::Cancelled => "cancellation",
        // Still running when its build ended.
        StageStatus::Running => "error",
    }
}

fn job_result(state: JobState) -> &'static str {
    match state {
        JobState::Passed => "success",
        JobState::Failed => "failure",
        JobState::Cancelled => "cancellation",
        JobState::Skipped => "skip",
        JobState::Blocked | JobState::Queued | JobState::Running => "error",
    }
}

/// One ended build as an OTLP `ResourceSpans`: the build's span (kind SERVER), a span
/// per stage (its child) and per job (the child of the stage of its name, or of the
/// build). `public_url` makes `cicd.pipeline.run.url.full` absolute.
pub(crate) fn trace_of(build: &BuildRecord, jobs: &[JobRecord], public_url: Option<&str>) -> Value {
    let state = &build.state;
    let run_id = state.run_id.as_str();
    let trace_id = id_of(&["kiln trace", run_id], 16);
    let build_span_id = id_of(&["kiln build", run_id], 8);
    let started = state.started_at;
    let ended = state.ended_at.unwrap_or(state.last_event_at).max(started);
    let result = super::pipeline_result(state.status).unwrap_or("error");

    let mut attributes = vec![
        string_attribute("cicd.pipeline.name", &build.project_slug),
        string_attribute("cicd.pipeline.run.id", run_id),
        string_attribute("cicd.pipeline.action.name", "BUILD"),
        string_attribute("cicd.pipeline.result", result),
        string_attribute(
            "cicd.pipeline.run.url.full",
            &format!("{}/builds/{run_id}", public_url.unwrap_or("")),
        ),
        int_attribute("kiln.build.number", build.number),
    ];
    if let Some(branch) = &state.branch {
        attributes.push(string_attribute("vcs.ref.head.name", branch));
    }
    if let Some(commit) = &state.commit {
        attributes.push(string_attribute("vcs.ref.head.revision", commit));
    }
    if let Some(repo) = &state.repo {
        // A reporter may have sent a URL with a token in it: never export that part.
        let (bare, _credentials) = kiln_core::net::split_credentials(repo);
        attributes.push(string_attribute("vcs.repository.url.full", &bare));
    }
    let error = match state.status {
        BuildStatus::Success | BuildStatus::Cancelled => None,
        BuildStatus::Stale => Some("stale: no heartbeat within the timeout".to_owned()),
        _ => Some(
            state
                .message
                .clone()
                .unwrap_or_else(|| "the build failed".into()),
        ),
    };
    if error.is_some() {
        attributes.push(string_attribute("error.type", result));
    }
    let mut spans = vec![json!({
        "traceId": trace_id,
        "spanId": build_span_id,
        "name": format!("BUILD {}", build.project_slug),
        "kind": 2,
        "startTimeUnixNano": nanos(started),
        "endTimeUnixNano": nanos(ended),
        "attributes": attributes,
        "status": status(error.as_deref()),
    })];

    let mut stage_spans: Vec<(&str, String)> = Vec::new();
    for stage in &state.stages {
        let span_id = id_of(&["kiln stage", run_id, stage.name.as_str()], 8);
        let stage_end = stage.ended_at.unwrap_or(ended).max(stage.started_at);
        let stage_error = match stage.status {
            StageStatus::Failed => Some(
                stage
                    .message
                    .clone()
                    .unwrap_or_else(|| "the stage failed".into()),
            ),
            StageStatus::Running => Some("still running when the build ended".to_owned()),
            StageStatus::Success | StageStatus::Cancelled => None,
        };
        spans.push(json!({
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": build_span_id,
            "name": stage.name.as_str(),
            "kind": 1,
            "startTimeUnixNano": nanos(stage.started_at),
            "endTimeUnixNano": nanos(stage_end),
            "attributes": [
                string_attribute("cicd.pipeline.task.name", stage.name.as_str()),
                string_attribute("cicd.pipeline.task.run.id", &format!("{run_id}/{}", stage.name.as_str())),
                string_attribute("cicd.pipeline.task.run.result", stage_result(stage.status)),
                string_attribute("kiln.span.kind", "stage"),
            ],
            "status": status(stage_error.as_deref()),
        }));
        stage_spans.push((stage.name.as_str(), span_id));
    }

    for job in jobs {
        let span_id = id_of(&["kiln job", run_id, &job.id.to_string()], 8);
        let parent = stage_spans
            .iter()
            .find(|(name, _)| *name == job.step)
            .map_or(build_span_id.as_str(), |(_, id)| id.as_str());
        let job_start = job
            .started_at
            .or(job.finished_at)
            .or(job.queued_at)
            .unwrap_or(job.created_at);
        let job_end = job.finished_at.unwrap_or(ended).max(job_start);
        let mut job_attributes = vec![
            string_attribute("cicd.pipeline.task.name", &job.step),
            string_attribute("cicd.pipeline.task.run.id", &job.id.to_string()),
            string_attribute("cicd.pipeline.task.run.result", job_result(job.state)),
            string_attribute("kiln.span.kind", "job"),
            int_attribute("kiln.job.attempt", job.attempt),
        ];
        if let Some(agent) = &job.agent_name {
            job_attributes.push(string_attribute("cicd.worker.name", agent));
        }
        if let Some(agent) = job.agent_id {
            job_attributes.push(string_attribute("cicd.worker.id", &agent.to_string()));
        }
        if let Some(code) = job.exit_code {
            job_attributes.push(int_attribute("process.exit.code", code));
        }
        let job_error = (job.state == JobState::Failed).then(|| {
            job.reason
                .clone()
                .unwrap_or_else(|| "the step failed".into())
        });
        spans.push(json!({
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent,
            "name": job.step,
            "kind": 1,
            "startTimeUnixNano": nanos(job_start),
            "endTimeUnixNano": nanos(job_end),
            "attributes": job_attributes,
            "status": status(job_error.as_deref()),
        }));
    }

    json!({
        "resource": {"attributes": [
            string_attribute("service.name", "kiln"),
            string_attribute("service.version", env!("CARGO_PKG_VERSION")),
        ]},
        "scopeSpans": [{
            "scope": {"name": "kiln", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    })
}

/// Why an export attempt failed, and whether to try again.
enum Failure {
    Retry(String),
    Give(String),
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<(), Failure> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|error| Failure::Retry(format!("cannot reach the collector: {error}")))?;
    let status = response.status();
    if status.is_success() {
        // OTLP's partial success (some spans rejected) is logged, not retried.
        if let Ok(answer) = response.json::<Value>().await
            && let Some(rejected) = answer["partialSuccess"]["rejectedSpans"]
                .as_str()
                .and_then(|n| n.parse::<i64>().ok())
                .or_else(|| answer["partialSuccess"]["rejectedSpans"].as_i64())
            && rejected > 0
        {
            tracing::warn!(rejected, message = %answer["partialSuccess"]["errorMessage"], "the OTLP collector rejected spans");
        }
        return Ok(());
    }
    let text = format!("the collector answered {status}");
    // The statuses OTLP/HTTP names as retryable.
    if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
        Err(Failure::Retry(text))
    } else {
        Err(Failure::Give(text))
    }
}

/// Posts queued traces to the collector, a batch at a time, retrying a batch with
/// growing pauses; ends at `stop` after one last attempt at what is queued.
pub(crate) async fn run_exporter(
    config: OtlpConfig,
    mut queue: mpsc::Receiver<Value>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    crate::install_crypto_provider();
    let client = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the OTLP client; traces are not exported");
            return;
        }
    };
    let url = config.traces_url();
    let delays = config
        .retry_delays
        .clone()
        .unwrap_or_else(|| RETRY_DELAYS.to_vec());
    let mut batch: Vec<Value> = Vec::new();
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            received = queue.recv_many(&mut batch, BATCH) => if received == 0 { break },
            _ = stop.changed() => break,
        }
        let body = json!({"resourceSpans": batch});
        let count = batch.len() as u64;
        let mut attempt = 0;
        loop {
            match post(&client, &url, &body).await {
                Ok(()) => {
                    metrics.otlp_traces.get(&"exported").add(count);
                    tracing::debug!(traces = count, "traces exported");
                    break;
                }
                Err(Failure::Retry(reason)) if attempt < delays.len() && !*stop.borrow() => {
                    metrics.otlp_traces.get(&"retried").add(count);
                    tracing::info!(%reason, retry_in_ms = delays[attempt].as_millis() as u64, "trace export failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delays[attempt]) => {}
                        _ = stop.changed() => {}
                    }
                    attempt += 1;
                }
                Err(Failure::Retry(reason) | Failure::Give(reason)) => {
                    metrics.otlp_traces.get(&"dropped").add(count);
                    tracing::warn!(%reason, traces = count, "traces dropped: the OTLP collector did not take them");
                    break;
                }
            }
        }
        batch.clear();
    }
    // Stopping: one attempt at what is queued, within `FINAL_FLUSH` in all, so a dead
    // collector does not hold the shutdown.
    queue.close();
    let flush = async {
        while queue.recv_many(&mut batch, BATCH).await > 0 {
            let count = batch.len() as u64;
            let body = json!({"resourceSpans": batch});
            match post(&client, &url, &body).await {
                Ok(()) => metrics.otlp_traces.get(&"exported").add(count),
                Err(_) => metrics.otlp_traces.get(&"dropped").add(count),
            }
            batch.clear();
        }
    };
    if tokio::time::timeout(FINAL_FLUSH, flush).await.is_err() {
        tracing::warn!("traces still queued at shutdown were not exported");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_of_the_right_length_and_stable() {
        let trace = id_of(&["kiln trace", "run-1"], 16);
        assert_eq!(trace.len(), 32);
        assert_eq!(trace, id_of(&["kiln trace", "run-1"], 16));
        assert_ne!(trace, id_of(&["kiln trace", "run-2"], 16));
        assert_eq!(id_of(&["kiln build", "run-1"], 8).len(), 16);
        assert_eq!(nanos(Millis(1_500)), "1500000000");
    }

    /// A Kiln-run build: each job's span hangs under the stage of its step's name, or
    /// under the build when there is none; a skipped job says so.
    #[test]
    fn job_spans_hang_under_their_stage_or_the_build() {
        use kiln_core::{BuildState, RunId, StageName, StageState};
        let mut state = BuildState::new(RunId::parse("runId", "run-9").unwrap(), Millis(1_000));
        state.status = BuildStatus::Success;
        state.ended_at = Some(Millis(9_000));
        state.stages.push(StageState {
            name: StageName::parse("stage", "test").unwrap(),
            position: 0,
            status: StageStatus::Success,
            started_at: Millis(2_000),
            ended_at: Some(Millis(8_000)),
            duration_ms: Some(6_000),
            message: None,
            dirty: false,
        });
        let build = BuildRecord {
            id: 1,
            project_id: 1,
            project_slug: "web".into(),
            number: 3,
            last_event_id: 10,
            state,
        };
        let job = |id: i64, step: &str, job_state: JobState| JobRecord {
            id,
            build_id: 1,
            project_id: 1,
            project_slug: "web".into(),
            repo: None,
            run_id: "run-9".into(),
            build_number: 3,
            branch: None,
            commit: None,
            step: step.into(),
            position: id,
            state: job_state,
            priority: 5,
            depends_on: vec![],
            labels: vec![],
            spec: json!({}),
            attempt: 1,
            agent_id: Some(4),
            agent_name: Some("box".into()),
            lease_expires_at: None,
            cancel_requested: false,
            created_at: Millis(1_000),
            queued_at: Some(Millis(1_000)),
            started_at: Some(Millis(2_000)),
            finished_at: Some(Millis(8_000)),
            exit_code: Some(0),
            reason: None,
            log_size: 0,
            reported: false,
            has_repo_credentials: false,
        };
        let trace = trace_of(
            &build,
            &[
                job(7, "test", JobState::Passed),
                job(8, "deploy", JobState::Skipped),
            ],
            None,
        );
        let spans = trace["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 4);
        let (build_span, stage_span) = (&spans[0], &spans[1]);
        assert_eq!(spans[2]["parentSpanId"], stage_span["spanId"]);
        assert_eq!(spans[3]["parentSpanId"], build_span["spanId"]);
        let attribute = |span: &Value, key: &str| {
            span["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|kv| kv["key"] == key)
                .map(|kv| kv["value"].clone())
        };
        assert_eq!(
            attribute(&spans[2], "cicd.worker.name"),
            Some(json!({"stringValue": "box"}))
        );
        assert_eq!(
            attribute(&spans[3], "cicd.pipeline.task.run.result"),
            Some(json!({"stringValue": "skip"}))
        );
        assert_eq!(
            attribute(build_span, "cicd.pipeline.run.url.full"),
            Some(json!({"stringValue": "/builds/run-9"}))
        );
        assert_eq!(build_span["startTimeUnixNano"], "1000000000");
        assert_eq!(build_span["endTimeUnixNano"], "9000000000");
        assert_eq!(build_span["status"], json!({}));
    }

    #[test]
    fn endpoints_are_http_urls_and_get_the_traces_path() {
        assert_eq!(
            OtlpConfig::parse_endpoint("http://localhost:4318/").unwrap(),
            "http://localhost:4318"
        );
        assert!(OtlpConfig::parse_endpoint("localhost:4318").is_err());
        assert!(OtlpConfig::parse_endpoint("ftp://x").is_err());
        assert_eq!(
            OtlpConfig::new("http://c:4318").traces_url(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            OtlpConfig::new("http://c:4318/v1/traces").traces_url(),
            "http://c:4318/v1/traces"
        );
    }
}
