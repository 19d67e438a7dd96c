//! The SQLite writer: one thread owning one rusqlite connection that runs every write of
//! the process — ingest transactions, the frequent background writes (the webhook
//! outbox), and every other statement and transaction of `db`.
//!
//! SQLite has one writer at a time anyway; giving it a dedicated thread with cached
//! prepared statements removes what dominated ingest through sqlx (a cross-thread round
//! trip, a futex wake-up and a row conversion per statement, ~50 µs each). The
//! transaction itself is the same as on PostgreSQL — the same prefetch, the same in-memory
//! replay (`ingest::simulate_all`), the same rows — written with single-row statements,
//! which in-process SQLite executes in a few microseconds each.
//!
//! The writer also keeps the state of running builds it has written (`BuildCache`), so a
//! busy build is not read back before each commit. The cache is trusted only while no
//! other connection has committed: SQLite's `PRAGMA data_version` changes exactly then, and
//! the cache is dropped (another process on the same file costs one re-read per build);
//! this process's other writes run on this connection and drop it themselves.
//!
//! Every other write queues here too (`SqliteWriter::run` for the outbox's own
//! transactions, `write` and `session` for `db`'s statements and transactions) instead of
//! taking the write lock on a connection of its own: SQLite's busy handler *sleeps* while
//! another connection holds the lock, so two busy writers on separate connections leave
//! the lock idle between them and stall each other for up to the busy timeout. Queued on
//! one thread they simply take turns. After a statement or transaction of `db` the build
//! cache is let go, since it may have changed builds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, mpsc};
use std::time::{Duration, Instant};

use kiln_core::Millis;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::db::{Session, SqliteWork, run_session};
use super::ingest::{
    BUILD_COLUMN_COUNT, BUILD_COLUMNS, BUILD_UPSERT, EVENT_COLUMNS, JOB_COLUMN_COUNT, JOB_COLUMNS,
    JOB_CONFLICT, Payloads, Prefetched, Results, STAGE_COLUMNS, STAGE_UPSERT, WorkingBuild,
    job_rows, payloads, progress_to_hundredths, run_ids, simulate_all, wanted_client_ids,
};
use super::rows::{BUILD_SELECT, STAGES_OF_BUILD, build_from_row, stage_from_row};
use crate::records::IngestRequest;
use crate::{StoreError, StoreResult};

enum Job {
    Ingest {
        requests: Vec<IngestRequest>,
        /// The events' stored JSON, made by the sender (off this thread).
        payloads: Payloads,
        now: Millis,
        reply: oneshot::Sender<StoreResult<Results>>,
    },
    /// Any other transaction: the closure runs it on the writer's connection and sends
    /// its own answer.
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
    /// A statement of `db` (an administrative write): as `Run`, but the build cache is
    /// let go afterwards, since the statement may have changed builds.
    Write(SqliteWork),
    /// A session of `db` (a transaction, or migrations): the writer runs its statements
    /// until the session ends, then lets the build cache go.
    Session {
        begin: bool,
        work: mpsc::Receiver<SqliteWork>,
        ready: oneshot::Sender<StoreResult<()>>,
    },
}

/// Handle to the writer thread; the thread ends (closing its connection) when the last
/// handle is dropped.
pub(crate) struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
    /// Dropping it stops the checkpointer thread.
    _checkpointer: mpsc::Sender<()>,
}

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

