//! Agents and the queue as a service: the agents with their health and running jobs,
//! the queued jobs with why each waits (the API and the dashboard's fleet pages call
//! these).

use crate::AppState;
use crate::auth::Caller;
use crate::service_error::ServiceError;
use crate::wire::job_dto;
use kiln_core::JobState;
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
        listed.push(dto);
    }
    Ok(JobList { jobs: listed })
}
