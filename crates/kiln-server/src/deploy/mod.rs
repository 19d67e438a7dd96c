//! Deployments follow their builds: the `Deployer` records a deployment per deploy step
//! of a build, moves its status as the build's jobs move (kiln-core's `next_status`),
//! and when the build succeeds switches the environment to it — one row update, so a
//! crash before it leaves the old version live — writing each change as a `deployment`
//! event of the build (streamed like any event). The sites listener (`sites.rs`) serves
//! what an environment's current deployment published.
//!
//! A script deployment (`deploy.url`) is rolled back by running the earlier build's
//! deploy step again: `services::deployments::rollback` has the scheduler queue a build
//! of its own at that build's commit holding only that step (`Scheduler::rerun_deploy_step`,
//! marked with kiln-core's `Rerun`), whose claim hands the agent the earlier build's
//! artifacts of the steps the step depends on. Its deployment names the earlier one in
//! `rollback_of` and follows its build like any other here: live when the step succeeds,
//! `failed` (the environment keeps what it serves) when it does not.
//!
//! The scheduler calls [`Deployer::refresh`] after it triggers, claims, finishes, advances
//! or cancels; a task per replica ([`run`]) refreshes builds with unfinished deployments
//! every second, repairing a crash between a build's end and its deployment's. Every
//! move is a compare-and-set in the store, so replicas and repeats agree, and the
//! events' `eventId`s are fixed (`kiln-deployment-{id}-{status}`), so a repeat is a
//! duplicate.

pub(crate) mod sites;

use std::sync::Arc;
use std::time::Duration;

use kiln_core::deployments::{BuildProgress, DeploymentStatus, next_status};
use kiln_core::jobs::JobSpec;
use kiln_core::{ClientEventId, EventType, Millis, NewEvent, RunId, StageName};
use kiln_store::{
    DeploymentRecord, IngestRequest, JobRecord, NewDeployment, Precondition, Store, StoreError,
};
use serde_json::json;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::ingest::Ingestor;

/// How often the repair task looks at unfinished deployments.
const REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// Moves deployments along with their builds. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Deployer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    ingestor: Ingestor,
    clock: Arc<dyn Clock>,
    sites: Option<SitesConfig>,
}

