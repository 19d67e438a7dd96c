//! The webhook sender: one task per replica that claims due deliveries and sends each
//! once per claim, concurrently across endpoints and in order within one, through one
//! shared HTTP client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::Millis;
use kiln_store::{
    ClaimedWebhookDelivery, FinishedWebhookAttempt, Store, WebhookAttempt, WebhookOutcome,
};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::{Pace, WebhookConfig, payload};
use crate::address;
use crate::clock::Clock;

/// At most this much of a response body is kept in the delivery log.
const EXCERPT_BYTES: usize = 1024;
/// The longest `Retry-After` honoured; a longer one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The pause before recording finished attempts again after the store refused.
const RECORD_RETRY: Duration = Duration::from_millis(500);

/// Everything one attempt needs.
struct Sender {
    clock: Arc<dyn Clock>,
    config: WebhookConfig,
    allow_private: bool,
    /// One client for every attempt: its TLS roots are loaded once and its connections
    /// are kept alive between deliveries to the same receiver. Host names are resolved
    /// and checked by `address::CheckingResolver` for every connection it opens.
    client: reqwest::Client,
    /// Counts attempts by outcome, with their duration.
    metrics: Arc<crate::telemetry::Metrics>,
}

/// How the sender works: the webhook settings, whether private addresses may be
/// called, and the metrics its attempts are counted in.
pub(crate) struct SenderSettings {
    pub config: WebhookConfig,
    pub allow_private: bool,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

/// The sender task; returns when `stop` changes (attempts in flight are abandoned and
/// claimed again once their claims expire).
///
/// Attempts run concurrently, up to `concurrency`, in a `JoinSet`, and hand their results
/// back to the task, which records all that finished meanwhile in one transaction and
/// then claims again — whenever a slot frees, a wake arrives (a new delivery, a
/// re-activated endpoint) or the poll interval passes, never waiting for the other
/// attempts in flight, so an endpoint that hangs until the timeout holds one slot and
/// delays only its own deliveries. The store's claim gives out only the oldest pending
/// delivery of an endpoint and keeps it (and so its successors) out of later claims
/// until its result is recorded; a second delivery of an endpoint therefore never starts
/// while one is in flight. A result the store cannot take is kept and recorded again
/// (never sent again because of it). While ingest is busy, the task rests after each
/// round of recording and claiming (`Pace`).
pub(crate) async fn run_sender(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: SenderSettings,
    wake: Arc<Notify>,
    mut pace: Pace,
    mut stop: watch::Receiver<bool>,
) {
    let SenderSettings {
        config,
        allow_private,
        metrics,
    } = settings;
    crate::install_crypto_provider();
    let poll_interval = config.poll_interval;
    let concurrency = config.concurrency.max(1);
    let client = loop {
        match client(&config, allow_private) {
            Ok(client) => break client,
            Err(error) => {
                tracing::error!(%error, "cannot build the webhook HTTP client; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(poll_interval) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let sender = Arc::new(Sender {
        clock,
        config,
        allow_private,
        client,
        metrics,
    });
    let mut in_flight: JoinSet<FinishedWebhookAttempt> = JoinSet::new();
    let mut finished: Vec<FinishedWebhookAttempt> = Vec::new();
    let mut slugs: HashMap<i64, String> = HashMap::new();
    loop {
        let started = Instant::now();
        let mut pause = poll_interval;
        if !finished.is_empty() {
            match store.finish_webhook_attempts(&finished).await {
                Ok(()) => finished.clear(),
                Err(error) => {
                    tracing::warn!(%error, attempts = finished.len(), "cannot record webhook attempts; retrying");
                    pause = RECORD_RETRY;
                }
            }
        }
        // Claim only once every result is recorded: an endpoint's next delivery is not
        // claimable before its previous one's result is.
        let free = concurrency - in_flight.len() as i64;
        if free > 0 && finished.is_empty() {
            for mut claimed in sender.claim(&*store, free).await {
                let public_url = sender.config.public_url.as_deref().unwrap_or_default();
                if let Err(reason) = render(&*store, &mut claimed, &mut slugs, public_url).await {
                    finished.push(sender.unsendable(&claimed, reason));
                    continue;
                }
                let sender = sender.clone();
                in_flight.spawn(async move { sender.attempt(claimed).await });
            }
        }
        pace.rest(started.elapsed()).await;
        tokio::select! {
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                collect(done, &mut finished);
                // Collect every other attempt that ended meanwhile: one record for all.
                while let Some(done) = in_flight.try_join_next() {
                    collect(done, &mut finished);
                }
            }
            _ = wake.notified(), if finished.is_empty() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

fn collect(
    done: Result<FinishedWebhookAttempt, tokio::task::JoinError>,
    finished: &mut Vec<FinishedWebhookAttempt>,
) {
    match done {
        Ok(attempt) => finished.push(attempt),
        Err(error) => {
            tracing::error!(%error, "a webhook attempt panicked; it is retried after its claim expires")
        }
    }
}

/// Renders the body of a delivery's first attempt from its event (the project's slug
/// cached in `slugs`); a stored body is used as it is. An error says why the delivery
/// cannot be sent at all.
async fn render(
    store: &dyn Store,
    claimed: &mut ClaimedWebhookDelivery,
    slugs: &mut HashMap<i64, String>,
    public_url: &str,
) -> Result<(), String> {
    if !claimed.delivery.body.is_empty() {
        return Ok(());
    }
    let Some(event) = &claimed.event else {
        return Err("the event of this delivery no longer exists".into());
    };
    let slug = match slugs.get(&event.project_id) {
        Some(slug) => slug.clone(),
        None => {
            let slug = store
                .project_by_id(event.project_id)
                .await
                .map_err(|error| format!("cannot read the project: {error}"))?
                .map(|project| project.slug.to_string())
                .unwrap_or_default();
            slugs.insert(event.project_id, slug.clone());
            slug
        }
    };
    claimed.delivery.body = payload::render(claimed.endpoint.format, event, &slug, public_url)
        .ok_or_else(|| {
            format!(
                "the {} format has no representation of {} events",
                claimed.endpoint.format.as_str(),
                event.event_type
            )
        })?;
    Ok(())
}

/// The shared client: per-attempt timeout, no redirects, checked name resolution.
fn client(config: &WebhookConfig, allow_private: bool) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(address::CheckingResolver { allow_private })
        .build()
}

/// A receiver's `Retry-After`: seconds, or an HTTP-date (RFC 9110 allows both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetryAfter {
    Seconds(u64),
    At(Millis),
}

impl RetryAfter {
    fn parse(value: &str) -> Option<RetryAfter> {
        let value = value.trim();
        match value.parse::<u64>() {
            Ok(seconds) => Some(RetryAfter::Seconds(seconds)),
            Err(_) => kiln_core::time::parse_http_date(value).map(RetryAfter::At),
        }
    }

    /// The wait from `now`, at most `MAX_RETRY_AFTER` (a date in the past: none).
    fn wait(self, now: Millis) -> Duration {
        let wait = match self {
            RetryAfter::Seconds(seconds) => Duration::from_secs(seconds),
            RetryAfter::At(at) => Duration::from_millis(at.saturating_sub(now).max(0) as u64),
        };
        wait.min(MAX_RETRY_AFTER)
    }
}

/// What one request produced.
struct Answer {
    status: Option<StatusCode>,
    retry_after: Option<RetryAfter>,
    excerpt: Option<String>,
    error: Option<String>,
}

impl Sender {
    /// Claims up to `limit` due deliveries (none on a store error, logged).
    async fn claim(&self, store: &dyn Store, limit: i64) -> Vec<ClaimedWebhookDelivery> {
        let now = self.clock.now();
        // A claim outlives the attempt's timeout, so a crashed sender's delivery is
        // retried after it, and a live one reports back before it expires.
        let claimed_until = now.plus_ms((self.config.timeout.as_millis() as i64) + 30_000);
        match store
            .claim_due_webhook_deliveries(now, claimed_until, limit)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "cannot claim webhook deliveries; retrying");
                Vec::new()
            }
        }
    }

