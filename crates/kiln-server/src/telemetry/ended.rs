//! The build-end consumer: one task that learns from the ingestor which builds a group
//! commit of this replica ended, records each in the metrics (duration by pipeline and
//! result) and, with `--otlp-endpoint`, hands its trace to the exporter.
//!
//! Every build ends in exactly one committed event, committed by exactly one replica's
//! ingestor, so each ended build is counted and exported once across replicas without a
//! shared cursor. The ingestor hands run ids over with `try_send`: a full channel drops
//! the observation rather than slowing ingest (counted as a dropped trace when
//! exporting). A build that ends just before the process stops may go unobserved.

use std::sync::Arc;

use kiln_store::Store;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::{Metrics, otlp};

/// Ended builds waiting for the consumer at most.
pub(crate) const CHANNEL_CAPACITY: usize = 4096;

/// Where finished builds' traces go, when exporting.
pub(crate) struct Export {
    pub queue: mpsc::Sender<Value>,
    pub public_url: Option<String>,
}

pub(crate) async fn run(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    mut ended: mpsc::Receiver<String>,
    export: Option<Export>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let run_id = tokio::select! {
            received = ended.recv() => match received {
                Some(run_id) => run_id,
                None => return,
            },
            _ = stop.changed() => return,
        };
        if let Err(error) = observe(&*store, &metrics, &run_id, export.as_ref()).await {
            tracing::warn!(run_id, error = %error.chain(), "an ended build was not observed");
        }
    }
}

async fn observe(
    store: &dyn Store,
    metrics: &Metrics,
    run_id: &str,
    export: Option<&Export>,
) -> Result<(), kiln_store::StoreError> {
    let Some(build) = store.build_by_run_id(run_id).await? else {
        return Ok(());
    };
    metrics.build_ended(
        &build.project_slug,
        build.state.status,
        build.state.duration_ms,
    );
    if let Some(export) = export {
        let jobs = store.jobs_of_build(build.id).await?;
        let trace = otlp::trace_of(&build, &jobs, export.public_url.as_deref());
        if export.queue.try_send(trace).is_err() {
            metrics.otlp_traces.get(&"dropped").increment();
            tracing::warn!(
                run_id,
                "trace dropped: the OTLP export queue is full (is the collector down?)"
            );
        }
    }
    Ok(())
}
