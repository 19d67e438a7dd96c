//! Triggering a build: resolve the branch to a commit, read the commit's `.kiln.yml`
//! (or infer a pipeline), write `build_queued` and create one job per step.
//!
//! Problems with the request (no repository, unknown branch or commit) are refused with
//! 4xx. Problems with the repository's content are the build's: a repository that
//! cannot be fetched makes a build that failed in its `checkout` step with git's message
//! in the log; an invalid pipeline file makes a build that failed at once with the line
//! and the reason.

use kiln_core::jobs::{self, JobPlan, JobSpec, Rerun};
use kiln_core::pipeline::{PIPELINE_FILE, Pipeline, Priority, RepoListing, infer};
use kiln_core::{CoreEventType, JobState, NewEvent};
use kiln_protocol::TriggeredBuild;
use kiln_store::{BuildRecord, IngestRequest, JobRecord, NewJobs, Precondition, Project};
use serde_json::json;

use super::Scheduler;
use super::events;
use super::git::{GitError, Mirror, mask_url, resolve_branch};
use crate::auth::Requester;
use crate::service_error::ServiceError;
use crate::wire::job_dto;

#[derive(Clone, Debug, Default)]
pub(crate) struct TriggerRequest {
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub priority: Option<i64>,
    /// What started it: `api`, `poll`, `retry`.
    pub cause: &'static str,
    pub retry_of: Option<String>,
    /// Who asked (a user, a token or both), recorded in `data` for the dashboard:
    /// `by` (the user's email), `byName`, `token` (`{id, name}`), `via`.
    pub by: Option<Requester>,
    /// A deploy: refuse (queueing nothing) unless a step of the pipeline at that commit
    /// deploys to this environment on the branch.
    pub deploys_to: Option<String>,
    /// A rebuild to verify (the original build's id): each job avoids, for
    /// `kiln_store::AVOIDED_AGENT_HOLD_MS` of its wait, the agent that ran its step in the
    /// original build, so another agent rebuilds it when one claims meanwhile (only when
    /// another connected agent could run it).
    pub avoid_agents_of: Option<i64>,
}

/// A branch name git would accept, within Kiln's limits.
pub(crate) fn check_branch(field: &str, name: &str) -> Result<(), ServiceError> {
    let bad = name.is_empty()
        || name.len() > kiln_core::limits::MAX_BRANCH_LEN
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("@{")
        || name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(ServiceError::bad_request(
            "invalid_field",
            Some(field),
            format!(
                "{field}: '{name}' is not a valid branch name (1-{} characters, no spaces, '..', '~^:?*[\\\\')",
                kiln_core::limits::MAX_BRANCH_LEN
            ),
        ));
    }
    Ok(())
}

/// What `build_queued` says about a new build.
struct Queued<'a> {
    repo: &'a str,
    branch: &'a str,
    commit: Option<&'a str>,
    commit_message: Option<&'a str>,
    request: &'a TriggerRequest,
    priority: i64,
    /// A script rollback's build: the run id of the build whose deploy step it re-runs.
    rollback_of: Option<&'a str>,
}

/// A repository the instance's policy refuses (`scheduler::policy`).
pub(crate) fn refused_repo(slug: &str, message: String) -> ServiceError {
    ServiceError::Unprocessable {
        code: "repo_not_allowed",
        message: format!("{message} (set another with PUT /api/v1/projects/{slug}/repo)"),
        field: Some("repo".into()),
    }
}

fn unprocessable(field: &str, message: String) -> ServiceError {
    ServiceError::Unprocessable {
        code: "unprocessable",
        message,
        field: Some(field.into()),
    }
}

impl Scheduler {
    pub async fn trigger(
        &self,
        project: &Project,
        request: TriggerRequest,
    ) -> Result<TriggeredBuild, ServiceError> {
        let Some(repo) = project.repo.clone() else {
            return Err(unprocessable(
                "repo",
                format!(
                    "project '{}' has no repository: set one with `kiln project set-repo {} URL` (PUT /api/v1/projects/{}/repo)",
                    project.slug, project.slug, project.slug
                ),
            ));
        };
        let branch = request
            .branch
            .clone()
            .unwrap_or_else(|| project.default_branch.clone());
        check_branch("branch", &branch)?;
        let requested_priority = match request.priority {
            Some(value) => Some(Priority::new(value).ok_or_else(|| {
                ServiceError::bad_request(
                    "invalid_field",
                    Some("priority"),
                    "priority: must be 1 (highest) to 10",
                )
            })?),
            None => None,
        };
        if let Some(commit) = &request.commit
            && (commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ServiceError::bad_request(
                "invalid_field",
                Some("commit"),
                "commit: must be a full 40-character commit sha (`git rev-parse HEAD`)",
            ));
        }