impl SqliteWriter {
    /// Opens the database file (migrations must have run) and starts the thread.
    pub(super) fn start(path: &Path) -> StoreResult<Self> {
        let connection = open(path)?;
        // Checkpoints run beside the writer, not inside one of its commits: with SQLite's
        // automatic checkpoint, the commit that crosses 1,000 WAL pages also copies them
        // and fsyncs the database file, a latency spike for every request in that group.
        connection.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        let checkpointer = open(path)?;
        let (stop_checkpoints, checkpoint_stop) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("kiln-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    checkpoint_stop.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    // PASSIVE never blocks the writer; what it cannot copy now (pages a
                    // reader still needs) it copies next time.
                    if let Err(error) =
                        checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(%error, "SQLite checkpoint failed; retrying");
                    }
                }
            })
            .map_err(|error| {
                StoreError::Unavailable(format!(
                    "cannot start the SQLite checkpoint thread: {error}"
                ))
            })?;
        let (jobs, receiver) = mpsc::channel::<Job>();
        let path: PathBuf = path.to_owned();
        std::thread::Builder::new()
            .name("kiln-sqlite-writer".into())
            .spawn(move || {
                let mut writer = Writer {
                    connection,
                    cache: BuildCache::default(),
                };
                while let Ok(job) = receiver.recv() {
                    match job {
                        Job::Ingest {
                            requests,
                            payloads,
                            now,
                            reply,
                        } => {
                            let result = writer.ingest_with_retry(&requests, &payloads, now);
                            let _ = reply.send(result);
                        }
                        Job::Run(work) => work(&mut writer.connection),
                        Job::Write(work) => {
                            work(&mut writer.connection);
                            writer.cache.builds.clear();
                        }
                        Job::Session { begin, work, ready } => {
                            let began = if begin {
                                writer
                                    .connection
                                    .execute_batch("BEGIN IMMEDIATE")
                                    .map_err(StoreError::from)
                            } else {
                                Ok(())
                            };
                            let began_ok = began.is_ok();
                            if ready.send(began).is_ok() && began_ok {
                                run_session(&mut writer.connection, work);
                            } else if began_ok && !writer.connection.is_autocommit() {
                                let _ = writer.connection.execute_batch("ROLLBACK");
                            }
                            writer.cache.builds.clear();
                        }
                    }
                }
                tracing::debug!(path = %path.display(), "SQLite writer stopped");
            })
            .map_err(|error| {
                StoreError::Unavailable(format!("cannot start the SQLite writer thread: {error}"))
            })?;
        Ok(Self {
            jobs,
            _checkpointer: stop_checkpoints,
        })
    }

    pub(super) async fn ingest(
        &self,
        requests: &[IngestRequest],
        now: Millis,
    ) -> StoreResult<Results> {
        let (requests, payloads) = (requests.to_vec(), payloads(requests));
        self.ask(|reply| Job::Ingest {
            requests,
            payloads,
            now,
            reply,
        })
        .await
    }

    /// Sends the job `make` builds around a reply channel, and waits for the answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Job,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the SQLite writer thread stopped".into());
        self.jobs.send(make(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Runs one statement of `db` on the writer's connection, between transactions.
    pub(super) async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        self.ask(|reply| {
            Job::Write(Box::new(move |connection| {
                let _ = reply.send(work(connection));
            }))
        })
        .await
    }

    /// Holds the writer for one caller until the returned session is dropped; `begin`
    /// starts a transaction (`BEGIN IMMEDIATE`) first.
    pub(super) async fn session(&self, begin: bool) -> StoreResult<Session> {
        let (sender, work) = mpsc::channel();
        self.ask(|ready| Job::Session { begin, work, ready })
            .await?;
        Ok(Session::new(sender))
    }

    /// Runs `work` on the writer's connection, between ingest transactions. `work` must
    /// do all its writing in one transaction it commits: when it fails with "database is
    /// locked" (another process holds the lock) it ran back and is called again.
    pub(super) async fn run<T, F>(&self, mut work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        self.ask(|reply| {
            Job::Run(Box::new(move |connection| {
                let _ = reply.send(with_busy_retry(|| work(connection)));
            }))
        })
        .await
    }
}

