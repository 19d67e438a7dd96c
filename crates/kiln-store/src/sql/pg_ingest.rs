//! The ingest transaction on PostgreSQL, over sqlx's native driver with array binds.
//!
//! Every statement has fixed text whatever the size of the group, so each is prepared
//! once per connection and then only bound and executed (no parse, no plan per commit).
//! A group commit of N events costs at most six round trips, whatever N:
//!
//! 1. `BEGIN` and the `kiln_counters` lock, sent together (simple protocol);
//! 2. the builds the group names with their stages (`run_id = ANY($1)`, one join);
//! 3. the earlier events whose `eventId`s reappear (`UNNEST` of the pairs; skipped when
//!    the group names no existing build with an `eventId`);
//! 4. the build numbers of new builds, one `UPDATE` for every project (skipped when the
//!    group starts no build);
//! 5. every write in one statement: new builds, changed builds, stages, events, jobs, the
//!    counter and the `pg_notify` that wakes other replicas' tailers;
//! 6. `COMMIT`.
//!
//! The rules stay in Rust: phase 1 (`ingest::simulate_all`, `BuildState::apply`) is the
//! same code the SQLite writer runs; only the reads and writes around it are native.

use std::collections::HashMap;

use kiln_core::{Millis, StageState};
use sqlx::{Connection, Executor, PgConnection, Row};

use super::ingest::{
    Batch, Prefetched, Results, WorkingBuild, progress_to_hundredths, run_ids, simulate_all,
    wanted_client_ids,
};
use super::rows::{Columns, build_from_row, stage_from_row};
use crate::records::*;
use crate::{StoreError, StoreResult};

/// Round trip 1: opens the transaction and takes the event-id counter's row lock, which
/// serialises ingest across connections and replicas (see `ingest`'s module notes).
const BEGIN_AND_LOCK: &str =
    "BEGIN; UPDATE kiln_counters SET value = value WHERE name = 'event_id' RETURNING value";

/// Round trip 2: the builds of `$1` and their stages (one row per stage, or one row with
/// NULL stage columns), stages in order. Each run id and each build's stages are probes
/// of an index whatever the table statistics say: the `LATERAL … OFFSET 0` subqueries
/// cannot be flattened into a join, so a generic plan made while a table was small (or
/// before autovacuum analysed it) cannot turn into a scan of the whole table.
const BUILDS_WITH_STAGES: &str = "SELECT b.id, b.project_id, p.slug, b.number, b.last_event_id, b.run_id, \
     b.status, b.progress_hundredths, b.current_stage, b.env, b.origin, b.command, b.host, b.pid, b.repo, \
     b.branch, b.commit_sha, b.message, b.created_at, b.started_at, b.ended_at, b.duration_ms, \
     b.last_event_at, b.heartbeat_timeout_secs, b.last_seq, b.metrics, \
     s.name AS s_name, s.position AS s_position, s.status AS s_status, s.started_at AS s_started_at, \
     s.ended_at AS s_ended_at, s.duration_ms AS s_duration_ms, s.message AS s_message \
     FROM UNNEST($1::text[]) AS w(run_id) \
     CROSS JOIN LATERAL (SELECT * FROM builds WHERE builds.run_id = w.run_id OFFSET 0) b \
     JOIN projects p ON p.id = b.project_id \
     LEFT JOIN LATERAL (SELECT * FROM stages WHERE stages.build_id = b.id OFFSET 0) s ON true \
     ORDER BY b.id, s.position";

/// Round trip 3: the stored events among the `(build id, eventId)` pairs of `$1`, `$2`;
/// each pair is one probe of the `(build_id, client_event_id)` unique index (forced as
/// above: a hash join over a sequential scan of `events` was seen in a generic plan made
/// while autovacuum had not yet counted the table's rows, 3 ms per commit at 7,000
/// events and growing with the table).
const EARLIER_EVENTS: &str = "SELECT w.build_id, w.client_event_id, e.id, e.seq \
     FROM UNNEST($1::bigint[], $2::text[]) AS w(build_id, client_event_id) \
     CROSS JOIN LATERAL (SELECT id, seq FROM events \
       WHERE events.build_id = w.build_id AND events.client_event_id = w.client_event_id \
       OFFSET 0) e";

