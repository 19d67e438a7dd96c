//! Builds Kiln runs: triggering (`trigger`), handing jobs to agents under a lease,
//! turning what agents report into the build's events, advancing a build's jobs as
//! steps end, cancelling, and the background work (`tasks`: expired leases, stuck
//! builds, polling auto-build branches).
//!
//! The job rows are the queue's truth; the build's events follow them. Every write is a
//! compare-and-set in the store and every event has a deterministic `eventId`, so each
//! step here can be repeated safely (agents retry, the reaper re-runs `advance`).

mod events;
pub(crate) mod git;
mod logbus;
pub(crate) mod policy;
mod recommend;
pub(crate) mod tasks;
mod trigger;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::jobs::{self, BuildOutcome, JobPlan, JobSpec, JobView};
use kiln_core::pipeline::StepFailure;
use kiln_core::{CoreEventType, JobState, Millis, NewEvent};
use kiln_protocol::{AgentJob, HeartbeatReply, JobCache};
use kiln_store::{AgentRecord, ClaimRules, IngestRequest, JobEnd, JobRecord, LogAppend, Store};
use serde_json::json;
use tokio::sync::Notify;

pub(crate) use logbus::LogBus;
pub use policy::RepoPolicy;
pub(crate) use recommend::{CACHE_DAYS, HISTORY_DAYS};
pub(crate) use trigger::{TriggerRequest, check_branch, refused_repo};

use crate::clock::Clock;
use crate::ingest::Ingestor;
use crate::service_error::ServiceError;

/// Settings of the runner (from `ServerConfig`).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// A claimed job's lease; agents renew it by heartbeats (`--job-lease`).
    pub job_lease: Duration,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// A waiting job gains one priority level per this much waiting.
    pub priority_aging: Duration,
    /// How often auto-build branches are polled with `git ls-remote`.
    pub branch_poll_interval: Duration,
    /// A job's log cap.
    pub log_cap_bytes: u64,
    pub checkout_timeout: Duration,
    /// Where the server keeps its git mirrors.
    pub git_dir: PathBuf,
    /// Which repositories projects may build, and the server's git timeout.
    pub repo_policy: RepoPolicy,
    /// Decrypts project secrets and repository credentials (set by `run` from the
    /// server's key).
    pub secret_key: Option<crate::secret_box::SecretKey>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            job_lease: Duration::from_secs(kiln_core::limits::DEFAULT_JOB_LEASE_SECS),
            heartbeat_interval: Duration::from_secs(1),
            priority_aging: Duration::from_secs(kiln_core::limits::DEFAULT_PRIORITY_AGING_SECS),
            branch_poll_interval: Duration::from_secs(60),
            log_cap_bytes: kiln_core::limits::DEFAULT_JOB_LOG_CAP_BYTES,
            checkout_timeout: Duration::from_secs(kiln_core::limits::DEFAULT_CHECKOUT_TIMEOUT_SECS),
            git_dir: std::env::temp_dir().join(format!("kiln-git-{}", std::process::id())),
            repo_policy: RepoPolicy::default(),
            secret_key: None,
        }
    }
}

/// Extra room past the cap for the agent's truncation marker line.
const LOG_CAP_SLACK: u64 = 4096;

#[derive(Clone)]
pub(crate) struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    ingestor: Ingestor,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    /// Records how long claimed jobs waited.
    metrics: Arc<crate::telemetry::Metrics>,
    /// Woken when a job may have become claimable (queued, or a slot freed).
    work: Notify,
    logs: LogBus,
    /// When each agent was last recorded as seen, to write that at most every few
    /// seconds.
    touched: Mutex<HashMap<i64, Instant>>,
    /// Serialises the git mirror's fetches.
    git: tokio::sync::Mutex<()>,
    /// Serialises this replica's claim attempts. A queued job wakes every waiting claim;
    /// racing them into the store made each try the job's compare-and-set (on SQLite
    /// a write-lock wait per agent), so with 200 agents waiting the winner's answer came
    /// ≈ 20 ms after the job was queued. In turn, the first claim takes the job and the
    /// rest find the queue empty with reads alone (bench/runner).
    claiming: tokio::sync::Mutex<()>,
    /// Who waits in a claim here, and the steps' history: the claims' hints.
    recommender: Arc<recommend::Recommender>,
    /// Told when a build with deploy steps moves.
    deployer: crate::deploy::Deployer,
}

