//! Outbound webhooks in SQL: endpoints, deliveries, attempts and the consumer's cursor.
//!
//! A delivery is unique per (endpoint, event) and inserted with `ON CONFLICT DO NOTHING`,
//! so replaying events (after a crash, or by another replica's consumer) queues none
//! twice. A claim takes, per endpoint, only its oldest pending delivery, so an endpoint
//! receives its events in order: event N+1 waits while N is pending or retrying, and an
//! endpoint never has two deliveries in flight.

use crate::WebhookStore;
use async_trait::async_trait;
use kiln_core::Millis;

use super::db::{self, Row};
use super::{SqlStore, trusted};
use crate::webhooks::*;
use crate::{StoreError, StoreResult};

const ENDPOINT_COLUMNS: &str = "id, project_id, url, secret, previous_secret, previous_secret_until, \
     events, format, active, disabled_reason, dropped_while_disabled, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, event_type, body, state, attempts, \
     next_attempt_at, created_at, finished_at, last_status, last_error";

/// Queues one delivery (`$5` is both its creation and its first due time).
const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, state, attempts, next_attempt_at, created_at) \
     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) ON CONFLICT (endpoint_id, event_id) DO NOTHING";
/// Multi-row inserts on PostgreSQL carry this many deliveries (5 parameters each).
const INSERT_CHUNK: usize = 500;
const ADVANCE_CURSOR: &str =
    "UPDATE kiln_counters SET value = $1 WHERE name = 'webhook_cursor' AND value = $2";
/// Counts events not queued for a disabled endpoint that is full.
const ADD_DROPPED: &str = "UPDATE webhook_endpoints \
     SET dropped_while_disabled = dropped_while_disabled + $1 WHERE id = $2";
/// What a discarded held delivery says in the log.
const DISCARDED: &str = "discarded when the endpoint was re-activated";

/// Claims, for up to `$3` active endpoints, the oldest pending delivery (`$1` claimed
/// until, `$2` now); returns the claimed ids.
///
/// Only the oldest pending delivery of an endpoint (its head) qualifies, so an endpoint
/// receives its events in order; a claimed one stays pending with a later
/// `next_attempt_at`, so it keeps blocking its successors while in flight, and the sender
/// may claim again while other attempts run without ever getting a second delivery of an
/// endpoint. The one way an older delivery becomes pending behind a newer one is a
/// redelivery: the endpoint then waits while any of its pending deliveries is in flight or
/// waiting for a retry (`attempts > 0`, not due), so that, too, never puts two in flight.
///
/// The cost is per active endpoint, not per pending delivery: the head comes from the
/// partial index `webhook_deliveries_pending (endpoint_id, id) WHERE state = 'pending'`,
/// and the in-flight test from `webhook_deliveries_retrying`, which holds only attempted
/// pending deliveries (about one per endpoint). The due and pending conditions are
/// repeated outside the subquery so PostgreSQL re-checks a row another replica claimed
/// meanwhile (and skips it).
const CLAIM: &str = "UPDATE webhook_deliveries SET next_attempt_at = $1, attempts = attempts + 1 \
     WHERE state = 'pending' AND next_attempt_at <= $2 AND id IN ( \
       SELECT head FROM ( \
         SELECT (SELECT MIN(d.id) FROM webhook_deliveries d \
                 WHERE d.endpoint_id = e.id AND d.state = 'pending') AS head \
         FROM webhook_endpoints e \
         WHERE e.active = 1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries busy \
           WHERE busy.endpoint_id = e.id AND busy.state = 'pending' AND busy.attempts > 0 \
           AND busy.next_attempt_at > $2) \
       ) heads WHERE head IS NOT NULL ORDER BY head LIMIT $3) \
     RETURNING id";

/// Settles one attempt's delivery, only if it is still pending at that attempt. (The
/// statements here run through rusqlite too, which numbers `$N` parameters in order of
/// first appearance: they appear in increasing order.)
const SETTLE_DELIVERY: &str = "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, finished_at = $3, \
     last_status = $4, last_error = $5, body = $6 \
     WHERE id = $7 AND state = 'pending' AND attempts = $8 RETURNING endpoint_id";
const INSERT_ATTEMPT: &str = "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, request_headers, response_excerpt, error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const DISABLE_ENDPOINT: &str =
    "UPDATE webhook_endpoints SET active = 0, disabled_reason = $1, updated_at = $2 WHERE id = $3";
