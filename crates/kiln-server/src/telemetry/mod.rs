//! What Kiln tells monitoring systems: the process's metrics (`Metrics`, recorded by
//! ingest, the scheduler, the webhook sender, the mail task, the OTLP exporter and the
//! request guard; written as Prometheus text by `Metrics::render`), the build-end
//! consumer that observes finished builds (`ended`), and their export as OpenTelemetry
//! traces (`otlp`).
//!
//! This module imports none of the modules that record into it, so any of them may.
//! Counters and histograms count what *this replica* did (Prometheus sums replicas);
//! gauges that describe shared state (queue depth, outboxes, agents) are read from the
//! database at scrape time and are the same on every replica.

pub(crate) mod ended;
pub(crate) mod otlp;
mod registry;

use kiln_core::{BuildStatus, JobState, Millis};
use kiln_store::OperationalCounts;

pub(crate) use registry::{Counter, Exposition, Family, Histogram};

/// Bounds for request and transaction latencies, in seconds.
const LATENCY_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bounds for how many requests or events one group commit carries.
const COMMIT_SIZES: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 5000.0,
];
/// Bounds for a job's wait in the queue, in seconds.
const QUEUE_WAIT_SECONDS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Bounds for a build's duration, in seconds.
const PIPELINE_SECONDS: [f64; 13] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

fn latency() -> Histogram {
    Histogram::new(&LATENCY_SECONDS)
}

fn commit_size() -> Histogram {
    Histogram::new(&COMMIT_SIZES)
}

fn pipeline_duration() -> Histogram {
    Histogram::new(&PIPELINE_SECONDS)
}

/// An HTTP request's labels: method, route template (never the raw path, so the label
/// set stays as small as the route table), status code.
pub(crate) type HttpKey = (&'static str, &'static str, u16);

/// Every metric this process records; one per process, shared through `Arc`.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Ingest requests by outcome: `accepted`, `rejected` (a refused build transition,
    /// a run id of another project), `failed` (the transaction failed; retryable).
    pub ingest_requests: Family<&'static str, Counter>,
    /// Events of accepted requests by what happened: `stored`, `duplicate`, `ignored`.
    pub ingest_events: Family<&'static str, Counter>,
    /// From a request's arrival at the ingestor to its answer: queue wait + commit.
    pub ingest_request_duration: Histogram,
    /// One group commit's transaction.
    pub ingest_commit_duration: Histogram,
    pub ingest_commit_requests: Histogram,
    pub ingest_commit_events: Histogram,
    /// A job's wait between queued and claimed.
    pub queue_wait: Histogram,
    /// Ended builds by pipeline (project slug) and result, observed once by the replica
    /// that committed the end.
    pub pipeline_run_duration: Family<(String, &'static str), Histogram>,
    pub pipeline_run_errors: Family<(String, &'static str), Counter>,
    /// Webhook delivery attempts by outcome: `delivered`, `retrying`, `failed`.
    pub webhook_attempts: Family<&'static str, Counter>,
    pub webhook_attempt_duration: Histogram,
    /// Notification email attempts by outcome: `sent`, `retrying`, `failed`.
    pub email_attempts: Family<&'static str, Counter>,
    /// Traces of ended builds by outcome: `exported`, `retried` (an attempt failed and
    /// is retried), `dropped` (the export queue was full, or every retry failed).
    pub otlp_traces: Family<&'static str, Counter>,
    pub http_requests: Family<HttpKey, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            ingest_requests: Family::new(Counter::default),
            ingest_events: Family::new(Counter::default),
            ingest_request_duration: latency(),
            ingest_commit_duration: latency(),
            ingest_commit_requests: commit_size(),
            ingest_commit_events: commit_size(),
            queue_wait: Histogram::new(&QUEUE_WAIT_SECONDS),
            pipeline_run_duration: Family::new(pipeline_duration),
            pipeline_run_errors: Family::new(Counter::default),
            webhook_attempts: Family::new(Counter::default),
            webhook_attempt_duration: latency(),
            email_attempts: Family::new(Counter::default),
            otlp_traces: Family::new(Counter::default),
            http_requests: Family::new(latency),
        }
    }
}

/// An agent's state as OpenTelemetry's `cicd.worker.state` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkerState {
    /// Connected, running nothing.
    Available,
    /// Connected, running at least one job.
    Busy,
    /// Not heard from within a lease.
    Offline,
}