/// Round trip 4: adds `$2[i]` new builds to project `$1[i]`; returns each project's last
/// number.
const NUMBER_BUILDS: &str = "UPDATE projects p SET last_build_number = p.last_build_number + v.added \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS v(id, added) WHERE p.id = v.id \
     RETURNING p.id, p.last_build_number";

/// Round trip 5: every write of the group. New builds are inserted and the others
/// updated by id; stages, events and jobs name their build by run id and find its row
/// id in `ids` (so a build created here needs no round trip before its events). Returns
/// the row ids of the new builds. `$1`–`$23`: new builds; `$24`–`$44`: changed builds;
/// `$45`–`$52`: stages; `$53`–`$60`: events; `$61`–`$71`: jobs; `$72`: the counter;
/// `$73`: the notification channel; `$74`, `$75`: the metrics of the new and the changed
/// builds; `$76`: the jobs' avoided agents (each added last, so the earlier numbers stay).
const WRITE: &str = "WITH new_builds AS ( \
       INSERT INTO builds (project_id, run_id, number, status, progress_hundredths, current_stage, env, \
         origin, command, host, pid, repo, branch, commit_sha, message, created_at, started_at, ended_at, \
         duration_ms, last_event_at, last_event_id, last_seq, heartbeat_timeout_secs, metrics) \
       SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::text[], \
         $14::text[], $15::text[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], \
         $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[], $74::text[]) \
       RETURNING id, run_id), \
     changed_builds AS ( \
       UPDATE builds b SET status = v.status, progress_hundredths = v.progress_hundredths, \
         current_stage = v.current_stage, env = v.env, origin = v.origin, command = v.command, \
         host = v.host, pid = v.pid, repo = v.repo, branch = v.branch, commit_sha = v.commit_sha, \
         message = v.message, started_at = v.started_at, ended_at = v.ended_at, \
         duration_ms = v.duration_ms, last_event_at = v.last_event_at, \
         last_event_id = v.last_event_id, last_seq = v.last_seq, \
         heartbeat_timeout_secs = v.heartbeat_timeout_secs, metrics = v.metrics \
       FROM UNNEST($24::bigint[], $25::text[], $26::text[], $27::bigint[], $28::text[], $29::text[], \
         $30::text[], $31::text[], $32::text[], $33::bigint[], $34::text[], $35::text[], $36::text[], \
         $37::text[], $38::bigint[], $39::bigint[], $40::bigint[], $41::bigint[], $42::bigint[], \
         $43::bigint[], $44::bigint[], $75::text[]) AS v(id, run_id, status, progress_hundredths, current_stage, \
         env, origin, command, host, pid, repo, branch, commit_sha, message, started_at, ended_at, \
         duration_ms, last_event_at, last_event_id, last_seq, heartbeat_timeout_secs, metrics) \
       WHERE b.id = v.id), \
     ids AS ( \
       SELECT id, run_id FROM new_builds \
       UNION ALL SELECT id, run_id FROM UNNEST($24::bigint[], $25::text[]) AS c(id, run_id)), \
     written_stages AS ( \
       INSERT INTO stages (build_id, name, position, status, started_at, ended_at, duration_ms, message) \
       SELECT ids.id, v.name, v.position, v.status, v.started_at, v.ended_at, v.duration_ms, v.message \
       FROM UNNEST($45::text[], $46::text[], $47::bigint[], $48::text[], $49::bigint[], $50::bigint[], \
         $51::bigint[], $52::text[]) AS v(run_id, name, position, status, started_at, ended_at, \
         duration_ms, message) \
       JOIN ids ON ids.run_id = v.run_id \
       ON CONFLICT (build_id, name) DO UPDATE SET status = excluded.status, \
         started_at = excluded.started_at, ended_at = excluded.ended_at, \
         duration_ms = excluded.duration_ms, message = excluded.message), \
     written_events AS ( \
       INSERT INTO events (id, build_id, project_id, seq, event_type, client_event_id, received_at, payload) \
       SELECT v.id, ids.id, v.project_id, v.seq, v.event_type, v.client_event_id, $60, v.payload \
       FROM UNNEST($53::bigint[], $54::text[], $55::bigint[], $56::bigint[], $57::text[], $58::text[], \
         $59::text[]) AS v(id, run_id, project_id, seq, event_type, client_event_id, payload) \
       JOIN ids ON ids.run_id = v.run_id), \
     written_jobs AS ( \
       INSERT INTO jobs (build_id, project_id, step, position, state, priority, depends_on, labels, spec, \
         created_at, queued_at, avoid_agent_id) \
       SELECT ids.id, v.project_id, v.step, v.position, v.state, v.priority, v.depends_on, v.labels, \
         v.spec, v.created_at, v.queued_at, v.avoid_agent_id \
       FROM UNNEST($61::text[], $62::bigint[], $63::text[], $64::bigint[], $65::text[], $66::bigint[], \
         $67::text[], $68::text[], $69::text[], $70::bigint[], $71::bigint[], $76::bigint[]) AS v(run_id, project_id, \
         step, position, state, priority, depends_on, labels, spec, created_at, queued_at, avoid_agent_id) \
       JOIN ids ON ids.run_id = v.run_id \
       ON CONFLICT (build_id, step) DO NOTHING), \
     counter AS (UPDATE kiln_counters SET value = $72 WHERE name = 'event_id') \
     SELECT (SELECT COALESCE(array_agg(id), '{}') FROM new_builds) AS new_ids, \
            pg_notify($73, $72::text)";

