//! The ingest transaction on PostgreSQL, over tokio-postgres with array binds and
//! pipelined statements.
//!
//! Every statement has fixed text whatever the size of the group, and is prepared once
//! per connection, then only bound and executed (no parse, no plan per commit). A group
//! commit of N events is two flights of statements, whatever N — each flight sent at
//! once and answered together, so it costs one round trip:
//!
//! 1. `BEGIN`, the `kiln_counters` lock, the builds the group names with their stages
//!    (`UNNEST` of the run ids, one join) and the earlier events whose `eventId`s reappear
//!    (`UNNEST` of the pairs, found through their builds' run ids). PostgreSQL runs the
//!    statements of a flight in order, each reading committed data as of its own start
//!    (READ COMMITTED), so the reads run after the lock is held and see every commit
//!    before it;
//! 2. every write in one statement (new builds, changed builds, stages, events, jobs, the
//!    counter and the `pg_notify` that wakes other replicas' tailers), and `COMMIT`. If
//!    the write fails, PostgreSQL turns the `COMMIT` into a rollback.
//!
//! Between the two: the build numbers of new builds, one `UPDATE` for every project (a
//! round trip only when the group starts a build). sqlx cannot pipeline, which is why
//! this one path has a driver of its own; its connection is made on first use, and
//! replaced after an error that leaves its state unknown.
//!
//! The rules stay in Rust: phase 1 (`ingest::simulate_all`, `BuildState::apply`) is the
//! same code the SQLite writer runs; only the reads and writes around it are native.

use std::collections::{HashMap, HashSet};

use futures_util::future::{try_join3, try_join4};
use kiln_core::{Millis, StageState};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::ingest::{
    Batch, Payloads, Prefetched, Results, WorkingBuild, payloads, progress_to_hundredths, run_ids,
    simulate_all,
};
use super::rows::{Columns, build_from_row, stage_from_row};
use crate::records::*;
use crate::{StoreError, StoreResult};

/// Flight 1: takes the event-id counter's row lock (after `BEGIN`), which serialises
/// ingest across connections and replicas (see `ingest`'s module notes).
const LOCK: &str = "UPDATE kiln_counters SET value = value WHERE name = 'event_id' RETURNING value";

/// Flight 1: the builds of `$1` and their stages (one row per stage, or one row with
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

/// Flight 1: the stored events among the `(run id, eventId)` pairs of `$1`, `$2`; each
/// pair is one probe of the builds' run-id index and one of the `(build_id,
/// client_event_id)` unique index (forced as above: a hash join over a sequential scan of
/// `events` was seen in a generic plan made while autovacuum had not yet counted the
/// table's rows, 3 ms per commit at 7,000 events and growing with the table).
const EARLIER_EVENTS: &str = "SELECT w.run_id, w.client_event_id, e.id, e.seq \
     FROM UNNEST($1::text[], $2::text[]) AS w(run_id, client_event_id) \
     CROSS JOIN LATERAL (SELECT id FROM builds WHERE builds.run_id = w.run_id OFFSET 0) b \
     CROSS JOIN LATERAL (SELECT id, seq FROM events \
       WHERE events.build_id = b.id AND events.client_event_id = w.client_event_id \
       OFFSET 0) e";

/// Between the flights, when the group starts builds: adds `$2[i]` new builds to project `$1[i]`; returns each project's last
/// number.
const NUMBER_BUILDS: &str = "UPDATE projects p SET last_build_number = p.last_build_number + v.added \
     FROM UNNEST($1::bigint[], $2::bigint[]) AS v(id, added) WHERE p.id = v.id \
     RETURNING p.id, p.last_build_number";

/// Flight 2: every write of the group. New builds are inserted and the others
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

/// Flight 2, rarely (events on ended builds): the analytics days they make stale.
const STALE_DAYS: &str = "INSERT INTO analytics_days (project_id, day, changed_at) \
     SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) \
     ON CONFLICT (project_id, day) DO UPDATE \
     SET changed_at = GREATEST(analytics_days.changed_at, excluded.changed_at)";

/// A connection with its statements prepared.
struct Prepared {
    client: Client,
    lock: Statement,
    builds: Statement,
    earlier_events: Statement,
    number_builds: Statement,
    write: Statement,
    stale_days: Statement,
}

