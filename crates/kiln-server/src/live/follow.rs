//! Following a build or a project: replay from the store, then live events, with no gap
//! and no duplicate, optionally coalescing progress-like events.
//!
//! The follow task subscribes to the room first, replays everything after the client's
//! cursor from the store, then forwards live events whose id is above the last one it
//! handled (the overlap between replay and live is skipped by id). It ends a build's
//! stream after the build's terminal event, and drops a subscriber that lagged behind
//! its room, telling it where to resume; the store has everything, so nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_store::{Store, StoredEvent};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::{Bus, LiveEvent, Room};

/// Deliveries queued for one subscriber's connection before the follow task waits.
const OUTBOX: usize = 256;
/// Events read from the store per replay query. A page is held while its events wait
/// for the subscriber's outbox, so it bounds a replaying subscriber's memory with the
/// outbox: 1,000 events of 2 KiB held ~3 MiB per subscriber, and 100 SSE clients that
/// never read, each catching up after a flood, held 400 MiB (the chaos suite's
/// slow_clients scenario on a release build); a page the outbox's size holds a quarter.
const REPLAY_PAGE: i64 = OUTBOX as i64;
/// How long a subscriber catching up after a lag may leave its outbox full before it
/// is dropped as too slow.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) enum Delivery {
    Event(Arc<LiveEvent>),
    /// The build ended; nothing more will come.
    End,
    /// The subscriber fell behind; it should reconnect from `resume_from`.
    Dropped {
        reason: String,
        resume_from: i64,
    },
    /// The server is shutting down; reconnect (to it or another replica) from
    /// `resume_from`.
    Closing {
        resume_from: i64,
    },
    /// The token this subscription was opened with has been revoked.
    Revoked {
        resume_from: i64,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    Build { build_id: i64, ended: bool },
    Project { project_id: i64 },
}

/// Starts following; the receiver yields deliveries until the stream ends or the
/// receiver is dropped (which stops the task).
pub(crate) fn follow(
    store: Arc<dyn Store>,
    bus: Arc<Bus>,
    scope: Scope,
    after: i64,
    coalesce: Option<Duration>,
    revoked: watch::Receiver<bool>,
) -> mpsc::Receiver<Delivery> {
    let (outbox, receiver) = mpsc::channel(OUTBOX);
    let room = match scope {
        Scope::Build { build_id, .. } => Room::Build(build_id),
        Scope::Project { project_id } => Room::Project(project_id),
    };
    let live = bus.subscribe(room);
    let closing = bus.closing();
    tokio::spawn(async move {
        let mut follower = Follower {
            outbox,
            seen: after,
            delivered: after,
            coalescer: Coalescer::new(coalesce),
            scope,
            catching_up: false,
            stalled: false,
        };
        follower.run(&*store, live, closing, revoked).await;
    });
    receiver
}

struct Follower {
    outbox: mpsc::Sender<Delivery>,
    /// The highest id handled (delivered or coalesced away): the dedupe line.
    seen: i64,
    /// The highest id actually delivered: where a dropped subscriber resumes.
    delivered: i64,
    coalescer: Coalescer,
    scope: Scope,
    /// Replaying from the store after a lag: sends must not wait on a full outbox.
    catching_up: bool,
    /// A send waited longer than the catch-up patience since the last lag: the
    /// connection, not the room, is what fell behind.
    stalled: bool,
}

/// Whether to keep going after a step.
enum Flow {
    Continue,
    Stop,
}