impl WorkerState {
    const ALL: [WorkerState; 3] = [Self::Available, Self::Busy, Self::Offline];

    fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Busy => "busy",
            Self::Offline => "offline",
        }
    }
}

/// What a scrape reads besides the recorded metrics: the database's counts and the
/// process's own queues.
#[derive(Debug)]
pub(crate) struct Gauges {
    pub now: Millis,
    pub counts: OperationalCounts,
    /// Agents by state (derived from `counts.agents` and the lease).
    pub workers: Vec<WorkerState>,
    /// Requests waiting for the ingestor.
    pub ingest_queued: u64,
    /// Live subscriptions (SSE, Socket.IO, `kiln watch`) to build and project rooms.
    pub build_subscribers: u64,
    pub project_subscribers: u64,
    /// Traces waiting to be exported.
    pub otlp_queued: Option<u64>,
}

/// The OpenTelemetry `cicd.pipeline.result` of an ended build (`None` while it runs).
pub(crate) fn pipeline_result(status: BuildStatus) -> Option<&'static str> {
    match status {
        BuildStatus::Success => Some("success"),
        BuildStatus::Failed => Some("failure"),
        BuildStatus::Cancelled => Some("cancellation"),
        // No heartbeat within the timeout: the run timed out as far as Kiln can tell.
        BuildStatus::Stale => Some("timeout"),
        BuildStatus::Queued | BuildStatus::Running => None,
    }
}

fn seconds_since(now: Millis, then: Option<Millis>) -> f64 {
    then.map_or(0.0, |then| now.saturating_sub(then).max(0) as f64 / 1000.0)
}

impl Metrics {
    /// Records an ended build: its duration by pipeline and result, and an error for a
    /// failed or stale one.
    pub fn build_ended(&self, pipeline: &str, status: BuildStatus, duration_ms: Option<i64>) {
        let Some(result) = pipeline_result(status) else {
            return;
        };
        let duration = duration_ms.unwrap_or(0).max(0) as f64 / 1000.0;
        self.pipeline_run_duration
            .get(&(pipeline.to_owned(), result))
            .observe(duration);
        if matches!(status, BuildStatus::Failed | BuildStatus::Stale) {
            self.pipeline_run_errors
                .get(&(pipeline.to_owned(), result))
                .increment();
        }
    }

