//! The notifier: one task per replica that turns committed build events into
//! notifications for the project's admins and the instance admins.
//!
//! It owns its state (the cursor, when it last auto-archived) on one task, and reacts to
//! a closed set of wake-ups (`Wake`): a local commit (the bus), a tick (commits of other
//! replicas, auto-archive), or stop. It reads events in id order after the cursor
//! persisted in the store (`kiln_counters.notifier_cursor`), so a restart resumes where
//! the last run stopped; ids are gap-free, so nothing is skipped. Every replica runs a
//! notifier: the store keeps one notification per (user, event) and per (user, build,
//! kind), so replays and concurrent replicas notify no one twice, and the cursor moves
//! by compare-and-set, never backwards.
//!
//! Only `build_started`, `build_completed` and `build_failed` notify (a `build_failed`
//! with `data.reason = "stale"` as kind `build_stale`); stages, heartbeats, progress and
//! custom events never do. Email (`mail`) is a separate task fed by the store's outbox,
//! so a slow or absent mail server never delays the notifier, let alone ingest.

pub(crate) mod mail;
mod render;
pub(crate) mod smtp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::Millis;
use kiln_store::{Delivery, NotificationKind, Store, StoreError, StoredEvent};
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::live::Bus;

/// Events read per page.
const PAGE: i64 = 500;
/// How often, in server time, notifications older than the retention are archived.
const ARCHIVE_EVERY_MS: i64 = 3_600_000;

/// Notifications: retention and optional email.
#[derive(Clone, Debug)]
pub struct NotificationConfig {
    /// Notifications older than this many days are archived automatically.
    pub retention_days: i64,
    /// How often the notifier looks for events committed by other replicas (local
    /// commits wake it at once) and the mail task for due retries.
    pub poll_interval: Duration,
    /// Email delivery; `None` (the default) sends none.
    pub email: Option<EmailConfig>,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            poll_interval: Duration::from_secs(1),
            email: None,
        }
    }
}

/// Where and how notification emails are sent (plain SMTP to a relay, no TLS).
#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// `host:port` of the SMTP relay.
    pub relay: String,
    /// The envelope and header sender.
    pub from: String,
    /// Attempts per email before it is given up (transient failures only; a permanent
    /// refusal, 5xx, gives up at once).
    pub max_attempts: i64,
    /// The wait before the first retry; each further retry waits twice as long, up to
    /// `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit on one delivery (connect, dialogue, data).
    pub send_timeout: Duration,
}

impl EmailConfig {
    /// Parses `--smtp-url smtp://host[:port]` (port 25 by default) and `--smtp-from`.
    pub fn parse(smtp_url: &str, from: &str) -> Result<EmailConfig, String> {
        let rest = smtp_url.strip_prefix("smtp://").ok_or_else(|| {
            format!("--smtp-url '{smtp_url}': use smtp://HOST[:PORT] (plain SMTP to a relay)")
        })?;
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains(['/', '@', '?', ' ']) {
            return Err(format!(
                "--smtp-url '{smtp_url}': use smtp://HOST[:PORT]; credentials and paths are not supported"
            ));
        }
        let relay = match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
                port.parse::<u16>()
                    .map_err(|_| format!("--smtp-url '{smtp_url}': the port must be a number"))?;
                host_port.to_owned()
            }
            _ => format!("{host_port}:25"),
        };
        if !smtp::is_plain_address(from) {
            return Err(format!(
                "--smtp-from '{from}': give an address like kiln@example.com"
            ));
        }
        Ok(EmailConfig {
            relay,
            from: from.to_owned(),
            max_attempts: 8,
            first_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            send_timeout: Duration::from_secs(30),
        })
    }
}

/// Why the notifier loop runs an iteration.
enum Wake {
    Commit,
    Tick,
    Stop,
}

struct Notifier {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: NotificationConfig,
    /// Wakes the mail task when new emails are queued.
    mail_wake: Arc<Notify>,
    last_archive: Option<Millis>,
}