impl Follower {
    async fn run(
        &mut self,
        store: &dyn Store,
        mut live: broadcast::Receiver<Arc<LiveEvent>>,
        mut closing: watch::Receiver<bool>,
        mut revoked: watch::Receiver<bool>,
    ) {
        if let Flow::Stop = self.replay(store).await {
            return;
        }
        if let Scope::Build { ended: true, .. } = self.scope {
            // The build had ended before we subscribed and the client has its end.
            let _ = self.flush_and_end().await;
            return;
        }
        loop {
            let deadline = self.coalescer.deadline;
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.id > self.seen && let Flow::Stop = self.offer(event).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // A burst (one group commit can publish thousands of events)
                        // outran the room's buffer, or the tailer published a backlog
                        // while this subscriber was still replaying it. If this
                        // subscriber's connection keeps up (or drains within the
                        // patience), catch up from the store: rejoin the room at its tail
                        // first, then replay what was missed, as at subscription. A
                        // subscriber whose own connection stalls is slow: drop it.
                        let stalled = std::mem::take(&mut self.stalled);
                        if !stalled && self.connection_drains().await {
                            live = live.resubscribe();
                            self.catching_up = true;
                            let flow = self.replay(store).await;
                            self.catching_up = false;
                            if let Flow::Stop = flow {
                                return;
                            }
                            continue;
                        }
                        let pending = self.coalescer.flush(Instant::now());
                        let _ = self.send(pending).await;
                        let _ = self.outbox.send(Delivery::Dropped {
                            reason: format!("this subscriber fell {missed} events behind; reconnect with Last-Event-ID {}", self.delivered),
                            resume_from: self.delivered,
                        }).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = async { match deadline { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    let pending = self.coalescer.flush(Instant::now());
                    if let Flow::Stop = self.send(pending).await {
                        return;
                    }
                }
                _ = self.outbox.closed() => return,
                true = async { revoked.wait_for(|revoked| *revoked).await.is_ok() } => {
                    let pending = self.coalescer.flush(Instant::now());
                    let _ = self.send(pending).await;
                    let _ = self.outbox.send(Delivery::Revoked { resume_from: self.delivered }).await;
                    return;
                }
                () = async { let _ = closing.wait_for(|closing| *closing).await; } => {
                    let pending = self.coalescer.flush(Instant::now());
                    let _ = self.send(pending).await;
                    let _ = self.outbox.send(Delivery::Closing { resume_from: self.delivered }).await;
                    return;
                }
            }
        }
    }

    /// After a lag: whether this subscriber's outbox is, or within the catch-up patience
    /// gets, at most half full. A client still reading a replay (its outbox full, but
    /// draining) passes; one whose connection does not move is slow, and so is one that
    /// kept a send waiting longer than the patience before the lag (`stalled`).
    async fn connection_drains(&self) -> bool {
        // Holding half the outbox's slots proves half is free; the permits are released
        // at once. A closed outbox ends the wait too (the next send stops the follower).
        tokio::time::timeout(CATCH_UP_PATIENCE, self.outbox.reserve_many(OUTBOX / 2))
            .await
            .is_ok()
    }