/// Connections of `PgIngest`: group commits in flight at once (the ingestor's
/// `ingest_concurrency`). The second one's first flight waits in PostgreSQL for the
/// counter's lock while the first commits, and runs the moment it is released.
pub(super) const CONNECTIONS: usize = 2;

/// PostgreSQL ingest's own connections, each made on first use.
pub(super) struct PgIngest {
    config: tokio_postgres::Config,
    connections: [tokio::sync::Mutex<Option<Prepared>>; CONNECTIONS],
}

/// How long connecting may take before the group is answered 503.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl PgIngest {
    pub(super) fn new(url: &str) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|error| {
            StoreError::Unavailable(format!(
                "the PostgreSQL URL cannot be used for ingest: {error}"
            ))
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("kiln-ingest");
        Ok(Self {
            config,
            connections: std::array::from_fn(|_| tokio::sync::Mutex::new(None)),
        })
    }

    async fn connect(&self) -> StoreResult<Prepared> {
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "the PostgreSQL ingest connection ended");
            }
        });
        let (lock, builds, earlier_events, number_builds, write, stale_days) = tokio::try_join!(
            client.prepare(LOCK),
            client.prepare(BUILDS_WITH_STAGES),
            client.prepare(EARLIER_EVENTS),
            client.prepare(NUMBER_BUILDS),
            client.prepare(WRITE),
            client.prepare(STALE_DAYS),
        )?;
        Ok(Prepared {
            client,
            lock,
            builds,
            earlier_events,
            number_builds,
            write,
            stale_days,
        })
    }

    /// One group commit. On any error the transaction is rolled back (or, if even that
    /// fails, the connection is dropped and made again next time).
    pub(super) async fn ingest(
        &self,
        pool: &super::outage::GuardedPool<sqlx::Postgres>,
        channel: &str,
        requests: &[IngestRequest],
        now: Millis,
    ) -> StoreResult<Results> {
        let payloads = payloads(requests);
        // A free connection, or the first once it is free.
        let free = self
            .connections
            .iter()
            .find_map(|connection| connection.try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => self.connections[0].lock().await,
        };
        if slot
            .as_ref()
            .is_some_and(|prepared| prepared.client.is_closed())
        {
            *slot = None;
        }
        let prepared = match slot.as_mut() {
            Some(prepared) => prepared,
            None => {
                if pool.is_down() {
                    // The outage guard knows the database is gone: answer at once (503),
                    // as the pools do, instead of waiting for a connection attempt.
                    pool.probe_soon();
                    return Err(StoreError::Unavailable(
                        "the database cannot be reached".into(),
                    ));
                }
                match self.connect().await {
                    Ok(prepared) => slot.insert(prepared),
                    Err(error) => {
                        pool.probe_soon();
                        return Err(error);
                    }
                }
            }
        };
        let result = transaction(prepared, channel, requests, &payloads, now).await;
        if result.is_err() && prepared.client.batch_execute("ROLLBACK").await.is_err() {
            // The connection may have died with the database: check it, and make a
            // new one next time (this one's session state is unknown).
            pool.probe_soon();
            *slot = None;
        }
        result
    }
}

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

