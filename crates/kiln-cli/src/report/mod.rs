//! Reporting events from a build without ever slowing or failing it.
//!
//! `Reporter` queues events in memory and one background task sends them in order, in
//! batches, retrying with backoff while the server is unreachable. `finish` waits at most
//! the flush timeout — and not at all once no connection to the server can be made
//! (connection refused, no such host, connect timeout): then it tries once more at once
//! and spools — so a down server adds milliseconds to a build, not the flush timeout.
//! Whatever is still unsent is written to the spool, to be sent by a later `kiln`
//! command. Every event carries an `eventId`, so a batch that was stored but whose answer
//! was lost is deduplicated by the server when resent.

pub mod log;
pub mod metadata;
pub mod spool;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_client::Client;
use kiln_client::protocol::EventPayload;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::settings::Target;

/// Events per request (the server accepts up to 1,000).
const BATCH_SIZE: usize = 500;
/// Events held in memory before new ones go straight to the spool.
const MEMORY_CAPACITY: usize = 100_000;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Shared {
    queue: Mutex<VecDeque<EventPayload>>,
    wake: Notify,
    closed: AtomicBool,
    warned: AtomicBool,
    /// Whether the last attempt could not connect to the server (shared with the logs
    /// of `kiln run`, which then stop waiting too).
    unreachable: Arc<AtomicBool>,
    target: Target,
}

impl Shared {
    /// Says once per process, on stderr, that the server is not taking events.
    fn warn_once(&self, reason: &str) {
        if !self.warned.swap(true, Ordering::SeqCst) {
            errln!(
                "kiln: cannot deliver events to {} ({reason}); the build goes on and undelivered events are kept for `kiln spool send`",
                self.target.server
            );
        }
    }
}

pub struct Reporter {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Reporter {
    pub fn start(target: Target) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            unreachable: Arc::new(AtomicBool::new(false)),
            target,
        });
        let task = tokio::spawn(send_loop(shared.clone()));
        Self { shared, task }
    }

    /// Set while the server cannot be connected to (cleared by a delivery).
    pub fn unreachable(&self) -> Arc<AtomicBool> {
        self.shared.unreachable.clone()
    }

    /// Queues an event; never blocks on the network.
    pub fn send(&self, event: EventPayload) {
        let overflow = {
            let mut queue = self.shared.queue.lock().expect("reporter queue lock");
            if queue.len() >= MEMORY_CAPACITY {
                Some(event)
            } else {
                queue.push_back(event);
                None
            }
        };
        match overflow {
            Some(event) => {
                self.shared.warn_once("too many events are waiting");
                if let Err(error) = spool::write(&self.shared.target, &[event]) {
                    errln!("kiln: cannot spool an event: {error}");
                }
            }
            None => self.shared.wake.notify_one(),
        }
    }

    /// Waits until everything queued so far was delivered, for at most `limit`, and not
    /// at all once the server proved unreachable. `kiln run` calls this before starting
    /// each step, so the events a step emits itself (nested `kiln emit`) arrive after
    /// its build_started and stage_started.
    pub async fn settle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.shared.warned.load(Ordering::SeqCst)
            && !self
                .shared
                .queue
                .lock()
                .expect("reporter queue lock")
                .is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Delivers what it can within `flush_timeout`, spools the rest. Closing wakes the
    /// sender from its backoff for one more attempt at once; an attempt that cannot
    /// connect then ends it (see the module doc), so only a server that accepts
    /// connections but answers slowly can hold a build for the flush timeout.
    pub async fn finish(mut self, flush_timeout: Duration) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        if tokio::time::timeout(flush_timeout, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        let unsent: Vec<EventPayload> = self
            .shared
            .queue
            .lock()
            .expect("reporter queue lock")
            .drain(..)
            .collect();
        if unsent.is_empty() {
            return;
        }
        self.shared.warn_once("the flush timeout passed");
        match spool::write(&self.shared.target, &unsent) {
            Ok(path) => {
                errln!(
                    "kiln: {} event(s) not delivered yet, saved to {}; they are resent by the next kiln command or `kiln spool send`",
                    unsent.len(),
                    path.display()
                );
            }
            Err(error) => {
                errln!(
                    "kiln: {} event(s) could not be delivered or spooled: {error}",
                    unsent.len()
                );
            }
        }
    }
}

async fn send_loop(shared: Arc<Shared>) {
    let client = Client::with_timeout(
        &shared.target.server,
        shared.target.token.clone(),
        Duration::from_secs(10),
    );
    let mut backoff = Duration::from_millis(100);
    loop {
        let wake = shared.wake.notified();
        let batch: Vec<EventPayload> = {
            let queue = shared.queue.lock().expect("reporter queue lock");
            queue.iter().take(BATCH_SIZE).cloned().collect()
        };
        if batch.is_empty() {
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            wake.await;
            continue;
        }
        match client.send_events(&batch).await {
            Ok(_) => {
                shared.unreachable.store(false, Ordering::SeqCst);
                shared
                    .queue
                    .lock()
                    .expect("reporter queue lock")
                    .drain(..batch.len());
                backoff = Duration::from_millis(100);
            }
            Err(error) if error.is_retryable() => {
                shared.warn_once(&error.to_string());
                if error.is_unreachable() {
                    shared.unreachable.store(true, Ordering::SeqCst);
                }
                if error.is_unreachable() && shared.closed.load(Ordering::SeqCst) {
                    // The build is over and the server cannot be reached: spool now
                    // rather than hold the build for the flush timeout.
                    return;
                }
                // `finish` cuts the backoff short (the attempt after it may end the loop).
                let wake = shared.wake.notified();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = wake => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                // The server understood and refused (bad token, ended build): resending
                // cannot help, so these events are dropped with the reason.
                errln!("kiln: the server refused {} event(s): {error}", batch.len());
                shared
                    .queue
                    .lock()
                    .expect("reporter queue lock")
                    .drain(..batch.len());
            }
        }
    }
}