    async fn replay(&mut self, store: &dyn Store) -> Flow {
        loop {
            let page: Result<Vec<StoredEvent>, _> = match self.scope {
                Scope::Build { build_id, .. } => {
                    store.events_after(build_id, self.seen, REPLAY_PAGE).await
                }
                Scope::Project { project_id } => {
                    store
                        .project_events_after(project_id, self.seen, REPLAY_PAGE)
                        .await
                }
            };
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "replay failed; closing the stream so the client retries");
                    let _ = self
                        .outbox
                        .send(Delivery::Dropped {
                            reason: "the database is unavailable; reconnect shortly".into(),
                            resume_from: self.delivered,
                        })
                        .await;
                    return Flow::Stop;
                }
            };
            let full = page.len() as i64 == REPLAY_PAGE;
            // Each stored event is dropped once converted, not with the page.
            for stored in page {
                if let Flow::Stop = self.offer(Arc::new(LiveEvent::from_stored(&stored))).await {
                    return Flow::Stop;
                }
            }
            if !full {
                return Flow::Continue;
            }
        }
    }

    async fn offer(&mut self, event: Arc<LiveEvent>) -> Flow {
        self.seen = event.id;
        let ends_build = event.terminal && matches!(self.scope, Scope::Build { .. });
        let ready = self.coalescer.offer(event, Instant::now());
        if let Flow::Stop = self.send(ready).await {
            return Flow::Stop;
        }
        if ends_build {
            return self.flush_and_end().await;
        }
        Flow::Continue
    }

    async fn send(&mut self, events: Vec<Arc<LiveEvent>>) -> Flow {
        for event in events {
            let id = event.id;
            if self.catching_up {
                // After a lag, an outbox that stays full means this subscriber's own
                // connection is what falls behind: waiting longer would only move the
                // lag here. A reader that keeps up drains it within the patience.
                match tokio::time::timeout(
                    CATCH_UP_PATIENCE,
                    self.outbox.send(Delivery::Event(event)),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Flow::Stop,
                    Err(_) => {
                        let _ = self
                            .outbox
                            .send(Delivery::Dropped {
                                reason: format!(
                                    "this subscriber fell behind and its connection is not keeping up; reconnect with Last-Event-ID {}",
                                    self.delivered
                                ),
                                resume_from: self.delivered,
                            })
                            .await;
                        return Flow::Stop;
                    }
                }
            } else {
                let started = Instant::now();
                if self.outbox.send(Delivery::Event(event)).await.is_err() {
                    return Flow::Stop;
                }
                if started.elapsed() > CATCH_UP_PATIENCE {
                    self.stalled = true;
                }
            }
            self.delivered = id;
        }
        Flow::Continue
    }

    async fn flush_and_end(&mut self) -> Flow {
        let pending = self.coalescer.flush(Instant::now());
        let _ = self.send(pending).await;
        let _ = self.outbox.send(Delivery::End).await;
        Flow::Stop
    }
}

/// Per subscriber: progress-like events of one (build, type) pass at most once per
/// window, the latest one winning; anything else passes at once, after whatever is
/// pending (which always has lower ids), so nothing is reordered.
pub(crate) struct Coalescer {
    window: Option<Duration>,
    pending: Vec<Arc<LiveEvent>>,
    last_sent: HashMap<(i64, String), Instant>,
    pub deadline: Option<Instant>,
}

impl Coalescer {
    pub fn new(window: Option<Duration>) -> Self {
        Self {
            window,
            pending: Vec::new(),
            last_sent: HashMap::new(),
            deadline: None,
        }
    }

    pub fn offer(&mut self, event: Arc<LiveEvent>, now: Instant) -> Vec<Arc<LiveEvent>> {
        let Some(window) = self.window else {
            return vec![event];
        };
        if event.coalescible {
            let key = (event.build_id, event.event_type.clone());
            // A held event of the same kind is superseded by this one, whether this one
            // is held too or goes out now (its window opened before the flush timer fired:
            // sending both would put two in one window).
            self.pending.retain(|held| {
                (held.build_id, held.event_type.as_str()) != (key.0, key.1.as_str())
            });
            if let Some(last) = self.last_sent.get(&key)
                && now < *last + window
            {
                self.pending.push(event);
                let due = *last + window;
                self.deadline = Some(self.deadline.map_or(due, |d| d.min(due)));
                return Vec::new();
            }
        }
        let mut ready = self.take_pending();
        ready.push(event);
        self.mark_sent(&ready, now);
        ready
    }

    pub fn flush(&mut self, now: Instant) -> Vec<Arc<LiveEvent>> {
        let ready = self.take_pending();
        self.mark_sent(&ready, now);
        ready
    }

    fn take_pending(&mut self) -> Vec<Arc<LiveEvent>> {
        self.deadline = None;
        let mut ready = std::mem::take(&mut self.pending);
        ready.sort_by_key(|event| event.id);
        ready
    }

