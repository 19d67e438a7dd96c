//! The ingestor: one task that owns all event writes of this process and commits the
//! requests waiting at any moment in one transaction (group commit).
//!
//! Handlers and the reaper only enqueue (`Ingestor::submit`) and await their answer,
//! which arrives after the transaction committed. While one transaction is in flight
//! new requests queue up, so under load each commit carries many requests and the
//! fsync cost is shared; with no load a request commits alone, with no added delay.
//! Where the store can overlap them (`BuildStore::ingest_concurrency`: PostgreSQL), a
//! second group is sent while the first commits; the database's counter lock still
//! orders them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_store::{EventOutcome, IngestRejection, IngestRequest, OutcomeStatus, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::live::Bus;
use crate::telemetry::Metrics;

/// Most requests waiting in the queue; beyond it submitters wait (back-pressure).
const QUEUE_CAPACITY: usize = 8192;
/// Most events in one transaction, to bound its duration and memory.
const MAX_EVENTS_PER_COMMIT: usize = 5000;

pub(crate) type IngestResult = Result<Result<Vec<EventOutcome>, IngestRejection>, IngestFailure>;

/// The transaction failed as a whole; the request may be retried.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct IngestFailure(pub String);

struct Job {
    request: IngestRequest,
    reply: oneshot::Sender<IngestResult>,
}

#[derive(Clone)]
pub(crate) struct Ingestor {
    queue: mpsc::Sender<Job>,
    load: Arc<IngestLoad>,
    metrics: Arc<Metrics>,
}

/// What the ingest task reports to besides the submitters: the metrics, and the
/// build-end consumer (`telemetry::ended`), told the run id of each build a commit
/// ended.
pub(crate) struct IngestObservers {
    pub metrics: Arc<Metrics>,
    pub ended: mpsc::Sender<String>,
}

/// How busy ingest is: the total time its transactions took, read by background work
/// that yields to ingest (`crate::webhooks::Pace`).
#[derive(Debug, Default)]
pub(crate) struct IngestLoad {
    busy_nanos: AtomicU64,
    commits: AtomicU64,
    requests: AtomicU64,
}

/// What ingest had done up to a moment: time in transactions, transactions, requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IngestTotals {
    pub busy: Duration,
    pub commits: u64,
    pub requests: u64,
}

