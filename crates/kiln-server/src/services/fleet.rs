//! Agents and the queue as a service: the agents with their health and running jobs,
//! the queued jobs with why each waits and the agent recommended for each (the API and
//! the dashboard's fleet pages call these).

use crate::AppState;
use crate::auth::Caller;
use crate::scheduler::{CACHE_DAYS, HISTORY_DAYS};
use crate::service_error::ServiceError;
use crate::wire::job_dto;
use kiln_core::jobs::JobSpec;
use kiln_core::recommend::{self, AgentOutlook, JobOutlook};
use kiln_core::{JobState, Millis};
use kiln_protocol::{AgentDto, AgentList, JobList};
use kiln_store::{AgentRecord, JobRecord};
use std::collections::HashMap;

/// Most unfinished jobs the queue view lists.
pub(crate) const QUEUE_LIMIT: i64 = 1000;

/// Whether an agent was heard from within a lease.
pub(crate) fn connected(state: &AppState, agent: &AgentRecord) -> bool {
    let lease = state.scheduler.config().job_lease.as_millis() as i64;
    state.clock.now().saturating_sub(agent.last_seen_at) <= lease
}

/// Every agent with its health and the running jobs the caller may read (the agents
/// API and the dashboard's agents page).
pub(crate) async fn agent_list(
    state: &AppState,
    caller: &Caller,
) -> Result<AgentList, ServiceError> {
    let agents = state.store.list_agents().await?;
    let jobs = state.store.unfinished_jobs(QUEUE_LIMIT).await?;
    let mut running: HashMap<i64, Vec<&JobRecord>> = HashMap::new();
    for job in jobs.iter().filter(|job| job.state == JobState::Running) {
        if let Some(agent) = job.agent_id {
            running.entry(agent).or_default().push(job);
        }
    }
    Ok(AgentList {
        agents: agents
            .iter()
            .map(|agent| AgentDto {
                id: agent.id,
                name: agent.name.clone(),
                labels: agent.labels.clone(),
                concurrency: agent.concurrency,
                executor: agent.executor.clone(),
                hostname: agent.hostname.clone(),
                version: agent.version.clone(),
                health: if connected(state, agent) {
                    "connected"
                } else {
                    "lost"
                }
                .into(),
                registered_at: agent.registered_at.to_rfc3339(),
                last_seen_at: agent.last_seen_at.to_rfc3339(),
                metrics: agent.metrics.clone(),
                jobs: running
                    .get(&agent.id)
                    .map(|jobs| {
                        jobs.iter()
                            .filter(|job| caller.can_read(job.project_id))
                            .map(|job| job_dto(job))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect(),
    })
}

/// The unfinished jobs the caller may read, in dispatch order, each waiting one with
/// `waitingFor` (the queue API and the dashboard's queue page).
pub(crate) async fn queued_jobs(
    state: &AppState,
    caller: &Caller,
) -> Result<JobList, ServiceError> {
    let jobs = state.store.unfinished_jobs(QUEUE_LIMIT).await?;
    let agents: Vec<AgentRecord> = state
        .store
        .list_agents()
        .await?
        .into_iter()
        .filter(|agent| connected(state, agent))
        .collect();
    let mut running_by_agent: HashMap<i64, i64> = HashMap::new();
    let mut running_by_project: HashMap<i64, i64> = HashMap::new();
    for job in jobs.iter().filter(|job| job.state == JobState::Running) {
        *running_by_project.entry(job.project_id).or_default() += 1;
        if let Some(agent) = job.agent_id {
            *running_by_agent.entry(agent).or_default() += 1;
        }
    }
    let recommendations = recommendations(state, &jobs, &agents, &running_by_agent).await?;
    let mut limits: HashMap<i64, Option<i64>> = HashMap::new();
    let mut listed = Vec::new();
    for job in jobs.iter().filter(|job| caller.can_read(job.project_id)) {
        let mut dto = job_dto(job);
        dto.waiting_for = match job.state {
            JobState::Blocked => Some(format!(
                "dependency: waiting for {}",
                job.depends_on.join(", ")
            )),
            JobState::Queued => {
                let limit = match limits.get(&job.project_id) {
                    Some(limit) => *limit,
                    None => {
                        let limit = state
                            .store
                            .project_by_id(job.project_id)
                            .await?
                            .and_then(|p| p.max_concurrency);
                        limits.insert(job.project_id, limit);
                        limit
                    }
                };
                let matching: Vec<&AgentRecord> = agents
                    .iter()
                    .filter(|agent| job.labels.iter().all(|label| agent.labels.contains(label)))
                    .collect();
                let running = running_by_project
                    .get(&job.project_id)
                    .copied()
                    .unwrap_or(0);
                Some(if matching.is_empty() {
                    if job.labels.is_empty() {
                        "no matching agent: no agent is connected".to_owned()
                    } else {
                        format!(
                            "no matching agent: no connected agent has labels {}",
                            job.labels.join(", ")
                        )
                    }
                } else if limit.is_some_and(|limit| running >= limit) {
                    format!(
                        "concurrency: project {} runs {running} of at most {} jobs",
                        job.project_slug,
                        limit.unwrap_or(0)
                    )
                } else if matching.iter().all(|agent| {
                    running_by_agent.get(&agent.id).copied().unwrap_or(0) >= agent.concurrency
                }) {
                    "concurrency: every matching agent is busy".to_owned()
                } else {
                    "agent: about to be claimed".to_owned()
                })
            }
            _ => None,
        };
        if let Some((agent, reason)) = recommendations.get(&job.id) {
            dto.recommended_agent = Some(agent.clone());
            dto.recommendation = Some(reason.clone());
        }
        listed.push(dto);
    }
    Ok(JobList { jobs: listed })
}

/// For each queued job, the connected agent its labels allow that is expected to finish
/// it soonest, with the reason (`kiln_core::recommend`): the step's recent successful
/// runs per agent, each agent's load, and which agents hold the job's cache key.
async fn recommendations(
    state: &AppState,
    jobs: &[JobRecord],
    connected_agents: &[AgentRecord],
    running_by_agent: &HashMap<i64, i64>,
) -> Result<HashMap<i64, (String, String)>, ServiceError> {
    let queued: Vec<&JobRecord> = jobs
        .iter()
        .filter(|job| job.state == JobState::Queued)
        .collect();
    let mut steps: Vec<(i64, String)> = queued
        .iter()
        .map(|job| (job.project_id, job.step.clone()))
        .collect();
    steps.sort();
    steps.dedup();
    let mut answer = HashMap::new();
    if steps.is_empty() || connected_agents.is_empty() {
        return Ok(answer);
    }
    let now = state.clock.now();
    let day_ms = 24 * 3600 * 1000;
    let runs = state
        .store
        .step_runs(
            &steps,
            Millis(now.0 - HISTORY_DAYS * day_ms),
            recommend::RUNS_PER_AGENT as i64,
        )
        .await?;
    let caches = state
        .store
        .agent_caches(&steps, Millis(now.0 - CACHE_DAYS * day_ms))
        .await?;
    // (project, step) → agent → durations.
    let mut history: HashMap<(i64, &str), HashMap<i64, Vec<i64>>> = HashMap::new();
    for run in &runs {
        history
            .entry((run.project_id, run.step.as_str()))
            .or_default()
            .entry(run.agent_id)
            .or_default()
            .push(run.duration_ms);
    }
    let warm: std::collections::HashSet<(i64, &str)> = caches
        .iter()
        .map(|cache| (cache.agent_id, cache.cache_key.as_str()))
        .collect();
    let no_runs: HashMap<i64, Vec<i64>> = HashMap::new();
    for job in queued {
        let per_agent = history
            .get(&(job.project_id, job.step.as_str()))
            .unwrap_or(&no_runs);
        let all: Vec<i64> = per_agent.values().flatten().copied().collect();
        let cache_key = JobSpec::from_json(&job.spec).cache_key;
        let outlook = JobOutlook {
            fleet_median_ms: recommend::median(&all),
            cache_key: cache_key.as_deref(),
        };
        let eligible: Vec<AgentOutlook<'_>> = connected_agents
            .iter()
            .filter(|agent| job.labels.iter().all(|label| agent.labels.contains(label)))
            .map(|agent| AgentOutlook {
                agent_id: agent.id,
                name: &agent.name,
                running: running_by_agent.get(&agent.id).copied().unwrap_or(0),
                capacity: agent.concurrency,
                own_runs_ms: per_agent.get(&agent.id).map_or(&[], Vec::as_slice),
                warm_cache: cache_key
                    .as_deref()
                    .is_some_and(|key| warm.contains(&(agent.id, key))),
            })
            .collect();
        if let Some(best) = recommend::recommend(&outlook, &eligible)
            && let Some(agent) = connected_agents.iter().find(|a| a.id == best.agent_id)
        {
            answer.insert(job.id, (agent.name.clone(), best.reason));
        }
    }
    Ok(answer)
}