impl Deployer {
    pub fn new(
        store: Arc<dyn Store>,
        ingestor: Ingestor,
        clock: Arc<dyn Clock>,
        sites: Option<SitesConfig>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                ingestor,
                clock,
                sites,
            }),
        }
    }

    /// Where a deployment can be seen: its declared URL, or its site on the sites
    /// listener (`None` when this server serves no sites).
    pub fn url_of(&self, project_slug: &str, deployment: &DeploymentRecord) -> Option<String> {
        if let Some(url) = &deployment.url {
            return Some(url.clone());
        }
        deployment.publish_dir.as_ref()?;
        self.inner
            .sites
            .as_ref()
            .map(|sites| sites.site_url(project_slug, &deployment.environment))
    }

    /// [`Deployer::refresh`], logging rather than answering a failure (the repair task
    /// tries again).
    pub async fn refresh_quietly(&self, build_id: i64, requested_by: Option<String>) {
        if let Err(error) = self.refresh(build_id, requested_by).await {
            tracing::warn!(build_id, error = %error.chain(), "deployment not updated yet; the repair task retries");
        }
    }

    /// Records the deployments of a build's deploy steps (once) and moves each as far as
    /// its build has come; publishes those whose build succeeded.
    #[tracing::instrument(skip_all, fields(build_id))]
    pub async fn refresh(
        &self,
        build_id: i64,
        requested_by: Option<String>,
    ) -> Result<(), StoreError> {
        let store = &*self.inner.store;
        let jobs = store.jobs_of_build(build_id).await?;
        let deploying: Vec<(&JobRecord, JobSpec)> = jobs
            .iter()
            .filter_map(|job| {
                let spec = JobSpec::from_json(&job.spec);
                spec.deploy.is_some().then_some((job, spec))
            })
            .collect();
        if deploying.is_empty() {
            return Ok(());
        }
        let Some(build) = store.build_by_run_id(&deploying[0].0.run_id).await? else {
            return Ok(());
        };
        let progress_jobs: Vec<(&str, kiln_core::JobState)> = jobs
            .iter()
            .map(|job| (job.step.as_str(), job.state))
            .collect();
        for (job, spec) in deploying {
            let deploy = spec.deploy.as_ref().expect("filtered above");
            let deployment = store
                .ensure_deployment(
                    &NewDeployment {
                        project_id: job.project_id,
                        environment: deploy.environment.as_str().to_owned(),
                        build_id,
                        step: job.step.clone(),
                        publish_dir: deploy.publish_dir().map(str::to_owned),
                        url: deploy.url().map(str::to_owned),
                        status: DeploymentStatus::Queued.as_str().to_owned(),
                        requested_by: requested_by.clone(),
                        // A script rollback's build re-runs an earlier build's step.
                        rollback_of: spec.rerun.as_ref().map(|rerun| rerun.deployment_id),
                    },
                    self.now(),
                )
                .await?;
            let Some(current) = DeploymentStatus::from_name(&deployment.status) else {
                continue;
            };
            if deployment.status == DeploymentStatus::Queued.as_str()
                && build.state.status == kiln_core::BuildStatus::Queued
            {
                // A new deployment says so once, even before anything moves.
                self.announce(&deployment, &job.project_slug, current, None)
                    .await;
            }
            let next = next_status(
                current,
                &BuildProgress {
                    build: build.state.status,
                    jobs: progress_jobs.clone(),
                    deploy_step: &job.step,
                },
            );
            if next == current {
                continue;
            }
            let mut from = current;
            for to in current.path_to(next) {
                self.move_to(&deployment, &job.project_slug, from, to)
                    .await?;
                from = to;
            }
        }
        Ok(())
    }

    async fn move_to(
        &self,
        deployment: &DeploymentRecord,
        project_slug: &str,
        from: DeploymentStatus,
        to: DeploymentStatus,
    ) -> Result<(), StoreError> {
        let store = &*self.inner.store;
        let now = self.now();
        if to == DeploymentStatus::Deployed {
            if let Some(dir) = &deployment.publish_dir {
                let files = store.build_artifacts(deployment.build_id).await?;
                let published = files.iter().any(|file| under(dir, &file.path));
                if !published {
                    let message = format!(
                        "the build uploaded no files under '{}/': the deploy step must write its site there (its `deploy.publish` directory is uploaded after the step succeeds)",
                        if dir.is_empty() { "." } else { dir }
                    );
                    if store
                        .set_deployment_status(
                            deployment.id,
                            from.as_str(),
                            DeploymentStatus::Failed.as_str(),
                            Some(&message),
                            now,
                        )
                        .await?
                    {
                        self.announce(
                            deployment,
                            project_slug,
                            DeploymentStatus::Failed,
                            Some(message),
                        )
                        .await;
                    }
                    return Ok(());
                }
            }
            if store
                .publish_deployment(deployment.id, from.as_str(), now)
                .await?
            {
                tracing::info!(deployment = deployment.id, environment = %deployment.environment, run_id = %deployment.run_id, "deployed");
                self.announce(deployment, project_slug, to, None).await;
            }
            return Ok(());
        }
        let message = match to {
            DeploymentStatus::Failed => Some("the build failed".to_owned()),
            DeploymentStatus::Cancelled => Some("the build was cancelled".to_owned()),
            _ => None,
        };
        if store
            .set_deployment_status(
                deployment.id,
                from.as_str(),
                to.as_str(),
                message.as_deref(),
                now,
            )
            .await?
        {
            self.announce(deployment, project_slug, to, message).await;
        }
        Ok(())
    }

    /// Writes a `deployment` event to the deployment's build (custom events are stored
    /// after a build ended too, so `deployed` follows `build_completed`).
    pub async fn announce(
        &self,
        deployment: &DeploymentRecord,
        project_slug: &str,
        status: DeploymentStatus,
        message: Option<String>,
    ) {
        let Ok(run_id) = RunId::parse("runId", &deployment.run_id) else {
            return;
        };
        let Ok(event_type) = EventType::parse("event", "deployment") else {
            return;
        };
        let mut event = NewEvent::new(run_id, event_type);
        event.client_event_id = ClientEventId::parse(
            "eventId",
            &format!("kiln-deployment-{}-{}", deployment.id, status.as_str()),
        )
        .ok();
        event.origin = Some("kiln".into());
        event.stage = StageName::parse("stage", &deployment.step).ok();
        event.message = Some(match &message {
            Some(message) => format!("{}: {} ({message})", deployment.environment, status),
            None => format!("{}: {}", deployment.environment, status),
        });
        event.data = Some(json!({
            "deploymentId": deployment.id,
            "environment": deployment.environment,
            "status": status.as_str(),
            "url": self.url_of(project_slug, deployment),
            "rollbackOf": deployment.rollback_of,
        }));
        let request = IngestRequest {
            project_id: deployment.project_id,
            events: vec![event],
            precondition: Precondition::None,
            jobs: None,
        };
        match self.inner.ingestor.submit(request).await {
            Ok(Ok(_)) => {}
            Ok(Err(rejection)) => {
                tracing::debug!(%rejection, "deployment event refused");
            }
            Err(failure) => {
                tracing::warn!(%failure, "deployment event not written");
            }
        }
    }

    fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    pub fn store(&self) -> &dyn Store {
        &*self.inner.store
    }
}

