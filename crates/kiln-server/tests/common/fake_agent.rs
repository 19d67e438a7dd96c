//! A fake agent for tests that drive builds step by step over the agent protocol: claim
//! a job, upload artifacts through the agent's routes, finish it.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::TestApp;

pub struct Agent {
    pub token: String,
    pub id: i64,
}

pub async fn agent_call(app: &TestApp, agent: &Agent, path: &str, request: Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}{}", app.base_url, path))
        .bearer_auth(&agent.token)
        .json(&request)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Claims one job (any), returning it.
pub async fn claim(app: &TestApp, agent: &Agent) -> Value {
    let (status, job) = agent_call(
        app,
        agent,
        "/api/v1/agent/claim",
        json!({"agentId": agent.id, "waitSecs": 5}),
    )
    .await;
    assert_eq!(status, 200, "a job to claim: {job}");
    job
}

pub async fn finish(app: &TestApp, agent: &Agent, job: &Value) {
    let (status, answer) = agent_call(
        app,
        agent,
        &format!("/api/v1/agent/jobs/{}/finish", job["jobId"]),
        json!({"agentId": agent.id, "attempt": job["attempt"], "state": "passed", "exitCode": 0}),
    )
    .await;
    assert!(status < 300, "finish: {status} {answer}");
}

/// Uploads `files` to the build as its step's artifacts, through the agent's routes.
pub async fn upload(app: &TestApp, agent: &Agent, job: &Value, files: &[(&str, &[u8])]) {
    let query = format!("agentId={}&attempt={}", agent.id, job["attempt"]);
    for (path, bytes) in files {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (status, started) = agent_call(
            app,
            agent,
            &format!("/api/v1/agent/jobs/{}/artifacts?{query}", job["jobId"]),
            json!({"path": path, "size": bytes.len(), "sha256": sha256}),
        )
        .await;
        assert_eq!(status, 200, "{started}");
        if started["complete"] == true {
            continue;
        }
        let response = app
            .http
            .put(format!(
                "{}/api/v1/agent/jobs/{}/artifacts/uploads/{}?{query}&offset=0",
                app.base_url,
                job["jobId"],
                started["uploadId"].as_str().unwrap()
            ))
            .bearer_auth(&agent.token)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}

/// Creates an agent token (as the instance admin) and registers an agent with it.
pub async fn register(app: &TestApp, name: &str, concurrency: u32) -> Agent {
    let (status, created) = app
        .raw(
            reqwest::Method::POST,
            "/api/v1/agent-tokens",
            Some(super::ADMIN_TOKEN),
            Some(json!({"name": name}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let unregistered = Agent { token, id: 0 };
    let (status, registered) = agent_call(
        app,
        &unregistered,
        "/api/v1/agent/register",
        json!({"name": name, "concurrency": concurrency, "executor": "process"}),
    )
    .await;
    assert_eq!(status, 200, "{registered}");
    Agent {
        token: unregistered.token,
        id: registered["agentId"].as_i64().unwrap(),
    }
}
