//! Outbound webhooks in SQL: endpoints, deliveries, attempts and the consumer's cursor.
//!
//! A delivery is unique per (endpoint, event) and inserted with `ON CONFLICT DO NOTHING`,
//! so replaying events (after a crash, or by another replica's consumer) queues none
//! twice. A claim takes, per endpoint, only its oldest pending delivery, so an endpoint
//! receives its events in order: event N+1 waits while N is pending or retrying, and an
//! endpoint never has two deliveries in flight.

use kiln_core::Millis;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{SqlStore, trusted};
use crate::webhooks::*;
use crate::{StoreError, StoreResult};

const ENDPOINT_COLUMNS: &str = "id, project_id, url, secret, previous_secret, previous_secret_until, \
     events, format, active, disabled_reason, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, event_type, body, state, attempts, \
     next_attempt_at, created_at, finished_at, last_status, last_error";

fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt webhook row: {what}"))
}

fn endpoint_from_row(row: &AnyRow) -> StoreResult<WebhookEndpoint> {
    let events: String = row.try_get("events")?;
    let format: String = row.try_get("format")?;
    Ok(WebhookEndpoint {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row
            .try_get::<Option<i64>, _>("previous_secret_until")?
            .map(Millis),
        events: serde_json::from_str(&events).map_err(|_| corrupt("events"))?,
        format: WebhookFormat::parse(&format).ok_or_else(|| corrupt("format"))?,
        active: row.try_get::<i64, _>("active")? != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        created_at: Millis(row.try_get("created_at")?),
        updated_at: Millis(row.try_get("updated_at")?),
    })
}

