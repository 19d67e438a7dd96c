//! Live delivery: the bus that fans committed events out to subscribers.
//!
//! One tailer task per process reads committed events from the store in id order and
//! publishes each to its build's room and its project's room. It wakes on this process's
//! commits, on other replicas' commits (PostgreSQL `NOTIFY`), and once a second as a
//! catch-up. Because ids are assigned gap-free in commit order (see kiln-store), every
//! replica publishes exactly the same sequence, whichever replica ingested it.
//!
//! Rooms are `tokio::sync::broadcast` channels created on first subscription and removed
//! when their last subscriber leaves; a subscriber that falls more than the channel's
//! capacity behind is told it lagged and is disconnected (it resumes from the store).

pub(crate) mod follow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_core::CoreEventType;
use kiln_store::{Store, StoredEvent};
use tokio::sync::{Notify, broadcast, watch};

use crate::wire::event_json;

/// Events a room buffers for its slowest subscriber before that subscriber lags (and
/// catches up from the store, see `follow`). A slot is 32 bytes allocated with the room:
/// build rooms, of which there are many with few subscribers each, get fewer than
/// project rooms, which see every event of a project.
pub(crate) const BUILD_ROOM_CAPACITY: usize = 256;
pub(crate) const PROJECT_ROOM_CAPACITY: usize = 1024;
const TAIL_PAGE: i64 = 1000;
const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);

/// A committed event as subscribers receive it, serialized once for all of them.
#[derive(Debug)]
pub(crate) struct LiveEvent {
    pub id: i64,
    pub build_id: i64,
    pub project_id: i64,
    pub event_type: String,
    /// `build_completed`, `build_failed` or `build_cancelled`: a build stream ends here.
    pub terminal: bool,
    /// Progress-like: may be coalesced (`build_progress`, `heartbeat`, or a custom event
    /// whose `data.coalesce` is true).
    pub coalescible: bool,
    pub json: Arc<str>,
}

impl LiveEvent {
    pub fn from_stored(event: &StoredEvent) -> LiveEvent {
        let core = CoreEventType::from_name(&event.event_type);
        let coalescible = match core {
            Some(CoreEventType::BuildProgress | CoreEventType::Heartbeat) => true,
            Some(_) => false,
            None => event.payload["data"]["coalesce"].as_bool() == Some(true),
        };
        LiveEvent {
            id: event.id,
            build_id: event.build_id,
            project_id: event.project_id,
            event_type: event.event_type.clone(),
            terminal: core.is_some_and(CoreEventType::is_terminal),
            coalescible,
            json: event_json(event).to_string().into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Room {
    Build(i64),
    Project(i64),
}

pub(crate) struct Bus {
    rooms: Mutex<HashMap<Room, broadcast::Sender<Arc<LiveEvent>>>>,
    commits: Notify,
    /// The highest event id a local commit stored (0 before any): the tailer skips a
    /// wake-up for events it has already read.
    committed: std::sync::atomic::AtomicI64,
    /// Wakes the notifier (`crate::notify`) after each local commit.
    notifier_commits: Notify,
    /// Wakes the webhook consumer (`crate::webhooks`) after each local commit.
    webhook_commits: Notify,
    /// True once the server shuts down: every follower ends its stream with a retry
    /// hint, so open streams do not hold the graceful shutdown open.
    closing: watch::Sender<bool>,
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            rooms: Mutex::default(),
            commits: Notify::new(),
            committed: std::sync::atomic::AtomicI64::new(0),
            notifier_commits: Notify::new(),
            webhook_commits: Notify::new(),
            closing: watch::channel(false).0,
        }
    }
}

impl Bus {
    /// Joins a room. Subscribe BEFORE replaying from the store: an event published
    /// before this call was committed before it, so the replay that follows sees it.
    pub fn subscribe(&self, room: Room) -> broadcast::Receiver<Arc<LiveEvent>> {
        let mut rooms = self.rooms.lock().expect("bus lock");
        let capacity = match room {
            Room::Build(_) => BUILD_ROOM_CAPACITY,
            Room::Project(_) => PROJECT_ROOM_CAPACITY,
        };
        rooms
            .entry(room)
            .or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    fn publish(&self, event: Arc<LiveEvent>) {
        let mut rooms = self.rooms.lock().expect("bus lock");
        for room in [Room::Build(event.build_id), Room::Project(event.project_id)] {
            if let Some(sender) = rooms.get(&room)
                && sender.send(event.clone()).is_err()
            {
                // No subscriber left: forget the room.
                rooms.remove(&room);
            }
        }
    }

    /// Live subscriptions to build rooms and to project rooms (for `/metrics`).
    pub fn subscriber_counts(&self) -> (u64, u64) {
        let rooms = self.rooms.lock().expect("bus lock");
        let (mut build, mut project) = (0, 0);
        for (room, sender) in rooms.iter() {
            let count = sender.receiver_count() as u64;
            match room {
                Room::Build(_) => build += count,
                Room::Project(_) => project += count,
            }
        }
        (build, project)
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every live stream (at shutdown).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Called by the ingestor after each commit that stored events up to `last_id`.
    pub fn notify_commit(&self, last_id: i64) {
        self.committed
            .fetch_max(last_id, std::sync::atomic::Ordering::SeqCst);
        self.commits.notify_one();
        self.notifier_commits.notify_one();
        self.webhook_commits.notify_one();
    }

    /// Woken after each local commit; a commit made while nobody waits leaves a permit.
    pub fn notifier_commits(&self) -> &Notify {
        &self.notifier_commits
    }

    /// Woken after each local commit, like `notifier_commits`, for the webhook consumer.
    pub fn webhook_commits(&self) -> &Notify {
        &self.webhook_commits
    }
}

/// The tailer: reads committed events in id order and publishes them until `stop`.
pub(crate) async fn tail(store: Arc<dyn Store>, bus: Arc<Bus>, mut stop: watch::Receiver<bool>) {
    let mut cursor = loop {
        match store.max_event_id().await {
            Ok(id) => break id,
            Err(error) => {
                tracing::warn!(%error, "live tailer cannot read the event cursor; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut signals = match store.commit_signals().await {
        Ok(signals) => signals,
        Err(error) => {
            tracing::warn!(%error, "no commit notifications from other replicas; catching up every second");
            None
        }
    };
    loop {
        tokio::select! {
            _ = bus.commits.notified() => {
                // Read already, on the database's announcement of the same commit.
                if bus.committed.load(std::sync::atomic::Ordering::SeqCst) <= cursor {
                    continue;
                }
            }
            Some(announced) = async {
                match signals.as_mut() {
                    Some(signals) => match signals.changed().await {
                        Ok(()) => Some(*signals.borrow_and_update()),
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            } => {
                // This process's own commits are announced too, after the bus woke the
                // tailer for them: nothing to read then.
                if announced <= cursor {
                    continue;
                }
            }
            _ = tokio::time::sleep(CATCH_UP_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        loop {
            match store.events_after_global(cursor, TAIL_PAGE).await {
                Ok(events) => {
                    for event in &events {
                        cursor = event.id;
                        bus.publish(Arc::new(LiveEvent::from_stored(event)));
                    }
                    if (events.len() as i64) < TAIL_PAGE {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, cursor, "live tailer cannot read events; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}
