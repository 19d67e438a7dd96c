//! The ingest transaction: many requests, one commit (group commit).
//!
//! This module holds the engine-independent parts (prefetched state, the in-memory replay,
//! the write plan) and the sqlx executor used on PostgreSQL; SQLite runs the same plan in
//! `sqlite_writer`.
//!
//! Phase 0 prefetches, in a handful of `IN (…)` queries, every build the group touches,
//! their stages and the earlier events whose `eventId`s reappear. Phase 1 replays each
//! request's events on in-memory copies of those builds (`BuildState::apply`) without any
//! query, so a rejected request is dropped without a write and without disturbing the
//! requests beside it. Phase 2 writes what the accepted requests changed with multi-row
//! statements. The number of statements per commit therefore depends on the number of
//! projects and on size limits, not on the number of requests, builds or events.
//!
//! Global event ids come from the `kiln_counters` row, which is locked by the very first
//! statement and updated by the last. Two transactions therefore never interleave their
//! ids, and ids become visible in commit order: a reader that saw id N has already seen
//! every id below N. That is what makes `lastEventId` cursors gap-free on PostgreSQL, where
//! sequence values would otherwise become visible out of order.

use std::collections::{BTreeMap, HashMap, HashSet};

use kiln_core::jobs::JobPlan;
use kiln_core::{Applied, BuildState, JobState, Millis, NewEvent, RunId, StageState};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Row, Transaction};

use super::rows::{BUILD_SELECT, build_from_row, stage_from_row};
use super::{SqlStore, trusted};
use crate::StoreResult;
use crate::records::*;

/// Rows per multi-row statement and values per `IN (…)` list come in these sizes only,
/// so a handful of distinct statements serve every commit and stay in sqlx's prepared
/// statement cache (re-parsing a 256-row statement per commit was a tenth of the CPU).
/// 256 rows × 24 columns stays far below both engines' parameter limits.
const CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// Splits `items` into slices whose lengths are all in `CHUNK_SIZES`.
fn chunks<T>(items: &[T]) -> Vec<&[T]> {
    let mut slices = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let size = CHUNK_SIZES
            .iter()
            .copied()
            .find(|size| *size <= rest.len())
            .unwrap_or(1);
        let (head, tail) = rest.split_at(size);
        slices.push(head);
        rest = tail;
    }
    slices
}

type Tx = Transaction<'static, Any>;

#[derive(Clone)]
pub(super) struct WorkingBuild {
    pub(super) db_id: Option<i64>,
    pub(super) project_id: i64,
    pub(super) number: i64,
    pub(super) last_event_id: i64,
    pub(super) state: BuildState,
    pub(super) changed: bool,
}

impl WorkingBuild {
    pub(super) fn existing(record: BuildRecord) -> Self {
        WorkingBuild {
            db_id: Some(record.id),
            project_id: record.project_id,
            number: record.number,
            last_event_id: record.last_event_id,
            state: record.state,
            changed: false,
        }
    }
}

pub(super) struct EventRow {
    pub(super) id: i64,
    pub(super) run_id: String,
    pub(super) project_id: i64,
    pub(super) seq: i64,
    pub(super) event_type: String,
    pub(super) client_event_id: Option<String>,
    pub(super) payload: String,
}

/// What the accepted requests of this transaction have produced so far.
#[derive(Default)]
pub(super) struct Batch {
    /// Builds in order of first appearance, so build numbers follow arrival order.
    pub(super) order: Vec<String>,
    pub(super) builds: HashMap<String, WorkingBuild>,
    pub(super) rows: Vec<EventRow>,
    client_ids: HashMap<(String, String), (i64, i64)>,
    /// Jobs of accepted requests, written after their builds.
    pub(super) jobs: Vec<(i64, NewJobs)>,
}

impl Batch {
    /// New builds that need a number, per project, in arrival order.
    pub(super) fn new_builds_per_project(&self) -> BTreeMap<i64, Vec<String>> {
        let mut per_project: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for key in &self.order {
            if let Some(working) = self.builds.get(key)
                && working.changed
                && working.db_id.is_none()
            {
                per_project
                    .entry(working.project_id)
                    .or_default()
                    .push(key.clone());
            }
        }
        per_project
    }