/// The notifier task; returns when `stop` changes.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    bus: Arc<Bus>,
    clock: Arc<dyn Clock>,
    config: NotificationConfig,
    mail_wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let poll_interval = config.poll_interval;
    let mut notifier = Notifier {
        store,
        clock,
        config,
        mail_wake,
        last_archive: None,
    };
    let mut wake = Wake::Tick;
    loop {
        match wake {
            Wake::Stop => return,
            Wake::Commit | Wake::Tick => {
                if let Err(error) = notifier.catch_up().await {
                    tracing::warn!(%error, "notifier cannot process events; retrying");
                }
                if matches!(wake, Wake::Tick) {
                    notifier.auto_archive().await;
                }
            }
        }
        wake = tokio::select! {
            _ = bus.notifier_commits().notified() => Wake::Commit,
            _ = tokio::time::sleep(poll_interval) => Wake::Tick,
            _ = stop.changed() => Wake::Stop,
        };
    }
}

impl Notifier {
    /// Processes every event after the persisted cursor, page by page.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        let mut cursor = self.store.notifier_cursor().await?;
        loop {
            let events = self.store.events_after_global(cursor, PAGE).await?;
            let Some(last) = events.last().map(|event| event.id) else {
                return Ok(());
            };
            let mut recipients_by_project: HashMap<i64, Vec<i64>> = HashMap::new();
            for event in &events {
                self.handle(event, &mut recipients_by_project).await?;
            }
            if self.store.advance_notifier_cursor(cursor, last).await? {
                cursor = last;
            } else {
                // Another replica's notifier moved the cursor meanwhile: continue from
                // whichever of us is further (what both did is stored once).
                let stored = self.store.notifier_cursor().await?;
                if stored < last {
                    self.store.advance_notifier_cursor(stored, last).await?;
                }
                cursor = stored.max(last);
            }
            if (events.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    async fn handle(
        &self,
        event: &StoredEvent,
        recipients_by_project: &mut HashMap<i64, Vec<i64>>,
    ) -> Result<(), StoreError> {
        if !render::notifies(&event.event_type) {
            return Ok(());
        }
        let recipients = match recipients_by_project.get(&event.project_id) {
            Some(recipients) => recipients.clone(),
            None => {
                let recipients = self.store.project_admins(event.project_id).await?;
                recipients_by_project.insert(event.project_id, recipients.clone());
                recipients
            }
        };
        if recipients.is_empty() {
            return Ok(());
        }
        let Some(run_id) = event.payload.get("runId").and_then(|v| v.as_str()) else {
            return Ok(());
        };
        let Some(build) = self.store.build_by_run_id(run_id).await? else {
            return Ok(());
        };
        let Some(notification) = render::notification(event, &build) else {
            return Ok(());
        };
        let delivery = match self.config.email {
            Some(_) => Delivery::InboxAndEmail,
            None => Delivery::Inbox,
        };
        let inserted = self
            .store
            .insert_notifications(&notification, &recipients, delivery)
            .await?;
        if !inserted.is_empty() {
            tracing::debug!(
                event_id = event.id,
                kind = notification.kind.as_str(),
                recipients = inserted.len(),
                "notified"
            );
            if delivery == Delivery::InboxAndEmail {
                self.mail_wake.notify_one();
            }
        }
        Ok(())
    }

    /// Archives notifications older than the retention, at most once per
    /// `ARCHIVE_EVERY_MS` of server time.
    async fn auto_archive(&mut self) {
        let now = self.clock.now();
        if self
            .last_archive
            .is_some_and(|last| now.saturating_sub(last) < ARCHIVE_EVERY_MS)
        {
            return;
        }
        let cutoff = now.plus_ms(-self.config.retention_days.saturating_mul(86_400_000));
        match self.store.archive_notifications_before(cutoff, now).await {
            Ok(archived) => {
                self.last_archive = Some(now);
                if archived > 0 {
                    tracing::info!(
                        archived,
                        retention_days = self.config.retention_days,
                        "archived old notifications"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot archive old notifications; retrying at the next tick")
            }
        }
    }
}

/// The kinds users may mute, for error messages.
pub(crate) fn kind_names() -> String {
    NotificationKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
