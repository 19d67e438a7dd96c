//! The analytics keeper: one task that, at start-up and then every
//! `analytics_keep_interval` (hourly), keeps the closed days of the last
//! `KEEP_DAYS` days of every project that are not kept yet (`analytics_days`, see
//! kiln-store), so the first analytics request over a long range reads them back
//! instead of every build. Replicas may run it at once: a day computed twice is written
//! twice with the same content.

use std::sync::Arc;
use std::time::Duration;

use kiln_core::Millis;
use kiln_store::Store;
use tokio::sync::watch;

use crate::background::{Passes, Periodic};
use crate::clock::Clock;

/// How far back each pass keeps days: the dashboard's longest preset range.
pub const KEEP_DAYS: i64 = 90;

pub(crate) async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    interval: Duration,
    passes: Arc<Passes>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let started = std::time::Instant::now();
        match pass(&*store, &*clock, &mut stop).await {
            Ok(0) => {}
            Ok(days) => tracing::info!(
                days,
                ms = started.elapsed().as_millis() as u64,
                "analytics days kept"
            ),
            Err(error) => {
                tracing::warn!(%error, "keeping analytics days failed; retrying at the next interval")
            }
        }
        passes.done(Periodic::AnalyticsKeeper);
    }
}

async fn pass(
    store: &dyn Store,
    clock: &dyn Clock,
    stop: &mut watch::Receiver<bool>,
) -> Result<usize, kiln_store::StoreError> {
    let mut kept = 0;
    for project in store.list_projects().await? {
        if *stop.borrow() {
            break;
        }
        let now = clock.now();
        let from = Millis(now.0 - KEEP_DAYS * 86_400_000);
        kept += store.keep_closed_days(project.id, from, now).await?;
    }
    Ok(kept)
}