/// A row's columns under a prefix (`s_name` read as `name`), for the stage half of a
/// build-and-stage join.
struct Prefixed<'r, R> {
    row: &'r R,
    prefix: &'static str,
}

impl<R: Columns> Prefixed<'_, R> {
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl<R: Columns> Columns for Prefixed<'_, R> {
    fn int(&self, name: &str) -> StoreResult<i64> {
        self.row.int(&self.name(name))
    }
    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>> {
        self.row.opt_int(&self.name(name))
    }
    fn text(&self, name: &str) -> StoreResult<String> {
        self.row.text(&self.name(name))
    }
    fn opt_text(&self, name: &str) -> StoreResult<Option<String>> {
        self.row.opt_text(&self.name(name))
    }
}

/// One group commit on PostgreSQL. On any error the transaction is rolled back (or, if
/// even that fails, the connection is closed rather than returned to the pool with a
/// transaction open).
pub(super) async fn ingest(
    pool: &super::outage::GuardedPool<sqlx::Postgres>,
    channel: &str,
    requests: &[IngestRequest],
    now: Millis,
) -> StoreResult<Results> {
    let mut connection = pool.acquire().await?;
    let result = transaction(&mut connection, channel, requests, now).await;
    match result {
        Ok(results) => Ok(results),
        Err(error) => {
            if connection.execute("ROLLBACK").await.is_err() {
                // The connection may have died with the database: check it.
                pool.probe_soon();
                // Not returned to the pool: its session state is unknown.
                let _ = connection.detach().close().await;
            }
            Err(error)
        }
    }
}