impl IngestLoad {
    /// Totals since the start.
    pub fn totals(&self) -> IngestTotals {
        IngestTotals {
            busy: Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
            commits: self.commits.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    fn add(&self, spent: Duration, requests: usize) {
        self.busy_nanos
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn add_for_tests(&self, spent: Duration, requests: usize) {
        self.add(spent, requests);
    }
}

impl Ingestor {
    /// Starts the ingest task. It ends when every `Ingestor` clone is dropped and the
    /// queue is drained.
    pub fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        bus: Arc<Bus>,
        observers: IngestObservers,
    ) -> (Self, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let load = Arc::new(IngestLoad::default());
        let metrics = observers.metrics.clone();
        let task = tokio::spawn(run(store, clock, bus, load.clone(), observers, receiver));
        (
            Self {
                queue,
                load,
                metrics,
            },
            task,
        )
    }

    /// Requests waiting for the next group commit.
    pub fn queued(&self) -> u64 {
        (self.queue.max_capacity() - self.queue.capacity()) as u64
    }

    /// How busy this process's ingest is.
    pub fn load(&self) -> Arc<IngestLoad> {
        self.load.clone()
    }

    pub async fn submit(&self, request: IngestRequest) -> IngestResult {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .await
            .map_err(|_| IngestFailure("the server is shutting down; retry".into()))?;
        let result = answer
            .await
            .map_err(|_| IngestFailure("the ingest task stopped; retry".into()))?;
        self.metrics
            .ingest_request_duration
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(Ok(_)) => "accepted",
            Ok(Err(_)) => "rejected",
            Err(_) => "failed",
        };
        self.metrics.ingest_requests.get(&outcome).increment();
        result
    }
}

async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    bus: Arc<Bus>,
    load: Arc<IngestLoad>,
    observers: IngestObservers,
    mut receiver: mpsc::Receiver<Job>,
) {
    use futures_util::StreamExt;
    // Group commits in flight at once (the store says how many it can overlap).
    let depth = store.ingest_concurrency().max(1);
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        let first = if open && in_flight.len() < depth {
            tokio::select! {
                job = receiver.recv() => match job {
                    Some(job) => Some(job),
                    None => {
                        open = false;
                        None
                    }
                },
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    finished(done, &load, &observers, &bus);
                    None
                }
            }
        } else {
            if let Some(done) = in_flight.next().await {
                finished(done, &load, &observers, &bus);
            }
            None
        };
        let Some(first) = first else { continue };
        let mut events = first.request.events.len();
        let mut jobs = vec![first];
        while events < MAX_EVENTS_PER_COMMIT {
            match receiver.try_recv() {
                Ok(job) => {
                    events += job.request.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (store, clock, observers) = (&*store, &*clock, &observers);
        in_flight.push(async move {
            let started = Instant::now();
            let requests = jobs.len();
            let last_id = commit(store, clock, jobs, events, observers).await;
            Committed {
                spent: started.elapsed(),
                requests,
                events,
                last_id,
            }
        });
    }
}

/// What one group commit did, for the metrics and the live bus.
struct Committed {
    spent: Duration,
    requests: usize,
    events: usize,
    last_id: Option<i64>,
}

fn finished(done: Committed, load: &IngestLoad, observers: &IngestObservers, bus: &Bus) {
    load.add(done.spent, done.requests);
    let metrics = &observers.metrics;
    metrics
        .ingest_commit_duration
        .observe(done.spent.as_secs_f64());
    metrics.ingest_commit_requests.observe(done.requests as f64);
    metrics.ingest_commit_events.observe(done.events as f64);
    if let Some(last_id) = done.last_id {
        bus.notify_commit(last_id);
    }
}

/// Counts a commit's events by status and tells the build-end consumer which builds it
/// ended (a terminal event stored now: the state machine refuses a second one).
fn observe(
    requests: &[IngestRequest],
    results: &[Result<Vec<EventOutcome>, IngestRejection>],
    observers: &IngestObservers,
) {
    let (mut stored, mut duplicate, mut ignored) = (0, 0, 0);
    for (request, result) in requests.iter().zip(results) {
        let Ok(outcomes) = result else { continue };
        for (event, outcome) in request.events.iter().zip(outcomes) {
            match outcome.status {
                OutcomeStatus::Stored => stored += 1,
                OutcomeStatus::Duplicate => duplicate += 1,
                OutcomeStatus::Ignored => ignored += 1,
            }
            if outcome.status == OutcomeStatus::Stored
                && event
                    .event_type
                    .core()
                    .is_some_and(kiln_core::CoreEventType::is_terminal)
                && observers
                    .ended
                    .try_send(event.run_id.as_str().to_owned())
                    .is_err()
            {
                tracing::debug!(run_id = %event.run_id.as_str(), "build-end consumer busy; the end is not observed");
            }
        }
    }
    let metrics = &observers.metrics;
    metrics.ingest_events.get(&"stored").add(stored);
    metrics.ingest_events.get(&"duplicate").add(duplicate);
    metrics.ingest_events.get(&"ignored").add(ignored);
}

#[tracing::instrument(skip_all, fields(requests = jobs.len(), events))]
/// One group commit; returns the highest event id it stored, if it stored any.
async fn commit(
    store: &dyn Store,
    clock: &dyn Clock,
    jobs: Vec<Job>,
    events: usize,
    observers: &IngestObservers,
) -> Option<i64> {
    let (requests, replies): (Vec<IngestRequest>, Vec<oneshot::Sender<IngestResult>>) =
        jobs.into_iter().map(|job| (job.request, job.reply)).unzip();
    let started = std::time::Instant::now();
    match store.ingest(&requests, clock.now()).await {
        Ok(results) => {
            tracing::debug!(
                requests = requests.len(),
                events,
                elapsed_us = started.elapsed().as_micros() as u64,
                "committed"
            );
            let last_id = results
                .iter()
                .flatten()
                .flatten()
                .filter(|outcome| outcome.status == OutcomeStatus::Stored)
                .filter_map(|outcome| outcome.id)
                .max();
            observe(&requests, &results, observers);
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
            last_id
        }
        Err(error) => {
            tracing::error!(error = %error.chain(), events, "ingest transaction failed");
            let message = match &error {
                StoreError::Busy(_) => {
                    "the database is busy with other writes; nothing was stored, retry shortly"
                }
                StoreError::Full(_) => crate::error::DISK_FULL,
                StoreError::Database(_) | StoreError::Unavailable(_) => {
                    "the database is unavailable; nothing was stored, retry shortly"
                }
                StoreError::NotFound(_) | StoreError::Conflict(_) => {
                    "the events could not be stored; nothing was stored, retry shortly"
                }
            }
            .to_owned();
            for reply in replies {
                let _ = reply.send(Err(IngestFailure(message.clone())));
            }
            None
        }
    }
}
