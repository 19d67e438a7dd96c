//! Jobs: one per pipeline step of a build Kiln runs. Their states, the plan made from a
//! pipeline at trigger time, and how a build's jobs advance as steps end.
//!
//! Everything is derived from the jobs' stored states, so advancing is idempotent: the
//! server runs it after every change and again from its reaper, and a crash between two
//! writes is repaired by the next run.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

use crate::deployments::{DeploySpec, DeployTarget, EnvironmentName};
use crate::pipeline::{AutomaticRetry, Pipeline, Priority, StepFailure, parse::parse_retry_on};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for the steps it depends on.
    Blocked,
    /// Ready; waiting for an agent.
    Queued,
    /// Claimed by an agent, under a lease.
    Running,
    Passed,
    Failed,
    Cancelled,
    /// Not run because a step it depends on did not pass.
    Skipped,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        Self::Blocked,
        Self::Queued,
        Self::Running,
        Self::Passed,
        Self::Failed,
        Self::Cancelled,
        Self::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Passed | Self::Failed | Self::Cancelled | Self::Skipped
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to create for a triggered build.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPlan {
    pub step: String,
    /// Position in the pipeline file, from 0.
    pub position: i64,
    pub depends_on: Vec<String>,
    /// Labels an agent must all offer.
    pub labels: Vec<String>,
    pub state: JobState,
    /// What the agent runs: see [`JobSpec`].
    pub spec: Value,
    /// An agent a claim leaves the job to others for a while (a rebuild to verify
    /// avoids the agent that ran the step in the original build); `None` for any agent.
    pub avoid_agent_id: Option<i64>,
}

/// The part of a job the agent needs to run it, stored as JSON with the job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub commands: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_secs: u64,
    pub cache: Option<(Vec<String>, Vec<String>)>,
    /// The cache's key for this build's commit (`crate::cache_key`), computed by the
    /// server at trigger time to know which agents hold it warm; `None` without a
    /// cache or when the key files could not be read.
    pub cache_key: Option<String>,
    pub image: Option<String>,
    pub network: bool,
    pub retry: Option<AutomaticRetry>,
    /// Names of the project secrets the step receives on this build's branch.
    pub secrets: Vec<String>,
    /// Globs of the JUnit reports the agent uploads after the step.
    pub test_reports: Vec<String>,
    /// Globs of the files uploaded as the build's artifacts after the step succeeds.
    pub artifacts: Vec<String>,
    /// Whether globs matching nothing fail the step.
    pub artifacts_required: bool,
    /// Whether the artifacts of the steps it depends on are downloaded first.
    pub needs_artifacts: bool,
    /// What the step deploys when the build succeeds.
    pub deploy: Option<DeploySpec>,
    /// Set on the one job of a script deployment's rollback: the earlier build's deploy
    /// step run again, with that build's artifacts.
    pub rerun: Option<Rerun>,
}

/// A rollback's re-run of an earlier build's deploy step (a build of its own, see
/// `kiln-server`'s `deploy` module): the deployment it rolls back to, and where the
/// artifacts the step receives come from (the earlier build's steps it depends on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rerun {
    /// The deployment of the earlier build whose step runs again (`rollback_of`).
    pub deployment_id: i64,
    /// The earlier build: its artifacts are the step's.
    pub build_id: i64,
    /// The steps of that build whose artifacts the step receives (those it depends on,
    /// directly or not; none with `needs_artifacts: false`).
    pub artifact_steps: Vec<String>,
}

impl Rerun {
    fn to_json(&self) -> Value {
        json!({
            "deploymentId": self.deployment_id,
            "buildId": self.build_id,
            "artifactSteps": self.artifact_steps,
        })
    }