        // Checked again at every trigger: the policy or a DNS answer may have changed
        // since the repository was set.
        let access = self.project_repo_access(project, &repo).await?;
        let commit = match &request.commit {
            Some(commit) => Ok(commit.to_ascii_lowercase()),
            None => resolve_branch(&repo, &branch, &access).await,
        };
        let commit = match commit {
            Ok(commit) => commit,
            Err(GitError::NotFound(message)) => return Err(unprocessable("branch", message)),
            Err(GitError::Unreachable(message)) => {
                return self
                    .failed_checkout(project, &repo, &branch, None, &request, message)
                    .await;
            }
        };
        let files = {
            let _one_at_a_time = self.inner.git.lock().await;
            let mirror = Mirror::open(
                self.inner
                    .config
                    .git_dir
                    .join(format!("project-{}.git", project.id)),
            )
            .await;
            match mirror {
                Ok(mirror) => match mirror.fetch(&repo, &commit, &access).await {
                    Ok(()) => mirror.read(&commit).await,
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            }
        };
        let files = match files {
            Ok(files) => files,
            Err(GitError::NotFound(message)) => return Err(unprocessable("commit", message)),
            Err(GitError::Unreachable(message)) => {
                return self
                    .failed_checkout(project, &repo, &branch, Some(&commit), &request, message)
                    .await;
            }
        };
        let pipeline = match &files.pipeline_file {
            Some(text) => {
                Pipeline::parse(text).map_err(|error| format!("{PIPELINE_FILE}: {error}"))
            }
            None => {
                let mut listing = RepoListing::new(files.top_level.iter().map(String::as_str));
                if let Some(package_json) = &files.package_json {
                    listing = listing.with_package_json(package_json.clone());
                }
                infer(&listing).map_err(|error| {
                    format!("no {PIPELINE_FILE} in the commit and none could be inferred: {error}")
                })
            }
        };
        let branch_priority = self
            .store()
            .list_branches(project.id)
            .await?
            .into_iter()
            .find(|b| b.name == branch)
            .and_then(|b| b.priority)
            .and_then(Priority::new);
        let priority =
            jobs::build_priority(requested_priority, branch_priority, pipeline.as_ref().ok());
        let mut plans = match &pipeline {
            Ok(pipeline) => jobs::plan(pipeline, &branch),
            Err(_) => Vec::new(),
        };
        if let Some(environment) = &request.deploys_to {
            let deploys = plans.iter().any(|plan| {
                jobs::JobSpec::from_json(&plan.spec)
                    .deploy
                    .is_some_and(|deploy| deploy.environment.as_str() == environment)
            });
            if !deploys {
                let why = match &pipeline {
                    Err(message) => format!("its pipeline cannot be read ({message})"),
                    Ok(_) => format!(
                        "the pipeline of branch '{branch}' at {} has no step deploying to '{environment}' (add `deploy: {{environment: {environment}, publish: dist}}` to a step of .kiln.yml)",
                        &commit[..commit.len().min(12)]
                    ),
                };
                return Err(ServiceError::Unprocessable {
                    code: "no_deploy_step",
                    message: format!("{why}; nothing was built"),
                    field: Some("environment".into()),
                });
            }
        }
        if let Some(original) = request.avoid_agents_of {
            self.avoid_original_agents(original, &mut plans).await?;
        }
        self.add_cache_keys(project, &commit, &mut plans).await;
        self.follow_steps(project.id, &plans);
        let run_id = uuid::Uuid::now_v7().to_string();
        let end = match (&pipeline, plans.is_empty()) {
            (Err(message), _) => Some((CoreEventType::BuildFailed, message.clone())),
            (Ok(_), true) => Some((
                CoreEventType::BuildCompleted,
                format!("no step of the pipeline runs on branch '{branch}'"),
            )),
            (Ok(_), false) => None,
        };
        // A build that ends at once ends in the transaction that queues it; any other
        // gets its jobs in that transaction. Either way no reader (and no crash) ever
        // sees a queued build that nothing will run.
        let end_event = end.and_then(|(kind, message)| {
            events::event(&run_id, kind, "kiln-build-ended".into()).map(|mut event| {
                event.message = Some(message);
                event.data = Some(json!({"reason": "pipeline"}));
                event
            })
        });
        let queued = self
            .queue_build(
                project,
                &run_id,
                Queued {
                    repo: &repo,
                    branch: &branch,
                    commit: Some(&commit),
                    commit_message: Some(&files.message),
                    request: &request,
                    priority: priority.get() as i64,
                    rollback_of: None,
                },
                end_event.into_iter().collect(),
                plans,
            )
            .await?;
        let requested_by = request.by.as_ref().and_then(Requester::label);
        self.inner
            .deployer
            .refresh_quietly(queued.id, requested_by)
            .await;
        self.answer(
            project,
            &queued,
            &branch,
            &commit,
            Some(files.message),
            priority.get() as i64,
        )
        .await
    }

