//! The agent loop (`kiln agent`): register with the server, long-poll for jobs while a
//! slot is free, run each job (`job`), and send heartbeats that renew the jobs' leases,
//! carry the machine's resource use, and bring back cancellations.
//!
//! The agent survives the server going away: heartbeats, log chunks and job reports
//! are retried until the server answers again, and running steps carry on meanwhile.

mod job;
mod metrics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_client::{Client, ClientError};
use kiln_protocol::{AgentHeartbeat, AgentRegistered, ClaimRequest, RegisterAgent};
use tokio::sync::{Semaphore, watch};

use crate::cache::Cache;
use crate::executor::ExecutorKind;

/// How `kiln agent` was configured.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub server: String,
    pub token: String,
    pub name: String,
    pub labels: Vec<String>,
    pub concurrency: usize,
    pub executor: ExecutorKind,
    /// Workspaces live here, one per job attempt, removed after it.
    pub work_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// Between SIGTERM and SIGKILL when a step is cancelled or times out.
    pub grace: Duration,
}

impl AgentOptions {
    /// The machine's host name, the default agent name.
    pub fn hostname() -> String {
        nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "kiln-agent".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused the agent: {0}")]
    Refused(String),
    #[error("{0}")]
    Setup(String),
}

/// A running job as the heartbeat sees it.
struct Running {
    cancel: watch::Sender<bool>,
    /// Set when the server says the job is no longer this agent's.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) struct Shared {
    client: Client,
    options: AgentOptions,
    cache: Cache,
    agent_id: Mutex<i64>,
    running: Mutex<HashMap<i64, Running>>,
}

impl Shared {
    fn agent_id(&self) -> i64 {
        *self.agent_id.lock().expect("agent id lock")
    }
}

fn fatal(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Api {
            status: 401 | 403,
            ..
        }
    )
}

async fn register(shared: &Shared) -> Result<AgentRegistered, AgentError> {
    let options = &shared.options;
    let request = RegisterAgent {
        name: options.name.clone(),
        labels: options.labels.clone(),
        concurrency: options.concurrency as i64,
        executor: options.executor.name().into(),
        hostname: Some(AgentOptions::hostname()),
        version: Some(env!("CARGO_PKG_VERSION").into()),
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match shared.client.agent_register(&request).await {
            Ok(registered) => {
                *shared.agent_id.lock().expect("agent id lock") = registered.agent_id;
                return Ok(registered);
            }
            Err(error)
                if fatal(&error) || matches!(error, ClientError::Api { status: 400, .. }) =>
            {
                return Err(AgentError::Refused(error.to_string()));
            }
            Err(error) => {
                tracing::warn!(%error, "cannot register with the server; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs the agent until `stop` turns true; running jobs are then cancelled and
/// reported before it returns.
pub async fn run(options: AgentOptions, mut stop: watch::Receiver<bool>) -> Result<(), AgentError> {
    for dir in [&options.work_dir, &options.cache_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    }
    let cache = Cache::open(options.cache_dir.clone(), options.cache_max_bytes)
        .await
        .map_err(|e| AgentError::Setup(e.to_string()))?;
    let shared = Arc::new(Shared {
        client: Client::with_timeout(
            &options.server,
            Some(options.token.clone()),
            Duration::from_secs(30),
        ),
        options: options.clone(),
        cache,
        agent_id: Mutex::new(0),
        running: Mutex::new(HashMap::new()),
    });
    let registered = register(&shared).await?;
    tracing::info!(agent_id = registered.agent_id, name = %options.name, labels = ?options.labels, executor = options.executor.name(), "agent registered");

    let heartbeat = tokio::spawn(heartbeats(
        shared.clone(),
        Duration::from_millis(registered.heartbeat_interval_ms.max(100)),
        stop.clone(),
    ));
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let wait_secs = registered.max_claim_wait_secs.min(30);
    let mut delay = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            break;
        }
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("slots are never closed"),
            _ = stop.changed() => break,
        };
        let request = ClaimRequest {
            agent_id: shared.agent_id(),
            wait_secs: Some(wait_secs),
        };
        let claimed = tokio::select! {
            claimed = shared.client.agent_claim(&request) => claimed,
            _ = stop.changed() => break,
        };
        match claimed {
            Ok(Some(job)) => {
                delay = Duration::from_millis(200);
                let shared = shared.clone();
                tasks.spawn(async move {
                    job::run(&shared, job).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(ClientError::Api { status: 404, .. }) => {
                // The server forgot this agent (a new database): register again.
                register(&shared).await?;
            }
            Err(error) if fatal(&error) => return Err(AgentError::Refused(error.to_string())),
            Err(error) => {
                tracing::warn!(%error, "claim failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    // Stopping: cancel what runs, let it report, then stop the heartbeats.
    for running in shared.running.lock().expect("running lock").values() {
        let _ = running.cancel.send(true);
    }
    while tasks.join_next().await.is_some() {}
    heartbeat.abort();
    Ok(())
}

async fn heartbeats(shared: Arc<Shared>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut metrics = metrics::Metrics::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {}
        }
        let jobs: Vec<i64> = shared
            .running
            .lock()
            .expect("running lock")
            .keys()
            .copied()
            .collect();
        let request = AgentHeartbeat {
            agent_id: shared.agent_id(),
            jobs,
            metrics: Some(metrics.sample(&shared.options.work_dir)),
        };
        match shared.client.agent_heartbeat(&request).await {
            Ok(reply) => {
                let running = shared.running.lock().expect("running lock");
                for id in &reply.cancel {
                    if let Some(job) = running.get(id) {
                        let _ = job.cancel.send(true);
                    }
                }
                for id in &reply.lost {
                    if let Some(job) = running.get(id) {
                        job.lost.store(true, std::sync::atomic::Ordering::SeqCst);
                        let _ = job.cancel.send(true);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed; running jobs carry on"),
        }
    }
}