async fn transaction(
    connection: &mut PgConnection,
    channel: &str,
    requests: &[IngestRequest],
    now: Millis,
) -> StoreResult<Results> {
    let started = std::time::Instant::now();
    let mut last_id = None;
    for row in sqlx::raw_sql(BEGIN_AND_LOCK)
        .fetch_all(&mut *connection)
        .await?
    {
        last_id = Some(row.try_get::<i64, _>(0)?);
    }
    let last_id = last_id.ok_or_else(|| {
        StoreError::Unavailable("the event-id counter row is missing from kiln_counters".into())
    })?;
    let locked = started.elapsed();
    let prefetched = prefetch(connection, requests).await?;
    let fetched = started.elapsed();
    let (mut batch, results, next_id) = simulate_all(&prefetched, requests, now, last_id);
    let simulated = started.elapsed();
    if next_id > last_id {
        number_new_builds(connection, &mut batch).await?;
        write(connection, &batch, channel, next_id, now).await?;
        let stale_days = batch.ended_days_changed();
        if !stale_days.is_empty() {
            // Rare (events on ended builds): a statement of its own only then.
            let (projects, rest): (Vec<i64>, Vec<(i64, i64)>) = stale_days
                .into_iter()
                .map(|(project, day, event)| (project, (day, event)))
                .unzip();
            let (days, events): (Vec<i64>, Vec<i64>) = rest.into_iter().unzip();
            sqlx::query(
                "INSERT INTO analytics_days (project_id, day, changed_at) \
                 SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) \
                 ON CONFLICT (project_id, day) DO UPDATE \
                 SET changed_at = GREATEST(analytics_days.changed_at, excluded.changed_at)",
            )
            .bind(&projects)
            .bind(&days)
            .bind(&events)
            .execute(&mut *connection)
            .await?;
        }
    }
    let written = started.elapsed();
    connection.execute("COMMIT").await?;
    tracing::debug!(
        requests = requests.len(),
        events = next_id - last_id,
        lock_us = locked.as_micros() as u64,
        prefetch_us = (fetched - locked).as_micros() as u64,
        simulate_us = (simulated - fetched).as_micros() as u64,
        write_us = (written - simulated).as_micros() as u64,
        commit_us = (started.elapsed() - written).as_micros() as u64,
        "ingest transaction phases"
    );
    Ok(results)
}

async fn prefetch(
    connection: &mut PgConnection,
    requests: &[IngestRequest],
) -> StoreResult<Prefetched> {
    let run_ids = run_ids(requests);
    let mut builds: HashMap<String, WorkingBuild> = HashMap::new();
    let mut run_of: HashMap<i64, String> = HashMap::new();
    let rows = sqlx::query(BUILDS_WITH_STAGES)
        .bind(&run_ids)
        .fetch_all(&mut *connection)
        .await?;
    for row in &rows {
        let build_id: i64 = row.try_get("id")?;
        if let std::collections::hash_map::Entry::Vacant(entry) = run_of.entry(build_id) {
            let record = build_from_row(row)?;
            let run_id = record.state.run_id.to_string();
            entry.insert(run_id.clone());
            builds.insert(run_id, WorkingBuild::existing(record));
        }
        if row.try_get::<Option<String>, _>("s_name")?.is_some() {
            let stage: StageState = stage_from_row(&Prefixed { row, prefix: "s_" })?;
            if let Some(working) = run_of.get(&build_id).and_then(|run| builds.get_mut(run)) {
                working.state.stages.push(stage);
            }
        }
    }

    let mut client_ids = HashMap::new();
    let wanted = wanted_client_ids(requests, &builds);
    if !wanted.is_empty() {
        let (build_ids, event_ids): (Vec<i64>, Vec<&str>) = wanted.into_iter().unzip();
        let rows = sqlx::query(EARLIER_EVENTS)
            .bind(&build_ids)
            .bind(&event_ids)
            .fetch_all(&mut *connection)
            .await?;
        for row in rows {
            let build_id: i64 = row.try_get(0)?;
            if let Some(run_id) = run_of.get(&build_id) {
                client_ids.insert(
                    (run_id.clone(), row.try_get::<String, _>(1)?),
                    (row.try_get(2)?, row.try_get(3)?),
                );
            }
        }
    }
    Ok(Prefetched { builds, client_ids })
}