    /// A script deployment's rollback: a build of its own (cause `rollback`, `data.rollbackOf`
    /// naming `target`) at `target`'s branch and commit whose one job is `deploy_job` — the
    /// deploy step `target` ran, with its stored spec — queued at once, marked with
    /// `rerun` so the claim hands the agent `target`'s artifacts of the steps it depends
    /// on and the deployer records the deployment as a rollback. The steps it depends on
    /// are not run again: their artifacts are those `target` made.
    pub async fn rerun_deploy_step(
        &self,
        project: &Project,
        target: &BuildRecord,
        deploy_job: &JobRecord,
        rerun: Rerun,
        by: Option<Requester>,
    ) -> Result<TriggeredBuild, ServiceError> {
        let Some(repo) = project.repo.clone() else {
            return Err(unprocessable(
                "repo",
                format!(
                    "project '{}' has no repository any more, so its deploy step cannot run again: set one with PUT /api/v1/projects/{}/repo",
                    project.slug, project.slug
                ),
            ));
        };
        // Checked at every trigger: the policy may have changed since the build ran.
        self.project_repo_access(project, &repo).await?;
        let (Some(branch), Some(commit)) =
            (target.state.branch.clone(), target.state.commit.clone())
        else {
            return Err(unprocessable(
                "to",
                format!(
                    "to: build {} has no branch and commit to run its deploy step at",
                    target.state.run_id
                ),
            ));
        };
        let mut spec = JobSpec::from_json(&deploy_job.spec);
        spec.rerun = Some(rerun);
        let plan = JobPlan {
            step: deploy_job.step.clone(),
            position: 0,
            depends_on: Vec::new(),
            labels: deploy_job.labels.clone(),
            state: JobState::Queued,
            spec: spec.to_json(),
            avoid_agent_id: None,
        };
        self.follow_steps(project.id, std::slice::from_ref(&plan));
        let request = TriggerRequest {
            branch: Some(branch.clone()),
            commit: Some(commit.clone()),
            priority: None,
            cause: "rollback",
            retry_of: None,
            by,
            deploys_to: None,
            avoid_agents_of: None,
        };
        let run_id = uuid::Uuid::now_v7().to_string();
        let target_run_id = target.state.run_id.to_string();
        let queued = self
            .queue_build(
                project,
                &run_id,
                Queued {
                    repo: &repo,
                    branch: &branch,
                    commit: Some(&commit),
                    commit_message: None,
                    request: &request,
                    priority: deploy_job.priority,
                    rollback_of: Some(&target_run_id),
                },
                Vec::new(),
                vec![plan],
            )
            .await?;
        let requested_by = request.by.as_ref().and_then(Requester::label);
        self.inner
            .deployer
            .refresh_quietly(queued.id, requested_by)
            .await;
        self.answer(
            project,
            &queued,
            &branch,
            &commit,
            None,
            deploy_job.priority,
        )
        .await
    }

