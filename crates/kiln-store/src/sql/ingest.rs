//! The ingest transaction: many requests, one commit (group commit).
//!
//! Phase 1 replays each request's events on in-memory copies of the builds they touch
//! (`BuildState::apply`), so a rejected request is dropped without any write and without
//! disturbing the requests beside it. Phase 2 writes what the accepted requests changed.
//!
//! Global event ids come from the `kiln_counters` row, which is locked by the very first
//! statement and updated by the last. Two transactions therefore never interleave their
//! ids, and ids become visible in commit order: a reader that saw id N has already seen
//! every id below N. That is what makes `lastEventId` cursors gap-free on PostgreSQL, where
//! sequence values would otherwise become visible out of order.

use std::collections::HashMap;

use kiln_core::{Applied, BuildState, Millis, RunId};
use sqlx::{Any, Row, Transaction};

use super::rows::{BUILD_SELECT, build_from_row, load_stages};
use super::{SqlStore, trusted};
use crate::StoreResult;
use crate::records::*;

/// Rows per multi-row INSERT; 8 columns each stays far below SQLite's parameter limit.
const EVENT_INSERT_CHUNK: usize = 200;

#[derive(Clone)]
struct WorkingBuild {
    db_id: Option<i64>,
    project_id: i64,
    last_event_id: i64,
    state: BuildState,
    changed: bool,
}

struct EventRow {
    id: i64,
    run_id: String,
    project_id: i64,
    seq: i64,
    event_type: String,
    client_event_id: Option<String>,
    payload: String,
}

/// What the accepted requests of this transaction have produced so far.
#[derive(Default)]
struct Batch {
    /// Builds in order of first appearance, so build numbers follow arrival order.
    order: Vec<String>,
    builds: HashMap<String, WorkingBuild>,
    rows: Vec<EventRow>,
    client_ids: HashMap<(String, String), (i64, i64)>,
}

pub(super) async fn ingest(
    store: &SqlStore,
    requests: &[IngestRequest],
    now: Millis,
) -> StoreResult<Vec<Result<Vec<EventOutcome>, IngestRejection>>> {
    let mut transaction = store.begin_write().await?;
    let last_id: i64 = sqlx::query(
        "UPDATE kiln_counters SET value = value WHERE name = 'event_id' RETURNING value",
    )
    .fetch_one(&mut *transaction)
    .await?
    .try_get(0)?;

    let mut batch = Batch::default();
    let mut next_id = last_id;
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        let result = simulate(&mut transaction, &mut batch, &mut next_id, request, now).await?;
        results.push(result);
    }

    if next_id > last_id {
        write(&mut transaction, &mut batch, now).await?;
        sqlx::query("UPDATE kiln_counters SET value = $1 WHERE name = 'event_id'")
            .bind(next_id)
            .execute(&mut *transaction)
            .await?;
        if store.engine == crate::Engine::Postgres {
            // Delivered to listeners at commit; other replicas' tailers wake up.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(super::COMMIT_CHANNEL)
                .bind(next_id.to_string())
                .execute(&mut *transaction)
                .await?;
        }
    }
    transaction.commit().await?;
    Ok(results)
}