    /// Gives the builds of `keys` the numbers ending at `last` (a project's counter after
    /// adding `keys.len()`).
    pub(super) fn number_builds(&mut self, keys: &[String], last: i64) {
        let first = last - keys.len() as i64 + 1;
        for (offset, key) in keys.iter().enumerate() {
            if let Some(working) = self.builds.get_mut(key) {
                working.number = first + offset as i64;
            }
        }
    }

    /// Builds the accepted requests changed, in arrival order.
    pub(super) fn changed(&self) -> impl Iterator<Item = &WorkingBuild> {
        self.order
            .iter()
            .filter_map(|key| self.builds.get(key))
            .filter(|working| working.changed)
    }
}

/// Builds and eventIds that existed before this transaction.
#[derive(Default)]
pub(super) struct Prefetched {
    pub(super) builds: HashMap<String, WorkingBuild>,
    pub(super) client_ids: HashMap<(String, String), (i64, i64)>,
}

/// The distinct run ids of a group of requests, sorted.
pub(super) fn run_ids(requests: &[IngestRequest]) -> Vec<&str> {
    let mut run_ids: Vec<&str> = requests
        .iter()
        .flat_map(|request| request.events.iter().map(|event| event.run_id.as_str()))
        .collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    run_ids
}

/// `(build id, eventId)` pairs of the group that may repeat events stored earlier: those
/// of builds that exist already.
pub(super) fn wanted_client_ids<'r>(
    requests: &'r [IngestRequest],
    builds: &HashMap<String, WorkingBuild>,
) -> Vec<(i64, &'r str)> {
    let mut wanted: HashSet<(i64, &str)> = HashSet::new();
    for event in requests.iter().flat_map(|request| &request.events) {
        if let (Some(client_event_id), Some(working)) =
            (&event.client_event_id, builds.get(event.run_id.as_str()))
            && let Some(build_id) = working.db_id
        {
            wanted.insert((build_id, client_event_id.as_str()));
        }
    }
    wanted.into_iter().collect()
}

pub(super) type Results = Vec<Result<Vec<EventOutcome>, IngestRejection>>;

/// Phase 1: replays every request on the prefetched builds, in order, without a query.
/// Returns the batch to write, one result per request and the last event id used.
pub(super) fn simulate_all(
    prefetched: &Prefetched,
    requests: &[IngestRequest],
    now: Millis,
    last_id: i64,
) -> (Batch, Results, i64) {
    let mut batch = Batch::default();
    let mut next_id = last_id;
    let results = requests
        .iter()
        .map(|request| simulate(prefetched, &mut batch, &mut next_id, request, now))
        .collect();
    (batch, results, next_id)
}

pub(super) async fn ingest(
    store: &SqlStore,
    requests: &[IngestRequest],
    now: Millis,
) -> StoreResult<Vec<Result<Vec<EventOutcome>, IngestRejection>>> {
    let started = std::time::Instant::now();
    let mut transaction = store.pool.begin().await?;
    let began = started.elapsed();
    let last_id: i64 = sqlx::query(
        "UPDATE kiln_counters SET value = value WHERE name = 'event_id' RETURNING value",
    )
    .fetch_one(&mut *transaction)
    .await?
    .try_get(0)?;

    let locked = started.elapsed();
    let prefetched = prefetch(&mut transaction, requests).await?;
    let fetched = started.elapsed();
    let (mut batch, results, next_id) = simulate_all(&prefetched, requests, now, last_id);

    let simulated = started.elapsed();
    if next_id > last_id {
        write(&mut transaction, &mut batch, now).await?;
        sqlx::query("UPDATE kiln_counters SET value = $1 WHERE name = 'event_id'")
            .bind(next_id)
            .execute(&mut *transaction)
            .await?;
        // Delivered to listeners at commit; other replicas' tailers wake up.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::COMMIT_CHANNEL)
            .bind(next_id.to_string())
            .execute(&mut *transaction)
            .await?;
    }
    let written = started.elapsed();
    transaction.commit().await?;
    tracing::debug!(
        begin_us = began.as_micros() as u64,
        lock_us = (locked - began).as_micros() as u64,
        prefetch_us = (fetched - locked).as_micros() as u64,
        simulate_us = (simulated - fetched).as_micros() as u64,
        write_us = (written - simulated).as_micros() as u64,
        commit_us = (started.elapsed() - written).as_micros() as u64,
        "ingest transaction phases"
    );
    Ok(results)
}