    /// A rebuild to verify: each plan avoids the agent that ran its step in build
    /// `original`, when another agent that could run it (its labels, heard from within a
    /// lease) is registered; otherwise holding the job back would only delay a fleet
    /// that has no one else to offer.
    async fn avoid_original_agents(
        &self,
        original: i64,
        plans: &mut [JobPlan],
    ) -> Result<(), ServiceError> {
        let ran = self.store().jobs_of_build(original).await?;
        let agents = self.store().list_agents().await?;
        let now = self.now();
        let lease = self.lease_ms();
        for plan in plans.iter_mut() {
            let ran_on = ran
                .iter()
                .find(|job| job.step == plan.step)
                .and_then(|job| job.agent_id);
            plan.avoid_agent_id = ran_on.filter(|avoided| {
                agents.iter().any(|agent| {
                    agent.id != *avoided
                        && now.saturating_sub(agent.last_seen_at) <= lease
                        && plan.labels.iter().all(|label| agent.labels.contains(label))
                })
            });
        }
        Ok(())
    }

    /// Sets each cached step's key for the commit (`kiln_core::cache_key`, as the agent
    /// computes it from its checkout) from the key files in the mirror, so the agent
    /// recommendation knows which agents hold the job's cache. A key file that is not a
    /// plain workspace-relative path leaves the key unknown (the agent refuses it too).
    async fn add_cache_keys(&self, project: &Project, commit: &str, plans: &mut [JobPlan]) {
        if !plans
            .iter()
            .any(|plan| plan.spec.get("cache").is_some_and(|c| !c.is_null()))
        {
            return;
        }
        let _one_at_a_time = self.inner.git.lock().await;
        let Ok(mirror) = Mirror::open(
            self.inner
                .config
                .git_dir
                .join(format!("project-{}.git", project.id)),
        )
        .await
        else {
            return;
        };
        for plan in plans.iter_mut() {
            let mut spec = JobSpec::from_json(&plan.spec);
            let Some((key_files, _)) = &spec.cache else {
                continue;
            };
            let mut contents = Vec::with_capacity(key_files.len());
            let mut readable = true;
            for key_file in key_files {
                let parts: Vec<&str> = key_file
                    .split('/')
                    .filter(|part| !part.is_empty() && *part != ".")
                    .collect();
                if key_file.starts_with('/') || parts.is_empty() || parts.contains(&"..") {
                    readable = false;
                    break;
                }
                contents.push(mirror.read_file(commit, &parts.join("/")).await);
            }
            if !readable {
                continue;
            }
            spec.cache_key = Some(kiln_core::cache_key::cache_key(
                &plan.step,
                key_files
                    .iter()
                    .zip(&contents)
                    .map(|(path, bytes)| (path.as_str(), bytes.as_deref())),
            ));
            if let Some(key) = &spec.cache_key {
                plan.spec["cacheKey"] = serde_json::json!(key);
            }
        }
    }

    /// Writes `build_queued`, then `more` events of the same build and the `jobs` in the
    /// same transaction, and returns the new build.
    async fn queue_build(
        &self,
        project: &Project,
        run_id: &str,
        queued: Queued<'_>,
        more: Vec<NewEvent>,
        jobs: Vec<JobPlan>,
    ) -> Result<BuildRecord, ServiceError> {
        let mut event = events::event(
            run_id,
            CoreEventType::BuildQueued,
            "kiln-build-queued".into(),
        )
        .ok_or_else(|| ServiceError::Unavailable("could not make a run id; retry".into()))?;
        event.repo = Some(mask_url(queued.repo));
        event.branch = Some(queued.branch.to_owned());
        event.commit = queued.commit.map(str::to_owned);
        let mut data = json!({
            "trigger": queued.request.cause,
            "priority": queued.priority,
            "commitMessage": queued.commit_message,
            "retryOf": queued.request.retry_of,
            "by": queued.request.by.as_ref().and_then(|by| by.email.clone()),
        });
        if let Some(rollback_of) = queued.rollback_of {
            data["rollbackOf"] = json!(rollback_of);
        }
        if let Some(by) = &queued.request.by {
            data["via"] = json!(by.via);
            if let Some(name) = &by.name {
                data["byName"] = json!(name);
            }
            if let Some((id, name)) = &by.token {
                data["token"] = json!({"id": id, "name": name});
            }
        }
        event.data = Some(data);
        let jobs = (!jobs.is_empty()).then(|| NewJobs {
            run_id: event.run_id.clone(),
            priority: queued.priority,
            plans: jobs,
        });
        let has_jobs = jobs.is_some();
        let mut events = vec![event];
        events.extend(more);
        self.submit_request(IngestRequest {
            project_id: project.id,
            events,
            precondition: Precondition::None,
            jobs,
        })
        .await?
        .map_err(|rejection| ServiceError::Conflict {
            code: "conflict",
            message: rejection.to_string(),
            field: None,
        })?;
        if has_jobs {
            self.work_changed();
        }
        self.store()
            .build_by_run_id(run_id)
            .await?
            .ok_or_else(|| ServiceError::Unavailable("the new build vanished; retry".into()))
    }