/// Runs a transaction again while it fails with `StoreError::Busy` (it rolled back and
/// wrote nothing), up to 8 times with a growing pause.
fn with_busy_retry<T>(mut transaction: impl FnMut() -> StoreResult<T>) -> StoreResult<T> {
    let mut delay = Duration::from_millis(10);
    for attempt in 1.. {
        match transaction() {
            Err(StoreError::Busy(_)) if attempt < 8 => {
                tracing::debug!(attempt, "a write met a locked SQLite database; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            result => return result,
        }
    }
    unreachable!("the retry loop returns")
}

fn open(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // WAL lets readers run beside the single writer; FULL makes a commit durable across
    // power loss before the client is answered (group commit amortises the fsync).
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.set_prepared_statement_cache_capacity(128);
    Ok(connection)
}

/// Running builds as of the writer's last commit, keyed by run id.
#[derive(Default)]
struct BuildCache {
    /// `PRAGMA data_version` when the cache was last known to match the database.
    data_version: i64,
    builds: HashMap<String, WorkingBuild>,
}

/// Marks a day's kept analytics stale as of an event id (see `analytics_days`).
const ANALYTICS_DAY_CHANGED: &str = "INSERT INTO analytics_days (project_id, day, changed_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (project_id, day) DO UPDATE SET changed_at = max(changed_at, excluded.changed_at)";

/// Builds kept at most; beyond, the cache starts over (a re-read per build).
const CACHE_CAPACITY: usize = 20_000;

impl BuildCache {
    /// Takes in what a committed transaction wrote: running builds are kept, ended ones
    /// (which take no more events but heartbeats, ignored) are let go.
    fn committed(&mut self, builds: impl Iterator<Item = WorkingBuild>) {
        for mut working in builds {
            let run_id = working.state.run_id.to_string();
            if working.db_id.is_none() || working.state.status.is_terminal() {
                self.builds.remove(&run_id);
                continue;
            }
            if self.builds.len() >= CACHE_CAPACITY && !self.builds.contains_key(&run_id) {
                self.builds.clear();
            }
            working.changed = false;
            for stage in &mut working.state.stages {
                stage.dirty = false;
            }
            self.builds.insert(run_id, working);
        }
    }
}

struct Writer {
    connection: Connection,
    cache: BuildCache,
}

impl Writer {
    /// "database is locked" despite the busy timeout (another process holding the lock,
    /// or a checkpoint in the way) rolled the transaction back; it wrote nothing, so it
    /// runs again.
    fn ingest_with_retry(
        &mut self,
        requests: &[IngestRequest],
        payloads: &Payloads,
        now: Millis,
    ) -> StoreResult<Results> {
        with_busy_retry(|| {
            // First without looking up the group's eventIds: the events' unique index
            // finds a repeated one while they are inserted, and only then (a client's
            // retry: rare) is the group run again with the lookups.
            let mut result = ingest(
                &mut self.connection,
                &mut self.cache,
                requests,
                payloads,
                now,
                Dedup::OnInsert,
            );
            if matches!(result, Err(StoreError::Conflict(_))) {
                // Rolled back before its commit: the cache, updated only after a commit,
                // still holds.
                result = ingest(
                    &mut self.connection,
                    &mut self.cache,
                    requests,
                    payloads,
                    now,
                    Dedup::LookUp,
                );
            }
            if result.is_err() {
                // The transaction rolled back, or its commit failed: what the cache holds
                // may no longer match; it is re-read next time.
                self.cache.builds.clear();
            }
            result
        })
    }
}

/// Whether every request was accepted with no event ignored.
fn all_accepted(results: &Results) -> bool {
    results.iter().all(|result| {
        result.as_ref().is_ok_and(|outcomes| {
            outcomes
                .iter()
                .all(|outcome| outcome.status != crate::records::OutcomeStatus::Ignored)
        })
    })
}

/// How a group finds the eventIds stored before.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dedup {
    /// One index probe per (build, eventId) before the replay.
    LookUp,
    /// None: an insert that meets a stored eventId fails the group with `Conflict`
    /// (rolled back, nothing written), to be run again with `LookUp`; so does a group
    /// with a refused request or an ignored event, which a retry may explain.
    OnInsert,
}

fn ingest(
    connection: &mut Connection,
    cache: &mut BuildCache,
    requests: &[IngestRequest],
    payloads: &Payloads,
    now: Millis,
    dedup: Dedup,
) -> StoreResult<Results> {
    let started = Instant::now();
    // IMMEDIATE takes the write lock now: the counter read below cannot go stale.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let last_id: i64 = transaction
        .prepare_cached("SELECT value FROM kiln_counters WHERE name = 'event_id'")?
        .query_row([], |row| row.get(0))?;
    let data_version: i64 = transaction
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))?;
    if data_version != cache.data_version {
        cache.builds.clear();
        cache.data_version = data_version;
    }
    let locked = started.elapsed();

    let prefetched = prefetch(&transaction, cache, requests, dedup)?;
    let fetched = started.elapsed();
    let (mut batch, results, next_id) = simulate_all(&prefetched, requests, payloads, now, last_id);
    if dedup == Dedup::OnInsert && !all_accepted(&results) {
        // A refused request or an ignored event may be the retry of one stored before
        // (a terminal event sent twice is a duplicate, not "the build has ended"): only
        // the lookups can tell.
        return Err(StoreError::Conflict(
            "run again with the eventId lookups".into(),
        ));
    }
    let simulated = started.elapsed();

    let mut build_ids: HashMap<String, i64> = HashMap::new();
    if next_id > last_id {
        for (project_id, keys) in &batch.new_builds_per_project() {
            let last: i64 = transaction
                .prepare_cached(
                    "UPDATE projects SET last_build_number = last_build_number + ?1 WHERE id = ?2 \
                     RETURNING last_build_number",
                )?
                .query_row(params![keys.len() as i64, project_id], |row| row.get(0))?;
            batch.number_builds(keys, last);
        }

        for working in batch.changed() {
            let build_id = upsert_build(&transaction, working)?;
            build_ids.insert(working.state.run_id.to_string(), build_id);
            let mut upsert = transaction.prepare_cached(&UPSERT_STAGE)?;
            for stage in working.state.stages.iter().filter(|stage| stage.dirty) {
                upsert.execute(params![
                    build_id,
                    stage.name.as_str(),
                    stage.position,
                    stage.status.as_str(),
                    stage.started_at.0,
                    stage.ended_at.map(|m| m.0),
                    stage.duration_ms,
                    stage.message.as_deref(),
                ])?;
            }
        }

        let mut insert = transaction.prepare_cached(&INSERT_EVENT)?;
        for row in &batch.rows {
            let build_id = build_ids.get(row.run_id.as_str()).copied().ok_or_else(|| {
                StoreError::Unavailable(format!("no build id for run '{}'", row.run_id))
            })?;
            insert.execute(params![
                row.id,
                build_id,
                row.project_id,
                row.seq,
                row.event_type,
                row.client_event_id,
                now.0,
                row.payload,
            ])?;
        }
        drop(insert);
        let mut insert_job = transaction.prepare_cached(&INSERT_JOB)?;
        for job in job_rows(&batch.jobs, &build_ids, now) {
            insert_job.execute(params![
                job.build_id,
                job.project_id,
                job.step,
                job.position,
                job.state,
                job.priority,
                job.depends_on,
                job.labels,
                job.spec,
                job.created_at,
                job.queued_at,
                job.avoid_agent_id,
            ])?;
        }
        drop(insert_job);
        for (project_id, day, event_id) in batch.ended_days_changed() {
            transaction
                .prepare_cached(ANALYTICS_DAY_CHANGED)?
                .execute(params![project_id, day, event_id])?;
        }
        transaction
            .prepare_cached("UPDATE kiln_counters SET value = ?1 WHERE name = 'event_id'")?
            .execute([next_id])?;
    }
    let written = started.elapsed();
    transaction.commit()?;
    cache.committed(batch.builds.drain().map(|(_, mut working)| {
        if working.db_id.is_none() {
            working.db_id = build_ids.get(working.state.run_id.as_str()).copied();
        }
        working
    }));
    tracing::debug!(
        lock_us = locked.as_micros() as u64,
        prefetch_us = (fetched - locked).as_micros() as u64,
        simulate_us = (simulated - fetched).as_micros() as u64,
        write_us = (written - simulated).as_micros() as u64,
        commit_us = (started.elapsed() - written).as_micros() as u64,
        "ingest transaction phases (SQLite writer)"
    );
    Ok(results)
}