const GONE_REASON: &str = "the receiver answered 410 Gone";

/// PostgreSQL: `SETTLE_DELIVERY`, `INSERT_ATTEMPT` and `DISABLE_ENDPOINT` for a whole batch
/// of finished attempts in one statement of fixed text (arrays, one element per attempt).
const PG_FINISH_ATTEMPTS: &str = "WITH v AS ( \
       SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], \
         $6::bigint[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], \
         $13::boolean[], $14::bigint[]) AS v(delivery_id, attempt, state, next_attempt_at, \
         finished_at, status_code, error, body, started_at, latency_ms, request_headers, \
         response_excerpt, disable, now)), \
     settled AS ( \
       UPDATE webhook_deliveries d SET state = v.state, next_attempt_at = v.next_attempt_at, \
         finished_at = v.finished_at, last_status = v.status_code, last_error = v.error, body = v.body \
       FROM v WHERE d.id = v.delivery_id AND d.state = 'pending' AND d.attempts = v.attempt \
       RETURNING d.id, d.endpoint_id), \
     logged AS ( \
       INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, \
         request_headers, response_excerpt, error) \
       SELECT v.delivery_id, v.attempt, v.started_at, v.status_code, v.latency_ms, \
         v.request_headers, v.response_excerpt, v.error \
       FROM v JOIN settled ON settled.id = v.delivery_id), \
     disabled AS ( \
       UPDATE webhook_endpoints e SET active = 0, disabled_reason = $15, updated_at = v.now \
       FROM v JOIN settled ON settled.id = v.delivery_id \
       WHERE v.disable AND e.id = settled.endpoint_id) \
     SELECT COUNT(*) FROM settled";

/// The delivery's state, next due time and end time after an attempt.
fn settled(finished: &FinishedWebhookAttempt) -> (&'static str, i64, Option<i64>) {
    let now = finished.finished_at.0;
    match finished.outcome {
        WebhookOutcome::Delivered => ("delivered", now, Some(now)),
        WebhookOutcome::RetryAt(at) => ("pending", at.0, None),
        WebhookOutcome::Failed | WebhookOutcome::FailedAndDisable => ("failed", now, Some(now)),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt webhook row: {what}"))
}

fn endpoint_from_row(row: &Row) -> StoreResult<WebhookEndpoint> {
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
        dropped_while_disabled: row.try_get("dropped_while_disabled")?,
        created_at: Millis(row.try_get("created_at")?),
        updated_at: Millis(row.try_get("updated_at")?),
    })
}

