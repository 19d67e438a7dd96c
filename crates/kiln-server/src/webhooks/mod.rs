//! Outbound webhooks: two tasks per replica that push committed events to the
//! endpoints of their project.
//!
//! The consumer (`run_consumer`) reads committed events in id order after the cursor
//! persisted in the store (`kiln_counters.webhook_cursor`) and queues one delivery per
//! (endpoint, event) whose filter matches — for a disabled endpoint too, held until it is
//! re-activated, up to `held_while_disabled` (past that the events are counted, not
//! queued); the sender renders its body at the first
//! attempt and keeps it (so every retry sends the same bytes, and the rows queued at
//! ingest rate stay small). The store keeps one delivery per (endpoint, event) and the
//! cursor moves by compare-and-set, so replays and concurrent replicas queue nothing
//! twice, and a restart loses nothing. It wakes on local commits (the bus), a tick
//! (other replicas' commits) or stop: a closed set (`Wake`).
//!
//! The sender (`run_sender`) claims due deliveries — only the oldest pending one of each
//! active endpoint, so an endpoint receives its events in order — and sends each with
//! Standard Webhooks signatures, a timeout, and the address check (`address`); it claims
//! more whenever an attempt ends (up to `concurrency` in flight), not per batch. Answers
//! decide what follows: 2xx delivered; 410 failed and the endpoint disabled; anything
//! else retried on the schedule (`Retry-After` honoured on 429/503) until the retries
//! are used up, then failed (kept for manual redelivery). Neither task is on the ingest
//! path: a slow or broken receiver delays only its own endpoint's deliveries.

pub(crate) mod payload;
mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_store::{
    DroppedWebhookEvents, NewWebhookDelivery, Store, StoreError, StoredEvent, WebhookEndpoint,
};
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::ingest::{IngestLoad, IngestTotals};
use crate::live::Bus;

pub(crate) use send::{SenderSettings, run_sender};

/// Keeps webhook work from slowing ingest. While this replica's ingest is busy (its
/// commits took at least half the time since the last look, judged over 100 ms or more,
/// and requests queued up for them: two or more per commit on average), each stretch of webhook
/// work is followed by a rest long enough that the work takes at most
/// `WebhookConfig::busy_share` of the time (2% by default; 100% never rests); otherwise it
/// runs at full speed. Under sustained ingest load deliveries
/// therefore fall behind (the event log and the outbox hold them durably) and catch up
/// once the load eases, instead of taking the database or the CPU from ingest.
pub(crate) struct Pace {
    load: Arc<IngestLoad>,
    last_look: Instant,
    last: IngestTotals,
    /// Whether ingest was busy at the last look.
    ingest_busy: bool,
    /// Rest still owed (a rest is at most `MAX_REST`; the remainder follows next time).
    owed: Duration,
    /// The share of the time webhook work may take while ingest is busy, in (0, 1].
    busy_share: f64,
}

/// The longest single rest, so a stop is not held up.
const MAX_REST: Duration = Duration::from_secs(1);
/// The shortest stretch over which ingest's share of the time is judged.
const LOOK_WINDOW: Duration = Duration::from_millis(100);
/// Ingest counts as busy when its commits took at least this share of the time…
const INGEST_BUSY: f64 = 0.5;
/// … and carried at least this many requests each on average (requests queued up).
const QUEUED_REQUESTS: f64 = 2.0;

impl Pace {
    pub(crate) fn new(load: Arc<IngestLoad>, busy_share: f64) -> Self {
        let last = load.totals();
        Self {
            load,
            last_look: Instant::now(),
            last,
            ingest_busy: false,
            owed: Duration::ZERO,
            busy_share: busy_share.clamp(0.001, 1.0),
        }
    }

    /// Rests after `spent` of webhook work if ingest is busy.
    pub(crate) async fn rest(&mut self, spent: Duration) {
        // Ingest's share is judged over at least `LOOK_WINDOW`: over a shorter one, a
        // single commit that happened to end inside it would look like a flood.
        let window = self.last_look.elapsed();
        if window >= LOOK_WINDOW {
            let totals = self.load.totals();
            let ingest_share =
                totals.busy.saturating_sub(self.last.busy).as_secs_f64() / window.as_secs_f64();
            let commits = totals.commits.saturating_sub(self.last.commits).max(1);
            let requests = totals.requests.saturating_sub(self.last.requests);
            // Commits that carry several requests each mean requests queued up: ingest
            // has more to do than it can take one by one. Long commits of single
            // requests (slowed by a busy disk, or by this very work) are not a flood.
            self.ingest_busy =
                ingest_share >= INGEST_BUSY && requests as f64 / commits as f64 >= QUEUED_REQUESTS;
            self.last_look = Instant::now();
            self.last = totals;
        }
        if self.ingest_busy && self.busy_share < 1.0 {
            self.owed += spent.mul_f64((1.0 - self.busy_share) / self.busy_share);
            let rest = self.owed.min(MAX_REST);
            self.owed -= rest;
            tokio::time::sleep(rest).await;
        } else {
            self.owed = Duration::ZERO;
        }
    }
}