/// `count` placeholders numbered from `first`, as an `IN (…)` list body.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `(…),(…)` for `rows` rows of `columns` values.
fn row_placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| format!("({})", placeholders(row * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(",")
}

async fn prefetch(transaction: &mut Tx, requests: &[IngestRequest]) -> StoreResult<Prefetched> {
    let run_ids = run_ids(requests);
    let mut builds: HashMap<String, WorkingBuild> = HashMap::new();
    let mut by_id: BTreeMap<i64, String> = BTreeMap::new();
    for chunk in chunks(&run_ids) {
        let sql = format!(
            "{BUILD_SELECT} WHERE b.run_id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(trusted(sql));
        for run_id in chunk {
            query = query.bind(*run_id);
        }
        for row in query.fetch_all(&mut **transaction).await? {
            let record = build_from_row(&row)?;
            let run_id = record.state.run_id.to_string();
            by_id.insert(record.id, run_id.clone());
            builds.insert(run_id, WorkingBuild::existing(record));
        }
    }

    let build_ids: Vec<i64> = by_id.keys().copied().collect();
    for chunk in chunks(&build_ids) {
        let sql = format!(
            "SELECT build_id, name, position, status, started_at, ended_at, duration_ms, message FROM stages \
             WHERE build_id IN ({}) ORDER BY build_id, position",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(trusted(sql));
        for build_id in chunk {
            query = query.bind(*build_id);
        }
        for row in query.fetch_all(&mut **transaction).await? {
            let build_id: i64 = row.try_get("build_id")?;
            let stage: StageState = stage_from_row(&row)?;
            if let Some(working) = by_id
                .get(&build_id)
                .and_then(|run_id| builds.get_mut(run_id))
            {
                working.state.stages.push(stage);
            }
        }
    }

    // Exact (build, eventId) pairs, so each is one probe of the unique index; an
    // `IN (…) AND IN (…)` form let SQLite scan every event of each build instead.
    let mut client_ids = HashMap::new();
    let wanted = wanted_client_ids(requests, &builds);
    for chunk in chunks(&wanted) {
        let sql = format!(
            "SELECT build_id, client_event_id, id, seq FROM events WHERE (build_id, client_event_id) IN (VALUES {})",
            row_placeholders(chunk.len(), 2)
        );
        let mut query = sqlx::query(trusted(sql));
        for (build_id, client_event_id) in chunk {
            query = query.bind(*build_id).bind(*client_event_id);
        }
        for row in query.fetch_all(&mut **transaction).await? {
            let build_id: i64 = row.try_get(0)?;
            let client_event_id: String = row.try_get(1)?;
            if let Some(run_id) = by_id.get(&build_id) {
                client_ids.insert(
                    (run_id.clone(), client_event_id),
                    (row.try_get(2)?, row.try_get(3)?),
                );
            }
        }
    }
    Ok(Prefetched { builds, client_ids })
}

/// Applies one request to copies of its builds; merges them into the batch only if the
/// whole request is accepted. Runs no query.
fn simulate(
    prefetched: &Prefetched,
    batch: &mut Batch,
    next_id: &mut i64,
    request: &IngestRequest,
    now: Millis,
) -> Result<Vec<EventOutcome>, IngestRejection> {
    let mut local_builds: HashMap<String, WorkingBuild> = HashMap::new();
    let mut local_order: Vec<String> = Vec::new();
    let mut local_rows: Vec<EventRow> = Vec::new();
    let mut local_client_ids: HashMap<(String, String), (i64, i64)> = HashMap::new();
    let mut local_next_id = *next_id;
    let mut outcomes = Vec::with_capacity(request.events.len());

    for (index, event) in request.events.iter().enumerate() {
        let key = event.run_id.as_str();
        if !local_builds.contains_key(key) {
            let working = batch
                .builds
                .get(key)
                .or_else(|| prefetched.builds.get(key))
                .cloned()
                .unwrap_or_else(|| new_build(&event.run_id, request.project_id, now));
            local_builds.insert(key.to_owned(), working);
            local_order.push(key.to_owned());
        }
        let Some(working) = local_builds.get_mut(key) else {
            continue;
        };
        if working.project_id != request.project_id {
            return Err(IngestRejection::RunIdTaken {
                index,
                run_id: key.to_owned(),
            });
        }

        if let Some(client_event_id) = &event.client_event_id {
            let client_key = (key.to_owned(), client_event_id.as_str().to_owned());
            let earlier = local_client_ids
                .get(&client_key)
                .or_else(|| batch.client_ids.get(&client_key))
                .or_else(|| prefetched.client_ids.get(&client_key))
                .copied();
            if let Some((id, seq)) = earlier {
                outcomes.push(outcome(
                    event,
                    OutcomeStatus::Duplicate,
                    Some(id),
                    Some(seq),
                ));
                continue;
            }
        }

        if let Precondition::BuildIsStale {
            default_timeout_secs,
        } = request.precondition
            && (working.db_id.is_none() || !working.state.is_stale(now, default_timeout_secs))
        {
            outcomes.push(outcome(event, OutcomeStatus::Ignored, None, None));
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
                outcomes.push(outcome(
                    event,
                    OutcomeStatus::Stored,
                    Some(local_next_id),
                    Some(seq),
                ));
            }
            Ok(Applied::Ignored) => {
                outcomes.push(outcome(event, OutcomeStatus::Ignored, None, None))
            }
            Err(rejection) => {
                return Err(IngestRejection::Terminal {
                    index,
                    message: rejection.to_string(),
                });
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
    if let Some(jobs) = &request.jobs {
        batch.jobs.push((request.project_id, jobs.clone()));
    }
    Ok(outcomes)
}

pub(super) fn new_build(run_id: &RunId, project_id: i64, now: Millis) -> WorkingBuild {
    WorkingBuild {
        db_id: None,
        project_id,
        number: 0,
        last_event_id: 0,
        state: BuildState::new(run_id.clone(), now),
        changed: false,
    }
}

fn outcome(
    event: &NewEvent,
    status: OutcomeStatus,
    id: Option<i64>,
    seq: Option<i64>,
) -> EventOutcome {
    EventOutcome {
        run_id: event.run_id.clone(),
        client_event_id: event.client_event_id.clone(),
        status,
        id,
        seq,
    }
}

/// Progress is kept as an integer (hundredths of a percent) so both engines store it
/// exactly and no float crosses the `Any` driver.
pub(super) fn progress_to_hundredths(progress: f64) -> i64 {
    (progress * 100.0).round() as i64
}

// Statement text shared with the SQLite writer, so both engines write the same rows.
pub(super) const BUILD_COLUMNS: &str = "project_id, run_id, number, status, progress_hundredths, current_stage, env, origin, \
     command, host, pid, repo, branch, commit_sha, message, created_at, started_at, ended_at, duration_ms, \
     last_event_at, last_event_id, last_seq, heartbeat_timeout_secs";
pub(super) const BUILD_COLUMN_COUNT: usize = 23;
/// What an upsert of a build by id changes (everything but its identity and number).
pub(super) const BUILD_UPSERT: &str = "ON CONFLICT (id) DO UPDATE SET \
     status = excluded.status, progress_hundredths = excluded.progress_hundredths, \
     current_stage = excluded.current_stage, env = excluded.env, origin = excluded.origin, \
     command = excluded.command, host = excluded.host, pid = excluded.pid, repo = excluded.repo, \
     branch = excluded.branch, commit_sha = excluded.commit_sha, message = excluded.message, \
     started_at = excluded.started_at, ended_at = excluded.ended_at, duration_ms = excluded.duration_ms, \
     last_event_at = excluded.last_event_at, last_event_id = excluded.last_event_id, \
     last_seq = excluded.last_seq, heartbeat_timeout_secs = excluded.heartbeat_timeout_secs";
pub(super) const STAGE_COLUMNS: &str =
    "build_id, name, position, status, started_at, ended_at, duration_ms, message";
pub(super) const STAGE_UPSERT: &str = "ON CONFLICT (build_id, name) DO UPDATE SET \
     status = excluded.status, started_at = excluded.started_at, ended_at = excluded.ended_at, \
     duration_ms = excluded.duration_ms, message = excluded.message";
pub(super) const EVENT_COLUMNS: &str =
    "id, build_id, project_id, seq, event_type, client_event_id, received_at, payload";
pub(super) const JOB_COLUMNS: &str = "build_id, project_id, step, position, state, priority, depends_on, labels, spec, \
     created_at, queued_at";
pub(super) const JOB_COLUMN_COUNT: usize = 11;
/// A job written twice (a repeated trigger) is kept as first written.
pub(super) const JOB_CONFLICT: &str = "ON CONFLICT (build_id, step) DO NOTHING";

/// One job row's values in `JOB_COLUMNS` order, as both engines bind them.
pub(super) struct JobRow<'a> {
    pub(super) build_id: i64,
    pub(super) project_id: i64,
    pub(super) step: &'a str,
    pub(super) position: i64,
    pub(super) state: &'static str,
    pub(super) priority: i64,
    pub(super) depends_on: String,
    pub(super) labels: String,
    pub(super) spec: String,
    pub(super) created_at: i64,
    pub(super) queued_at: Option<i64>,
}

impl<'a> JobRow<'a> {
    pub(super) fn new(
        build_id: i64,
        project_id: i64,
        priority: i64,
        plan: &'a JobPlan,
        now: Millis,
    ) -> Self {
        let json_list =
            |list: &[String]| serde_json::to_string(list).unwrap_or_else(|_| "[]".into());
        JobRow {
            build_id,
            project_id,
            step: &plan.step,
            position: plan.position,
            state: plan.state.as_str(),
            priority,
            depends_on: json_list(&plan.depends_on),
            labels: json_list(&plan.labels),
            spec: plan.spec.to_string(),
            created_at: now.0,
            queued_at: (plan.state == JobState::Queued).then_some(now.0),
        }
    }
}

/// The job rows of a committed batch's accepted requests whose builds were written
/// (a trigger repeated as a duplicate wrote its jobs the first time).
pub(super) fn job_rows<'a>(
    jobs: &'a [(i64, NewJobs)],
    build_ids: &HashMap<String, i64>,
    now: Millis,
) -> Vec<JobRow<'a>> {
    jobs.iter()
        .filter_map(|(project_id, jobs)| {
            let build_id = *build_ids.get(jobs.run_id.as_str())?;
            Some((build_id, *project_id, jobs))
        })
        .flat_map(|(build_id, project_id, jobs)| {
            jobs.plans
                .iter()
                .map(move |plan| JobRow::new(build_id, project_id, jobs.priority, plan, now))
        })
        .collect()
}

/// Binds one build's columns in `BUILD_COLUMNS` order.
fn bind_build<'q>(
    query: Query<'q, Any, AnyArguments>,
    working: &'q WorkingBuild,
) -> Query<'q, Any, AnyArguments> {
    let state = &working.state;
    query
        .bind(working.project_id)
        .bind(state.run_id.as_str())
        .bind(working.number)
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
}

