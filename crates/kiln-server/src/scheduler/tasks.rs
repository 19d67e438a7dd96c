//! The scheduler's background work, one task per replica: fail or requeue jobs whose lease
//! expired, advance builds whose jobs are all waiting or ended (repairing a crash
//! between two writes), and poll auto-build branches for new commits.

use std::time::Duration;

use tokio::sync::watch;

use super::git::remote_branches;
use super::{Scheduler, TriggerRequest};

const SCAN_LIMIT: i64 = 200;

/// How long after its build ended a `kiln run`'s log may still arrive; a reported job
/// still running then is ended with its build (its reporter stopped without saying so).
const REPORTER_GRACE_MS: i64 = 60_000;

pub(crate) async fn run(scheduler: Scheduler, mut stop: watch::Receiver<bool>) {
    // Agents keep running their jobs while no server answers; a server that starts
    // gives them a lease's time to be heard again before anything expires.
    let until = scheduler.now().plus_ms(scheduler.lease_ms());
    if let Err(error) = scheduler.store().extend_leases(until).await {
        tracing::warn!(%error, "could not extend running jobs' leases at start-up");
    }
    let lease_check = (scheduler.config().job_lease / 4)
        .clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut leases = tokio::time::interval(lease_check);
    leases.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = tokio::time::interval(scheduler.config().branch_poll_interval);
    polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = leases.tick() => {
                if let Err(error) = check_leases(&scheduler).await {
                    tracing::warn!(%error, "lease check failed; retrying");
                }
            }
            _ = polls.tick() => poll_branches(&scheduler).await,
            _ = stop.changed() => return,
        }
    }
}

async fn check_leases(scheduler: &Scheduler) -> Result<(), String> {
    let expired = scheduler
        .store()
        .expired_leases(scheduler.now(), SCAN_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    for job in expired {
        tracing::info!(job = job.id, run_id = %job.run_id, step = %job.step, agent = ?job.agent_name, "job lease expired");
        scheduler
            .lease_expired(&job)
            .await
            .map_err(|e| e.to_string())?;
    }
    let now = scheduler.now();
    scheduler
        .store()
        .end_orphaned_reported_jobs(now.plus_ms(-REPORTER_GRACE_MS), now)
        .await
        .map_err(|e| e.to_string())?;
    for build_id in scheduler
        .store()
        .builds_to_advance(SCAN_LIMIT)
        .await
        .map_err(|e| e.to_string())?
    {
        scheduler
            .advance(build_id)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Queues a build for each auto-build branch whose tip moved since the last poll.
pub(crate) async fn poll_branches(scheduler: &Scheduler) {
    let branches = match scheduler.store().auto_build_branches().await {
        Ok(branches) => branches,
        Err(error) => {
            tracing::warn!(%error, "cannot list auto-build branches");
            return;
        }
    };
    let mut heads_by_repo: std::collections::HashMap<String, Vec<(String, String)>> =
        Default::default();
    for (project, branch) in branches {
        let Some(repo) = project.repo.clone() else {
            continue;
        };
        if !heads_by_repo.contains_key(&repo) {
            let access = match scheduler.project_repo_access(&project, &repo).await {
                Ok(access) => access,
                Err(error) => {
                    tracing::warn!(project = %project.slug, %error, "not polling a repository the policy refuses");
                    continue;
                }
            };
            match remote_branches(&repo, &access).await {
                Ok(heads) => {
                    heads_by_repo.insert(repo.clone(), heads);
                }
                Err(error) => {
                    tracing::warn!(project = %project.slug, %error, "cannot poll the repository");
                    continue;
                }
            }
        }
        let Some(tip) = heads_by_repo[&repo]
            .iter()
            .find(|(name, _)| *name == branch.name)
            .map(|(_, sha)| sha.clone())
        else {
            continue;
        };
        if branch.last_commit.as_deref() == Some(tip.as_str()) {
            continue;
        }
        // Claim the commit first, so replicas polling at once queue one build.
        match scheduler
            .store()
            .advance_branch_commit(
                project.id,
                &branch.name,
                branch.last_commit.as_deref(),
                &tip,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot record a polled commit");
                continue;
            }
        }
        let request = TriggerRequest {
            branch: Some(branch.name.clone()),
            commit: Some(tip.clone()),
            priority: None,
            cause: "poll",
            retry_of: None,
            by: None,
            deploys_to: None,
            avoid_agents_of: None,
        };
        match scheduler.trigger(&project, request).await {
            Ok(build) => {
                tracing::info!(project = %project.slug, branch = %branch.name, commit = %tip, run_id = %build.run_id, "queued a build for a new commit")
            }
            Err(error) => {
                tracing::warn!(project = %project.slug, branch = %branch.name, %error, "cannot queue a build for a new commit")
            }
        }
    }
}