    /// The result of a delivery that cannot be sent (nothing to render): failed at once,
    /// kept in the log with the reason.
    fn unsendable(
        &self,
        claimed: &ClaimedWebhookDelivery,
        reason: String,
    ) -> FinishedWebhookAttempt {
        tracing::warn!(delivery_id = claimed.delivery.id, %reason, "webhook delivery cannot be sent");
        let now = self.clock.now();
        FinishedWebhookAttempt {
            delivery_id: claimed.delivery.id,
            body: claimed.delivery.body.clone(),
            attempt: WebhookAttempt {
                attempt: claimed.delivery.attempts,
                started_at: now,
                status_code: None,
                latency_ms: 0,
                request_headers: "{}".into(),
                response_excerpt: None,
                error: Some(reason),
            },
            outcome: WebhookOutcome::Failed,
            finished_at: now,
        }
    }

    #[tracing::instrument(skip_all, fields(delivery_id = claimed.delivery.id, endpoint_id = claimed.endpoint.id))]
    async fn attempt(&self, claimed: ClaimedWebhookDelivery) -> FinishedWebhookAttempt {
        let ClaimedWebhookDelivery {
            delivery, endpoint, ..
        } = claimed;
        let started_at = self.clock.now();
        let timestamp = started_at.0.div_euclid(1000);
        let webhook_id = match &self.config.message_key {
            Some(key) => payload::message_id(key, delivery.id, delivery.created_at),
            None => delivery.id.to_string(),
        };
        let secrets = endpoint.signing_secrets(started_at);
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        // Structured-mode CloudEvents have their own media type (CloudEvents JSON format).
        put(
            "content-type",
            match endpoint.format {
                kiln_store::WebhookFormat::Kiln => "application/json",
                kiln_store::WebhookFormat::Cdevents => "application/cloudevents+json",
            }
            .into(),
        );
        put(
            "user-agent",
            format!("Kiln-Webhooks/{}", env!("CARGO_PKG_VERSION")),
        );
        put("webhook-id", webhook_id.clone());
        put("webhook-timestamp", timestamp.to_string());
        put(
            "webhook-signature",
            payload::standard_signature(&secrets, &webhook_id, timestamp, &delivery.body),
        );
        put(
            "x-webhook-signature",
            payload::body_signature(&endpoint.secret, &delivery.body),
        );
        put("x-kiln-event", delivery.event_type.clone());
        let request_headers = headers_json(&headers);

        let clock_started = Instant::now();
        let answer = self
            .request(&endpoint.url, headers, delivery.body.clone())
            .await;
        let latency_ms = clock_started.elapsed().as_millis() as i64;
        let now = self.clock.now();
        let outcome = self.outcome(&answer, delivery.attempts, now);
        self.metrics
            .webhook_attempt_duration
            .observe(clock_started.elapsed().as_secs_f64());
        let counted = match outcome {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::RetryAt(_) => "retrying",
            WebhookOutcome::Failed | WebhookOutcome::FailedAndDisable => "failed",
        };
        self.metrics.webhook_attempts.get(&counted).increment();
        match &outcome {
            WebhookOutcome::Delivered => tracing::debug!(latency_ms, "webhook delivered"),
            WebhookOutcome::RetryAt(at) => tracing::info!(
                status = answer.status.map(|status| status.as_u16()),
                error = answer.error.as_deref(),
                retry_in_ms = at.saturating_sub(now),
                "webhook attempt failed; retrying"
            ),
            WebhookOutcome::Failed => tracing::warn!(
                status = answer.status.map(|status| status.as_u16()),
                error = answer.error.as_deref(),
                "webhook delivery failed after its last attempt"
            ),
            WebhookOutcome::FailedAndDisable => {
                tracing::warn!(url = %endpoint.url, "webhook receiver answered 410 Gone; endpoint disabled")
            }
        }
        FinishedWebhookAttempt {
            delivery_id: delivery.id,
            body: delivery.body,
            attempt: WebhookAttempt {
                attempt: delivery.attempts,
                started_at,
                status_code: answer.status.map(|status| i64::from(status.as_u16())),
                latency_ms,
                request_headers,
                response_excerpt: answer.excerpt,
                error: answer.error,
            },
            outcome,
            finished_at: now,
        }
    }

