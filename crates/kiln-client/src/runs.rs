//! Builds Kiln runs: triggering, cancelling and retrying builds, their jobs and logs,
//! repository settings, and the agent protocol (`kiln agent`).

use std::time::Duration;

use kiln_protocol::*;
use reqwest::Method;
use serde_json::Value;

use super::{Client, ClientError, encode, json_answer};

/// A page of a job's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    pub bytes: Vec<u8>,
    /// Where the next page starts.
    pub next_offset: i64,
    /// The log's size when read.
    pub size: i64,
    /// The job's state when read (`running`, `passed`, …).
    pub job_state: String,
}

impl Client {
    pub async fn set_repo(
        &self,
        project: &str,
        settings: &RepoSettings,
    ) -> Result<RepoDto, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/projects/{}/repo", encode(project)),
            Some(settings),
        )
        .await
    }

    pub async fn add_branch(
        &self,
        project: &str,
        name: &str,
        priority: Option<i64>,
        auto_build: bool,
    ) -> Result<BranchDto, ClientError> {
        let body = SetBranch {
            name: name.to_owned(),
            priority,
            auto_build: Some(auto_build),
        };
        self.call(
            Method::POST,
            &format!("/api/v1/projects/{}/branches", encode(project)),
            Some(&body),
        )
        .await
    }

    pub async fn trigger_build(
        &self,
        project: &str,
        request: &TriggerBuild,
    ) -> Result<TriggeredBuild, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/projects/{}/builds", encode(project)),
            Some(request),
        )
        .await
    }

    pub async fn retry_build(
        &self,
        project: &str,
        run_id: &str,
    ) -> Result<TriggeredBuild, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!(
                "/api/v1/projects/{}/builds/{}/retry",
                encode(project),
                encode(run_id)
            ),
            None,
        )
        .await
    }

    pub async fn cancel_build(
        &self,
        project: &str,
        run_id: &str,
    ) -> Result<CancelledBuild, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!(
                "/api/v1/projects/{}/builds/{}/cancel",
                encode(project),
                encode(run_id)
            ),
            None,
        )
        .await
    }

    pub async fn build_jobs(&self, project: &str, run_id: &str) -> Result<JobList, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!(
                "/api/v1/projects/{}/builds/{}/jobs",
                encode(project),
                encode(run_id)
            ),
            None,
        )
        .await
    }

    /// A page of a job's log (`job`: the step name or the job id) from `offset`.
    pub async fn job_log(
        &self,
        project: &str,
        run_id: &str,
        job: &str,
        offset: i64,
    ) -> Result<LogPage, ClientError> {
        let request = self.request(
            Method::GET,
            &format!(
                "/api/v1/projects/{}/builds/{}/jobs/{}/log?offset={offset}",
                encode(project),
                encode(run_id),
                encode(job)
            ),
        );
        let (_, headers, bytes) = Self::exchange(request).await?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let next_offset = header("x-kiln-log-offset").and_then(|v| v.parse().ok());
        let size = header("x-kiln-log-size").and_then(|v| v.parse().ok());
        let job_state = header("x-kiln-job-state").unwrap_or_default().to_owned();
        Ok(LogPage {
            next_offset: next_offset.unwrap_or(offset + bytes.len() as i64),
            size: size.unwrap_or_default(),
            bytes,
            job_state,
        })
    }

    pub async fn queue(&self) -> Result<JobList, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/queue", None).await
    }

    pub async fn agents(&self) -> Result<AgentList, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/agents", None)
            .await
    }

    pub async fn create_agent_token(&self, name: &str) -> Result<CreatedToken, ClientError> {
        let body = serde_json::json!({"name": name});
        self.call(Method::POST, "/api/v1/agent-tokens", Some(&body))
            .await
    }

    // ---- The agent protocol.

    pub async fn agent_register(
        &self,
        request: &RegisterAgent,
    ) -> Result<AgentRegistered, ClientError> {
        self.call(Method::POST, "/api/v1/agent/register", Some(request))
            .await
    }

    /// Long-polls for a job (`None` when none came within `wait_secs`).
    pub async fn agent_claim(
        &self,
        request: &ClaimRequest,
    ) -> Result<Option<AgentJob>, ClientError> {
        let wait = request.wait_secs.unwrap_or(30);
        self.send_for(
            Method::POST,
            "/api/v1/agent/claim",
            Some(request),
            Some(Duration::from_secs(wait + 15)),
        )
        .await
    }

    pub async fn agent_heartbeat(
        &self,
        request: &AgentHeartbeat,
    ) -> Result<HeartbeatReply, ClientError> {
        self.call(Method::POST, "/api/v1/agent/heartbeat", Some(request))
            .await
    }

    pub async fn agent_log(
        &self,
        job_id: i64,
        agent_id: i64,
        attempt: i64,
        offset: i64,
        bytes: Vec<u8>,
    ) -> Result<LogAck, ClientError> {
        let request = self
            .request(
                Method::POST,
                &format!(
                    "/api/v1/agent/jobs/{job_id}/log?agentId={agent_id}&attempt={attempt}&offset={offset}"
                ),
            )
            .header("content-type", "application/octet-stream")
            .body(bytes);
        let (_, _, body) = Self::exchange(request).await?;
        json_answer(&body)
    }

    /// Uploads a JUnit report a job's step wrote (`test_reports:`).
    pub async fn agent_test_report(
        &self,
        job_id: i64,
        agent_id: i64,
        attempt: i64,
        xml: Vec<u8>,
    ) -> Result<TestReportStored, ClientError> {
        let request = self
            .request(
                Method::POST,
                &format!("/api/v1/agent/jobs/{job_id}/tests?agentId={agent_id}&attempt={attempt}"),
            )
            .header("content-type", "application/xml")
            .body(xml);
        let (_, _, body) = Self::exchange(request).await?;
        json_answer(&body)
    }

    /// Appends `bytes` at `offset` of the log a `kiln run` reports for `step` of its
    /// build; with `end` (`passed`, `failed`, `cancelled`) the log is complete.
    pub async fn report_log(
        &self,
        run_id: &str,
        step: &str,
        offset: i64,
        bytes: Vec<u8>,
        end: Option<(&str, Option<i64>)>,
    ) -> Result<ReportedLogAck, ClientError> {
        let mut path = format!(
            "/api/v1/builds/{}/log?step={}&offset={offset}",
            encode(run_id),
            encode(step)
        );
        if let Some((outcome, exit_code)) = end {
            path.push_str(&format!("&end={}", encode(outcome)));
            if let Some(code) = exit_code {
                path.push_str(&format!("&exitCode={code}"));
            }
        }
        let request = self
            .request(Method::POST, &path)
            .header("content-type", "application/octet-stream")
            .body(bytes);
        let (_, _, body) = Self::exchange(request).await?;
        json_answer(&body)
    }

    pub async fn agent_finish(&self, job_id: i64, request: &FinishJob) -> Result<(), ClientError> {
        self.send_for::<_, Value>(
            Method::POST,
            &format!("/api/v1/agent/jobs/{job_id}/finish"),
            Some(request),
            None,
        )
        .await
        .map(|_| ())
    }
}