/// Gives the group's new builds their numbers, per project in arrival order.
async fn number_new_builds(connection: &mut PgConnection, batch: &mut Batch) -> StoreResult<()> {
    let per_project = batch.new_builds_per_project();
    if per_project.is_empty() {
        return Ok(());
    }
    let projects: Vec<i64> = per_project.keys().copied().collect();
    let added: Vec<i64> = per_project.values().map(|keys| keys.len() as i64).collect();
    let rows = sqlx::query(NUMBER_BUILDS)
        .bind(&projects)
        .bind(&added)
        .fetch_all(&mut *connection)
        .await?;
    for row in rows {
        let project_id: i64 = row.try_get(0)?;
        let last: i64 = row.try_get(1)?;
        if let Some(keys) = per_project.get(&project_id) {
            batch.number_builds(keys, last);
        }
    }
    Ok(())
}

/// The columns of a set of builds, one array per column.
#[derive(Default)]
struct BuildColumns<'b> {
    id: Vec<i64>,
    project_id: Vec<i64>,
    run_id: Vec<&'b str>,
    number: Vec<i64>,
    status: Vec<&'static str>,
    progress_hundredths: Vec<Option<i64>>,
    current_stage: Vec<Option<&'b str>>,
    env: Vec<Option<&'b str>>,
    origin: Vec<Option<&'b str>>,
    command: Vec<Option<&'b str>>,
    host: Vec<Option<&'b str>>,
    pid: Vec<Option<i64>>,
    repo: Vec<Option<&'b str>>,
    branch: Vec<Option<&'b str>>,
    commit_sha: Vec<Option<&'b str>>,
    message: Vec<Option<&'b str>>,
    created_at: Vec<i64>,
    started_at: Vec<i64>,
    ended_at: Vec<Option<i64>>,
    duration_ms: Vec<Option<i64>>,
    last_event_at: Vec<i64>,
    last_event_id: Vec<i64>,
    last_seq: Vec<i64>,
    heartbeat_timeout_secs: Vec<Option<i64>>,
    metrics: Vec<Option<String>>,
}

impl<'b> BuildColumns<'b> {
    fn push(&mut self, working: &'b WorkingBuild) {
        let state = &working.state;
        self.id.push(working.db_id.unwrap_or_default());
        self.project_id.push(working.project_id);
        self.run_id.push(state.run_id.as_str());
        self.number.push(working.number);
        self.status.push(state.status.as_str());
        self.progress_hundredths
            .push(state.progress.map(progress_to_hundredths));
        self.current_stage
            .push(state.current_stage.as_ref().map(|stage| stage.as_str()));
        self.env.push(state.env.as_deref());
        self.origin.push(state.origin.as_deref());
        self.command.push(state.command.as_deref());
        self.host.push(state.host.as_deref());
        self.pid.push(state.pid);
        self.repo.push(state.repo.as_deref());
        self.branch.push(state.branch.as_deref());
        self.commit_sha.push(state.commit.as_deref());
        self.message.push(state.message.as_deref());
        self.created_at.push(state.created_at.0);
        self.started_at.push(state.started_at.0);
        self.ended_at.push(state.ended_at.map(|m| m.0));
        self.duration_ms.push(state.duration_ms);
        self.last_event_at.push(state.last_event_at.0);
        self.last_event_id.push(working.last_event_id);
        self.last_seq.push(state.last_seq);
        self.heartbeat_timeout_secs
            .push(state.heartbeat_timeout_secs);
        self.metrics
            .push(super::rows::metrics_to_text(&state.metrics));
    }
}