    async fn request(&self, url: &str, headers: HeaderMap, body: String) -> Answer {
        let failed = |error: String| Answer {
            status: None,
            retry_after: None,
            excerpt: None,
            error: Some(error),
        };
        let target = match address::parse(url) {
            Ok(target) => target,
            Err(error) => return failed(error),
        };
        // A host name is checked by the client's resolver when it connects; an IP
        // literal never reaches a resolver, so it is checked here.
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            let literal = [std::net::SocketAddr::new(ip, target.port)];
            if let Err(error) = address::check(&target.host, &literal, self.allow_private) {
                return failed(error);
            }
        }
        let client = &self.client;
        let send = async {
            let mut response = client
                .post(target.url)
                .headers(headers)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(RetryAfter::parse);
            let mut excerpt = Vec::new();
            while excerpt.len() < EXCERPT_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            excerpt.truncate(EXCERPT_BYTES);
            Ok::<_, reqwest::Error>(Answer {
                status: Some(status),
                retry_after,
                excerpt: Some(storable(String::from_utf8_lossy(&excerpt).into_owned())),
                error: None,
            })
        };
        match tokio::time::timeout(self.config.timeout, send).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => failed(storable(describe(&error))),
            Err(_) => failed(format!(
                "no answer within {} s",
                self.config.timeout.as_secs_f64()
            )),
        }
    }

    /// What follows an attempt numbered `attempt` (1 for the first send).
    fn outcome(&self, answer: &Answer, attempt: i64, now: Millis) -> WebhookOutcome {
        match answer.status {
            Some(status) if status.is_success() => return WebhookOutcome::Delivered,
            Some(StatusCode::GONE) => return WebhookOutcome::FailedAndDisable,
            _ => {}
        }
        let retry = attempt; // the retry that would follow: 1 for the first
        if retry > self.config.max_retries {
            return WebhookOutcome::Failed;
        }
        let honoured = matches!(
            answer.status,
            Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
        );
        let delay = match answer.retry_after {
            Some(retry_after) if honoured => retry_after.wait(now),
            _ => {
                let schedule = &self.config.retry_schedule;
                let index = (retry as usize)
                    .saturating_sub(1)
                    .min(schedule.len().saturating_sub(1));
                let base = schedule
                    .get(index)
                    .copied()
                    .unwrap_or(Duration::from_secs(60));
                base + jitter(base)
            }
        };
        WebhookOutcome::RetryAt(now.plus_ms(delay.as_millis() as i64))
    }
}

