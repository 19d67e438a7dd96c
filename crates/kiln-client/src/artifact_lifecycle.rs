//! After a build: a project's artifact retention rule and runs, pins, two builds'
//! artifacts compared, rebuilds that verify a build, and build reports (JSON or
//! Markdown).

use kiln_protocol::{
    ArtifactComparison, ArtifactRetention, BuildPin, BuildReport, RebuildVerification,
    RetentionRun, SetArtifactRetention,
};
use reqwest::Method;

use super::{Client, ClientError, encode};

impl Client {
    pub async fn artifact_retention(
        &self,
        project: &str,
    ) -> Result<ArtifactRetention, ClientError> {
        self.get(&format!(
            "/api/v1/projects/{}/artifact-retention",
            encode(project)
        ))
        .await
    }

    pub async fn set_artifact_retention(
        &self,
        project: &str,
        rule: &SetArtifactRetention,
    ) -> Result<ArtifactRetention, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/projects/{}/artifact-retention", encode(project)),
            Some(rule),
        )
        .await
    }

    /// Applies the project's retention rule now, or only tells what it would delete.
    pub async fn run_artifact_retention(
        &self,
        project: &str,
        dry_run: bool,
    ) -> Result<RetentionRun, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!(
                "/api/v1/projects/{}/artifact-retention/run?dryRun={dry_run}",
                encode(project)
            ),
            None,
        )
        .await
    }

    pub async fn pin_build(&self, run_id: &str) -> Result<BuildPin, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/builds/{}/pin", encode(run_id)),
            None,
        )
        .await
    }

    pub async fn unpin_build(&self, run_id: &str) -> Result<BuildPin, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/builds/{}/pin", encode(run_id)),
            None,
        )
        .await
    }

    /// Build `a`'s artifacts compared with build `b`'s.
    pub async fn compare_builds(
        &self,
        a: &str,
        b: &str,
    ) -> Result<ArtifactComparison, ClientError> {
        self.get(&format!("/api/v1/compare?a={}&b={}", encode(a), encode(b)))
            .await
    }

    /// Builds an ended build's commit again, to compare the two when the rebuild ends.
    pub async fn rebuild_to_verify(
        &self,
        run_id: &str,
    ) -> Result<RebuildVerification, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/builds/{}/rebuild-verify", encode(run_id)),
            None,
        )
        .await
    }

    pub async fn verification(&self, run_id: &str) -> Result<RebuildVerification, ClientError> {
        self.get(&format!("/api/v1/builds/{}/verification", encode(run_id)))
            .await
    }

    pub async fn build_report(&self, run_id: &str) -> Result<BuildReport, ClientError> {
        self.get(&format!("/api/v1/builds/{}/report.json", encode(run_id)))
            .await
    }

    /// The report as Markdown.
    pub async fn build_report_markdown(&self, run_id: &str) -> Result<String, ClientError> {
        let request = self.request(
            Method::GET,
            &format!("/api/v1/builds/{}/report.md", encode(run_id)),
        );
        let (_, _, bytes) = Self::exchange(request).await?;
        String::from_utf8(bytes)
            .map_err(|_| ClientError::Transport("the report is not UTF-8".into()))
    }
}
