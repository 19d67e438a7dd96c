//! The artifact retention task: one task that, every `retention_interval` (hourly),
//! applies each project's retention rule (kiln-core chooses, the store deletes the
//! manifests) and then deletes the blobs no manifest names any more
//! (`services::retention`). Several replicas may run it at once: deletions are
//! conditional, so a second pass finds nothing left to do.

use std::sync::Arc;

use kiln_store::Store;
use tokio::sync::watch;

use crate::background::{Passes, Periodic};
use crate::clock::Clock;
use crate::config::ArtifactConfig;
use crate::services::retention::{apply_rule, policy_of, sweep_blobs};

pub(crate) async fn run(
    store: Arc<dyn Store>,
    artifacts: ArtifactConfig,
    clock: Arc<dyn Clock>,
    passes: Arc<Passes>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(artifacts.retention_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(error) = pass(&*store, &artifacts, &*clock).await {
            tracing::warn!(%error, "artifact retention failed; retrying at the next interval");
        }
        passes.done(Periodic::Retention);
    }
}

async fn pass(
    store: &dyn Store,
    artifacts: &ArtifactConfig,
    clock: &dyn Clock,
) -> Result<(), String> {
    let rules = store.retention_rules().await.map_err(|e| e.to_string())?;
    for rule in rules {
        let Some(project) = store
            .project_by_id(rule.project_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let policy = policy_of(store, project.id)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(error) = apply_rule(store, &project, &policy, clock.now(), false).await {
            tracing::warn!(project = %project.slug, %error, "artifact retention of a project failed");
        }
    }
    sweep_blobs(store, artifacts)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