    fn from_json(value: &Value) -> Option<Rerun> {
        Some(Rerun {
            deployment_id: value.get("deploymentId")?.as_i64()?,
            build_id: value.get("buildId")?.as_i64()?,
            artifact_steps: value
                .get("artifactSteps")
                .and_then(Value::as_array)
                .map(|steps| {
                    steps
                        .iter()
                        .filter_map(|step| step.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

impl JobSpec {
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "commands": self.commands,
            "env": self.env,
            "timeoutSecs": self.timeout_secs,
            "cache": self.cache.as_ref().map(|(key_files, paths)| json!({"keyFiles": key_files, "paths": paths})),
            "image": self.image,
            "network": self.network,
            "retry": self.retry.as_ref().map(|retry| json!({
                "on": retry.on.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "limit": retry.limit,
            })),
            "secrets": self.secrets,
            "testReports": self.test_reports,
            "artifacts": self.artifacts,
            "artifactsRequired": self.artifacts_required,
            "needsArtifacts": self.needs_artifacts,
            "deploy": self.deploy.as_ref().map(|deploy| json!({
                "environment": deploy.environment.as_str(),
                "publish": deploy.publish_dir(),
                "url": deploy.url(),
            })),
        });
        if let Some(cache_key) = &self.cache_key {
            value["cacheKey"] = json!(cache_key);
        }
        if let Some(rerun) = &self.rerun {
            value["rerunOf"] = rerun.to_json();
        }
        value
    }

    /// Reads a spec written by [`JobSpec::to_json`]; unknown or missing parts take their
    /// defaults rather than failing, so an old row stays runnable.
    pub fn from_json(value: &Value) -> JobSpec {
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|item| item.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let retry = value.get("retry").filter(|v| !v.is_null()).map(|retry| {
            AutomaticRetry::new(
                retry
                    .get("on")
                    .map(|on| {
                        strings(on)
                            .iter()
                            .filter_map(|raw| parse_retry_on(raw))
                            .collect()
                    })
                    .unwrap_or_default(),
                retry.get("limit").and_then(Value::as_u64).unwrap_or(0) as u32,
            )
        });
        let deploy = value
            .get("deploy")
            .filter(|v| !v.is_null())
            .and_then(|deploy| {
                let environment = EnvironmentName::parse(
                    "environment",
                    deploy.get("environment").and_then(Value::as_str)?,
                )
                .ok()?;
                let target = match (
                    deploy.get("publish").and_then(Value::as_str),
                    deploy.get("url").and_then(Value::as_str),
                ) {
                    (Some(dir), _) => DeployTarget::Publish(dir.to_owned()),
                    (None, Some(url)) => DeployTarget::Url(url.to_owned()),
                    (None, None) => return None,
                };
                Some(DeploySpec {
                    environment,
                    target,
                })
            });
        JobSpec {
            deploy,
            rerun: value.get("rerunOf").and_then(Rerun::from_json),
            secrets: value.get("secrets").map(strings).unwrap_or_default(),
            test_reports: value.get("testReports").map(strings).unwrap_or_default(),
            artifacts: value.get("artifacts").map(strings).unwrap_or_default(),
            artifacts_required: value
                .get("artifactsRequired")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            needs_artifacts: value
                .get("needsArtifacts")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            commands: value.get("commands").map(strings).unwrap_or_default(),
            env: value
                .get("env")
                .and_then(Value::as_object)
                .map(|env| {
                    env.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            timeout_secs: value
                .get("timeoutSecs")
                .and_then(Value::as_u64)
                .unwrap_or(crate::limits::DEFAULT_STEP_TIMEOUT_SECS),
            cache: value.get("cache").filter(|v| !v.is_null()).map(|cache| {
                (
                    cache.get("keyFiles").map(strings).unwrap_or_default(),
                    cache.get("paths").map(strings).unwrap_or_default(),
                )
            }),
            cache_key: value
                .get("cacheKey")
                .and_then(Value::as_str)
                .map(str::to_owned),
            image: value
                .get("image")
                .and_then(Value::as_str)
                .map(str::to_owned),
            network: value
                .get("network")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            retry,
        }
    }

    /// Whether an attempt that failed with `failure` runs again, after `attempt` attempts.
    pub fn retries_after(&self, failure: StepFailure, attempt: i64) -> bool {
        let retries_so_far = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.retry
            .as_ref()
            .is_some_and(|retry| retry.allows(failure, retries_so_far))
    }
}

/// The jobs of a build of `pipeline` on `branch`: the steps that run on the branch, each
/// depending on the steps it waits for on that branch. Jobs without dependencies start
/// queued, the others blocked.
pub fn plan(pipeline: &Pipeline, branch: &str) -> Vec<JobPlan> {
    let dag = pipeline.dag_for_branch(branch);
    pipeline
        .steps
        .iter()
        .enumerate()
        .filter(|(_, step)| dag.contains(step.name.as_str()))
        .map(|(position, step)| {
            let depends_on: Vec<String> = dag
                .dependencies(step.name.as_str())
                .unwrap_or_default()
                .into_iter()
                .map(|name| name.as_str().to_owned())
                .collect();
            let spec = JobSpec {
                commands: step.run.clone(),
                env: pipeline.env_for(step),
                timeout_secs: step.timeout.as_secs(),
                cache: step
                    .cache
                    .as_ref()
                    .map(|cache| (cache.key_files.clone(), cache.paths.clone())),
                cache_key: None,
                image: step.image.clone(),
                network: step.network,
                retry: step.retry.clone(),
                secrets: step
                    .secrets
                    .iter()
                    .filter(|secret| secret.given_on(branch))
                    .map(|secret| secret.name.as_str().to_owned())
                    .collect(),
                test_reports: step.test_reports.clone(),
                artifacts: step.artifacts.clone(),
                artifacts_required: step.artifacts_required,
                needs_artifacts: step.needs_artifacts,
                deploy: step.deploy.clone(),
                rerun: None,
            };
            JobPlan {
                step: step.name.as_str().to_owned(),
                position: position as i64,
                state: if depends_on.is_empty() {
                    JobState::Queued
                } else {
                    JobState::Blocked
                },
                depends_on,
                labels: step.agents.iter().map(|l| l.as_str().to_owned()).collect(),
                spec: spec.to_json(),
                avoid_agent_id: None,
            }
        })
        .collect()
}

/// The priority of a triggered build: the trigger's, else the branch's, else the
/// pipeline's, else the default (5).
pub fn build_priority(
    requested: Option<Priority>,
    branch: Option<Priority>,
    pipeline: Option<&Pipeline>,
) -> Priority {
    requested
        .or(branch)
        .or(pipeline.and_then(|p| p.priority))
        .unwrap_or(Priority::DEFAULT)
}

/// One job as `advance` sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub step: String,
    pub state: JobState,
    pub depends_on: Vec<String>,
}

/// How a build ends once every job has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildOutcome {
    Passed,
    /// The steps that failed, in order.
    Failed(Vec<String>),
    Cancelled,
}

/// What the jobs of one build should do next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advance {
    /// Blocked jobs whose dependencies all passed: queue them.
    pub queue: Vec<String>,
    /// Blocked jobs with a dependency that did not pass: skip them.
    pub skip: Vec<String>,
    /// Set when every job is (or is being made) terminal.
    pub outcome: Option<BuildOutcome>,
}

/// Decides the next transitions of a build's jobs from their current states.
pub fn advance(jobs: &[JobView]) -> Advance {
    let state_of = |step: &str| {
        jobs.iter()
            .find(|job| job.step == step)
            .map(|job| job.state)
    };
    let mut result = Advance::default();
    // Skipping propagates: a job skipped now makes its dependents skipped too, so
    // iterate until nothing changes (jobs are few; the pipeline caps them).
    let mut effective: Vec<JobState> = jobs.iter().map(|job| job.state).collect();
    loop {
        let mut changed = false;
        for (index, job) in jobs.iter().enumerate() {
            if effective[index] != JobState::Blocked {
                continue;
            }
            let dependency_states: Vec<JobState> = job
                .depends_on
                .iter()
                .map(|dependency| {
                    jobs.iter()
                        .position(|other| &other.step == dependency)
                        .map(|i| effective[i])
                        .or_else(|| state_of(dependency))
                        // A dependency missing from the build cannot pass.
                        .unwrap_or(JobState::Skipped)
                })
                .collect();
            if dependency_states.iter().all(|s| *s == JobState::Passed) {
                effective[index] = JobState::Queued;
                result.queue.push(job.step.clone());
                changed = true;
            } else if dependency_states
                .iter()
                .any(|s| s.is_terminal() && *s != JobState::Passed)
            {
                effective[index] = JobState::Skipped;
                result.skip.push(job.step.clone());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if !jobs.is_empty() && effective.iter().all(|state| state.is_terminal()) {
        let failed: Vec<String> = jobs
            .iter()
            .zip(&effective)
            .filter(|(_, state)| **state == JobState::Failed)
            .map(|(job, _)| job.step.clone())
            .collect();
        result.outcome = Some(if !failed.is_empty() {
            BuildOutcome::Failed(failed)
        } else if effective.contains(&JobState::Cancelled) {
            BuildOutcome::Cancelled
        } else {
            BuildOutcome::Passed
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(step: &str, state: JobState, depends_on: &[&str]) -> JobView {
        JobView {
            step: step.into(),
            state,
            depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn plan_queues_roots_and_blocks_dependents() {
        let pipeline = Pipeline::parse(
            "priority: 3\nenv: {A: '1'}\nsteps:\n  - name: install\n    run: npm ci\n    cache: {key_files: package-lock.json, paths: node_modules}\n  - name: test\n    run: [npm test, npm run lint]\n    depends_on: install\n    agents: [linux]\n    env: {B: '2'}\n    retry: {automatic: {on: [agent_lost], limit: 1}}\n  - name: deploy\n    run: ./deploy\n    depends_on: test\n    branches: main\n",
        )
        .unwrap();
        let jobs = plan(&pipeline, "feature");
        assert_eq!(jobs.len(), 2, "deploy runs only on main");
        assert_eq!(jobs[0].state, JobState::Queued);
        assert_eq!(jobs[1].state, JobState::Blocked);
        assert_eq!(jobs[1].depends_on, vec!["install"]);
        assert_eq!(jobs[1].labels, vec!["linux"]);
        let spec = JobSpec::from_json(&jobs[1].spec);
        assert_eq!(spec.commands, vec!["npm test", "npm run lint"]);
        assert_eq!(spec.env["A"], "1");
        assert_eq!(spec.env["B"], "2");
        assert!(spec.retries_after(StepFailure::AgentLost, 1));
        assert!(!spec.retries_after(StepFailure::AgentLost, 2), "limit 1");
        assert!(!spec.retries_after(StepFailure::ExitStatus(1), 1));
        let install = JobSpec::from_json(&jobs[0].spec);
        assert_eq!(
            install.cache,
            Some((
                vec!["package-lock.json".into()],
                vec!["node_modules".into()]
            ))
        );
        assert_eq!(plan(&pipeline, "main").len(), 3);
    }

    #[test]
    fn advance_queues_skips_and_decides_the_outcome() {
        let jobs = [
            view("a", JobState::Passed, &[]),
            view("b", JobState::Blocked, &["a"]),
            view("c", JobState::Failed, &[]),
            view("d", JobState::Blocked, &["c"]),
            view("e", JobState::Blocked, &["d"]),
        ];
        let next = advance(&jobs);
        assert_eq!(next.queue, vec!["b"]);
        assert_eq!(next.skip, vec!["d", "e"], "skipping propagates");
        assert_eq!(next.outcome, None, "b still has to run");

        let done = [
            view("a", JobState::Passed, &[]),
            view("c", JobState::Failed, &[]),
            view("d", JobState::Blocked, &["c"]),
        ];
        assert_eq!(
            advance(&done).outcome,
            Some(BuildOutcome::Failed(vec!["c".into()]))
        );
        let passed = [
            view("a", JobState::Passed, &[]),
            view("b", JobState::Skipped, &[]),
        ];
        assert_eq!(advance(&passed).outcome, Some(BuildOutcome::Passed));
        let cancelled = [
            view("a", JobState::Passed, &[]),
            view("b", JobState::Cancelled, &[]),
        ];
        assert_eq!(advance(&cancelled).outcome, Some(BuildOutcome::Cancelled));
        assert_eq!(advance(&[]).outcome, None);
    }

    #[test]
    fn job_states_round_trip() {
        for state in JobState::ALL {
            assert_eq!(JobState::from_name(state.as_str()), Some(state));
        }
        assert!(JobState::Skipped.is_terminal());
        assert!(!JobState::Running.is_terminal());
    }
}

/// The steps `step` depends on, directly or through others (whose artifacts it
/// receives), given each step's `depends_on`; `step` itself is not included.
pub fn ancestors<'a>(
    step: &str,
    depends_on: impl Fn(&str) -> Option<&'a [String]>,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<String> = depends_on(step).map(<[String]>::to_vec).unwrap_or_default();
    while let Some(next) = stack.pop() {
        if next != step && seen.insert(next.clone()) {
            stack.extend(
                depends_on(&next)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default(),
            );
        }
    }
    seen
}

#[cfg(test)]
mod ancestor_tests {
    use std::collections::BTreeMap;

    #[test]
    fn ancestors_are_transitive_and_exclude_the_step() {
        let graph: BTreeMap<&str, Vec<String>> = BTreeMap::from([
            ("install", vec![]),
            ("lint", vec!["install".to_owned()]),
            ("build", vec!["install".to_owned()]),
            ("deploy", vec!["build".to_owned(), "lint".to_owned()]),
        ]);
        let lookup = |step: &str| graph.get(step).map(Vec::as_slice);
        let names = |set: std::collections::BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
        assert_eq!(
            names(super::ancestors("deploy", lookup)),
            ["build", "install", "lint"]
        );
        assert_eq!(names(super::ancestors("build", lookup)), ["install"]);
        assert!(super::ancestors("install", lookup).is_empty());
        assert!(super::ancestors("missing", lookup).is_empty());
    }
}

#[cfg(test)]
mod rerun_tests {
    use super::*;

    /// A rollback's re-run survives the spec's round trip; a spec without one (every
    /// job written before) reads as none.
    #[test]
    fn a_rerun_survives_the_spec_round_trip() {
        let mut spec = JobSpec::from_json(&json!({"commands": ["./deploy.sh"]}));
        assert_eq!(spec.rerun, None);
        spec.rerun = Some(Rerun {
            deployment_id: 7,
            build_id: 70,
            artifact_steps: vec!["build".into(), "install".into()],
        });
        let written = spec.to_json();
        assert_eq!(
            written["rerunOf"],
            json!({"deploymentId": 7, "buildId": 70, "artifactSteps": ["build", "install"]})
        );
        assert_eq!(JobSpec::from_json(&written), spec);
        assert_eq!(
            JobSpec::from_json(&json!({"rerunOf": {"buildId": 70}})).rerun,
            None,
            "a re-run names the deployment it rolls back to"
        );
    }
}