async fn transaction(
    prepared: &Prepared,
    channel: &str,
    requests: &[IngestRequest],
    payloads: &Payloads,
    now: Millis,
) -> StoreResult<Results> {
    let started = std::time::Instant::now();
    let client = &prepared.client;
    // Flight 1: BEGIN, the lock, both reads.
    let run_ids = run_ids(requests);
    let pairs: HashSet<(&str, &str)> = requests
        .iter()
        .flat_map(|request| &request.events)
        .filter_map(|event| {
            event
                .client_event_id
                .as_ref()
                .map(|client_event_id| (event.run_id.as_str(), client_event_id.as_str()))
        })
        .collect();
    let (pair_runs, pair_ids): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    let build_parameters: [&(dyn ToSql + Sync); 1] = [&run_ids];
    let event_parameters: [&(dyn ToSql + Sync); 2] = [&pair_runs, &pair_ids];
    // A statement is sent when its future is first polled, and `try_join4` polls in
    // argument order: BEGIN, then the lock, then the reads. The order is what makes the
    // reads see the database as of the lock (see the module notes).
    let (_, locked_rows, build_rows, event_rows) = try_join4(
        client.batch_execute("BEGIN"),
        client.query(&prepared.lock, &[]),
        client.query(&prepared.builds, &build_parameters),
        client.query(&prepared.earlier_events, &event_parameters),
    )
    .await?;
    let last_id = match locked_rows.first() {
        Some(row) => row.try_get::<_, i64>(0)?,
        None => {
            return Err(StoreError::Unavailable(
                "the event-id counter row is missing from kiln_counters".into(),
            ));
        }
    };
    let locked = started.elapsed();
    let prefetched = prefetched(&build_rows, &event_rows)?;
    let fetched = started.elapsed();
    let (mut batch, results, next_id) = simulate_all(&prefetched, requests, payloads, now, last_id);
    let simulated = started.elapsed();
    if next_id > last_id {
        number_new_builds(prepared, &mut batch).await?;
        // Flight 2: the writes and COMMIT.
        let stale_days = batch.ended_days_changed();
        let (projects, rest): (Vec<i64>, Vec<(i64, i64)>) = stale_days
            .into_iter()
            .map(|(project, day, event)| (project, (day, event)))
            .unzip();
        let (days, events): (Vec<i64>, Vec<i64>) = rest.into_iter().unzip();
        let mark_stale = async {
            if projects.is_empty() {
                Ok(0)
            } else {
                client
                    .execute(&prepared.stale_days, &[&projects, &days, &events])
                    .await
            }
        };
        // In this order (as above): the writes, then COMMIT.
        try_join3(
            write(prepared, &batch, channel, next_id, now),
            async { Ok(mark_stale.await?) },
            async { Ok(client.batch_execute("COMMIT").await?) },
        )
        .await?;
    } else {
        client.batch_execute("COMMIT").await?;
    }
    let written = started.elapsed();
    tracing::debug!(
        requests = requests.len(),
        events = next_id - last_id,
        flight1_us = locked.as_micros() as u64,
        decode_us = (fetched - locked).as_micros() as u64,
        simulate_us = (simulated - fetched).as_micros() as u64,
        flight2_us = (written - simulated).as_micros() as u64,
        "ingest transaction phases"
    );
    Ok(results)
}

/// The builds (with their stages) and the earlier events flight 1 read.
fn prefetched(
    build_rows: &[tokio_postgres::Row],
    event_rows: &[tokio_postgres::Row],
) -> StoreResult<Prefetched> {
    let mut builds: HashMap<String, WorkingBuild> = HashMap::new();
    let mut run_of: HashMap<i64, String> = HashMap::new();
    for row in build_rows {
        let build_id: i64 = row.try_get("id")?;
        if let std::collections::hash_map::Entry::Vacant(entry) = run_of.entry(build_id) {
            let record = build_from_row(row)?;
            let run_id = record.state.run_id.to_string();
            entry.insert(run_id.clone());
            builds.insert(run_id, WorkingBuild::existing(record));
        }
        if row.try_get::<_, Option<String>>("s_name")?.is_some() {
            let stage: StageState = stage_from_row(&Prefixed { row, prefix: "s_" })?;
            if let Some(working) = run_of.get(&build_id).and_then(|run| builds.get_mut(run)) {
                working.state.stages.push(stage);
            }
        }
    }
    let mut client_ids = HashMap::new();
    for row in event_rows {
        client_ids.insert(
            (row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?),
            (row.try_get(2)?, row.try_get(3)?),
        );
    }
    Ok(Prefetched { builds, client_ids })
}

