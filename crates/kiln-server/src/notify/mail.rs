//! The mail task: delivers the email outbox through SMTP, with retries.
//!
//! One task per replica owns the sending; it reacts to a closed set of wake-ups (`Wake`):
//! new emails queued by the notifier, a tick (due retries, other replicas' emails), or
//! stop. Each email is claimed in the store for one attempt (so replicas do not send it
//! twice and a crash mid-send only delays it by the claim), sent with a timeout, then
//! marked sent, scheduled for a retry with exponential backoff, or given up (a permanent
//! refusal, or `max_attempts` reached). Nothing here is awaited by ingest or the
//! notifier: they only write the outbox.

use std::sync::Arc;
use std::time::Duration;

use kiln_store::{OutboxEmail, Store, StoreError};
use tokio::sync::{Notify, watch};

use super::EmailConfig;
use super::smtp::{self, SmtpError};
use crate::clock::Clock;

/// Emails claimed per round.
const BATCH: i64 = 20;

enum Wake {
    Queued,
    Tick,
    Stop,
}

/// What the mail task reports to: its passes (tests wait on them) and the metrics its
/// attempts are counted in.
pub(crate) struct MailObservers {
    pub passes: Arc<crate::background::Passes>,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

/// The mail task; returns when `stop` changes.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: EmailConfig,
    poll_interval: Duration,
    queued: Arc<Notify>,
    observers: MailObservers,
    mut stop: watch::Receiver<bool>,
) {
    let MailObservers { passes, metrics } = observers;
    let mut wake = Wake::Tick;
    loop {
        if matches!(wake, Wake::Stop) {
            return;
        }
        if let Err(error) = send_due(&*store, &*clock, &config, &metrics, &mut stop).await {
            tracing::warn!(%error, "cannot read the email outbox; retrying");
        }
        passes.done(crate::background::Periodic::Mail);
        // `send_due` may have seen the stop already (then `changed` would not fire).
        if *stop.borrow() {
            return;
        }
        wake = tokio::select! {
            _ = queued.notified() => Wake::Queued,
            _ = tokio::time::sleep(poll_interval) => Wake::Tick,
            _ = stop.changed() => Wake::Stop,
        };
        // Several notifications of one event arrive together; one round sends them.
        if matches!(wake, Wake::Queued) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends every due email, batch by batch, until none is due or the server stops.
async fn send_due(
    store: &dyn Store,
    clock: &dyn Clock,
    config: &EmailConfig,
    metrics: &crate::telemetry::Metrics,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    loop {
        let now = clock.now();
        // The claim outlasts an attempt, so only a crashed sender's emails come back.
        let claim_ms = config.send_timeout.as_millis() as i64 * 2 + 1000;
        let emails = store
            .claim_due_emails(now, now.plus_ms(claim_ms), BATCH)
            .await?;
        if emails.is_empty() {
            return Ok(());
        }
        for email in &emails {
            // At shutdown an unfinished send is abandoned: its claim ends and it is
            // sent again later (email is at least once), rather than holding the
            // shutdown for a slow relay.
            if *stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                delivered = deliver(store, clock, config, metrics, email) => delivered?,
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}

async fn deliver(
    store: &dyn Store,
    clock: &dyn Clock,
    config: &EmailConfig,
    metrics: &crate::telemetry::Metrics,
    email: &OutboxEmail,
) -> Result<(), StoreError> {
    let message = smtp::Message {
        from: &config.from,
        to: &email.recipient,
        subject: &email.subject,
        body: &email.body,
        date: clock.now(),
        id: email.id,
    };
    match smtp::send(&config.relay, &message, config.send_timeout).await {
        Ok(()) => {
            metrics.email_attempts.get(&"sent").increment();
            tracing::debug!(email_id = email.id, attempts = email.attempts, "email sent");
            store.email_sent(email.id, clock.now()).await
        }
        Err(SmtpError::Transient(error)) if email.attempts < config.max_attempts => {
            let backoff = backoff(config, email.attempts);
            metrics.email_attempts.get(&"retrying").increment();
            tracing::warn!(
                email_id = email.id,
                attempts = email.attempts,
                retry_in_ms = backoff.as_millis() as u64,
                %error,
                "email not sent; retrying later"
            );
            let now = clock.now();
            store
                .email_failed(
                    email.id,
                    &error,
                    Some(now.plus_ms(backoff.as_millis() as i64)),
                    now,
                )
                .await
        }
        Err(SmtpError::Transient(error) | SmtpError::Permanent(error)) => {
            metrics.email_attempts.get(&"failed").increment();
            tracing::error!(
                email_id = email.id,
                attempts = email.attempts,
                %error,
                "email given up; check --smtp-url and the relay's log"
            );
            store
                .email_failed(email.id, &error, None, clock.now())
                .await
        }
    }
}

/// `first_backoff × 2^(attempts − 1)`, at most `max_backoff`.
fn backoff(config: &EmailConfig, attempts: i64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 30) as u32;
    config
        .first_backoff
        .saturating_mul(1u32 << doublings)
        .min(config.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = EmailConfig::parse(
            "smtp://127.0.0.1:2525",
            "kiln@example.com",
            &crate::notify::SmtpFiles::default(),
        )
        .unwrap();
        let seconds: Vec<u64> = (1..=9)
            .map(|attempts| backoff(&config, attempts).as_secs())
            .collect();
        assert_eq!(seconds, vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }
}