/// Phase 0: running builds from the cache, others with one indexed point lookup per
/// build and per build's stages; then, with `Dedup::LookUp`, one probe per (build,
/// eventId) pair.
fn prefetch(
    connection: &Connection,
    cache: &BuildCache,
    requests: &[IngestRequest],
    dedup: Dedup,
) -> StoreResult<Prefetched> {
    let mut prefetched = Prefetched::default();
    let mut build = connection.prepare_cached(&format!("{BUILD_SELECT} WHERE b.run_id = ?1"))?;
    let mut stages = connection.prepare_cached(STAGES_OF_BUILD)?;
    for run_id in run_ids(requests) {
        if let Some(working) = cache.builds.get(run_id) {
            prefetched.builds.insert(run_id.to_owned(), working.clone());
            continue;
        }
        let mut rows = build.query([run_id])?;
        let Some(row) = rows.next()? else {
            continue;
        };
        let mut working = WorkingBuild::existing(build_from_row(row)?);
        let mut stage_rows = stages.query([working.db_id])?;
        while let Some(stage) = stage_rows.next()? {
            working.state.stages.push(stage_from_row(stage)?);
        }
        prefetched.builds.insert(run_id.to_owned(), working);
    }
    if dedup == Dedup::OnInsert {
        return Ok(prefetched);
    }

    let mut earlier = connection.prepare_cached(
        "SELECT id, seq FROM events WHERE build_id = ?1 AND client_event_id = ?2",
    )?;
    let run_by_build: std::collections::HashMap<i64, &str> = prefetched
        .builds
        .iter()
        .filter_map(|(run_id, working)| working.db_id.map(|id| (id, run_id.as_str())))
        .collect();
    let mut client_ids = std::collections::HashMap::new();
    for (build_id, client_event_id) in wanted_client_ids(requests, &prefetched.builds) {
        let mut rows = earlier.query(params![build_id, client_event_id])?;
        if let Some(row) = rows.next()?
            && let Some(run_id) = run_by_build.get(&build_id)
        {
            client_ids.insert(
                ((*run_id).to_owned(), client_event_id.to_owned()),
                (row.get(0)?, row.get(1)?),
            );
        }
    }
    prefetched.client_ids = client_ids;
    Ok(prefetched)
}