    /// A build whose repository could not be fetched: it fails in its `checkout` step,
    /// with git's message in that step's log.
    async fn failed_checkout(
        &self,
        project: &Project,
        repo: &str,
        branch: &str,
        commit: Option<&str>,
        request: &TriggerRequest,
        message: String,
    ) -> Result<TriggeredBuild, ServiceError> {
        let plan = JobPlan {
            step: "checkout".into(),
            position: 0,
            depends_on: Vec::new(),
            labels: Vec::new(),
            state: JobState::Failed,
            spec: json!({}),
            avoid_agent_id: None,
        };
        // The build, its failed job and its end are one transaction; the log follows.
        let run_id = uuid::Uuid::now_v7().to_string();
        let text = format!("cannot fetch the repository: {message}");
        let failure = [
            events::stage_event(
                &run_id,
                CoreEventType::StageStarted,
                "checkout",
                "kiln-checkout-started".into(),
                None,
                json!({}),
            ),
            events::stage_event(
                &run_id,
                CoreEventType::StageFailed,
                "checkout",
                "kiln-checkout-failed".into(),
                Some(text.clone()),
                json!({"reason": "checkout"}),
            ),
            events::event(
                &run_id,
                CoreEventType::BuildFailed,
                "kiln-build-ended".into(),
            )
            .map(|mut event| {
                event.message = Some(text.clone());
                event.data = Some(json!({"reason": "checkout"}));
                event
            }),
        ];
        let queued = Queued {
            repo,
            branch,
            commit,
            commit_message: None,
            request,
            priority: 5,
            rollback_of: None,
        };
        let build = self
            .queue_build(
                project,
                &run_id,
                queued,
                failure.into_iter().flatten().collect(),
                vec![plan],
            )
            .await?;
        // The agents' log format (`kiln_agent::logs`): time, the `kiln` tag, the text.
        let stamp = self.now().to_rfc3339();
        let mut log = format!("{stamp} kiln cannot fetch {}:\n", mask_url(repo));
        for line in message.lines() {
            log.push_str(&format!("{stamp} kiln {line}\n"));
        }
        if let Some(job) = self.store().jobs_of_build(build.id).await?.first() {
            let cap = self.inner.config.log_cap_bytes as i64;
            self.store()
                .append_log(job.id, 0, log.as_bytes(), cap)
                .await?;
        }
        self.answer(project, &build, branch, commit.unwrap_or_default(), None, 5)
            .await
    }

    async fn answer(
        &self,
        project: &Project,
        build: &BuildRecord,
        branch: &str,
        commit: &str,
        commit_message: Option<String>,
        priority: i64,
    ) -> Result<TriggeredBuild, ServiceError> {
        let status = self
            .store()
            .build_by_run_id(build.state.run_id.as_str())
            .await?
            .map(|b| b.state.status)
            .unwrap_or(build.state.status);
        let jobs = self.store().jobs_of_build(build.id).await?;
        Ok(TriggeredBuild {
            run_id: build.state.run_id.to_string(),
            number: build.number,
            status: status.as_str().into(),
            branch: branch.into(),
            commit: commit.into(),
            commit_message,
            project: project.slug.clone(),
            priority,
            jobs: jobs.iter().map(job_dto).collect(),
        })
    }
}