async fn write(
    connection: &mut PgConnection,
    batch: &Batch,
    channel: &str,
    next_id: i64,
    now: Millis,
) -> StoreResult<()> {
    let mut created = BuildColumns::default();
    let mut changed = BuildColumns::default();
    // Stages: (run id, stage) of every stage an accepted event touched.
    let mut stages: Vec<(&str, &StageState)> = Vec::new();
    for working in batch.changed() {
        if working.db_id.is_some() {
            changed.push(working);
        } else {
            created.push(working);
        }
        let run_id = working.state.run_id.as_str();
        stages.extend(
            working
                .state
                .stages
                .iter()
                .filter(|stage| stage.dirty)
                .map(|stage| (run_id, stage)),
        );
    }

    let events = &batch.rows;
    let jobs: Vec<(&str, super::ingest::JobRow<'_>)> = batch
        .jobs
        .iter()
        .flat_map(|(project_id, jobs)| {
            jobs.plans.iter().map(move |plan| {
                (
                    jobs.run_id.as_str(),
                    // The build id is found in the statement by run id.
                    super::ingest::JobRow::new(0, *project_id, jobs.priority, plan, now),
                )
            })
        })
        .collect();

    let row = sqlx::query(WRITE)
        // New builds.
        .bind(&created.project_id)
        .bind(&created.run_id)
        .bind(&created.number)
        .bind(&created.status)
        .bind(&created.progress_hundredths)
        .bind(&created.current_stage)
        .bind(&created.env)
        .bind(&created.origin)
        .bind(&created.command)
        .bind(&created.host)
        .bind(&created.pid)
        .bind(&created.repo)
        .bind(&created.branch)
        .bind(&created.commit_sha)
        .bind(&created.message)
        .bind(&created.created_at)
        .bind(&created.started_at)
        .bind(&created.ended_at)
        .bind(&created.duration_ms)
        .bind(&created.last_event_at)
        .bind(&created.last_event_id)
        .bind(&created.last_seq)
        .bind(&created.heartbeat_timeout_secs)
        // Changed builds.
        .bind(&changed.id)
        .bind(&changed.run_id)
        .bind(&changed.status)
        .bind(&changed.progress_hundredths)
        .bind(&changed.current_stage)
        .bind(&changed.env)
        .bind(&changed.origin)
        .bind(&changed.command)
        .bind(&changed.host)
        .bind(&changed.pid)
        .bind(&changed.repo)
        .bind(&changed.branch)
        .bind(&changed.commit_sha)
        .bind(&changed.message)
        .bind(&changed.started_at)
        .bind(&changed.ended_at)
        .bind(&changed.duration_ms)
        .bind(&changed.last_event_at)
        .bind(&changed.last_event_id)
        .bind(&changed.last_seq)
        .bind(&changed.heartbeat_timeout_secs)
        // Stages.
        .bind(stages.iter().map(|(run_id, _)| *run_id).collect::<Vec<_>>())
        .bind(
            stages
                .iter()
                .map(|(_, stage)| stage.name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(stages.iter().map(|(_, s)| s.position).collect::<Vec<_>>())
        .bind(
            stages
                .iter()
                .map(|(_, s)| s.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            stages
                .iter()
                .map(|(_, s)| s.started_at.0)
                .collect::<Vec<_>>(),
        )
        .bind(
            stages
                .iter()
                .map(|(_, s)| s.ended_at.map(|m| m.0))
                .collect::<Vec<_>>(),
        )
        .bind(
            stages
                .iter()
                .map(|(_, s)| s.duration_ms)
                .collect::<Vec<_>>(),
        )
        .bind(
            stages
                .iter()
                .map(|(_, s)| s.message.as_deref())
                .collect::<Vec<_>>(),
        )
        // Events.
        .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.run_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.project_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.client_event_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.payload.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(now.0)
        // Jobs.
        .bind(jobs.iter().map(|(run_id, _)| *run_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.project_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.step).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.position).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.state).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.priority).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|(_, j)| j.depends_on.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|(_, j)| j.labels.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|(_, j)| j.spec.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|(_, j)| j.created_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.queued_at).collect::<Vec<_>>())
        // The counter and the notification.
        .bind(next_id)
        .bind(channel)
        // The builds' metrics.
        .bind(&created.metrics)
        .bind(&changed.metrics)
        // The jobs' avoided agents.
        .bind(
            jobs.iter()
                .map(|(_, j)| j.avoid_agent_id)
                .collect::<Vec<_>>(),
        )
        .fetch_one(&mut *connection)
        .await?;
    let new_ids: Vec<i64> = row.try_get("new_ids")?;
    if new_ids.len() != created.run_id.len() {
        return Err(StoreError::Unavailable(format!(
            "ingest inserted {} of {} new builds",
            new_ids.len(),
            created.run_id.len()
        )));
    }
    Ok(())
}