/// Whether artifact `path` lies under the publish directory `dir` (`""`: everything).
pub(crate) fn under(dir: &str, path: &str) -> bool {
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The repair task: every second, refreshes the builds whose deployments have not ended.
pub(crate) async fn run(deployer: Deployer, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(REPAIR_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let builds = match deployer.store().builds_with_active_deployments(200).await {
            Ok(builds) => builds,
            Err(error) => {
                tracing::warn!(error = %error.chain(), "could not read unfinished deployments");
                continue;
            }
        };
        for build_id in builds {
            deployer.refresh_quietly(build_id, None).await;
        }
    }
}

/// The sites listener: where it listens, how its sites are addressed.
#[derive(Clone, Debug)]
pub struct SitesConfig {
    /// The bound listener; `run` takes it.
    pub listener: SitesListener,
    /// The sites listener's public base URL (`--sites-url`; by default
    /// `http://{--sites-listen}`), for the URLs deployments show.
    pub public_url: String,
    /// `--sites-domain`: sites are also answered, and shown, at
    /// `{project}--{environment}.{domain}`.
    pub domain: Option<String>,
    /// How long a replica serves its cached view of an environment before checking which
    /// deployment it serves (one indexed read).
    pub check_interval: Duration,
}

impl SitesConfig {
    /// Sites on `listener`, addressed by path under `http://{its address}`.
    pub fn new(listener: std::net::TcpListener) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        Ok(Self {
            listener: SitesListener::new(listener),
            public_url: format!("http://{address}"),
            domain: None,
            check_interval: Duration::from_millis(250),
        })
    }

    /// Where a site is seen: `{public_url}/{project}/{environment}/`, or with a domain
    /// `{scheme}://{project}--{environment}.{domain}{:port}/` (scheme and port of the
    /// public URL).
    pub fn site_url(&self, project: &str, environment: &str) -> String {
        let base = self.public_url.trim_end_matches('/');
        match &self.domain {
            Some(domain) => {
                let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
                let authority = rest.split('/').next().unwrap_or(rest);
                let port = match authority.rsplit_once(':') {
                    Some((_, port)) if !authority.ends_with(']') => format!(":{port}"),
                    _ => String::new(),
                };
                format!("{scheme}://{project}--{environment}.{domain}{port}/")
            }
            None => format!("{base}/{project}/{environment}/"),
        }
    }
}

/// A bound listener handed to `run` inside the (cloneable) configuration.
#[derive(Clone, Debug)]
pub struct SitesListener(Arc<std::sync::Mutex<Option<std::net::TcpListener>>>);

impl SitesListener {
    pub fn new(listener: std::net::TcpListener) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(listener))))
    }

    pub(crate) fn take(&self) -> Option<std::net::TcpListener> {
        self.0.lock().ok()?.take()
    }
}