const TOUCH_EVERY: Duration = Duration::from_secs(5);

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        ingestor: Ingestor,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
        metrics: Arc<crate::telemetry::Metrics>,
        deployer: crate::deploy::Deployer,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                ingestor,
                clock,
                config,
                metrics,
                work: Notify::new(),
                logs: LogBus::default(),
                touched: Mutex::new(HashMap::new()),
                git: tokio::sync::Mutex::new(()),
                claiming: tokio::sync::Mutex::new(()),
                recommender: Arc::new(recommend::Recommender::default()),
                deployer,
            }),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    pub fn logs(&self) -> &LogBus {
        &self.inner.logs
    }

    fn store(&self) -> &dyn Store {
        &*self.inner.store
    }

    fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    fn lease_ms(&self) -> i64 {
        self.inner.config.job_lease.as_millis() as i64
    }

    /// The values of the secrets a job names, and the names the project lacks (or whose
    /// value cannot be decrypted: another key).
    async fn job_secrets(
        &self,
        project_id: i64,
        names: &[String],
    ) -> Result<(std::collections::BTreeMap<String, String>, Vec<String>), ServiceError> {
        let mut values = std::collections::BTreeMap::new();
        if names.is_empty() {
            return Ok((values, Vec::new()));
        }
        let stored = self.store().project_secret_values(project_id).await?;
        let mut missing = Vec::new();
        for name in names {
            let value = stored
                .iter()
                .find(|(stored_name, _)| stored_name == name)
                .and_then(|(_, ciphertext)| {
                    let key = self.inner.config.secret_key.as_ref()?;
                    match key.open(&crate::secret_box::secret_context(project_id, name), ciphertext) {
                        Ok(plain) => String::from_utf8(plain).ok(),
                        Err(error) => {
                            tracing::error!(project_id, secret = %name, %error, "cannot decrypt a project secret");
                            None
                        }
                    }
                });
            match value {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None => missing.push(name.clone()),
            }
        }
        Ok((values, missing))
    }

    /// The decrypted credentials of a project's repository, if it has any.
    pub(crate) async fn repo_credentials(
        &self,
        project_id: i64,
    ) -> Result<Option<kiln_protocol::RepoCredentials>, ServiceError> {
        let Some(project) = self.store().project_by_id(project_id).await? else {
            return Ok(None);
        };
        let (Some(ciphertext), Some(key)) =
            (&project.repo_credentials, &self.inner.config.secret_key)
        else {
            return Ok(None);
        };
        let plain = key
            .open(&crate::secret_box::repo_credentials_context(project_id), ciphertext)
            .map_err(|error| {
                tracing::error!(project_id, %error, "cannot decrypt the repository credentials");
                ServiceError::Unavailable(format!("the repository credentials of this project cannot be decrypted: {error}; set the repository again"))
            })?;
        Ok(serde_json::from_slice(&plain).ok())
    }

    /// The policy's check of a project's repository, with its credentials for git.
    pub(crate) async fn project_repo_access(
        &self,
        project: &kiln_store::Project,
        repo: &str,
    ) -> Result<policy::RepoAccess, ServiceError> {
        let mut access = self
            .repo_access(repo)
            .await
            .map_err(|message| refused_repo(&project.slug, message))?;
        access.credentials = self.repo_credentials(project.id).await?;
        Ok(access)
    }

    /// Checks a repository against the instance's policy (before every git command the
    /// server runs for it); the error says what to do instead.
    pub(crate) async fn repo_access(&self, repo: &str) -> Result<policy::RepoAccess, String> {
        self.inner
            .config
            .repo_policy
            .check(repo, &self.inner.config.git_dir)
            .await
    }

    /// Tells one waiting claim to look again (not all of them: with 200 agents waiting,
    /// a job queued would otherwise cost 200 claim queries). A claim that gets a job
    /// passes the word on to the next waiter, so a burst of jobs is taken as fast as
    /// agents claim; a waiter that the woken one could not serve (other labels, its own
    /// concurrency) looks again at its next one-second recheck at the latest.
    pub fn work_changed(&self) {
        self.inner.work.notify_one();
    }

    /// Writes events of one build: `Ok(Err(_))` when the build refused them (it ended).
    async fn submit(
        &self,
        project_id: i64,
        events: Vec<NewEvent>,
    ) -> Result<Result<(), kiln_store::IngestRejection>, ServiceError> {
        if events.is_empty() {
            return Ok(Ok(()));
        }
        self.submit_request(IngestRequest::events(project_id, events))
            .await
    }

    /// Writes one ingest request (events, and jobs with them).
    async fn submit_request(
        &self,
        request: IngestRequest,
    ) -> Result<Result<(), kiln_store::IngestRejection>, ServiceError> {
        let outcome = self
            .inner
            .ingestor
            .submit(request)
            .await
            .map_err(|failure| {
                ServiceError::Unavailable(format!("the database is unavailable ({failure}); retry"))
            })?;
        Ok(outcome.map(|_| ()))
    }

    /// Writes events of one build; a refusal (the build ended meanwhile) is logged, not
    /// an error: the job rows stay the truth.
    async fn write(&self, project_id: i64, events: Vec<NewEvent>) -> Result<(), ServiceError> {
        if let Err(rejection) = self.submit(project_id, events).await? {
            tracing::debug!(%rejection, "build event not written: the build had ended");
        }
        Ok(())
    }

    /// Waits up to `wait` for a job the agent may run and claims it.
    pub async fn claim(
        &self,
        agent: &AgentRecord,
        wait: Duration,
    ) -> Result<Option<AgentJob>, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait;
        let rules = ClaimRules {
            lease_ms: self.lease_ms(),
            aging_ms: self.inner.config.priority_aging.as_millis() as i64,
        };
        let recommender = &self.inner.recommender;
        // This agent waits for work (so has a free slot) until the claim returns: jobs
        // it is expected to finish clearly sooner may be left to it by other claims.
        let waiting = recommender.wait(agent.id);
        loop {
            // Registered before looking, so a job queued meanwhile wakes this claim.
            let notified = self.inner.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let left_to_me = waiting.notify.notified();
            tokio::pin!(left_to_me);
            left_to_me.as_mut().enable();
            let now = self.now();
            recommender.refresh_if_stale(self.inner.store.clone(), now);
            let (hints, left_to) = recommender.hints(agent.id, now);
            let claimed = {
                let _one_at_a_time = self.inner.claiming.lock().await;
                self.store()
                    .claim_job_with(agent, rules, &hints, now)
                    .await?
            };
            if !left_to.is_empty() {
                // Jobs this claim may have passed over: their agents look now.
                recommender.wake(&left_to);
            }
            if let Some(job) = claimed {
                recommender.follow(job.project_id, &job.step, false);
                if let (Some(queued), Some(started)) = (job.queued_at, job.started_at) {
                    let waited = started.saturating_sub(queued).max(0) as f64 / 1000.0;
                    self.inner.metrics.queue_wait.observe(waited);
                }
                // There may be more: the next waiter looks.
                self.inner.work.notify_one();
                return self.started(agent, job).await.map(Some);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Other replicas' jobs do not notify here: look again at least every second.
            let recheck = (now + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut left_to_me => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// Records that a claimed job started and builds what the agent needs. The
    /// `stage_started` event is written after the answer (its `eventId` is fixed, and
    /// `stage_ended` writes it again first, so the order holds and nothing doubles): a
    /// claim costs the agent no commit.
    async fn started(&self, agent: &AgentRecord, job: JobRecord) -> Result<AgentJob, ServiceError> {
        let runner = self.clone();
        let started = started_event(&job, &agent.name, agent.hostname.clone());
        let project_id = job.project_id;
        let build_id = job.build_id;
        tokio::spawn(async move {
            if let Err(error) = runner
                .write(project_id, started.into_iter().collect())
                .await
            {
                tracing::warn!(%error, "stage_started not written yet; the step's end writes it");
            }
            runner.inner.deployer.refresh_quietly(build_id, None).await;
        });
        let spec = JobSpec::from_json(&job.spec);
        // The publish directory is uploaded like any artifact of the step.
        let mut artifact_globs = spec.artifacts.clone();
        if let Some(dir) = spec.deploy.as_ref().and_then(|deploy| deploy.publish_dir()) {
            let glob = if dir.is_empty() {
                "**".to_owned()
            } else {
                dir.to_owned()
            };
            if !artifact_globs.contains(&glob) {
                artifact_globs.push(glob);
            }
        }
        let mut env = spec.env.clone();
        let commit = job.commit.clone().unwrap_or_default();
        for (name, value) in [
            ("CI", "true".to_owned()),
            ("KILN", "true".to_owned()),
            ("KILN_RUN_ID", job.run_id.clone()),
            ("KILN_BUILD_NUMBER", job.build_number.to_string()),
            ("KILN_PROJECT", job.project_slug.clone()),
            ("KILN_STEP", job.step.clone()),
            ("KILN_JOB_ID", job.id.to_string()),
            ("KILN_ATTEMPT", job.attempt.to_string()),
            ("KILN_BRANCH", job.branch.clone().unwrap_or_default()),
            ("KILN_COMMIT", commit.clone()),
            ("KILN_AGENT_NAME", agent.name.clone()),
        ] {
            env.entry(name.to_owned()).or_insert(value);
        }
        let (secrets, missing_secrets) = self.job_secrets(job.project_id, &spec.secrets).await?;
        // The claim's row says whether there are credentials: most projects have none,
        // and their claims then cost no read of the project.
        let repo_credentials = if job.has_repo_credentials {
            self.repo_credentials(job.project_id).await?
        } else {
            None
        };
        let artifacts = self.inherited_artifacts(&job, &spec).await?;
        Ok(AgentJob {
            artifact_globs,
            artifacts_required: spec.artifacts_required,
            artifacts,
            secrets: kiln_protocol::SecretValues(secrets),
            missing_secrets,
            repo_credentials,
            job_id: job.id,
            attempt: job.attempt,
            run_id: job.run_id.clone(),
            build_number: job.build_number,
            project: job.project_slug.clone(),
            step: job.step.clone(),
            repo: job.repo.clone().unwrap_or_default(),
            commit,
            branch: job.branch.clone(),
            commands: spec.commands,
            env,
            timeout_secs: spec.timeout_secs,
            checkout_timeout_secs: self.inner.config.checkout_timeout.as_secs(),
            cache: spec
                .cache
                .map(|(key_files, paths)| JobCache { key_files, paths }),
            image: spec.image,
            network: spec.network,
            test_reports: spec.test_reports,
            log_offset: job.log_size,
            log_cap_bytes: self.inner.config.log_cap_bytes,
        })
    }

    /// The artifacts a job receives before it runs: those of the steps its step depends
    /// on, directly or not, in its build (none with `needs_artifacts: false`); for a
    /// rollback's re-run of a deploy step, those the earlier build's steps made.
    async fn inherited_artifacts(
        &self,
        job: &JobRecord,
        spec: &JobSpec,
    ) -> Result<Vec<kiln_protocol::ArtifactFile>, ServiceError> {
        let (build_id, steps) = match artifact_source(job, spec) {
            Some(ArtifactSource::Rerun { build_id, steps }) => (build_id, steps),
            Some(ArtifactSource::OwnBuild) => {
                let jobs = self.store().jobs_of_build(job.build_id).await?;
                let steps = kiln_core::jobs::ancestors(&job.step, |step| {
                    jobs.iter()
                        .find(|other| other.step == step)
                        .map(|other| other.depends_on.as_slice())
                });
                (job.build_id, steps)
            }
            None => return Ok(Vec::new()),
        };
        let records = self.store().build_artifacts(build_id).await?;
        Ok(records
            .iter()
            .filter(|record| {
                record
                    .step
                    .as_ref()
                    .is_some_and(|step| steps.contains(step))
            })
            .map(crate::wire::artifact_file)
            .collect())
    }

    /// An agent's heartbeat: renews its jobs' leases, says which to stop.
    pub async fn heartbeat(
        &self,
        agent: &AgentRecord,
        job_ids: &[i64],
        metrics: Option<&serde_json::Value>,
    ) -> Result<HeartbeatReply, ServiceError> {
        let now = self.now();
        let touch = {
            let mut touched = self.inner.touched.lock().expect("touch lock");
            let due = touched
                .get(&agent.id)
                .is_none_or(|last| last.elapsed() >= TOUCH_EVERY);
            if due {
                touched.insert(agent.id, Instant::now());
            }
            due
        };
        if touch {
            self.store().touch_agent(agent.id, now, metrics).await?;
        }
        let held = self
            .store()
            .renew_leases(agent.id, job_ids, now, self.lease_ms())
            .await?;
        Ok(HeartbeatReply {
            cancel: held
                .iter()
                .filter(|job| job.held && job.cancel_requested)
                .map(|job| job.job_id)
                .collect(),
            lost: held
                .iter()
                .filter(|job| !job.held)
                .map(|job| job.job_id)
                .collect(),
        })
    }

    /// The job, if `agent_id` holds attempt `attempt` of it.
    pub async fn held_job(
        &self,
        job_id: i64,
        agent_id: i64,
        attempt: i64,
    ) -> Result<JobRecord, ServiceError> {
        let job = self
            .store()
            .job_by_id(job_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("job {job_id} not found")))?;
        if job.state != JobState::Running
            || job.agent_id != Some(agent_id)
            || job.attempt != attempt
        {
            return Err(ServiceError::Conflict {
                code: "job_not_held",
                message: format!(
                    "attempt {attempt} of job {job_id} is no longer this agent's (its lease expired or it ended); stop it"
                ),
                field: None,
            });
        }
        Ok(job)
    }

    pub async fn append_log(
        &self,
        job: &JobRecord,
        offset: i64,
        bytes: &[u8],
    ) -> Result<i64, ServiceError> {
        let cap = (self.inner.config.log_cap_bytes + LOG_CAP_SLACK) as i64;
        match self.store().append_log(job.id, offset, bytes, cap).await? {
            LogAppend::Stored { size } => {
                self.inner.logs.stored(job.id, size);
                Ok(size)
            }
            LogAppend::WrongOffset { size } => Err(ServiceError::Conflict {
                code: "wrong_offset",
                message: format!(
                    "the log of job {} is {size} bytes long; send the chunk that starts at offset {size}",
                    job.id
                ),
                field: Some("offset".into()),
            }),
            LogAppend::TooLarge { size } => Err(ServiceError::PayloadTooLarge(format!(
                "the log of job {} is capped at {} bytes ({size} stored); stop sending and write the truncation marker",
                job.id, self.inner.config.log_cap_bytes
            ))),
        }
    }

    /// The reported job holding `step`'s log of a build a `kiln run` reports.
    pub async fn reported_job(
        &self,
        build: &kiln_store::BuildRecord,
        step: &str,
    ) -> Result<JobRecord, ServiceError> {
        Ok(self
            .store()
            .reported_job(build.id, build.project_id, step, self.now())
            .await?)
    }

    /// Ends a reported job's log with its command's outcome; live tails see the end.
    pub async fn end_reported_job(
        &self,
        job: &JobRecord,
        state: JobState,
        exit_code: Option<i64>,
        size: i64,
    ) -> Result<bool, ServiceError> {
        let ended = self
            .store()
            .end_reported_job(job.id, state, exit_code, self.now())
            .await?;
        self.inner.logs.stored(job.id, size);
        Ok(ended)
    }

    /// A passed run is new history for the agent recommendation, and its agent now
    /// holds the job's cache key (restored or saved). A failure to record is logged:
    /// the recommendation is a hint, the job's end is not.
    async fn remember_run(&self, job: &JobRecord, spec: &JobSpec, now: Millis) {
        self.inner
            .recommender
            .follow(job.project_id, &job.step, true);
        if let (Some(agent_id), Some(cache_key)) = (job.agent_id, &spec.cache_key)
            && let Err(error) = self
                .store()
                .record_agent_cache(agent_id, job.project_id, &job.step, cache_key, now)
                .await
        {
            tracing::warn!(job_id = job.id, %error, "the agent's cache key was not recorded");
        }
    }

    /// Notes a build's queued steps for the agent recommendation.
    pub(crate) fn follow_steps(&self, project_id: i64, steps: &[JobPlan]) {
        for plan in steps {
            self.inner.recommender.follow(project_id, &plan.step, false);
        }
    }

    /// An agent's report that an attempt ended.
    pub async fn finish(
        &self,
        job: &JobRecord,
        end: JobEnd,
        message: Option<String>,
        duration_ms: Option<i64>,
    ) -> Result<(), ServiceError> {
        let now = self.now();
        let spec = JobSpec::from_json(&job.spec);
        let failure = match (end.state, end.reason.as_deref()) {
            (JobState::Failed, Some("timeout")) => Some(StepFailure::TimedOut),
            (JobState::Failed, Some("exit_status")) => {
                Some(StepFailure::ExitStatus(end.exit_code.unwrap_or(1) as i32))
            }
            _ => None,
        };
        if failure.is_some_and(|f| spec.retries_after(f, job.attempt)) {
            if self.store().requeue_job(job.id, job.attempt, now).await? {
                let text = format!(
                    "{}; retrying automatically (attempt {} next)",
                    message.as_deref().unwrap_or("failed"),
                    job.attempt + 1
                );
                self.stage_ended(job, JobState::Failed, Some(text), duration_ms, "retry")
                    .await?;
                self.work_changed();
            }
            return Ok(());
        }
        if !self
            .store()
            .finish_job(job.id, job.attempt, job.agent_id, &end, now)
            .await?
        {
            return Err(ServiceError::Conflict {
                code: "job_not_held",
                message: format!("job {} already ended or is no longer this agent's", job.id),
                field: None,
            });
        }
        if end.state == JobState::Passed {
            self.remember_run(job, &spec, now).await;
        }
        self.stage_ended(
            job,
            end.state,
            message,
            duration_ms,
            &end.reason.clone().unwrap_or_default(),
        )
        .await?;
        self.work_changed();
        self.advance(job.build_id).await
    }

    async fn stage_ended(
        &self,
        job: &JobRecord,
        state: JobState,
        message: Option<String>,
        duration_ms: Option<i64>,
        reason: &str,
    ) -> Result<(), ServiceError> {
        let kind = if state == JobState::Passed {
            CoreEventType::StageCompleted
        } else {
            CoreEventType::StageFailed
        };
        let mut event = events::stage_event(
            &job.run_id,
            kind,
            &job.step,
            format!("kiln-job-{}-{}-ended", job.id, job.attempt),
            message,
            json!({"jobId": job.id, "attempt": job.attempt, "state": state.as_str(), "reason": reason}),
        );
        if let Some(event) = event.as_mut() {
            event.duration_ms = duration_ms.filter(|ms| *ms >= 0);
        }
        self.write(job.project_id, event.into_iter().collect())
            .await
    }

    /// Moves a build's blocked jobs on, and ends the build once every job has ended.
    pub async fn advance(&self, build_id: i64) -> Result<(), ServiceError> {
        let jobs = self.store().jobs_of_build(build_id).await?;
        let Some(first) = jobs.first() else {
            return Ok(());
        };
        let views: Vec<JobView> = jobs
            .iter()
            .map(|job| JobView {
                step: job.step.clone(),
                state: job.state,
                depends_on: job.depends_on.clone(),
            })
            .collect();
        let next = jobs::advance(&views);
        if !next.queue.is_empty() || !next.skip.is_empty() {
            self.store()
                .unblock_jobs(build_id, &next.queue, &next.skip, self.now())
                .await?;
            if !next.queue.is_empty() {
                self.work_changed();
            }
        }
        let Some(outcome) = next.outcome else {
            return Ok(());
        };
        let (kind, message) = match outcome {
            BuildOutcome::Passed => (CoreEventType::BuildCompleted, None),
            BuildOutcome::Failed(steps) => (
                CoreEventType::BuildFailed,
                Some(format!("step {} failed", steps.join(", "))),
            ),
            BuildOutcome::Cancelled => (CoreEventType::BuildCancelled, None),
        };
        let mut event = events::event(&first.run_id, kind, "kiln-build-ended".into());
        if let Some(event) = event.as_mut() {
            event.message = message;
        }
        self.write(first.project_id, event.into_iter().collect())
            .await?;
        self.inner.deployer.refresh_quietly(build_id, None).await;
        Ok(())
    }

    /// Cancels a build: its waiting jobs at once, its running jobs by their agents.
    pub async fn cancel(
        &self,
        build: &kiln_store::BuildRecord,
        by: &str,
    ) -> Result<u64, ServiceError> {
        if build.state.status.is_terminal() {
            return Err(ServiceError::Conflict {
                code: "build_ended",
                message: format!(
                    "build {} already ended with status '{}'; nothing to cancel",
                    build.state.run_id, build.state.status
                ),
                field: None,
            });
        }
        let stopping = self.store().cancel_jobs(build.id, self.now()).await?;
        let mut event = events::event(
            build.state.run_id.as_str(),
            CoreEventType::BuildCancelled,
            "kiln-build-cancelled".into(),
        );
        if let Some(event) = event.as_mut() {
            event.message = Some(format!("cancelled by {by}"));
        }
        self.write(build.project_id, event.into_iter().collect())
            .await?;
        self.work_changed();
        self.inner.deployer.refresh_quietly(build.id, None).await;
        Ok(stopping)
    }

    /// Fails or requeues (per its retry rule) a job whose agent stopped renewing its
    /// lease.
    pub async fn lease_expired(&self, job: &JobRecord) -> Result<(), ServiceError> {
        let now = self.now();
        let spec = JobSpec::from_json(&job.spec);
        let agent = job.agent_name.clone().unwrap_or_else(|| "?".into());
        if spec.retries_after(StepFailure::AgentLost, job.attempt) {
            if self.store().requeue_job(job.id, job.attempt, now).await? {
                let message = format!(
                    "agent '{agent}' lost (its lease expired); retrying (attempt {} next)",
                    job.attempt + 1
                );
                self.stage_ended(job, JobState::Failed, Some(message), None, "agent_lost")
                    .await?;
                self.work_changed();
            }
            return Ok(());
        }
        let end = JobEnd {
            state: JobState::Failed,
            exit_code: None,
            reason: Some("agent_lost".into()),
        };
        if self
            .store()
            .finish_job(job.id, job.attempt, None, &end, now)
            .await?
        {
            let message = format!(
                "agent '{agent}' lost (its lease expired); add `retry: {{automatic: {{on: [agent_lost]}}}}` to the step to run it again elsewhere"
            );
            self.stage_ended(job, JobState::Failed, Some(message), None, "agent_lost")
                .await?;
            self.work_changed();
            self.advance(job.build_id).await?;
        }
        Ok(())
    }
}

/// Where the artifacts a job receives before it runs come from.
pub(crate) enum ArtifactSource {
    /// The steps it depends on in its own build.
    OwnBuild,
    /// A rollback's re-run of a deploy step: the earlier build's, of these steps.
    Rerun {
        build_id: i64,
        steps: std::collections::BTreeSet<String>,
    },
}

/// Where `job` (with its `spec`) receives artifacts from; `None` when it receives none.
pub(crate) fn artifact_source(job: &JobRecord, spec: &JobSpec) -> Option<ArtifactSource> {
    if !spec.needs_artifacts {
        return None;
    }
    if let Some(rerun) = &spec.rerun {
        return (!rerun.artifact_steps.is_empty()).then(|| ArtifactSource::Rerun {
            build_id: rerun.build_id,
            steps: rerun.artifact_steps.iter().cloned().collect(),
        });
    }
    (!job.depends_on.is_empty()).then_some(ArtifactSource::OwnBuild)
}

/// The `stage_started` event of a job's attempt.
fn started_event(job: &JobRecord, agent: &str, host: Option<String>) -> Option<NewEvent> {
    let mut event = events::stage_event(
        &job.run_id,
        CoreEventType::StageStarted,
        &job.step,
        format!("kiln-job-{}-{}-started", job.id, job.attempt),
        None,
        json!({"jobId": job.id, "attempt": job.attempt, "agent": agent}),
    )?;
    event.host = host;
    Some(event)
}

/// Reads an agent's `state` report.
pub(crate) fn reported_state(state: &str) -> Result<JobState, ServiceError> {
    match JobState::from_name(state) {
        Some(state @ (JobState::Passed | JobState::Failed | JobState::Cancelled)) => Ok(state),
        _ => Err(ServiceError::bad_request(
            "invalid_field",
            Some("state"),
            "state: must be \"passed\", \"failed\" or \"cancelled\"",
        )),
    }
}