async fn write(transaction: &mut Tx, batch: &mut Batch, now: Millis) -> StoreResult<()> {
    // Build numbers for new builds: one counter update per project, in arrival order.
    for (project_id, keys) in &batch.new_builds_per_project() {
        let last: i64 = sqlx::query(
            "UPDATE projects SET last_build_number = last_build_number + $1 WHERE id = $2 RETURNING last_build_number",
        )
        .bind(keys.len() as i64)
        .bind(*project_id)
        .fetch_one(&mut **transaction)
        .await?
        .try_get(0)?;
        batch.number_builds(keys, last);
    }

    let mut build_ids: HashMap<String, i64> = HashMap::new();
    let changed: Vec<&WorkingBuild> = batch.changed().collect();
    let (existing, created): (Vec<&WorkingBuild>, Vec<&WorkingBuild>) =
        changed.iter().partition(|working| working.db_id.is_some());

    for chunk in chunks(&created) {
        let sql = format!(
            "INSERT INTO builds ({BUILD_COLUMNS}) VALUES {} RETURNING id, run_id",
            row_placeholders(chunk.len(), BUILD_COLUMN_COUNT)
        );
        let mut query = sqlx::query(trusted(sql));
        for working in chunk {
            query = bind_build(query, working);
        }
        for row in query.fetch_all(&mut **transaction).await? {
            build_ids.insert(row.try_get(1)?, row.try_get(0)?);
        }
    }
    for chunk in chunks(&existing) {
        // An upsert on the primary key updates many rows in one statement.
        let sql = format!(
            "INSERT INTO builds (id, {BUILD_COLUMNS}) VALUES {} {BUILD_UPSERT}",
            row_placeholders(chunk.len(), BUILD_COLUMN_COUNT + 1)
        );
        let mut query = sqlx::query(trusted(sql));
        for working in chunk {
            query = bind_build(query.bind(working.db_id), working);
        }
        query.execute(&mut **transaction).await?;
        for working in chunk {
            if let Some(build_id) = working.db_id {
                build_ids.insert(working.state.run_id.to_string(), build_id);
            }
        }
    }

    let dirty_stages: Vec<(i64, &StageState)> = changed
        .iter()
        .flat_map(|working| {
            let build_id = build_ids
                .get(working.state.run_id.as_str())
                .copied()
                .unwrap_or_default();
            working
                .state
                .stages
                .iter()
                .filter(|stage| stage.dirty)
                .map(move |stage| (build_id, stage))
        })
        .collect();
    for chunk in chunks(&dirty_stages) {
        let sql = format!(
            "INSERT INTO stages ({STAGE_COLUMNS}) VALUES {} {STAGE_UPSERT}",
            row_placeholders(chunk.len(), 8)
        );
        let mut query = sqlx::query(trusted(sql));
        for (build_id, stage) in chunk {
            query = query
                .bind(*build_id)
                .bind(stage.name.as_str())
                .bind(stage.position)
                .bind(stage.status.as_str())
                .bind(stage.started_at.0)
                .bind(stage.ended_at.map(|m| m.0))
                .bind(stage.duration_ms)
                .bind(stage.message.as_deref());
        }
        query.execute(&mut **transaction).await?;
    }

    for chunk in chunks(&batch.rows) {
        let sql = format!(
            "INSERT INTO events ({EVENT_COLUMNS}) VALUES {}",
            row_placeholders(chunk.len(), 8)
        );
        let mut query = sqlx::query(trusted(sql));
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

    insert_jobs(transaction, &job_rows(&batch.jobs, &build_ids, now)).await
}

/// Inserts job rows with multi-row statements (a job written before is kept).
pub(super) async fn insert_jobs(transaction: &mut Tx, job_rows: &[JobRow<'_>]) -> StoreResult<()> {
    for chunk in chunks(job_rows) {
        let sql = format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES {} {JOB_CONFLICT}",
            row_placeholders(chunk.len(), JOB_COLUMN_COUNT)
        );
        let mut query = sqlx::query(trusted(sql));
        for job in chunk {
            query = query
                .bind(job.build_id)
                .bind(job.project_id)
                .bind(job.step)
                .bind(job.position)
                .bind(job.state)
                .bind(job.priority)
                .bind(job.depends_on.as_str())
                .bind(job.labels.as_str())
                .bind(job.spec.as_str())
                .bind(job.created_at)
                .bind(job.queued_at);
        }
        query.execute(&mut **transaction).await?;
    }
    Ok(())
}