fn delivery_from_row(row: &Row) -> StoreResult<WebhookDeliveryRecord> {
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

#[async_trait]
impl WebhookStore for SqlStore {
    async fn create_webhook_endpoint(
        &self,
        endpoint: &NewWebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint> {
        let row = db::query(trusted(format!(
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

    async fn webhook_endpoints(
        &self,
        project_id: Option<i64>,
    ) -> StoreResult<Vec<WebhookEndpoint>> {
        let rows = db::query(trusted(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
             WHERE ($1 = 0 OR project_id = $1) ORDER BY id"
        )))
        .bind(project_id.unwrap_or(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn webhook_endpoint(&self, project_id: i64, id: i64) -> StoreResult<WebhookEndpoint> {
        let row = db::query(trusted(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND project_id = $2"
        )))
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
        endpoint_from_row(&row)
    }

    async fn update_webhook_endpoint(
        &self,
        project_id: i64,
        id: i64,
        patch: &WebhookEndpointPatch,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint> {
        let current = self.webhook_endpoint(project_id, id).await?;
        let active = patch.active.unwrap_or(current.active);
        let disabled_reason = if patch.active == Some(true) {
            None
        } else {
            current.disabled_reason.clone()
        };
        let mut transaction = self.pool.begin().await?;
        if patch.active == Some(true) && patch.discard_held && !current.active {
            db::query(
                "UPDATE webhook_deliveries SET state = 'failed', finished_at = $1, \
                 last_error = $2 WHERE endpoint_id = $3 AND state = 'pending'",
            )
            .bind(now.0)
            .bind(DISCARDED)
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        }
        let row = db::query(trusted(format!(
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
        .fetch_optional(&mut *transaction)
        .await?
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
        transaction.commit().await?;
        endpoint_from_row(&row)
    }

    async fn rotate_webhook_secret(
        &self,
        project_id: i64,
        id: i64,
        new_secret: &str,
        previous_until: Millis,
        now: Millis,
    ) -> StoreResult<WebhookEndpoint> {
        let row = db::query(trusted(format!(
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

    async fn delete_webhook_endpoint(&self, project_id: i64, id: i64) -> StoreResult<()> {
        // Children first: foreign keys are enforced.
        let mut transaction = self.pool.begin().await?;
        if self.engine == crate::Engine::Postgres {
            // Lock the endpoint first: a consumer inserting a delivery for it meanwhile
            // waits for this transaction (its foreign-key check needs a share lock on the
            // row) and then fails and re-reads the endpoints, instead of slipping a
            // delivery in between the deletes (which failed the delete with a 503).
            db::query(
                "SELECT id FROM webhook_endpoints WHERE id = $1 AND project_id = $2 FOR UPDATE",
            )
            .bind(id)
            .bind(project_id)
            .fetch_optional(&mut *transaction)
            .await?;
            // And its deliveries: a sender recording an attempt meanwhile waits (it updates
            // the delivery before inserting the attempt) and then finds it gone, instead of
            // adding an attempt between the deletes of attempts and of deliveries.
            db::query("SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 FOR UPDATE")
                .bind(id)
                .fetch_all(&mut *transaction)
                .await?;
        }
        db::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN \
             (SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
              WHERE d.endpoint_id = $1 AND e.project_id = $2)",
        )
        .bind(id)
        .bind(project_id)
        .execute(&mut *transaction)
        .await?;
        db::query(
            "DELETE FROM webhook_deliveries WHERE endpoint_id IN \
             (SELECT id FROM webhook_endpoints WHERE id = $1 AND project_id = $2)",
        )
        .bind(id)
        .bind(project_id)
        .execute(&mut *transaction)
        .await?;
        let deleted = db::query("DELETE FROM webhook_endpoints WHERE id = $1 AND project_id = $2")
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

    async fn webhook_cursor(&self) -> StoreResult<i64> {
        Ok(
            db::query_scalar("SELECT value FROM kiln_counters WHERE name = 'webhook_cursor'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn advance_webhook_cursor(&self, from: i64, to: i64) -> StoreResult<bool> {
        let done = db::query(ADVANCE_CURSOR)
            .bind(to)
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_webhook_delivery(
        &self,
        delivery: &NewWebhookDelivery,
    ) -> StoreResult<Option<i64>> {
        let id: Option<i64> = db::query_scalar(trusted(format!("{INSERT_DELIVERY} RETURNING id")))
            .bind(delivery.endpoint_id)
            .bind(delivery.event_id)
            .bind(&delivery.event_type)
            .bind(&delivery.body)
            .bind(delivery.created_at.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(id)
    }

    async fn queue_webhook_deliveries(
        &self,
        deliveries: &[NewWebhookDelivery],
        dropped: &[DroppedWebhookEvents],
        cursor_from: i64,
        cursor_to: i64,
    ) -> StoreResult<QueuedWebhookDeliveries> {
        if let Some(writer) = &self.writer {
            let deliveries = deliveries.to_vec();
            let dropped = dropped.to_vec();
            return writer
                .run(move |connection| {
                    let transaction = connection
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let mut queued = 0;
                    {
                        let mut insert = transaction.prepare_cached(INSERT_DELIVERY)?;
                        for delivery in &deliveries {
                            queued += insert.execute(rusqlite::params![
                                delivery.endpoint_id,
                                delivery.event_id,
                                delivery.event_type,
                                delivery.body,
                                delivery.created_at.0,
                            ])?;
                        }
                    }
                    let moved = transaction
                        .prepare_cached(ADVANCE_CURSOR)?
                        .execute(rusqlite::params![cursor_to, cursor_from])?;
                    if moved == 1 {
                        let mut add = transaction.prepare_cached(ADD_DROPPED)?;
                        for dropped in &dropped {
                            add.execute(rusqlite::params![dropped.events, dropped.endpoint_id])?;
                        }
                    }
                    transaction.commit()?;
                    Ok(QueuedWebhookDeliveries {
                        queued,
                        cursor_moved: moved == 1,
                    })
                })
                .await;
        }
        let mut transaction = self.pool.begin().await?;
        let mut queued = 0;
        for chunk in deliveries.chunks(INSERT_CHUNK) {
            let rows = (0..chunk.len())
                .map(|row| {
                    let first = row * 5;
                    format!(
                        "(${}, ${}, ${}, ${}, 'pending', 0, ${}, ${})",
                        first + 1,
                        first + 2,
                        first + 3,
                        first + 4,
                        first + 5,
                        first + 5
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, body, state, attempts, next_attempt_at, created_at) \
                 VALUES {rows} ON CONFLICT (endpoint_id, event_id) DO NOTHING"
            );
            let mut insert = db::query(trusted(sql));
            for delivery in chunk {
                insert = insert
                    .bind(delivery.endpoint_id)
                    .bind(delivery.event_id)
                    .bind(&delivery.event_type)
                    .bind(&delivery.body)
                    .bind(delivery.created_at.0);
            }
            queued += insert.execute(&mut *transaction).await?.rows_affected() as usize;
        }
        let moved = db::query(ADVANCE_CURSOR)
            .bind(cursor_to)
            .bind(cursor_from)
            .execute(&mut *transaction)
            .await?
            .rows_affected()
            == 1;
        if moved {
            for dropped in dropped {
                db::query(ADD_DROPPED)
                    .bind(dropped.events)
                    .bind(dropped.endpoint_id)
                    .execute(&mut *transaction)
                    .await?;
            }
        }
        transaction.commit().await?;
        Ok(QueuedWebhookDeliveries {
            queued,
            cursor_moved: moved,
        })
    }

    async fn pending_webhook_deliveries(&self, endpoint_id: i64) -> StoreResult<i64> {
        Ok(db::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'pending'",
        )
        .bind(endpoint_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn claim_due_webhook_deliveries(
        &self,
        now: Millis,
        claimed_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedWebhookDelivery>> {
        let ids: Vec<i64> = match &self.writer {
            Some(writer) => {
                writer
                    .run(move |connection| {
                        let transaction = connection
                            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        let ids = transaction
                            .prepare_cached(CLAIM)?
                            .query_map(rusqlite::params![claimed_until.0, now.0, limit], |row| {
                                row.get(0)
                            })?
                            .collect::<Result<Vec<i64>, _>>()?;
                        transaction.commit()?;
                        Ok(ids)
                    })
                    .await?
            }
            None => {
                db::query_scalar(CLAIM)
                    .bind(claimed_until.0)
                    .bind(now.0)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // The claimed rows and their endpoints, read back (on SQLite through the pool:
        // the writer's commit is visible to every read that starts after it).
        let list = ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let rows = db::query(trusted(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id IN ({list}) ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        let deliveries = rows
            .iter()
            .map(delivery_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut endpoint_ids: Vec<i64> = deliveries.iter().map(|d| d.endpoint_id).collect();
        endpoint_ids.sort_unstable();
        endpoint_ids.dedup();
        let list = endpoint_ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let endpoints = db::query(trusted(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id IN ({list})"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| endpoint_from_row(row).map(|endpoint| (endpoint.id, endpoint)))
        .collect::<StoreResult<std::collections::HashMap<_, _>>>()?;
        // The events of first attempts, whose bodies the sender renders.
        let unrendered: Vec<String> = deliveries
            .iter()
            .filter(|delivery| delivery.body.is_empty())
            .filter_map(|delivery| delivery.event_id)
            .map(|id| id.to_string())
            .collect();
        let mut events = std::collections::HashMap::new();
        if !unrendered.is_empty() {
            let rows = db::query(trusted(format!(
                "SELECT id, seq, build_id, project_id, event_type, received_at, payload FROM events \
                 WHERE id IN ({})",
                unrendered.join(", ")
            )))
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let event = super::rows::event_from_row(row)?;
                events.insert(event.id, event);
            }
        }
        // A delivery whose endpoint was deleted meanwhile went with it.
        Ok(deliveries
            .into_iter()
            .filter_map(|delivery| {
                let endpoint = endpoints.get(&delivery.endpoint_id)?.clone();
                let event = match delivery.body.is_empty() {
                    true => delivery.event_id.and_then(|id| events.get(&id).cloned()),
                    false => None,
                };
                Some(ClaimedWebhookDelivery {
                    delivery,
                    endpoint,
                    event,
                })
            })
            .collect())
    }

    async fn finish_webhook_attempts(
        &self,
        finished: &[FinishedWebhookAttempt],
    ) -> StoreResult<()> {
        if finished.is_empty() {
            return Ok(());
        }
        if let Some(writer) = &self.writer {
            let finished = finished.to_vec();
            return writer
                .run(move |connection| {
                    let transaction = connection
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    for one in &finished {
                        let (state, next_attempt_at, finished_at) = settled(one);
                        let attempt = &one.attempt;
                        let endpoint_id: Option<i64> = transaction
                            .prepare_cached(SETTLE_DELIVERY)?
                            .query_row(
                                rusqlite::params![
                                    state,
                                    next_attempt_at,
                                    finished_at,
                                    attempt.status_code,
                                    attempt.error,
                                    one.body,
                                    one.delivery_id,
                                    attempt.attempt,
                                ],
                                |row| row.get(0),
                            )
                            .map(Some)
                            .or_else(|error| match error {
                                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                                other => Err(other),
                            })?;
                        let Some(endpoint_id) = endpoint_id else {
                            continue;
                        };
                        transaction
                            .prepare_cached(INSERT_ATTEMPT)?
                            .execute(rusqlite::params![
                                one.delivery_id,
                                attempt.attempt,
                                attempt.started_at.0,
                                attempt.status_code,
                                attempt.latency_ms,
                                attempt.request_headers,
                                attempt.response_excerpt,
                                attempt.error,
                            ])?;
                        if one.outcome == WebhookOutcome::FailedAndDisable {
                            transaction.prepare_cached(DISABLE_ENDPOINT)?.execute(
                                rusqlite::params![GONE_REASON, one.finished_at.0, endpoint_id],
                            )?;
                        }
                    }
                    transaction.commit()?;
                    Ok(())
                })
                .await;
        }
        let Some(pool) = &self.native_pool else {
            return Err(StoreError::Unavailable(
                "no native PostgreSQL pool for webhook attempts".into(),
            ));
        };
        // One statement for the whole batch: settle the deliveries still waiting for
        // this attempt, log the attempts of those settled, disable the endpoints that
        // answered 410.
        let settled_rows: Vec<_> = finished.iter().map(settled).collect();
        sqlx::query(PG_FINISH_ATTEMPTS)
            .bind(
                finished
                    .iter()
                    .map(|one| one.delivery_id)
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.attempt.attempt)
                    .collect::<Vec<_>>(),
            )
            .bind(
                settled_rows
                    .iter()
                    .map(|(state, _, _)| *state)
                    .collect::<Vec<_>>(),
            )
            .bind(
                settled_rows
                    .iter()
                    .map(|(_, next, _)| *next)
                    .collect::<Vec<_>>(),
            )
            .bind(
                settled_rows
                    .iter()
                    .map(|(_, _, end)| *end)
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.attempt.status_code)
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.attempt.error.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.body.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.attempt.started_at.0)
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.attempt.latency_ms)
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.attempt.request_headers.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.attempt.response_excerpt.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.outcome == WebhookOutcome::FailedAndDisable)
                    .collect::<Vec<_>>(),
            )
            .bind(
                finished
                    .iter()
                    .map(|one| one.finished_at.0)
                    .collect::<Vec<_>>(),
            )
            .bind(GONE_REASON)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn webhook_deliveries(
        &self,
        endpoint_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<WebhookDeliveryRecord>> {
        let rows = db::query(trusted(format!(
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
            delivery.attempt_log = self.webhook_attempts(delivery.id).await?;
        }
        Ok(deliveries)
    }

    async fn redeliver_webhook(
        &self,
        endpoint_id: i64,
        delivery_id: i64,
        now: Millis,
    ) -> StoreResult<WebhookDeliveryRecord> {
        let row = db::query(trusted(format!(
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
        let row = db::query(trusted(format!(
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

    async fn webhook_status(
        &self,
        project_id: Option<i64>,
    ) -> StoreResult<Vec<WebhookEndpointStatus>> {
        let endpoints = self.webhook_endpoints(project_id).await?;
        let mut statuses = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let counts = db::query(
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
            let attempts = db::query(
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
                dropped_while_disabled: endpoint.dropped_while_disabled,
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

impl SqlStore {
    async fn webhook_attempts(&self, delivery_id: i64) -> StoreResult<Vec<WebhookAttempt>> {
        let rows = db::query(
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
}