/// The default of `WebhookConfig::held_while_disabled` (documented in docs/webhooks.md).
pub const HELD_WHILE_DISABLED: i64 = 10_000;

/// Events read per page.
const PAGE: i64 = 500;
/// Most deliveries queued in one transaction (a page's events for 100 endpoints are cut
/// into several), so one never holds the database for long.
const MAX_DELIVERIES_PER_COMMIT: usize = 2_000;

/// Delivery of outbound webhooks: timing and retries.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The wait before each retry: the first retry waits `retry_schedule[0]`, and so on
    /// (the last entry repeats if there are more retries than entries).
    pub retry_schedule: Vec<Duration>,
    /// Retries after the first attempt before a delivery is marked failed (the seed's
    /// "retried 1, 2, 4, 8, 16 minutes apart, at most 5 attempts").
    pub max_retries: i64,
    /// Limit on one attempt (connect, request, response head and body excerpt).
    pub timeout: Duration,
    /// How long the previous secret keeps signing after a rotation.
    pub secret_overlap: Duration,
    /// How often the consumer looks for other replicas' events and the sender for due
    /// retries (local commits and new deliveries wake them at once).
    pub poll_interval: Duration,
    /// Deliveries sent concurrently by one replica (each to a different endpoint).
    pub concurrency: i64,
    /// The share of the time (0 < share ≤ 1) webhook work may take while this replica's
    /// ingest is busy (`Pace`); 1 lets it run at full speed always.
    pub busy_share: f64,
    /// Derives each delivery's `webhook-id` (set by `run` from the server's key).
    pub message_key: Option<crate::secret_box::SecretKey>,
    /// The most deliveries a disabled endpoint holds for when it is re-activated; events
    /// past it are not queued for it and are counted in its `dropped_while_disabled`.
    pub held_while_disabled: i64,
    /// The dashboard's public address (`--public-url`, no trailing slash): CDEvents link
    /// to a build as `{public_url}/builds/{runId}`; without it, by the path alone.
    pub public_url: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            retry_schedule: [1, 2, 4, 8, 16]
                .into_iter()
                .map(|minutes| Duration::from_secs(minutes * 60))
                .collect(),
            max_retries: 5,
            timeout: Duration::from_secs(15),
            secret_overlap: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(1),
            concurrency: 32,
            busy_share: 0.02,
            message_key: None,
            held_while_disabled: HELD_WHILE_DISABLED,
            public_url: None,
        }
    }
}

/// Why the consumer loop runs an iteration.
enum Wake {
    Commit,
    Tick,
    Stop,
}

struct Consumer {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The most deliveries a disabled endpoint holds (`WebhookConfig`).
    held_while_disabled: i64,
    /// Wakes the sender when deliveries are queued.
    sender_wake: Arc<Notify>,
}

/// The consumer task; returns when `stop` changes.
pub(crate) async fn run_consumer(
    store: Arc<dyn Store>,
    bus: Arc<Bus>,
    clock: Arc<dyn Clock>,
    config: WebhookConfig,
    sender_wake: Arc<Notify>,
    mut pace: Pace,
    mut stop: watch::Receiver<bool>,
) {
    let mut consumer = Consumer {
        store,
        clock,
        held_while_disabled: config.held_while_disabled,
        sender_wake,
    };
    let mut wake = Wake::Tick;
    loop {
        match wake {
            Wake::Stop => return,
            Wake::Commit | Wake::Tick => {
                if let Err(error) = consumer.catch_up(&mut pace).await {
                    tracing::warn!(%error, "webhook consumer cannot process events; retrying");
                }
            }
        }
        wake = tokio::select! {
            _ = bus.webhook_commits().notified() => Wake::Commit,
            _ = tokio::time::sleep(config.poll_interval) => Wake::Tick,
            _ = stop.changed() => Wake::Stop,
        };
    }
}

