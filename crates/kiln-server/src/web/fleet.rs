//! The fleet pages: `/agents` (every agent, online or not, its last heartbeat, labels,
//! CPU / memory / disk gauges and current jobs) and `/queue` (unfinished jobs in
//! dispatch order with why each waits).
//!
//! Both read what the JSON API answers (`api::fleet::agent_list`, `api::fleet::queued_jobs`),
//! so online/offline, the jobs a viewer may see and the waiting reasons are decided in
//! one place. `assets/admin.js` keeps them live: while the page is visible it refetches
//! the page itself every few seconds and swaps the `[data-live]` region, so the markup
//! with and without JavaScript is the same (there is no fleet event stream to follow).

use askama::Template;
use axum::Extension;
use axum::extract::State;
use kiln_core::Millis;
use kiln_protocol::JobDto;
use serde_json::Value;

use super::when::When;
use super::{Chrome, PageResult, render};
use crate::AppState;
use crate::auth::Caller;
use crate::services::fleet::agent_list;
use crate::services::fleet::queued_jobs;

/// One agent as a row of the agents page.
#[derive(Debug)]
struct AgentRow {
    id: i64,
    name: String,
    online: bool,
    labels: Vec<String>,
    executor: String,
    hostname: String,
    version: String,
    concurrency: i64,
    last_seen: When,
    cpu: Option<Gauge>,
    memory: Option<Gauge>,
    disk: Option<Gauge>,
    jobs: Vec<JobLink>,
}

/// A resource gauge: a `<meter>` from 0 to 100 and the same value said in words.
#[derive(Debug)]
struct Gauge {
    /// Absent when only the words are known (an agent that reports free disk only).
    percent: Option<f64>,
    text: String,
}

/// A running job, linking to its build.
#[derive(Debug)]
struct JobLink {
    id: i64,
    run_id: String,
    build_number: i64,
    project: String,
    step: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    chrome: Chrome,
    agents: Vec<AgentRow>,
    online: usize,
}