/// Applies one request to copies of its builds; merges them into the batch only if the
/// whole request is accepted.
async fn simulate(
    transaction: &mut Transaction<'static, Any>,
    batch: &mut Batch,
    next_id: &mut i64,
    request: &IngestRequest,
    now: Millis,
) -> StoreResult<Result<Vec<EventOutcome>, IngestRejection>> {
    let mut local_builds: HashMap<String, WorkingBuild> = HashMap::new();
    let mut local_order: Vec<String> = Vec::new();
    let mut local_rows: Vec<EventRow> = Vec::new();
    let mut local_client_ids: HashMap<(String, String), (i64, i64)> = HashMap::new();
    let mut local_next_id = *next_id;
    let mut outcomes = Vec::with_capacity(request.events.len());

    for (index, event) in request.events.iter().enumerate() {
        let key = event.run_id.as_str();
        if !local_builds.contains_key(key) {
            let working = match batch.builds.get(key) {
                Some(working) => working.clone(),
                None => load_build(transaction, &event.run_id, request.project_id, now).await?,
            };
            local_builds.insert(key.to_owned(), working);
            local_order.push(key.to_owned());
        }
        let Some(working) = local_builds.get_mut(key) else {
            continue;
        };
        if working.project_id != request.project_id {
            return Ok(Err(IngestRejection::RunIdTaken {
                index,
                run_id: key.to_owned(),
            }));
        }

        if let Some(client_event_id) = &event.client_event_id {
            let client_key = (key.to_owned(), client_event_id.as_str().to_owned());
            let mut earlier = local_client_ids
                .get(&client_key)
                .or_else(|| batch.client_ids.get(&client_key))
                .copied();
            if earlier.is_none()
                && let Some(build_id) = working.db_id
            {
                earlier = sqlx::query(
                    "SELECT id, seq FROM events WHERE build_id = $1 AND client_event_id = $2",
                )
                .bind(build_id)
                .bind(client_event_id.as_str())
                .fetch_optional(&mut **transaction)
                .await?
                .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
                .transpose()?;
            }
            if let Some((id, seq)) = earlier {
                outcomes.push(EventOutcome {
                    run_id: event.run_id.clone(),
                    client_event_id: event.client_event_id.clone(),
                    status: OutcomeStatus::Duplicate,
                    id: Some(id),
                    seq: Some(seq),
                });
                continue;
            }
        }

        if let Precondition::BuildIsStale {
            default_timeout_secs,
        } = request.precondition
            && (working.db_id.is_none() || !working.state.is_stale(now, default_timeout_secs))
        {
            outcomes.push(ignored(event));
            continue;
        }

        match working.state.apply(event, now) {
            Ok(Applied::Stored) => {
                local_next_id += 1;
                let seq = working.state.last_seq;
                working.last_event_id = local_next_id;
                working.changed = true;
                if let Some(client_event_id) = &event.client_event_id {
                    local_client_ids.insert(
                        (key.to_owned(), client_event_id.as_str().to_owned()),
                        (local_next_id, seq),
                    );
                }
                local_rows.push(EventRow {
                    id: local_next_id,
                    run_id: key.to_owned(),
                    project_id: request.project_id,
                    seq,
                    event_type: event.event_type.as_str().to_owned(),
                    client_event_id: event
                        .client_event_id
                        .as_ref()
                        .map(|c| c.as_str().to_owned()),
                    payload: event.to_json().to_string(),
                });
                outcomes.push(EventOutcome {
                    run_id: event.run_id.clone(),
                    client_event_id: event.client_event_id.clone(),
                    status: OutcomeStatus::Stored,
                    id: Some(local_next_id),
                    seq: Some(seq),
                });
            }
            Ok(Applied::Ignored) => outcomes.push(ignored(event)),
            Err(rejection) => {
                return Ok(Err(IngestRejection::Terminal {
                    index,
                    message: rejection.to_string(),
                }));
            }
        }
    }

    *next_id = local_next_id;
    for key in local_order {
        if !batch.builds.contains_key(&key) {
            batch.order.push(key.clone());
        }
        if let Some(working) = local_builds.remove(&key) {
            batch.builds.insert(key, working);
        }
    }
    batch.rows.extend(local_rows);
    batch.client_ids.extend(local_client_ids);
    Ok(Ok(outcomes))
}

fn ignored(event: &kiln_core::NewEvent) -> EventOutcome {
    EventOutcome {
        run_id: event.run_id.clone(),
        client_event_id: event.client_event_id.clone(),
        status: OutcomeStatus::Ignored,
        id: None,
        seq: None,
    }
}

async fn load_build(
    transaction: &mut Transaction<'static, Any>,
    run_id: &RunId,
    project_id: i64,
    now: Millis,
) -> StoreResult<WorkingBuild> {
    let row = sqlx::query(trusted(format!("{BUILD_SELECT} WHERE b.run_id = $1")))
        .bind(run_id.as_str())
        .fetch_optional(&mut **transaction)
        .await?;
    match row {
        Some(row) => {
            let mut record = build_from_row(&row)?;
            record.state.stages = load_stages(&mut **transaction, record.id).await?;
            Ok(WorkingBuild {
                db_id: Some(record.id),
                project_id: record.project_id,
                last_event_id: record.last_event_id,
                state: record.state,
                changed: false,
            })
        }
        None => Ok(WorkingBuild {
            db_id: None,
            project_id,
            last_event_id: 0,
            state: BuildState::new(run_id.clone(), now),
            changed: false,
        }),
    }
}