fn delivery_from_row(row: &AnyRow) -> StoreResult<WebhookDeliveryRecord> {
    let state: String = row.try_get("state")?;
    Ok(WebhookDeliveryRecord {
        id: row.try_get("id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        body: row.try_get("body")?,
        state: WebhookDeliveryState::parse(&state).ok_or_else(|| corrupt("state"))?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: Millis(row.try_get("next_attempt_at")?),
        created_at: Millis(row.try_get("created_at")?),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(Millis),
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        attempt_log: Vec::new(),
    })
}

fn events_column(events: &[String]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".into())
}

impl SqlStore {
    pub(super) async fn q_create_webhook_endpoint(
        &self,
        endpoint: &NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint> {
        let row = sqlx::query(trusted(format!(
            "INSERT INTO webhook_endpoints (project_id, url, secret, events, format, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(endpoint.project_id)
        .bind(&endpoint.url)
        .bind(&endpoint.secret)
        .bind(events_column(&endpoint.events))
        .bind(endpoint.format.as_str())
        .bind(i64::from(endpoint.active))
        .bind(endpoint.created_at.0)
        .fetch_one(&self.pool)
        .await?;
        endpoint_from_row(&row)
    }

    pub(super) async fn q_webhook_endpoints(
        &self,
        project_id: Option<i64>,
    ) -> StoreResult<Vec<WebhookEndpoint>> {
        let rows = sqlx::query(trusted(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
             WHERE ($1 = 0 OR project_id = $1) ORDER BY id"
        )))
        .bind(project_id.unwrap_or(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    pub(super) async fn q_webhook_endpoint(
        &self,
        project_id: i64,
        id: i64,
    ) -> StoreResult<WebhookEndpoint> {
        let row = sqlx::query(trusted(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND project_id = $2"
        )))
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
        endpoint_from_row(&row)
    }

    pub(super) async fn q_update_webhook_endpoint(
        &self,
        project_id: i64,
        id: i64,
        patch: &WebhookEndpointPatch,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint> {
        let current = self.q_webhook_endpoint(project_id, id).await?;
        let active = patch.active.unwrap_or(current.active);
        let disabled_reason = if patch.active == Some(true) {
            None
        } else {
            current.disabled_reason.clone()
        };
        let row = sqlx::query(trusted(format!(
            "UPDATE webhook_endpoints SET url = $1, events = $2, format = $3, active = $4, \
             disabled_reason = $5, updated_at = $6 WHERE id = $7 AND project_id = $8 \
             RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(patch.url.as_ref().unwrap_or(&current.url))
        .bind(events_column(
            patch.events.as_ref().unwrap_or(&current.events),
        ))
        .bind(patch.format.unwrap_or(current.format).as_str())
        .bind(i64::from(active))
        .bind(disabled_reason)
        .bind(now.0)
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
        endpoint_from_row(&row)
    }

    pub(super) async fn q_rotate_webhook_secret(
        &self,
        project_id: i64,
        id: i64,
        new_secret: &str,
        previous_until: Millis,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint> {
        let row = sqlx::query(trusted(format!(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = $1, \
             secret = $2, updated_at = $3 WHERE id = $4 AND project_id = $5 \
             RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(previous_until.0)
        .bind(new_secret)
        .bind(now.0)
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
        endpoint_from_row(&row)
    }

    pub(super) async fn q_delete_webhook_endpoint(
        &self,
        project_id: i64,
        id: i64,
    ) -> StoreResult<()> {
        // Children first: foreign keys are enforced.
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN \
             (SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
              WHERE d.endpoint_id = $1 AND e.project_id = $2)",
        )
        .bind(id)
        .bind(project_id)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE endpoint_id IN \
             (SELECT id FROM webhook_endpoints WHERE id = $1 AND project_id = $2)",
        )
        .bind(id)
        .bind(project_id)
        .execute(&mut *transaction)
        .await?;
        let deleted =
            sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND project_id = $2")
                .bind(id)
                .bind(project_id)
                .execute(&mut *transaction)
                .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound("webhook endpoint"));
        }
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn q_webhook_cursor(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM kiln_counters WHERE name = 'webhook_cursor'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn q_advance_webhook_cursor(&self, from: i64, to: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE kiln_counters SET value = $1 WHERE name = 'webhook_cursor' AND value = $2",
        )
        .bind(to)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn q_insert_webhook_delivery(
        &self,
        delivery: &NewWebhookDelivery,
    ) -> StoreResult<Option<i64>> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, state, attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) \
             ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING id",
        )
        .bind(delivery.endpoint_id)
        .bind(delivery.event_id)
        .bind(&delivery.event_type)
        .bind(&delivery.body)
        .bind(delivery.created_at.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    pub(super) async fn q_claim_due_webhook_deliveries(
        &self,
        now: Millis,
        claimed_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedWebhookDelivery>> {
        // Only the oldest pending delivery of each active endpoint qualifies (in order per
        // endpoint); a claimed one stays pending with a later next_attempt_at, so it keeps
        // blocking its successors while it is in flight, and the sender may claim again
        // while other attempts run without ever getting a second delivery of an endpoint.
        // The one way an older delivery becomes pending behind a newer one is a
        // redelivery: it waits while the newer one is in flight or waiting for a retry
        // (`attempts > 0`, not due), so that, too, never puts two in flight at once.
        // The due and pending conditions are repeated outside the subquery so
        // PostgreSQL re-checks a row another replica claimed meanwhile (it skips it).
        let rows = sqlx::query(trusted(format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1, attempts = attempts + 1 \
             WHERE state = 'pending' AND next_attempt_at <= $2 AND id IN ( \
               SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
               WHERE d.state = 'pending' AND d.next_attempt_at <= $2 AND e.active = 1 \
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries other \
                 WHERE other.endpoint_id = d.endpoint_id AND other.state = 'pending' AND other.id <> d.id \
                 AND (other.id < d.id OR (other.attempts > 0 AND other.next_attempt_at > $2))) \
               ORDER BY d.id LIMIT $3) \
             RETURNING {DELIVERY_COLUMNS}"
        )))
        .bind(claimed_until.0)
        .bind(now.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let delivery = delivery_from_row(row)?;
            let row = sqlx::query(trusted(format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
            )))
            .bind(delivery.endpoint_id)
            .fetch_one(&self.pool)
            .await?;
            claimed.push(ClaimedWebhookDelivery {
                delivery,
                endpoint: endpoint_from_row(&row)?,
            });
        }
        claimed.sort_by_key(|claimed| claimed.delivery.id);
        Ok(claimed)
    }

    pub(super) async fn q_finish_webhook_attempt(
        &self,
        delivery_id: i64,
        attempt: &WebhookAttempt,
        outcome: &WebhookOutcome,
        now: Millis,
    ) -> StoreResult<()> {
        let mut transaction = self.pool.begin().await?;
        // Only the claim of this attempt may report (a stale sender's report is dropped).
        let (state, next_attempt_at, finished_at) = match outcome {
            WebhookOutcome::Delivered => ("delivered", now.0, Some(now.0)),
            WebhookOutcome::RetryAt(at) => ("pending", at.0, None),
            WebhookOutcome::Failed | WebhookOutcome::FailedAndDisable => {
                ("failed", now.0, Some(now.0))
            }
        };
        let endpoint_id: Option<i64> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, finished_at = $3, \
             last_status = $4, last_error = $5 \
             WHERE id = $6 AND state = 'pending' AND attempts = $7 RETURNING endpoint_id",
        )
        .bind(state)
        .bind(next_attempt_at)
        .bind(finished_at)
        .bind(attempt.status_code)
        .bind(attempt.error.as_deref())
        .bind(delivery_id)
        .bind(attempt.attempt)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(endpoint_id) = endpoint_id else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, request_headers, response_excerpt, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(delivery_id)
        .bind(attempt.attempt)
        .bind(attempt.started_at.0)
        .bind(attempt.status_code)
        .bind(attempt.latency_ms)
        .bind(&attempt.request_headers)
        .bind(attempt.response_excerpt.as_deref())
        .bind(attempt.error.as_deref())
        .execute(&mut *transaction)
        .await?;
        if *outcome == WebhookOutcome::FailedAndDisable {
            sqlx::query(
                "UPDATE webhook_endpoints SET active = 0, disabled_reason = $1, updated_at = $2 WHERE id = $3",
            )
            .bind("the receiver answered 410 Gone")
            .bind(now.0)
            .bind(endpoint_id)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn q_webhook_deliveries(
        &self,
        endpoint_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<WebhookDeliveryRecord>> {
        let rows = sqlx::query(trusted(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(endpoint_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut deliveries = rows
            .iter()
            .map(delivery_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        for delivery in &mut deliveries {
            delivery.attempt_log = self.q_webhook_attempts(delivery.id).await?;
        }
        Ok(deliveries)
    }

    async fn q_webhook_attempts(&self, delivery_id: i64) -> StoreResult<Vec<WebhookAttempt>> {
        let rows = sqlx::query(
            "SELECT attempt, started_at, status_code, latency_ms, request_headers, response_excerpt, error \
             FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id",
        )
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(WebhookAttempt {
                    attempt: row.try_get("attempt")?,
                    started_at: Millis(row.try_get("started_at")?),
                    status_code: row.try_get("status_code")?,
                    latency_ms: row.try_get("latency_ms")?,
                    request_headers: row.try_get("request_headers")?,
                    response_excerpt: row.try_get("response_excerpt")?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    pub(super) async fn q_redeliver_webhook(
        &self,
        endpoint_id: i64,
        delivery_id: i64,
        now: Millis,
    ) -> StoreResult<WebhookDeliveryRecord> {
        let row = sqlx::query(trusted(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2"
        )))
        .bind(delivery_id)
        .bind(endpoint_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("webhook delivery"))?;
        let delivery = delivery_from_row(&row)?;
        if delivery.state == WebhookDeliveryState::Pending {
            return Err(StoreError::Conflict(
                "the delivery is still pending; redeliver it once it is delivered or failed".into(),
            ));
        }
        // A redelivery keeps the attempt count running, so the log and the
        // compare-and-set of each attempt stay unambiguous.
        let row = sqlx::query(trusted(format!(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, finished_at = NULL \
             WHERE id = $2 AND state <> 'pending' RETURNING {DELIVERY_COLUMNS}"
        )))
        .bind(now.0)
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::Conflict("the delivery is already pending".into()))?;
        delivery_from_row(&row)
    }

    pub(super) async fn q_webhook_status(
        &self,
        project_id: Option<i64>,
    ) -> StoreResult<Vec<WebhookEndpointStatus>> {
        let endpoints = self.q_webhook_endpoints(project_id).await?;
        let mut statuses = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let counts = sqlx::query(
                "SELECT \
                   COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
                   COALESCE(SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END), 0) AS delivered, \
                   COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) AS failed, \
                   MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest_pending \
                 FROM webhook_deliveries WHERE endpoint_id = $1",
            )
            .bind(endpoint.id)
            .fetch_one(&self.pool)
            .await?;
            let attempts = sqlx::query(
                "SELECT a.status_code, a.latency_ms FROM webhook_attempts a \
                 JOIN webhook_deliveries d ON d.id = a.delivery_id \
                 WHERE d.endpoint_id = $1 ORDER BY a.id DESC LIMIT 100",
            )
            .bind(endpoint.id)
            .fetch_all(&self.pool)
            .await?;
            let mut latencies = Vec::with_capacity(attempts.len());
            let mut successful = 0;
            for row in &attempts {
                let status: Option<i64> = row.try_get("status_code")?;
                if status.is_some_and(|code| (200..300).contains(&code)) {
                    successful += 1;
                }
                latencies.push(row.try_get::<i64, _>("latency_ms")?);
            }
            latencies.sort_unstable();
            statuses.push(WebhookEndpointStatus {
                endpoint_id: endpoint.id,
                project_id: endpoint.project_id,
                url: endpoint.url,
                active: endpoint.active,
                pending: counts.try_get("pending")?,
                delivered: counts.try_get("delivered")?,
                failed: counts.try_get("failed")?,
                successful_attempts: successful,
                total_attempts: attempts.len() as i64,
                p50_latency_ms: latencies.get(latencies.len() / 2).copied(),
                oldest_pending_at: counts
                    .try_get::<Option<i64>, _>("oldest_pending")?
                    .map(Millis),
            });
        }
        Ok(statuses)
    }
}