    /// One answered HTTP request of a routed path.
    pub fn http_request(
        &self,
        method: &axum::http::Method,
        route: &'static str,
        status: u16,
        seconds: f64,
    ) {
        use axum::http::Method;
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "_OTHER",
        };
        self.http_requests
            .get(&(method, route, status))
            .observe(seconds);
    }

    /// The whole exposition: recorded metrics, then the scrape's gauges.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = Exposition::default();
        let now = gauges.now;

        out.family(
            "kiln_build_info",
            "gauge",
            "Always 1; the version label names the running Kiln.",
        );
        out.sample(
            "kiln_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );

        // Ingest.
        out.family(
            "kiln_ingest_requests_total",
            "counter",
            "Ingest requests (POST /api/v1/events, triggers, agents' stage events) by outcome: accepted, rejected (refused whole), failed (the transaction failed; nothing stored).",
        );
        for outcome in ["accepted", "rejected", "failed"] {
            let value = self.ingest_requests.get(&outcome).get();
            out.sample(
                "kiln_ingest_requests_total",
                &[("outcome", outcome)],
                value as f64,
            );
        }
        out.family(
            "kiln_ingest_events_total",
            "counter",
            "Events of accepted ingest requests by status: stored, duplicate (a repeated eventId), ignored.",
        );
        for status in ["stored", "duplicate", "ignored"] {
            let value = self.ingest_events.get(&status).get();
            out.sample(
                "kiln_ingest_events_total",
                &[("status", status)],
                value as f64,
            );
        }
        out.family(
            "kiln_ingest_request_duration_seconds",
            "histogram",
            "Time from an ingest request reaching the ingestor to its answer (waiting for the group commit, then the commit).",
        );
        out.histogram(
            "kiln_ingest_request_duration_seconds",
            &[],
            &self.ingest_request_duration,
        );
        out.family(
            "kiln_ingest_commit_duration_seconds",
            "histogram",
            "Duration of one group-commit transaction.",
        );
        out.histogram(
            "kiln_ingest_commit_duration_seconds",
            &[],
            &self.ingest_commit_duration,
        );
        out.family(
            "kiln_ingest_commit_requests",
            "histogram",
            "Requests carried by one group commit.",
        );
        out.histogram(
            "kiln_ingest_commit_requests",
            &[],
            &self.ingest_commit_requests,
        );
        out.family(
            "kiln_ingest_commit_events",
            "histogram",
            "Events carried by one group commit.",
        );
        out.histogram("kiln_ingest_commit_events", &[], &self.ingest_commit_events);
        out.family(
            "kiln_ingest_queued_requests",
            "gauge",
            "Ingest requests waiting for the next group commit.",
        );
        out.sample(
            "kiln_ingest_queued_requests",
            &[],
            gauges.ingest_queued as f64,
        );

        // Live delivery.
        out.family(
            "kiln_live_subscribers",
            "gauge",
            "Live subscriptions (SSE streams, Socket.IO subscriptions, kiln watch) by room kind.",
        );
        out.sample(
            "kiln_live_subscribers",
            &[("room", "build")],
            gauges.build_subscribers as f64,
        );
        out.sample(
            "kiln_live_subscribers",
            &[("room", "project")],
            gauges.project_subscribers as f64,
        );

        // Builds (OpenTelemetry CI/CD metrics).
        out.family(
            "cicd_pipeline_run_active",
            "gauge",
            "OpenTelemetry cicd.pipeline.run.active: builds not ended, by pipeline (project) and state (pending = queued, executing = running).",
        );
        for (pipeline, status, count) in &gauges.counts.active_builds {
            let state = match status {
                BuildStatus::Queued => "pending",
                _ => "executing",
            };
            out.sample(
                "cicd_pipeline_run_active",
                &[
                    ("cicd_pipeline_name", pipeline),
                    ("cicd_pipeline_run_state", state),
                ],
                *count as f64,
            );
        }
        out.family(
            "cicd_pipeline_run_duration_seconds",
            "histogram",
            "OpenTelemetry cicd.pipeline.run.duration: ended builds by pipeline (project) and result (success, failure, cancellation, timeout = stale), counted by the replica that committed the end.",
        );
        for ((pipeline, result), histogram) in self.pipeline_run_duration.members() {
            out.histogram(
                "cicd_pipeline_run_duration_seconds",
                &[
                    ("cicd_pipeline_name", &pipeline),
                    ("cicd_pipeline_result", result),
                ],
                &histogram,
            );
        }
        out.family(
            "cicd_pipeline_run_errors_total",
            "counter",
            "OpenTelemetry cicd.pipeline.run.errors: failed and stale builds by pipeline (project) and error type.",
        );
        for ((pipeline, result), counter) in self.pipeline_run_errors.members() {
            out.sample(
                "cicd_pipeline_run_errors_total",
                &[("cicd_pipeline_name", &pipeline), ("error_type", result)],
                counter.get() as f64,
            );
        }

        // The queue and the agents.
        out.family(
            "kiln_jobs",
            "gauge",
            "Jobs for agents not ended, by state (blocked: waiting for the steps they depend on; queued: waiting for an agent; running).",
        );
        for state in [JobState::Blocked, JobState::Queued, JobState::Running] {
            let count = gauges
                .counts
                .active_jobs
                .iter()
                .find(|(counted, _)| *counted == state)
                .map_or(0, |(_, count)| *count);
            out.sample("kiln_jobs", &[("state", state.as_str())], count as f64);
        }
        out.family(
            "kiln_queue_oldest_wait_seconds",
            "gauge",
            "How long the job waiting longest in the queue has waited (0 when none waits).",
        );
        out.sample(
            "kiln_queue_oldest_wait_seconds",
            &[],
            seconds_since(now, gauges.counts.oldest_queued_at),
        );
        out.family(
            "kiln_queue_wait_seconds",
            "histogram",
            "Time jobs waited between queued and claimed by an agent.",
        );
        out.histogram("kiln_queue_wait_seconds", &[], &self.queue_wait);
        // OpenTelemetry's cicd.worker.count: Prometheus reserves the _count suffix for
        // histograms and summaries, so the name drops it.
        out.family(
            "cicd_workers",
            "gauge",
            "OpenTelemetry cicd.worker.count: registered agents by state (available: connected and idle; busy: running a job; offline: not heard from within a lease).",
        );
        for state in WorkerState::ALL {
            let count = gauges.workers.iter().filter(|w| **w == state).count();
            out.sample(
                "cicd_workers",
                &[("cicd_worker_state", state.as_str())],
                count as f64,
            );
        }

        // Webhooks.
        out.family(
            "kiln_webhook_deliveries_pending",
            "gauge",
            "Webhook deliveries waiting for their first or next attempt.",
        );
        out.sample(
            "kiln_webhook_deliveries_pending",
            &[],
            gauges.counts.webhook_pending as f64,
        );
        out.family(
            "kiln_webhook_oldest_pending_seconds",
            "gauge",
            "Age of the oldest pending webhook delivery: how far delivery lags (0 when none is pending).",
        );
        out.sample(
            "kiln_webhook_oldest_pending_seconds",
            &[],
            seconds_since(now, gauges.counts.webhook_oldest_pending_at),
        );
        out.family(
            "kiln_webhook_unread_events",
            "gauge",
            "Committed events the webhook consumer has not turned into deliveries yet.",
        );
        out.sample(
            "kiln_webhook_unread_events",
            &[],
            gauges.counts.webhook_unread_events as f64,
        );
        out.family(
            "kiln_webhook_attempts_total",
            "counter",
            "Webhook delivery attempts made by this replica, by outcome: delivered, retrying, failed.",
        );
        for outcome in ["delivered", "retrying", "failed"] {
            let value = self.webhook_attempts.get(&outcome).get();
            out.sample(
                "kiln_webhook_attempts_total",
                &[("outcome", outcome)],
                value as f64,
            );
        }
        out.family(
            "kiln_webhook_attempt_duration_seconds",
            "histogram",
            "Duration of webhook delivery attempts (request to answer or error).",
        );
        out.histogram(
            "kiln_webhook_attempt_duration_seconds",
            &[],
            &self.webhook_attempt_duration,
        );

        // Email.
        out.family(
            "kiln_email_outbox_pending",
            "gauge",
            "Notification emails neither sent nor given up.",
        );
        out.sample(
            "kiln_email_outbox_pending",
            &[],
            gauges.counts.email_pending as f64,
        );
        out.family(
            "kiln_email_outbox_oldest_pending_seconds",
            "gauge",
            "Age of the oldest email in the outbox (0 when it is empty).",
        );
        out.sample(
            "kiln_email_outbox_oldest_pending_seconds",
            &[],
            seconds_since(now, gauges.counts.email_oldest_pending_at),
        );
        out.family(
            "kiln_email_attempts_total",
            "counter",
            "Notification email attempts made by this replica, by outcome: sent, retrying, failed.",
        );
        for outcome in ["sent", "retrying", "failed"] {
            let value = self.email_attempts.get(&outcome).get();
            out.sample(
                "kiln_email_attempts_total",
                &[("outcome", outcome)],
                value as f64,
            );
        }

        // OpenTelemetry export.
        if let Some(queued) = gauges.otlp_queued {
            out.family(
                "kiln_otlp_traces_total",
                "counter",
                "Traces of ended builds sent to --otlp-endpoint, by outcome: exported, retried (an attempt failed; tried again), dropped (the queue was full or every attempt failed).",
            );
            for outcome in ["exported", "retried", "dropped"] {
                let value = self.otlp_traces.get(&outcome).get();
                out.sample(
                    "kiln_otlp_traces_total",
                    &[("outcome", outcome)],
                    value as f64,
                );
            }
            out.family(
                "kiln_otlp_queued_traces",
                "gauge",
                "Traces waiting to be exported.",
            );
            out.sample("kiln_otlp_queued_traces", &[], queued as f64);
        }

        // HTTP (OpenTelemetry http.server.request.duration).
        out.family(
            "http_server_request_duration_seconds",
            "histogram",
            "OpenTelemetry http.server.request.duration: answered requests by method, route template and status code (time to the response head; a stream's lifetime is not included).",
        );
        for ((method, route, status), histogram) in self.http_requests.members() {
            let status = status.to_string();
            out.histogram(
                "http_server_request_duration_seconds",
                &[
                    ("http_request_method", method),
                    ("http_route", route),
                    ("http_response_status_code", &status),
                ],
                &histogram,
            );
        }
        out.finish()
    }
}