async fn write(
    transaction: &mut Transaction<'static, Any>,
    batch: &mut Batch,
    now: Millis,
) -> StoreResult<()> {
    let mut build_ids: HashMap<String, i64> = HashMap::new();
    for key in &batch.order {
        let Some(working) = batch.builds.get(key) else {
            continue;
        };
        if !working.changed {
            continue;
        }
        let build_id = match working.db_id {
            Some(build_id) => {
                update_build(transaction, build_id, working).await?;
                build_id
            }
            None => insert_build(transaction, working).await?,
        };
        for stage in working.state.stages.iter().filter(|stage| stage.dirty) {
            sqlx::query(
                "INSERT INTO stages (build_id, name, position, status, started_at, ended_at, duration_ms, message) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (build_id, name) DO UPDATE SET \
                 status = excluded.status, started_at = excluded.started_at, ended_at = excluded.ended_at, \
                 duration_ms = excluded.duration_ms, message = excluded.message",
            )
            .bind(build_id)
            .bind(stage.name.as_str())
            .bind(stage.position)
            .bind(stage.status.as_str())
            .bind(stage.started_at.0)
            .bind(stage.ended_at.map(|m| m.0))
            .bind(stage.duration_ms)
            .bind(stage.message.as_deref())
            .execute(&mut **transaction)
            .await?;
        }
        build_ids.insert(key.clone(), build_id);
    }

    for chunk in batch.rows.chunks(EVENT_INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO events (id, build_id, project_id, seq, event_type, client_event_id, received_at, payload) VALUES ",
        );
        for (row_index, _) in chunk.iter().enumerate() {
            let base = row_index * 8;
            if row_index > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${},${},${},${},${},${},${},${})",
                base + 1,
                base + 2,
                base + 3,
                base + 4,
                base + 5,
                base + 6,
                base + 7,
                base + 8
            ));
        }
        let mut query = sqlx::query(trusted(sql.clone()));
        for row in chunk {
            let build_id = build_ids.get(&row.run_id).copied().unwrap_or_default();
            query = query
                .bind(row.id)
                .bind(build_id)
                .bind(row.project_id)
                .bind(row.seq)
                .bind(row.event_type.as_str())
                .bind(row.client_event_id.as_deref())
                .bind(now.0)
                .bind(row.payload.as_str());
        }
        query.execute(&mut **transaction).await?;
    }
    Ok(())
}

/// Progress is kept as an integer (hundredths of a percent) so both engines store it
/// exactly and no float crosses the `Any` driver.
fn progress_to_hundredths(progress: f64) -> i64 {
    (progress * 100.0).round() as i64
}

async fn insert_build(
    transaction: &mut Transaction<'static, Any>,
    working: &WorkingBuild,
) -> StoreResult<i64> {
    let number: i64 = sqlx::query(
        "UPDATE projects SET last_build_number = last_build_number + 1 WHERE id = $1 RETURNING last_build_number",
    )
    .bind(working.project_id)
    .fetch_one(&mut **transaction)
    .await?
    .try_get(0)?;
    let state = &working.state;
    let row = sqlx::query(
        "INSERT INTO builds (project_id, run_id, number, status, progress_hundredths, current_stage, env, origin, command, \
         host, pid, repo, branch, commit_sha, message, created_at, started_at, ended_at, duration_ms, \
         last_event_at, last_event_id, last_seq, heartbeat_timeout_secs) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
         RETURNING id",
    )
    .bind(working.project_id)
    .bind(state.run_id.as_str())
    .bind(number)
    .bind(state.status.as_str())
    .bind(state.progress.map(progress_to_hundredths))
    .bind(state.current_stage.as_ref().map(|s| s.as_str()))
    .bind(state.env.as_deref())
    .bind(state.origin.as_deref())
    .bind(state.command.as_deref())
    .bind(state.host.as_deref())
    .bind(state.pid)
    .bind(state.repo.as_deref())
    .bind(state.branch.as_deref())
    .bind(state.commit.as_deref())
    .bind(state.message.as_deref())
    .bind(state.created_at.0)
    .bind(state.started_at.0)
    .bind(state.ended_at.map(|m| m.0))
    .bind(state.duration_ms)
    .bind(state.last_event_at.0)
    .bind(working.last_event_id)
    .bind(state.last_seq)
    .bind(state.heartbeat_timeout_secs)
    .fetch_one(&mut **transaction)
    .await?;
    Ok(row.try_get(0)?)
}

async fn update_build(
    transaction: &mut Transaction<'static, Any>,
    build_id: i64,
    working: &WorkingBuild,
) -> StoreResult<()> {
    let state = &working.state;
    sqlx::query(
        "UPDATE builds SET status = $2, progress_hundredths = $3, current_stage = $4, env = $5, origin = $6, command = $7, \
         host = $8, pid = $9, repo = $10, branch = $11, commit_sha = $12, message = $13, started_at = $14, \
         ended_at = $15, duration_ms = $16, last_event_at = $17, last_event_id = $18, last_seq = $19, \
         heartbeat_timeout_secs = $20 WHERE id = $1",
    )
    .bind(build_id)
    .bind(state.status.as_str())
    .bind(state.progress.map(progress_to_hundredths))
    .bind(state.current_stage.as_ref().map(|s| s.as_str()))
    .bind(state.env.as_deref())
    .bind(state.origin.as_deref())
    .bind(state.command.as_deref())
    .bind(state.host.as_deref())
    .bind(state.pid)
    .bind(state.repo.as_deref())
    .bind(state.branch.as_deref())
    .bind(state.commit.as_deref())
    .bind(state.message.as_deref())
    .bind(state.started_at.0)
    .bind(state.ended_at.map(|m| m.0))
    .bind(state.duration_ms)
    .bind(state.last_event_at.0)
    .bind(working.last_event_id)
    .bind(state.last_seq)
    .bind(state.heartbeat_timeout_secs)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
