//! Deployments: a project's environments (each serving one deployment, switched by one
//! row update) and the deployments of builds and rollbacks (`sql/deployments.rs`).

use async_trait::async_trait;
use kiln_core::Millis;

use crate::StoreResult;

/// An environment of a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvironmentRecord {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    /// The deployment it serves now.
    pub current_deployment_id: Option<i64>,
    /// Bumped at every switch: caches of the served release compare it.
    pub version: i64,
    pub created_at: Millis,
}

/// A deployment, with its environment's name and its build's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: i64,
    pub project_id: i64,
    pub environment_id: i64,
    pub environment: String,
    pub build_id: i64,
    pub run_id: String,
    pub build_number: i64,
    pub branch: Option<String>,
    pub commit: Option<String>,
    /// The step that deploys.
    pub step: String,
    /// The published directory, for a deployment Kiln serves.
    pub publish_dir: Option<String>,
    /// The URL a script deployment declared.
    pub url: Option<String>,
    pub status: String,
    pub message: Option<String>,
    /// Who asked (their email, or a token's name), when someone did.
    pub requested_by: Option<String>,
    /// For a rollback: the deployment whose build it serves again (a site switched back
    /// to that build's files, or that build's deploy step run again by this one's build).
    pub rollback_of: Option<i64>,
    /// The deployment that was current when this one went live.
    pub replaces: Option<i64>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    /// For a rollback: the run id and number of the build it serves again (whose files
    /// a site switched back to, or whose deploy step this one's build ran again).
    pub rollback_run_id: Option<String>,
    pub rollback_build_number: Option<i64>,
}

/// A deployment to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeployment {
    pub project_id: i64,
    pub environment: String,
    pub build_id: i64,
    pub step: String,
    pub publish_dir: Option<String>,
    pub url: Option<String>,
    pub status: String,
    pub requested_by: Option<String>,
    /// For a script deployment's rollback (recorded by `ensure_deployment` for the build
    /// that re-runs the step) or a site's (`roll_back`): the deployment served again.
    pub rollback_of: Option<i64>,
}

/// What a site request needs to find its files: the deployment an environment serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedRelease {
    pub environment_id: i64,
    pub version: i64,
    pub deployment_id: i64,
    pub build_id: i64,
    pub publish_dir: String,
}

#[async_trait]
pub trait DeploymentStore: Send + Sync {
    /// Records the deployment of a build to an environment (creating the environment),
    /// unless the build already has one there; answers the deployment either way. Its
    /// status follows the build's jobs; `rollback_of` is kept (a build that re-runs an
    /// earlier build's deploy step).
    async fn ensure_deployment(
        &self,
        new: &NewDeployment,
        now: Millis,
    ) -> StoreResult<DeploymentRecord>;
    /// Moves a deployment from status `from` to `to` (not `deployed`: see
    /// [`DeploymentStore::publish_deployment`]); `false` when it was not at `from`.
    async fn set_deployment_status(
        &self,
        id: i64,
        from: &str,
        to: &str,
        message: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool>;
    /// In one transaction: the deployment (at status `from`) becomes `deployed`, replaces
    /// its environment's current deployment, and the environment serves it. `false` when
    /// it was not at `from`.
    async fn publish_deployment(&self, id: i64, from: &str, now: Millis) -> StoreResult<bool>;
    /// Records a rollback (status `deployed`) and switches its environment to it, in one
    /// transaction, if the environment still serves `expected_current`; `None` otherwise.
    async fn roll_back(
        &self,
        new: &NewDeployment,
        expected_current: Option<i64>,
        now: Millis,
    ) -> StoreResult<Option<DeploymentRecord>>;
    async fn deployment(&self, id: i64) -> StoreResult<Option<DeploymentRecord>>;
    /// The deployments that follow a build's jobs (its deploy steps', a re-run's
    /// included), not the rollbacks that switched a site back to its files.
    async fn deployments_of_build(&self, build_id: i64) -> StoreResult<Vec<DeploymentRecord>>;
    /// The builds of deployments that have not ended, oldest first.
    async fn builds_with_active_deployments(&self, limit: i64) -> StoreResult<Vec<i64>>;
    /// A project's deployments, newest first, optionally of one environment, below the id
    /// `before`.
    async fn list_deployments(
        &self,
        project_id: i64,
        environment: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<DeploymentRecord>>;
    /// A project's environments, by name.
    async fn list_environments(&self, project_id: i64) -> StoreResult<Vec<EnvironmentRecord>>;
    async fn environment(
        &self,
        project_id: i64,
        name: &str,
    ) -> StoreResult<Option<EnvironmentRecord>>;
    /// What a site serves now (one indexed read), by project slug and environment name;
    /// `None` without an environment or a published deployment.
    async fn served_release(
        &self,
        project_slug: &str,
        environment: &str,
    ) -> StoreResult<Option<ServedRelease>>;
}
