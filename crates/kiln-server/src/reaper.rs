//! The stale-build reaper: one task that periodically fails running builds that have
//! been silent for longer than their heartbeat timeout.
//!
//! It appends `build_failed` with `data.reason = "stale"` through the ingestor, so the
//! transition is an ordinary event (stored, streamed, notified). The write is guarded by
//! `Precondition::BuildIsStale`, checked inside the transaction, so a heartbeat that
//! lands after the scan wins, and several replicas reaping at once fail a build once.
//! Staleness is computed from stored timestamps, so it survives restarts.

use std::sync::Arc;
use std::time::Duration;

use kiln_core::{CoreEventType, EventType, NewEvent};
use kiln_store::{IngestRequest, Precondition, Store};
use serde_json::json;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::ingest::Ingestor;

const SCAN_LIMIT: i64 = 500;

pub(crate) async fn run(
    store: Arc<dyn Store>,
    ingestor: Ingestor,
    clock: Arc<dyn Clock>,
    default_timeout_secs: i64,
    interval: Duration,
    passes: Arc<crate::background::Passes>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(error) = reap_once(&*store, &ingestor, &*clock, default_timeout_secs).await {
            tracing::warn!(%error, "stale-build scan failed; retrying at the next interval");
        }
        passes.done(crate::background::Periodic::Reaper);
    }
}

async fn reap_once(
    store: &dyn Store,
    ingestor: &Ingestor,
    clock: &dyn Clock,
    default_timeout_secs: i64,
) -> Result<(), String> {
    let stale = store
        .stale_builds(clock.now(), default_timeout_secs, SCAN_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    for build in stale {
        let timeout_secs = build
            .state
            .heartbeat_timeout_secs
            .unwrap_or(default_timeout_secs);
        let mut event = NewEvent::new(
            build.state.run_id.clone(),
            EventType::Core(CoreEventType::BuildFailed),
        );
        event.origin = Some("kiln".into());
        event.message = Some(format!(
            "no heartbeat or event for {timeout_secs} s; Kiln marked the build stale"
        ));
        event.data = Some(json!({"reason": "stale", "timeoutSecs": timeout_secs}));
        let outcome = ingestor
            .submit(IngestRequest {
                project_id: build.project_id,
                events: vec![event],
                precondition: Precondition::BuildIsStale {
                    default_timeout_secs,
                },
                jobs: None,
            })
            .await;
        match outcome {
            Ok(Ok(_)) => {
                tracing::info!(run_id = %build.state.run_id, timeout_secs, "marked build stale")
            }
            Ok(Err(rejection)) => {
                tracing::debug!(run_id = %build.state.run_id, %rejection, "build ended before it could be marked stale")
            }
            Err(failure) => return Err(failure.to_string()),
        }
    }
    Ok(())
}
