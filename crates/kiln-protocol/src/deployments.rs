//! Deployments on the wire: a project's environments (what each serves, its last good
//! deployment, the one running), deployments, and the deploy and rollback requests
//! (`/api/v1/projects/{slug}/environments…`, `/api/v1/deployments/{id}`). Times are Unix
//! milliseconds.

use serde::{Deserialize, Serialize};

use crate::TriggeredBuild;

/// One deployment of a build (or a rollback to one) to an environment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentDto {
    pub id: i64,
    pub project: String,
    pub environment: String,
    /// `queued`, `cloning`, `building`, `uploading`, `deployed`, `failed`, `cancelled`.
    pub status: String,
    /// The build deployed.
    pub run_id: String,
    pub build_number: i64,
    pub branch: Option<String>,
    pub commit: Option<String>,
    /// The step that deploys.
    pub step: String,
    /// The published directory, when Kiln serves the site.
    pub publish: Option<String>,
    /// Where it can be seen: the site on the sites listener, or the URL a script
    /// deployment declared.
    pub url: Option<String>,
    pub message: Option<String>,
    /// Who asked: a user's email or a token's name.
    pub requested_by: Option<String>,
    /// For a rollback: the deployment whose build it serves again. A site's rollback
    /// serves that build's files (`runId` is that build); a script deployment's rollback
    /// is a build of its own (`runId`) that ran that build's deploy step again.
    pub rollback_of: Option<i64>,
    /// For a rollback: the run id of the build it serves again (`rollbackOf`'s build).
    #[serde(default)]
    pub rollback_run_id: Option<String>,
    /// For a rollback: that build's number.
    #[serde(default)]
    pub rollback_build_number: Option<i64>,
    /// The deployment that was live when this one went live.
    pub replaces: Option<i64>,
    /// Whether its environment serves it now.
    pub current: bool,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
}

/// An environment of a project.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentDto {
    pub name: String,
    /// The deployment it serves now.
    pub current: Option<DeploymentDto>,
    /// The newest deployment that reached `deployed` (the rollback target of choice).
    pub last_good: Option<DeploymentDto>,
    /// A deployment still on its way, if any (a new deploy is refused meanwhile).
    pub running: Option<DeploymentDto>,
}

/// The newest successful build of a branch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchBuildDto {
    pub branch: String,
    pub run_id: String,
    pub number: i64,
    pub commit: Option<String>,
    pub ended_at: Option<i64>,
}

/// `GET /api/v1/projects/{slug}/environments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentList {
    pub environments: Vec<EnvironmentDto>,
    /// The last successful build of each branch (of the newest 500 builds).
    pub last_successful_builds: Vec<BranchBuildDto>,
}

/// `GET /api/v1/projects/{slug}/deployments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentDto>,
}

/// `POST /api/v1/projects/{slug}/environments/{env}/deploy`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployRequest {
    /// The branch whose tip is built and deployed (default: the project's default branch).
    #[serde(default)]
    pub branch: Option<String>,
}

/// What a deploy started: the build, and its deployment to the environment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployStarted {
    pub build: TriggeredBuild,
    pub deployment: DeploymentDto,
}

/// `POST /api/v1/projects/{slug}/environments/{env}/rollback`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    /// The run id of a build that was deployed to this environment.
    pub to: String,
}