/// Gives the group's new builds their numbers, per project in arrival order.
async fn number_new_builds(prepared: &Prepared, batch: &mut Batch) -> StoreResult<()> {
    let per_project = batch.new_builds_per_project();
    if per_project.is_empty() {
        return Ok(());
    }
    let projects: Vec<i64> = per_project.keys().copied().collect();
    let added: Vec<i64> = per_project.values().map(|keys| keys.len() as i64).collect();
    let rows = prepared
        .client
        .query(&prepared.number_builds, &[&projects, &added])
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
    prepared: &Prepared,
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

    let stage_runs: Vec<&str> = stages.iter().map(|(run_id, _)| *run_id).collect();
    let stage_names: Vec<&str> = stages.iter().map(|(_, s)| s.name.as_str()).collect();
    let stage_positions: Vec<i64> = stages.iter().map(|(_, s)| s.position).collect();
    let stage_statuses: Vec<&str> = stages.iter().map(|(_, s)| s.status.as_str()).collect();
    let stage_started: Vec<i64> = stages.iter().map(|(_, s)| s.started_at.0).collect();
    let stage_ended: Vec<Option<i64>> = stages
        .iter()
        .map(|(_, s)| s.ended_at.map(|m| m.0))
        .collect();
    let stage_durations: Vec<Option<i64>> = stages.iter().map(|(_, s)| s.duration_ms).collect();
    let stage_messages: Vec<Option<&str>> =
        stages.iter().map(|(_, s)| s.message.as_deref()).collect();

    let event_ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let event_runs: Vec<&str> = events.iter().map(|e| e.run_id.as_str()).collect();
    let event_projects: Vec<i64> = events.iter().map(|e| e.project_id).collect();
    let event_seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let event_types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let event_client_ids: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.client_event_id.as_deref())
        .collect();
    let event_payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();

    let job_runs: Vec<&str> = jobs.iter().map(|(run_id, _)| *run_id).collect();
    let job_projects: Vec<i64> = jobs.iter().map(|(_, j)| j.project_id).collect();
    let job_steps: Vec<&str> = jobs.iter().map(|(_, j)| j.step).collect();
    let job_positions: Vec<i64> = jobs.iter().map(|(_, j)| j.position).collect();
    let job_states: Vec<&str> = jobs.iter().map(|(_, j)| j.state).collect();
    let job_priorities: Vec<i64> = jobs.iter().map(|(_, j)| j.priority).collect();
    let job_depends: Vec<&str> = jobs.iter().map(|(_, j)| j.depends_on.as_str()).collect();
    let job_labels: Vec<&str> = jobs.iter().map(|(_, j)| j.labels.as_str()).collect();
    let job_specs: Vec<&str> = jobs.iter().map(|(_, j)| j.spec.as_str()).collect();
    let job_created: Vec<i64> = jobs.iter().map(|(_, j)| j.created_at).collect();
    let job_queued: Vec<Option<i64>> = jobs.iter().map(|(_, j)| j.queued_at).collect();
    let job_avoided: Vec<Option<i64>> = jobs.iter().map(|(_, j)| j.avoid_agent_id).collect();

    let parameters: [&(dyn ToSql + Sync); 76] = [
        // New builds: $1–$23.
        &created.project_id,
        &created.run_id,
        &created.number,
        &created.status,
        &created.progress_hundredths,
        &created.current_stage,
        &created.env,
        &created.origin,
        &created.command,
        &created.host,
        &created.pid,
        &created.repo,
        &created.branch,
        &created.commit_sha,
        &created.message,
        &created.created_at,
        &created.started_at,
        &created.ended_at,
        &created.duration_ms,
        &created.last_event_at,
        &created.last_event_id,
        &created.last_seq,
        &created.heartbeat_timeout_secs,
        // Changed builds: $24–$44.
        &changed.id,
        &changed.run_id,
        &changed.status,
        &changed.progress_hundredths,
        &changed.current_stage,
        &changed.env,
        &changed.origin,
        &changed.command,
        &changed.host,
        &changed.pid,
        &changed.repo,
        &changed.branch,
        &changed.commit_sha,
        &changed.message,
        &changed.started_at,
        &changed.ended_at,
        &changed.duration_ms,
        &changed.last_event_at,
        &changed.last_event_id,
        &changed.last_seq,
        &changed.heartbeat_timeout_secs,
        // Stages: $45–$52.
        &stage_runs,
        &stage_names,
        &stage_positions,
        &stage_statuses,
        &stage_started,
        &stage_ended,
        &stage_durations,
        &stage_messages,
        // Events: $53–$60.
        &event_ids,
        &event_runs,
        &event_projects,
        &event_seqs,
        &event_types,
        &event_client_ids,
        &event_payloads,
        &now.0,
        // Jobs: $61–$71.
        &job_runs,
        &job_projects,
        &job_steps,
        &job_positions,
        &job_states,
        &job_priorities,
        &job_depends,
        &job_labels,
        &job_specs,
        &job_created,
        &job_queued,
        // The counter and the notification: $72, $73.
        &next_id,
        &channel,
        // The builds' metrics: $74, $75.
        &created.metrics,
        &changed.metrics,
        // The jobs' avoided agents: $76.
        &job_avoided,
    ];
    let row = prepared
        .client
        .query_one(&prepared.write, &parameters)
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