impl Consumer {
    /// Queues deliveries for every event after the persisted cursor, page by page; each
    /// transaction queues at most `MAX_DELIVERIES_PER_COMMIT` deliveries and moves the
    /// cursor past the events it covered.
    async fn catch_up(&mut self, pace: &mut Pace) -> Result<(), StoreError> {
        let mut cursor = self.store.webhook_cursor().await?;
        loop {
            let started = Instant::now();
            let events = self.store.events_after_global(cursor, PAGE).await?;
            if events.is_empty() {
                return Ok(());
            }
            // Endpoints are read once per page: one created meanwhile receives events
            // from the next page on. A disabled endpoint's deliveries are queued too and
            // held (the sender claims only active endpoints') while it has room.
            let endpoints = self.store.webhook_endpoints(None).await?;
            let mut room = HashMap::new();
            for endpoint in endpoints.iter().filter(|endpoint| !endpoint.active) {
                let pending = self.store.pending_webhook_deliveries(endpoint.id).await?;
                room.insert(endpoint.id, (self.held_while_disabled - pending).max(0));
            }
            let mut deliveries = Vec::new();
            let mut dropped: HashMap<i64, i64> = HashMap::new();
            let mut queued = 0;
            for (index, event) in events.iter().enumerate() {
                self.deliveries_of(event, &endpoints, &mut room, &mut dropped, &mut deliveries);
                let last_of_page = index + 1 == events.len();
                if deliveries.len() >= MAX_DELIVERIES_PER_COMMIT || last_of_page {
                    let dropped_now: Vec<DroppedWebhookEvents> = dropped
                        .drain()
                        .map(|(endpoint_id, events)| DroppedWebhookEvents {
                            endpoint_id,
                            events,
                        })
                        .collect();
                    let done = self
                        .store
                        .queue_webhook_deliveries(&deliveries, &dropped_now, cursor, event.id)
                        .await?;
                    queued += done.queued;
                    deliveries.clear();
                    cursor = if done.cursor_moved {
                        event.id
                    } else {
                        // Another replica's consumer moved the cursor: continue from
                        // whichever of us is further (what both queued is stored once).
                        let stored = self.store.webhook_cursor().await?;
                        if stored < event.id {
                            self.store.advance_webhook_cursor(stored, event.id).await?;
                        }
                        stored.max(event.id)
                    };
                }
            }
            if queued > 0 {
                self.sender_wake.notify_one();
            }
            pace.rest(started.elapsed()).await;
            if (events.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Adds the deliveries of one event: one per endpoint of its project whose filter
    /// matches and whose format represents the event. A disabled endpoint takes one only
    /// while it has `room` (what it may still hold); past that the event is counted in
    /// `dropped`. Bodies are rendered by the sender at the first attempt (and kept), so
    /// the rows written here stay small.
    fn deliveries_of(
        &self,
        event: &StoredEvent,
        endpoints: &[WebhookEndpoint],
        room: &mut HashMap<i64, i64>,
        dropped: &mut HashMap<i64, i64>,
        deliveries: &mut Vec<NewWebhookDelivery>,
    ) {
        for endpoint in endpoints {
            if endpoint.project_id != event.project_id
                || !endpoint.wants(&event.event_type)
                || !payload::renders(endpoint.format, event)
            {
                continue;
            }
            if let Some(room) = room.get_mut(&endpoint.id) {
                if *room == 0 {
                    *dropped.entry(endpoint.id).or_default() += 1;
                    continue;
                }
                *room -= 1;
            }
            deliveries.push(NewWebhookDelivery {
                endpoint_id: endpoint.id,
                event_id: Some(event.id),
                event_type: event.event_type.clone(),
                body: String::new(),
                created_at: self.clock.now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While ingest's commits fill the time with queued requests, webhook work rests 49×
    /// what it spent (2% share); otherwise it does not rest at all.
    #[tokio::test]
    async fn pace_rests_only_while_ingest_is_busy() {
        let load = Arc::new(IngestLoad::default());
        let mut pace = Pace::new(load.clone(), 0.02);
        let started = Instant::now();
        pace.rest(Duration::from_millis(10)).await;
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "rested while idle"
        );

        // Ingest took all of the last 120 ms.
        tokio::time::sleep(Duration::from_millis(120)).await;
        load.add_for_tests(Duration::from_millis(120), 64);
        let started = Instant::now();
        pace.rest(Duration::from_millis(10)).await;
        let rested = started.elapsed();
        assert!(
            rested >= Duration::from_millis(480) && rested < Duration::from_millis(1000),
            "rested {rested:?}"
        );

        // A stretch longer than the longest rest is rested for over several turns.
        load.add_for_tests(Duration::from_secs(10), 64);
        let started = Instant::now();
        pace.rest(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() >= MAX_REST,
            "rested {:?}",
            started.elapsed()
        );
        assert!(
            pace.owed >= Duration::from_millis(800),
            "owed {:?}",
            pace.owed
        );

        // Long commits of one request each (a slow disk, not a flood): no rest.
        tokio::time::sleep(Duration::from_millis(120)).await;
        for _ in 0..4 {
            load.add_for_tests(Duration::from_millis(30), 1);
        }
        let started = Instant::now();
        pace.rest(Duration::from_millis(10)).await;
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "rested {:?}",
            started.elapsed()
        );
        assert_eq!(pace.owed, Duration::ZERO);

        // Idle again: nothing more is owed.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let started = Instant::now();
        pace.rest(Duration::from_millis(10)).await;
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(pace.owed, Duration::ZERO);
    }

    /// With a share of 100% webhook work never rests, however busy ingest is.
    #[tokio::test]
    async fn pace_with_full_share_never_rests() {
        let load = Arc::new(IngestLoad::default());
        let mut pace = Pace::new(load.clone(), 1.0);
        tokio::time::sleep(Duration::from_millis(120)).await;
        load.add_for_tests(Duration::from_millis(120), 64);
        let started = Instant::now();
        pace.rest(Duration::from_millis(50)).await;
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "rested {:?}",
            started.elapsed()
        );
        assert_eq!(pace.owed, Duration::ZERO);
    }
}