/// Up to a tenth of `base`, so receivers that failed together are not retried together.
fn jitter(base: Duration) -> Duration {
    let mut random = [0u8; 4];
    if getrandom::fill(&mut random).is_err() {
        return Duration::ZERO;
    }
    let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
    base.mul_f64(0.1 * fraction)
}

/// A receiver's text as the delivery log can keep it on both engines: U+0000 (which
/// PostgreSQL's text refuses, and which would fail the whole batch of results and so
/// hold up every endpoint) becomes the replacement character.
fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

fn describe(error: &reqwest::Error) -> String {
    use std::error::Error;
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn headers_json(headers: &HeaderMap) -> String {
    let object: Map<String, Value> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Value::String(value.to_str().unwrap_or_default().to_owned()),
            )
        })
        .collect();
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both forms RFC 9110 allows are honoured, each capped at an hour; a date already
    /// past means no wait.
    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = kiln_core::time::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let wait = |text: &str| RetryAfter::parse(text).map(|retry| retry.wait(now));
        assert_eq!(wait("120"), Some(Duration::from_secs(120)));
        assert_eq!(wait(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            wait("Wed, 21 Oct 2026 07:30:30 GMT"),
            Some(Duration::from_secs(150))
        );
        assert_eq!(wait("Wed, 21 Oct 2026 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(wait("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(wait("Thu, 22 Oct 2026 07:28:00 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(wait("soon"), None);
    }
}
