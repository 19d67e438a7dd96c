//! A `/metrics` scrape: the process's recorded metrics with the gauges read at scrape
//! time — the database's counts (one store call of index-answered queries), the live
//! bus's subscribers, the ingest and export queues — in the Prometheus text format.

use crate::AppState;
use crate::service_error::ServiceError;
use crate::telemetry::{Gauges, WorkerState};

/// The exposition document.
pub(crate) async fn scrape(state: &AppState) -> Result<String, ServiceError> {
    let counts = state.store.operational_counts().await?;
    let now = state.clock.now();
    let lease_ms = state.scheduler.config().job_lease.as_millis() as i64;
    let workers = counts
        .agents
        .iter()
        .map(|agent| {
            if now.saturating_sub(agent.last_seen_at) > lease_ms {
                WorkerState::Offline
            } else if agent.running_jobs > 0 {
                WorkerState::Busy
            } else {
                WorkerState::Available
            }
        })
        .collect();
    let (build_subscribers, project_subscribers) = state.bus.subscriber_counts();
    let gauges = Gauges {
        now,
        counts,
        workers,
        ingest_queued: state.ingestor.queued(),
        build_subscribers,
        project_subscribers,
        otlp_queued: state
            .otlp_queue
            .as_ref()
            .map(|queue| (queue.max_capacity() - queue.capacity()) as u64),
    };
    Ok(state.metrics.render(&gauges))
}