    fn mark_sent(&mut self, events: &[Arc<LiveEvent>], now: Instant) {
        for event in events.iter().filter(|event| event.coalescible) {
            self.last_sent
                .insert((event.build_id, event.event_type.clone()), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, event_type: &str, coalescible: bool) -> Arc<LiveEvent> {
        Arc::new(LiveEvent {
            id,
            build_id: 1,
            project_id: 1,
            event_type: event_type.into(),
            terminal: false,
            coalescible,
            json: "{}".into(),
        })
    }

    #[test]
    fn progress_is_thinned_and_lifecycle_is_never_dropped_or_reordered() {
        let mut coalescer = Coalescer::new(Some(Duration::from_millis(50)));
        let start = Instant::now();
        let mut delivered = Vec::new();
        // 1,000 progress events over one second, with a stage event every 100.
        for i in 0..1000 {
            let now = start + Duration::from_millis(i);
            if let Some(deadline) = coalescer.deadline
                && now >= deadline
            {
                delivered.extend(coalescer.flush(now).into_iter().map(|e| e.id));
            }
            let id = i as i64 * 2 + 1;
            delivered.extend(
                coalescer
                    .offer(event(id, "build_progress", true), now)
                    .into_iter()
                    .map(|e| e.id),
            );
            if i % 100 == 99 {
                delivered.extend(
                    coalescer
                        .offer(event(id + 1, "stage_started", false), now)
                        .into_iter()
                        .map(|e| e.id),
                );
            }
        }
        delivered.extend(
            coalescer
                .flush(start + Duration::from_secs(1))
                .into_iter()
                .map(|e| e.id),
        );
        let lifecycle: Vec<i64> = delivered.iter().copied().filter(|id| id % 2 == 0).collect();
        assert_eq!(lifecycle.len(), 10, "every lifecycle event arrives");
        let progress = delivered.len() - lifecycle.len();
        // One per 50 ms window, plus at most one released early by each lifecycle event.
        assert!(progress <= 21 + 10, "{progress} progress events delivered");
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "ids stay in order: {delivered:?}"
        );
        assert_eq!(
            *delivered.last().unwrap(),
            2000,
            "the last progress is never lost"
        );
    }

    #[test]
    fn a_thousand_progress_events_in_a_second_become_about_twenty() {
        let mut coalescer = Coalescer::new(Some(Duration::from_millis(50)));
        let start = Instant::now();
        let mut delivered = 0;
        for i in 0..1000 {
            let now = start + Duration::from_millis(i);
            if coalescer.deadline.is_some_and(|deadline| now >= deadline) {
                delivered += coalescer.flush(now).len();
            }
            delivered += coalescer
                .offer(event(i as i64 + 1, "build_progress", true), now)
                .len();
        }
        delivered += coalescer.flush(start + Duration::from_secs(1)).len();
        assert!((19..=25).contains(&delivered), "{delivered} delivered");
    }

    #[test]
    fn a_held_event_is_superseded_when_the_window_opens_before_its_flush() {
        let mut coalescer = Coalescer::new(Some(Duration::from_millis(50)));
        let start = Instant::now();
        assert_eq!(
            coalescer
                .offer(event(1, "build_progress", true), start)
                .len(),
            1
        );
        let held = start + Duration::from_millis(10);
        assert!(
            coalescer
                .offer(event(2, "build_progress", true), held)
                .is_empty()
        );
        // The flush timer has not fired yet when the next one arrives after the window:
        // only the newest goes out, not the held one beside it.
        let late = start + Duration::from_millis(60);
        let sent = coalescer.offer(event(3, "build_progress", true), late);
        assert_eq!(sent.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3]);
        assert!(coalescer.flush(late).is_empty());
        // Events of other kinds held meanwhile still go out, in id order.
        let mut coalescer = Coalescer::new(Some(Duration::from_millis(50)));
        coalescer.offer(event(1, "heartbeat", true), start);
        coalescer.offer(event(2, "build_progress", true), start);
        assert!(
            coalescer
                .offer(event(3, "heartbeat", true), held)
                .is_empty()
        );
        let sent = coalescer.offer(event(4, "build_progress", true), late);
        assert_eq!(sent.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn without_a_window_everything_passes() {
        let mut coalescer = Coalescer::new(None);
        let now = Instant::now();
        assert_eq!(coalescer.offer(event(1, "heartbeat", true), now).len(), 1);
        assert_eq!(coalescer.offer(event(2, "heartbeat", true), now).len(), 1);
    }
}