/// `?, ?, …`: `count` anonymous positional parameters.
fn positional(count: usize) -> String {
    vec!["?"; count].join(", ")
}

// The statements, built once from the text the PostgreSQL path uses.
static UPSERT_BUILD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO builds (id, {BUILD_COLUMNS}) VALUES ({}) {BUILD_UPSERT} RETURNING id",
        positional(BUILD_COLUMN_COUNT + 1)
    )
});
static UPSERT_STAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO stages ({STAGE_COLUMNS}) VALUES ({}) {STAGE_UPSERT}",
        positional(8)
    )
});
static INSERT_JOB: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({}) {JOB_CONFLICT}",
        positional(JOB_COLUMN_COUNT)
    )
});
static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO events ({EVENT_COLUMNS}) VALUES ({})",
        positional(8)
    )
});

/// Inserts a new build (`db_id` None: SQLite assigns the id) or updates an existing one,
/// with the PostgreSQL path's column list and update rule; returns the build's id.
fn upsert_build(connection: &Connection, working: &WorkingBuild) -> StoreResult<i64> {
    let state = &working.state;
    let build_id = connection.prepare_cached(&UPSERT_BUILD)?.query_row(
        params![
            working.db_id,
            working.project_id,
            state.run_id.as_str(),
            working.number,
            state.status.as_str(),
            state.progress.map(progress_to_hundredths),
            state.current_stage.as_ref().map(|s| s.as_str()),
            state.env,
            state.origin,
            state.command,
            state.host,
            state.pid,
            state.repo,
            state.branch,
            state.commit,
            state.message,
            state.created_at.0,
            state.started_at.0,
            state.ended_at.map(|m| m.0),
            state.duration_ms,
            state.last_event_at.0,
            working.last_event_id,
            state.last_seq,
            state.heartbeat_timeout_secs,
            super::rows::metrics_to_text(&state.metrics),
        ],
        |row| row.get(0),
    )?;
    Ok(build_id)
}
