//! Test results: JUnit reports uploaded for a build, and read back.

use kiln_protocol::{BuildTests, FlakyTests, TestReportStored};
use reqwest::Method;

use super::{Client, ClientError, encode, json_answer};

impl Client {
    /// Uploads one JUnit XML report for a build (an ingest token of its project).
    pub async fn upload_test_report(
        &self,
        run_id: &str,
        xml: Vec<u8>,
    ) -> Result<TestReportStored, ClientError> {
        let request = self
            .request(
                Method::POST,
                &format!("/api/v1/builds/{}/tests", encode(run_id)),
            )
            .header("content-type", "application/xml")
            .body(xml);
        let (_, _, body) = Self::exchange(request).await?;
        json_answer(&body)
    }

    pub async fn build_tests(&self, run_id: &str) -> Result<BuildTests, ClientError> {
        self.get(&format!("/api/v1/builds/{}/tests", encode(run_id)))
            .await
    }

    pub async fn flaky_tests(&self, project: &str, days: i64) -> Result<FlakyTests, ClientError> {
        self.get(&format!(
            "/api/v1/projects/{}/tests/flaky?days={days}",
            encode(project)
        ))
        .await
    }
}
