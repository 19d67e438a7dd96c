//! Deployments: a project's environments and deployment history, deploy and rollback.

use kiln_protocol::*;
use reqwest::Method;

use super::{Client, ClientError, encode};

impl Client {
    pub async fn environments(&self, project: &str) -> Result<EnvironmentList, ClientError> {
        self.get(&format!(
            "/api/v1/projects/{}/environments",
            encode(project)
        ))
        .await
    }

    pub async fn deployments(
        &self,
        project: &str,
        environment: Option<&str>,
        limit: i64,
    ) -> Result<DeploymentList, ClientError> {
        let mut path = format!(
            "/api/v1/projects/{}/deployments?limit={limit}",
            encode(project)
        );
        if let Some(environment) = environment {
            path.push_str(&format!("&environment={}", encode(environment)));
        }
        self.get(&path).await
    }

    pub async fn deploy(
        &self,
        project: &str,
        environment: &str,
        request: &DeployRequest,
    ) -> Result<DeployStarted, ClientError> {
        self.call(
            Method::POST,
            &format!(
                "/api/v1/projects/{}/environments/{}/deploy",
                encode(project),
                encode(environment)
            ),
            Some(request),
        )
        .await
    }

    pub async fn rollback(
        &self,
        project: &str,
        environment: &str,
        to: &str,
    ) -> Result<DeploymentDto, ClientError> {
        self.call(
            Method::POST,
            &format!(
                "/api/v1/projects/{}/environments/{}/rollback",
                encode(project),
                encode(environment)
            ),
            Some(&RollbackRequest { to: to.to_owned() }),
        )
        .await
    }

    pub async fn deployment(&self, id: i64) -> Result<DeploymentDto, ClientError> {
        self.get(&format!("/api/v1/deployments/{id}")).await
    }
}
