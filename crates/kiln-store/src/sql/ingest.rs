//! The ingest transaction: many requests, one commit (group commit).
//!
//! This module holds the engine-independent parts (prefetched state, the in-memory replay,
//! the write plan) and the statement text both engines share; SQLite runs the plan in
//! `sqlite_writer` (rusqlite, one writer thread), PostgreSQL in `pg_ingest` (the native
//! driver with array binds).
//!
//! Phase 0 prefetches every build the group touches, their stages and the earlier events
//! whose `eventId`s reappear. Phase 1 replays each request's events on in-memory copies of
//! those builds (`BuildState::apply`) without any query, so a rejected request is dropped
//! without a write and without disturbing the requests beside it. Phase 2 writes what the
//! accepted requests changed with set-based statements. The number of statements per
//! commit therefore does not depend on the number of requests, builds or events.
//!
//! Global event ids come from the `kiln_counters` row, which is locked by the very first
//! statement and updated by the last. Two transactions therefore never interleave their
//! ids, and ids become visible in commit order: a reader that saw id N has already seen
//! every id below N. That is what makes `lastEventId` cursors gap-free on PostgreSQL, where
//! sequence values would otherwise become visible out of order.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::db::{self, Tx};
use kiln_core::jobs::JobPlan;
use kiln_core::{Applied, BuildState, JobState, Millis, NewEvent, RunId};

use super::trusted;
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

#[derive(Clone)]
pub(super) struct WorkingBuild {
    pub(super) db_id: Option<i64>,
    pub(super) project_id: i64,
    pub(super) number: i64,
    pub(super) last_event_id: i64,
    pub(super) state: BuildState,
    pub(super) changed: bool,
    /// It had ended before this transaction (its day may be kept in `analytics_days`).
    pub(super) ended_before: bool,
}

impl WorkingBuild {
    pub(super) fn existing(record: BuildRecord) -> Self {
        WorkingBuild {
            db_id: Some(record.id),
            project_id: record.project_id,
            number: record.number,
            last_event_id: record.last_event_id,
            ended_before: record.state.status.is_terminal(),
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

    /// The days whose kept analytics this transaction makes stale: those of the ended
    /// builds it changed (custom events annotate ended builds and may carry metrics),
    /// as `(project, day, the build's newest event id)`.
    pub(super) fn ended_days_changed(&self) -> Vec<(i64, i64, i64)> {
        super::analytics_days::touched_days(
            self.changed()
                .filter(|working| working.ended_before)
                .map(|working| {
                    (
                        working.project_id,
                        working.state.started_at,
                        working.last_event_id,
                    )
                }),
        )
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

/// The stored JSON of every event of every request, in order: made before the
/// transaction (off the SQLite writer's thread, before PostgreSQL's lock), since it
/// depends on the event alone.
pub(super) type Payloads = Vec<Vec<String>>;

pub(super) fn payloads(requests: &[IngestRequest]) -> Payloads {
    requests
        .iter()
        .map(|request| {
            request
                .events
                .iter()
                .map(|event| event.to_json().to_string())
                .collect()
        })
        .collect()
}

/// Phase 1: replays every request on the prefetched builds, in order, without a query.
/// Returns the batch to write, one result per request and the last event id used.
pub(super) fn simulate_all(
    prefetched: &Prefetched,
    requests: &[IngestRequest],
    payloads: &Payloads,
    now: Millis,
    last_id: i64,
) -> (Batch, Results, i64) {
    let mut batch = Batch::default();
    let mut next_id = last_id;
    let results = requests
        .iter()
        .zip(payloads)
        .map(|(request, payloads)| {
            simulate(prefetched, &mut batch, &mut next_id, request, payloads, now)
        })
        .collect();
    (batch, results, next_id)
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

/// Applies one request to copies of its builds; merges them into the batch only if the
/// whole request is accepted. Runs no query.
fn simulate(
    prefetched: &Prefetched,
    batch: &mut Batch,
    next_id: &mut i64,
    request: &IngestRequest,
    payloads: &[String],
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
                    payload: payloads
                        .get(index)
                        .cloned()
                        .unwrap_or_else(|| event.to_json().to_string()),
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
        ended_before: false,
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
/// exactly.
pub(super) fn progress_to_hundredths(progress: f64) -> i64 {
    (progress * 100.0).round() as i64
}

// Statement text shared with the SQLite writer, so both engines write the same rows.
pub(super) const BUILD_COLUMNS: &str = "project_id, run_id, number, status, progress_hundredths, current_stage, env, origin, \
     command, host, pid, repo, branch, commit_sha, message, created_at, started_at, ended_at, duration_ms, \
     last_event_at, last_event_id, last_seq, heartbeat_timeout_secs, metrics";
pub(super) const BUILD_COLUMN_COUNT: usize = 24;
/// What an upsert of a build by id changes (everything but its identity and number).
pub(super) const BUILD_UPSERT: &str = "ON CONFLICT (id) DO UPDATE SET \
     status = excluded.status, progress_hundredths = excluded.progress_hundredths, \
     current_stage = excluded.current_stage, env = excluded.env, origin = excluded.origin, \
     command = excluded.command, host = excluded.host, pid = excluded.pid, repo = excluded.repo, \
     branch = excluded.branch, commit_sha = excluded.commit_sha, message = excluded.message, \
     started_at = excluded.started_at, ended_at = excluded.ended_at, duration_ms = excluded.duration_ms, \
     last_event_at = excluded.last_event_at, last_event_id = excluded.last_event_id, \
     last_seq = excluded.last_seq, heartbeat_timeout_secs = excluded.heartbeat_timeout_secs, \
     metrics = excluded.metrics";
pub(super) const STAGE_COLUMNS: &str =
    "build_id, name, position, status, started_at, ended_at, duration_ms, message";
pub(super) const STAGE_UPSERT: &str = "ON CONFLICT (build_id, name) DO UPDATE SET \
     status = excluded.status, started_at = excluded.started_at, ended_at = excluded.ended_at, \
     duration_ms = excluded.duration_ms, message = excluded.message";
pub(super) const EVENT_COLUMNS: &str =
    "id, build_id, project_id, seq, event_type, client_event_id, received_at, payload";
pub(super) const JOB_COLUMNS: &str = "build_id, project_id, step, position, state, priority, depends_on, labels, spec, \
     created_at, queued_at, avoid_agent_id";
pub(super) const JOB_COLUMN_COUNT: usize = 12;
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
    pub(super) avoid_agent_id: Option<i64>,
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
            avoid_agent_id: plan.avoid_agent_id,
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

/// Inserts job rows with multi-row statements (a job written before is kept).
pub(super) async fn insert_jobs(transaction: &mut Tx, job_rows: &[JobRow<'_>]) -> StoreResult<()> {
    for chunk in chunks(job_rows) {
        let sql = format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES {} {JOB_CONFLICT}",
            row_placeholders(chunk.len(), JOB_COLUMN_COUNT)
        );
        let mut query = db::query(trusted(sql));
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
                .bind(job.queued_at)
                .bind(job.avoid_agent_id);
        }
        query.execute(&mut **transaction).await?;
    }
    Ok(())
}