/// Bytes as "1.5 GiB".
fn bytes(value: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = value;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The gauges from an agent's last heartbeat metrics (`cpuPercent`, `memoryBytes`,
/// `memoryTotalBytes`, `diskFreeBytes`, `diskTotalBytes`); a missing figure shows no gauge.
fn gauges(metrics: Option<&Value>) -> (Option<Gauge>, Option<Gauge>, Option<Gauge>) {
    let number = |key: &str| {
        metrics
            .and_then(|metrics| metrics.get(key))
            .and_then(Value::as_f64)
    };
    let cpu = number("cpuPercent").map(|percent| Gauge {
        percent: Some(percent.clamp(0.0, 100.0)),
        text: format!("{percent:.0}% busy"),
    });
    let memory = number("memoryBytes")
        .zip(number("memoryTotalBytes"))
        .filter(|(_, total)| *total > 0.0)
        .map(|(used, total)| Gauge {
            percent: Some((used * 100.0 / total).clamp(0.0, 100.0)),
            text: format!("{} of {} used", bytes(used), bytes(total)),
        });
    let disk = match (number("diskFreeBytes"), number("diskTotalBytes")) {
        (Some(free), Some(total)) if total > 0.0 => Some(Gauge {
            percent: Some(((total - free) * 100.0 / total).clamp(0.0, 100.0)),
            text: format!("{} free of {}", bytes(free), bytes(total)),
        }),
        (Some(free), _) => Some(Gauge {
            percent: None,
            text: format!("{} free", bytes(free)),
        }),
        _ => None,
    };
    (cpu, memory, disk)
}

/// `GET /agents`.
pub(crate) async fn agents_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> PageResult {
    let chrome = Chrome::load(&state, &caller, "agents", "Agents").await?;
    let now = state.clock.now();
    let mut agents: Vec<AgentRow> = agent_list(&state, &caller)
        .await?
        .agents
        .into_iter()
        .map(|agent| {
            let last_seen = Millis::parse_rfc3339(&agent.last_seen_at).unwrap_or(now);
            let (cpu, memory, disk) = gauges(agent.metrics.as_ref());
            AgentRow {
                id: agent.id,
                online: agent.health == "connected",
                labels: agent.labels,
                executor: agent.executor,
                hostname: agent.hostname.unwrap_or_default(),
                version: agent.version.unwrap_or_default(),
                concurrency: agent.concurrency,
                last_seen: When::new(last_seen, now),
                cpu,
                memory,
                disk,
                jobs: agent
                    .jobs
                    .into_iter()
                    .map(|job| JobLink {
                        id: job.id,
                        run_id: job.run_id,
                        build_number: job.build_number,
                        project: job.project,
                        step: job.step,
                    })
                    .collect(),
                name: agent.name,
            }
        })
        .collect();
    // Online agents first, then by name.
    agents.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
    let online = agents.iter().filter(|agent| agent.online).count();
    Ok(render(&AgentsPage {
        chrome,
        agents,
        online,
    }))
}

/// One job as a row of the queue page.
#[derive(Debug)]
struct QueueRow {
    id: i64,
    run_id: String,
    build_number: i64,
    project: String,
    step: String,
    state: String,
    priority: i64,
    labels: Vec<String>,
    waiting_for: String,
    /// The agent expected to finish it soonest, and why (queued jobs).
    recommended_agent: String,
    recommendation: String,
    agent: String,
    /// Queued (waiting jobs) or started (running ones); none for a job not queued yet.
    since: Option<When>,
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    chrome: Chrome,
    waiting: Vec<QueueRow>,
    running: Vec<QueueRow>,
}

/// `GET /queue`: waiting jobs in the order agents will claim them (the claim's aged
/// priority: a lower number first, one step better per aging period waited, then the
/// oldest), blocked jobs after them, then the running jobs.
pub(crate) async fn queue_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> PageResult {
    let chrome = Chrome::load(&state, &caller, "queue", "Queue").await?;
    let now = state.clock.now();
    let aging_ms = (state.scheduler.config().priority_aging.as_millis() as i64).max(1);
    let jobs = queued_jobs(&state, &caller).await?.jobs;
    let row = |job: JobDto, since: Option<String>| {
        let since = since
            .as_deref()
            .and_then(Millis::parse_rfc3339)
            .map(|at| When::new(at, now));
        QueueRow {
            id: job.id,
            run_id: job.run_id,
            build_number: job.build_number,
            project: job.project,
            step: job.step,
            state: job.state,
            priority: job.priority,
            labels: job.labels,
            waiting_for: job.waiting_for.unwrap_or_default(),
            recommended_agent: job.recommended_agent.unwrap_or_default(),
            recommendation: job.recommendation.unwrap_or_default(),
            agent: job.agent.unwrap_or_default(),
            since,
        }
    };
    let mut queued: Vec<(i64, i64, JobDto)> = Vec::new();
    let mut blocked = Vec::new();
    let mut running = Vec::new();
    for job in jobs {
        match job.state.as_str() {
            "queued" => {
                let queued_at = job
                    .queued_at
                    .as_deref()
                    .and_then(Millis::parse_rfc3339)
                    .unwrap_or(now);
                let aged = job.priority - now.saturating_sub(queued_at) / aging_ms;
                queued.push((aged, queued_at.0, job));
            }
            "running" => {
                let since = job.started_at.clone();
                running.push(row(job, since));
            }
            _ => {
                let since = job.queued_at.clone();
                blocked.push((job, since));
            }
        }
    }
    queued.sort_by_key(|(aged, queued_at, job)| (*aged, *queued_at, job.id));
    let mut waiting: Vec<QueueRow> = queued
        .into_iter()
        .map(|(_, _, job)| {
            let since = job.queued_at.clone();
            row(job, since)
        })
        .collect();
    waiting.extend(blocked.into_iter().map(|(job, since)| row(job, since)));
    Ok(render(&QueuePage {
        chrome,
        waiting,
        running,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_through_rfc3339() {
        for millis in [0, 1_800_000_000_000, 1_764_000_123_456, 951_782_400_000] {
            let text = Millis(millis).to_rfc3339();
            assert_eq!(Millis::parse_rfc3339(&text), Some(Millis(millis)), "{text}");
        }
        assert_eq!(Millis::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn gauges_need_their_figures() {
        let metrics = serde_json::json!({
            "cpuPercent": 42.4, "memoryBytes": 1073741824u64, "memoryTotalBytes": 4294967296u64,
            "diskFreeBytes": 1073741824u64
        });
        let (cpu, memory, disk) = gauges(Some(&metrics));
        assert_eq!(cpu.unwrap().text, "42% busy");
        let memory = memory.unwrap();
        assert_eq!(memory.percent, Some(25.0));
        assert_eq!(memory.text, "1.0 GiB of 4.0 GiB used");
        let disk = disk.unwrap();
        assert_eq!((disk.percent, disk.text.as_str()), (None, "1.0 GiB free"));
        assert!(gauges(None).0.is_none());
    }
}
