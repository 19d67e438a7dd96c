//! Builds Kiln runs, through the real server (both engines) with a real agent in the
//! test process: real git repositories, real step processes, real HTTP and SSE.

mod common;

use kiln_store::engine_test;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sse::SseStream;
use common::{ADMIN_TOKEN, TestApp, assert_error};
use kiln_agent::agent::{AgentOptions, run};
use kiln_agent::executor::ExecutorKind;
use kiln_store::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::watch;

engine_test!(runner_routes_refuse_the_wrong_caller);
engine_test!(a_pipeline_runs_its_steps_in_dependency_order);
engine_test!(bad_triggers_are_refused_and_broken_repos_fail_the_build);
engine_test!(cancel_stops_running_and_waiting_jobs);
engine_test!(a_triggered_build_is_never_seen_without_its_jobs);
engine_test!(the_repository_policy_keeps_projects_to_their_own_code);
engine_test!(steps_get_the_secrets_they_name_masked_in_their_logs);
engine_test!(credentials_an_earlier_kiln_stored_in_a_url_are_sealed_at_start);
engine_test!(a_reported_log_takes_chunks_by_offset_and_refuses_bad_input);
engine_test!(a_claim_carries_repository_credentials_only_where_the_project_has_them);

fn body(value: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&value).unwrap())
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A repository with `files` committed on `main`; returns its directory and the commit.
fn repo(files: &[(&str, &str)]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    git(dir.path(), &["add", "."]);
    git(
        dir.path(),
        &["commit", "-q", "-m", "first commit\n\nwith a body"],
    );
    let sha = git(dir.path(), &["rev-parse", "HEAD"]);
    (dir, sha)
}

struct Setup {
    project_token: String,
    agent_token: String,
}

/// A project `web` building `repo`, an ingest+read token and an agent token.
async fn setup(app: &TestApp, repo: &Path) -> Setup {
    let (_, project_token) = app.project_client("web", &["ingest", "read"]).await;
    let (status, answer) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/repo",
            Some(ADMIN_TOKEN),
            body(json!({"repo": repo.display().to_string()})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["defaultBranch"], "main");
    let (status, created) = app
        .raw(
            Method::POST,
            "/api/v1/agent-tokens",
            Some(ADMIN_TOKEN),
            body(json!({"name": "agents"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["kind"], "agent");
    Setup {
        project_token,
        agent_token: created["token"].as_str().unwrap().to_owned(),
    }
}

/// A real agent in this process; stops when the sender is dropped or set.
fn agent(
    app: &TestApp,
    token: &str,
    name: &str,
    labels: &[&str],
    work: &Path,
) -> watch::Sender<bool> {
    let (stop, stopped) = watch::channel(false);
    let options = AgentOptions {
        server: app.base_url.clone(),
        token: token.into(),
        name: name.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        concurrency: 2,
        executor: ExecutorKind::Process,
        work_dir: work.join(name).join("work"),
        cache_dir: work.join(name).join("cache"),
        cache_max_bytes: 64 * 1024 * 1024,
        grace: Duration::from_secs(1),
    };
    tokio::spawn(async move {
        if let Err(error) = run(options, stopped).await {
            panic!("agent failed: {error}");
        }
    });
    stop
}

async fn trigger(app: &TestApp, token: &str, request: Value) -> (u16, Value) {
    app.raw(
        Method::POST,
        "/api/v1/projects/web/builds",
        Some(token),
        body(request),
    )
    .await
}

async fn build(app: &TestApp, token: &str, run_id: &str) -> Value {
    let (status, build) = app
        .raw(
            Method::GET,
            &format!("/api/v1/builds/{run_id}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{build}");
    build
}

async fn jobs(app: &TestApp, token: &str, run_id: &str) -> Vec<Value> {
    let (status, list) = app
        .raw(
            Method::GET,
            &format!("/api/v1/projects/web/builds/{run_id}/jobs"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list["jobs"].as_array().unwrap().clone()
}

async fn wait_for_status(app: &TestApp, token: &str, run_id: &str, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let build = build(app, token, run_id).await;
        if build["status"] == wanted {
            return build;
        }
        assert!(
            Instant::now() < deadline,
            "build never became {wanted}: {build}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_text(app: &TestApp, token: &str, run_id: &str, job: &str) -> String {
    let response = app
        .http
        .get(format!(
            "{}/api/v1/projects/web/builds/{run_id}/jobs/{job}/log",
            app.base_url
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    String::from_utf8_lossy(&response.bytes().await.unwrap()).into_owned()
}

async fn runner_routes_refuse_the_wrong_caller(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (repo_dir, _) = repo(&[("README", "hi\n")]);
    let setup = setup(&app, repo_dir.path()).await;
    let (_, read_token) = app.project_client("web", &["read"]).await;
    let (_, other_token) = app.project_client("api", &["ingest", "read"]).await;
    let agent_token = setup.agent_token.as_str();
    let web = setup.project_token.as_str();
    let register = body(json!({"name": "a1", "concurrency": 1, "executor": "process"}));
    type Case<'a> = (Method, &'a str, Option<Vec<u8>>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        // Agent tokens work only on agent endpoints.
        (Method::GET, "/api/v1/builds", None, Some(agent_token), 403),
        (
            Method::POST,
            "/api/v1/projects/web/builds",
            body(json!({})),
            Some(agent_token),
            403,
        ),
        (Method::GET, "/api/v1/queue", None, Some(agent_token), 403),
        (Method::GET, "/api/v1/agents", None, Some(agent_token), 403),
        (
            Method::POST,
            "/api/v1/events",
            body(json!({"runId": "r", "event": "heartbeat"})),
            Some(agent_token),
            403,
        ),
        (
            Method::POST,
            "/api/v1/agent-tokens",
            body(json!({"name": "x"})),
            Some(agent_token),
            403,
        ),
        // …and other tokens not on them.
        (
            Method::POST,
            "/api/v1/agent/register",
            register.clone(),
            Some(web),
            403,
        ),
        (
            Method::POST,
            "/api/v1/agent/register",
            register.clone(),
            Some(ADMIN_TOKEN),
            403,
        ),
        (
            Method::POST,
            "/api/v1/agent/register",
            register.clone(),
            None,
            401,
        ),
        (
            Method::POST,
            "/api/v1/agent/claim",
            body(json!({"agentId": 1, "waitSecs": 0})),
            Some(web),
            403,
        ),
        (
            Method::POST,
            "/api/v1/agent/heartbeat",
            body(json!({"agentId": 1})),
            Some(ADMIN_TOKEN),
            403,
        ),
        (
            Method::POST,
            "/api/v1/agent/jobs/1/log?agentId=1&attempt=1&offset=0",
            Some(b"x".to_vec()),
            Some(web),
            403,
        ),
        (
            Method::POST,
            "/api/v1/agent/jobs/1/finish",
            body(json!({"agentId": 1, "attempt": 1, "state": "passed"})),
            Some(read_token.as_str()),
            403,
        ),
        // An agent id not registered with this token.
        (
            Method::POST,
            "/api/v1/agent/claim",
            body(json!({"agentId": 999, "waitSecs": 0})),
            Some(agent_token),
            404,
        ),
        (
            Method::POST,
            "/api/v1/agent/heartbeat",
            body(json!({"agentId": 999})),
            Some(agent_token),
            404,
        ),
        // Instance settings are the admin's.
        (
            Method::POST,
            "/api/v1/agent-tokens",
            body(json!({"name": "x"})),
            Some(web),
            403,
        ),
        (Method::GET, "/api/v1/agent-tokens", None, Some(web), 403),
        (
            Method::DELETE,
            "/api/v1/agent-tokens/1",
            None,
            Some(web),
            403,
        ),
        (
            Method::PUT,
            "/api/v1/projects/web/repo",
            body(json!({"repo": "/x"})),
            Some(web),
            403,
        ),
        (
            Method::GET,
            "/api/v1/projects/web/branches",
            None,
            Some(web),
            403,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/branches",
            body(json!({"name": "main"})),
            Some(web),
            403,
        ),
        (
            Method::DELETE,
            "/api/v1/projects/web/branches/main",
            None,
            Some(web),
            403,
        ),
        // Running builds needs the ingest scope; other projects' builds do not exist.
        (
            Method::POST,
            "/api/v1/projects/web/builds",
            body(json!({})),
            Some(read_token.as_str()),
            403,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/builds",
            body(json!({})),
            Some(other_token.as_str()),
            404,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/builds",
            body(json!({})),
            None,
            401,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/builds/r1/retry",
            None,
            Some(read_token.as_str()),
            403,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/builds/r1/cancel",
            None,
            Some(read_token.as_str()),
            403,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/builds/r1/cancel",
            None,
            Some(other_token.as_str()),
            404,
        ),
        (
            Method::GET,
            "/api/v1/projects/web/builds/r1/jobs",
            None,
            Some(other_token.as_str()),
            404,
        ),
        (
            Method::GET,
            "/api/v1/projects/web/builds/r1/jobs/a/log",
            None,
            Some(other_token.as_str()),
            404,
        ),
        (
            Method::GET,
            "/api/v1/projects/web/builds/r1/jobs/a/log/stream",
            None,
            Some(other_token.as_str()),
            404,
        ),
        (
            Method::GET,
            "/api/v1/projects/web/builds/r1/jobs/a/log/stream",
            None,
            None,
            401,
        ),
        // The right callers.
        (
            Method::GET,
            "/api/v1/queue",
            None,
            Some(read_token.as_str()),
            200,
        ),
        (Method::GET, "/api/v1/agents", None, Some(web), 200),
        (
            Method::GET,
            "/api/v1/agent-tokens",
            None,
            Some(ADMIN_TOKEN),
            200,
        ),
        (
            Method::GET,
            "/api/v1/projects/web/branches",
            None,
            Some(ADMIN_TOKEN),
            200,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/branches",
            body(json!({"name": "main", "priority": 2})),
            Some(ADMIN_TOKEN),
            200,
        ),
        (
            Method::DELETE,
            "/api/v1/projects/web/branches/main",
            None,
            Some(ADMIN_TOKEN),
            204,
        ),
        (
            Method::POST,
            "/api/v1/agent/register",
            register,
            Some(agent_token),
            200,
        ),
    ];
    for (method, path, request_body, caller, expected) in cases {
        let mut request = app
            .http
            .request(method.clone(), format!("{}{path}", app.base_url));
        if let Some(token) = caller {
            request = request.bearer_auth(token);
        }
        if let Some(request_body) = request_body {
            request = request
                .header("content-type", "application/json")
                .body(request_body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, expected, "{method} {path} as {caller:?}: {text}");
        if status >= 400 {
            let error: Value = serde_json::from_str(&text).unwrap();
            assert!(error["error"]["message"].is_string(), "{text}");
        }
    }
    // A revoked agent token stops working at once.
    let (_, tokens) = app
        .raw(Method::GET, "/api/v1/agent-tokens", Some(ADMIN_TOKEN), None)
        .await;
    let id = tokens["tokens"][0]["id"].as_i64().unwrap();
    let (status, _) = app
        .raw(
            Method::DELETE,
            &format!("/api/v1/agent-tokens/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .raw(
            Method::POST,
            "/api/v1/agent/heartbeat",
            Some(agent_token),
            body(json!({"agentId": 1})),
        )
        .await;
    assert_eq!(status, 401);
}

const PIPELINE: &str = r#"
env:
  GREETING: hello
steps:
  - name: install
    run:
      - echo "installing $GREETING"
      - mkdir -p deps && echo lib > deps/lib.txt
    cache:
      key_files: deps.lock
      paths: deps
  - name: test
    run: echo "testing on $KILN_BRANCH at $KILN_COMMIT"
    depends_on: install
  - name: lint
    run: printf 'lint\033[32m ok\033[0m\n'
    depends_on: install
  - name: deploy
    run: echo deploying
    depends_on: [test, lint]
    branches: release/*
"#;

async fn a_pipeline_runs_its_steps_in_dependency_order(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (repo_dir, sha) = repo(&[(".kiln.yml", PIPELINE), ("deps.lock", "lib 1.0\n")]);
    let setup = setup(&app, repo_dir.path()).await;
    let token = setup.project_token.as_str();

    // Queued while no agent runs, with the reason.
    let (status, triggered) = trigger(&app, token, json!({"priority": 3})).await;
    assert_eq!(status, 201, "{triggered}");
    assert_eq!(triggered["status"], "queued");
    assert_eq!(triggered["branch"], "main");
    assert_eq!(triggered["commit"], sha.as_str());
    assert_eq!(triggered["commitMessage"], "first commit\n\nwith a body");
    assert_eq!(triggered["number"], 1);
    assert_eq!(triggered["priority"], 3);
    let steps: Vec<&str> = triggered["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["install", "test", "lint"],
        "deploy runs only on release/*"
    );
    let run_id = triggered["runId"].as_str().unwrap().to_owned();
    let (_, queue) = app
        .raw(Method::GET, "/api/v1/queue", Some(token), None)
        .await;
    let waiting: Vec<(&str, &str)> = queue["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["step"].as_str().unwrap(),
                j["waitingFor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(waiting[0].0, "install");
    assert!(waiting[0].1.starts_with("no matching agent"), "{waiting:?}");
    assert!(
        waiting[1].1.starts_with("dependency: waiting for install"),
        "{waiting:?}"
    );

    // A live log tail opened before the job runs.
    let work = tempfile::tempdir().unwrap();
    let mut tail = SseStream::open(
        &format!(
            "{}/api/v1/projects/web/builds/{run_id}/jobs/install/log/stream",
            app.base_url
        ),
        token,
        None,
    )
    .await
    .unwrap();
    let _agent = agent(&app, &setup.agent_token, "builder", &["linux"], work.path());
    let done = wait_for_status(&app, token, &run_id, "success").await;
    assert_eq!(done["branch"], "main");
    let stages: Vec<(&str, &str)> = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(stages.len(), 3, "{stages:?}");
    assert!(
        stages.iter().all(|(_, status)| *status == "success"),
        "{stages:?}"
    );

    let jobs = jobs(&app, token, &run_id).await;
    let at = |step: &str, field: &str| -> String {
        jobs.iter().find(|j| j["step"] == step).unwrap()[field]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for job in &jobs {
        assert_eq!(job["state"], "passed", "{job}");
        assert_eq!(job["agent"], "builder");
        assert_eq!(job["attempt"], 1);
    }
    // RFC 3339 times in UTC compare as text.
    assert!(at("test", "startedAt") >= at("install", "finishedAt"));
    assert!(at("lint", "startedAt") >= at("install", "finishedAt"));

    let install_log = log_text(&app, token, &run_id, "install").await;
    assert!(
        install_log.contains(" out  installing hello\n"),
        "{install_log}"
    );
    assert!(install_log.contains("cache miss"), "{install_log}");
    assert!(install_log.contains("cache saved"), "{install_log}");
    let test_log = log_text(&app, token, &run_id, "test").await;
    assert!(
        test_log.contains(&format!("testing on main at {sha}")),
        "{test_log}"
    );
    let lint_log = log_text(&app, token, &run_id, "lint").await;
    assert!(
        lint_log.contains("lint\u{1b}[32m ok\u{1b}[0m"),
        "ANSI kept: {lint_log}"
    );

    // The tail delivered the same bytes, then ended.
    let mut streamed = String::new();
    let mut last_offset = 0;
    loop {
        let event = tail
            .next(Duration::from_secs(10))
            .await
            .expect("the tail ends with an end event");
        match event.event.as_str() {
            "log" => {
                streamed.push_str(&event.data);
                last_offset = event.id.unwrap();
            }
            "end" => break,
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(streamed, install_log);
    assert_eq!(last_offset as usize, install_log.len());
    // Resuming at an offset replays only the rest.
    let mut resumed = SseStream::open(
        &format!(
            "{}/api/v1/projects/web/builds/{run_id}/jobs/install/log/stream",
            app.base_url
        ),
        token,
        Some(10),
    )
    .await
    .unwrap();
    let first = resumed.next(Duration::from_secs(5)).await.unwrap();
    assert!(install_log[10..].starts_with(&first.data), "{first:?}");

    // Paging the log by offset.
    let page = app
        .http
        .get(format!(
            "{}/api/v1/projects/web/builds/{run_id}/jobs/install/log?offset=5&limit=7",
            app.base_url
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["x-kiln-log-offset"], "12");
    assert_eq!(
        page.headers()["x-kiln-log-size"],
        install_log.len().to_string().as_str()
    );
    assert_eq!(page.text().await.unwrap(), install_log[5..12]);

    // The events are those of any build: queued, started, stages, completed.
    let (_, events) = app
        .raw(
            Method::GET,
            &format!("/api/v1/builds/{run_id}/events"),
            Some(token),
            None,
        )
        .await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"build_queued"));
    assert_eq!(kinds.last(), Some(&"build_completed"));
    assert_eq!(kinds.iter().filter(|k| **k == "stage_started").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "stage_completed").count(), 3);

    // The agent is listed, connected, with its metrics.
    let (_, agents) = app
        .raw(Method::GET, "/api/v1/agents", Some(token), None)
        .await;
    let listed = &agents["agents"][0];
    assert_eq!(listed["name"], "builder");
    assert_eq!(listed["health"], "connected");
    assert_eq!(listed["labels"], json!(["linux"]));
    assert!(
        listed["metrics"]["memoryTotalBytes"].as_u64().unwrap() > 0,
        "{listed}"
    );

    // A second build of the same lockfile restores the cache; a branch build runs deploy.
    let (_, second) = trigger(&app, token, json!({})).await;
    let second_id = second["runId"].as_str().unwrap();
    assert_eq!(second["number"], 2);
    wait_for_status(&app, token, second_id, "success").await;
    let second_log = log_text(&app, token, second_id, "install").await;
    assert!(second_log.contains("cache hit"), "{second_log}");

    git(repo_dir.path(), &["checkout", "-q", "-b", "release/1"]);
    let (status, release) = trigger(&app, token, json!({"branch": "release/1"})).await;
    assert_eq!(status, 201, "{release}");
    assert_eq!(release["jobs"].as_array().unwrap().len(), 4);
    wait_for_status(&app, token, release["runId"].as_str().unwrap(), "success").await;

    // Retry builds the same commit again.
    let (status, retried) = app
        .raw(
            Method::POST,
            &format!("/api/v1/projects/web/builds/{run_id}/retry"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 201, "{retried}");
    assert_eq!(retried["commit"], sha.as_str());
    assert_ne!(retried["runId"], run_id.as_str());
}

async fn bad_triggers_are_refused_and_broken_repos_fail_the_build(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (_, no_repo_token) = app.project_client("bare", &["ingest"]).await;
    let (status, answer) = app
        .raw(
            Method::POST,
            "/api/v1/projects/bare/builds",
            Some(&no_repo_token),
            body(json!({})),
        )
        .await;
    assert_eq!(status, 422);
    assert_error(&answer, "unprocessable", Some("repo"));
    let (status, _) = app
        .raw(
            Method::POST,
            "/api/v1/projects/nope/builds",
            Some(ADMIN_TOKEN),
            body(json!({})),
        )
        .await;
    assert_eq!(status, 404);

    let (repo_dir, _) = repo(&[(
        ".kiln.yml",
        "steps:\n  - name: a\n    run: echo a\n    depend_on: [b]\n",
    )]);
    let setup = setup(&app, repo_dir.path()).await;
    let token = setup.project_token.as_str();
    for (request, code, field) in [
        (json!({"branch": "nope"}), "unprocessable", "branch"),
        (json!({"commit": "abc"}), "invalid_field", "commit"),
        (
            json!({"commit": "0123456789abcdef0123456789abcdef01234567"}),
            "unprocessable",
            "commit",
        ),
        (json!({"priority": 11}), "invalid_field", "priority"),
        (json!({"priority": "high"}), "invalid_field", "priority"),
        (json!({"branch": "a..b"}), "invalid_field", "branch"),
        (json!({"branch": 5}), "invalid_field", "branch"),
    ] {
        let (status, answer) = trigger(&app, token, request.clone()).await;
        assert!(
            status == 400 || status == 422,
            "{request}: {status} {answer}"
        );
        assert_error(&answer, code, Some(field));
    }
    let (status, answer) = app
        .raw(
            Method::POST,
            "/api/v1/projects/web/builds",
            Some(token),
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&answer, "invalid_json", Some("body"));

    // An invalid pipeline file fails the build at once, with the line and the reason.
    let (status, triggered) = trigger(&app, token, json!({})).await;
    assert_eq!(status, 201, "{triggered}");
    assert_eq!(triggered["status"], "failed");
    assert!(triggered["jobs"].as_array().unwrap().is_empty());
    let failed = build(&app, token, triggered["runId"].as_str().unwrap()).await;
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains(".kiln.yml: line 4"), "{message}");
    assert!(message.contains("did you mean 'depends_on'"), "{message}");

    // A repository that cannot be fetched fails the build in its checkout step, with
    // git's message in that step's log.
    let missing = repo_dir.path().join("does-not-exist");
    let (status, answer) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/repo",
            Some(ADMIN_TOKEN),
            body(json!({"repo": missing.display().to_string()})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, triggered) = trigger(&app, token, json!({})).await;
    assert_eq!(status, 201, "{triggered}");
    assert_eq!(triggered["status"], "failed");
    let run_id = triggered["runId"].as_str().unwrap();
    let jobs = jobs(&app, token, run_id).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["step"], "checkout");
    assert_eq!(jobs[0]["state"], "failed");
    let log = log_text(&app, token, run_id, "checkout").await;
    assert!(log.contains(" kiln cannot fetch"), "{log}");
    assert!(
        log.contains("does not appear to be a git repository"),
        "{log}"
    );
    let failed = build(&app, token, run_id).await;
    assert_eq!(failed["stages"][0]["name"], "checkout");
    assert_eq!(failed["stages"][0]["status"], "failed");

    // Bad agent input.
    let register = |value: Value| {
        app.raw(
            Method::POST,
            "/api/v1/agent/register",
            Some(&setup.agent_token),
            body(value),
        )
    };
    for (value, field) in [
        (
            json!({"name": "", "concurrency": 1, "executor": "process"}),
            "name",
        ),
        (
            json!({"name": "a", "concurrency": 0, "executor": "process"}),
            "concurrency",
        ),
        (
            json!({"name": "a", "concurrency": 1, "executor": "vm"}),
            "executor",
        ),
        (
            json!({"name": "a", "concurrency": 1, "executor": "process", "labels": ["bad label"]}),
            "labels[0]",
        ),
        (json!({"name": "a", "executor": "process"}), "concurrency"),
    ] {
        let (status, answer) = register(value.clone()).await;
        assert_eq!(status, 400, "{value}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{value}: {answer}");
    }
}

async fn cancel_stops_running_and_waiting_jobs(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let pipeline = "steps:\n  - name: long\n    run: trap 'echo got TERM; exit 143' TERM; echo started; while true; do sleep 0.1; done\n  - name: after\n    run: echo never\n    depends_on: long\n";
    let (repo_dir, _) = repo(&[(".kiln.yml", pipeline)]);
    let setup = setup(&app, repo_dir.path()).await;
    let token = setup.project_token.as_str();
    let work = tempfile::tempdir().unwrap();
    let _agent = agent(&app, &setup.agent_token, "builder", &[], work.path());
    let (_, triggered) = trigger(&app, token, json!({})).await;
    let run_id = triggered["runId"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_text(&app, token, run_id, "long")
        .await
        .contains(" out  started")
    {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled_at = Instant::now();
    let (status, answer) = app
        .raw(
            Method::POST,
            &format!("/api/v1/projects/web/builds/{run_id}/cancel"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stoppingJobs"], 1);
    assert_eq!(build(&app, token, run_id).await["status"], "cancelled");
    loop {
        let jobs = jobs(&app, token, run_id).await;
        if jobs[0]["state"] == "cancelled" {
            assert_eq!(jobs[1]["state"], "cancelled", "the waiting job too");
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "not stopped within 2 s: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = log_text(&app, token, run_id, "long").await;
    assert!(log.contains("got TERM"), "{log}");
    let (status, answer) = app
        .raw(
            Method::POST,
            &format!("/api/v1/projects/web/builds/{run_id}/cancel"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 409);
    assert_error(&answer, "build_ended", None);
}

/// A trigger writes `build_queued` and the build's jobs in one transaction: readers that
/// poll the builds list and each build's jobs as fast as they can, while 50 triggers run
/// at once, never find a build without jobs.
async fn a_triggered_build_is_never_seen_without_its_jobs(engine: Engine) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let app = Arc::new(TestApp::spawn(engine).await);
    let pipeline = "steps:\n  - name: one\n    run: echo 1\n  - name: two\n    run: echo 2\n    depends_on: [one]\n";
    let (repo_dir, sha) = repo(&[(".kiln.yml", pipeline)]);
    let setup = setup(&app, repo_dir.path()).await;
    let token = setup.project_token.clone();

    let triggering = Arc::new(AtomicBool::new(true));
    let checked = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (app, token) = (app.clone(), token.clone());
        let (triggering, checked) = (triggering.clone(), checked.clone());
        readers.push(tokio::spawn(async move {
            let mut without_jobs = Vec::new();
            while triggering.load(Ordering::SeqCst) {
                let (status, list) = app
                    .raw(
                        Method::GET,
                        "/api/v1/builds?project=web&limit=100",
                        Some(&token),
                        None,
                    )
                    .await;
                assert_eq!(status, 200, "{list}");
                for build in list["builds"].as_array().unwrap() {
                    let run_id = build["runId"].as_str().unwrap();
                    if jobs(&app, &token, run_id).await.is_empty() {
                        without_jobs.push(build.clone());
                    }
                    checked.fetch_add(1, Ordering::SeqCst);
                }
            }
            without_jobs
        }));
    }

    let triggers: Vec<_> = (0..50)
        .map(|n| {
            let (app, token) = (app.clone(), token.clone());
            // Half name the commit, half resolve the branch: both paths write the same way.
            let request = if n % 2 == 0 {
                json!({"commit": sha})
            } else {
                json!({})
            };
            tokio::spawn(async move { trigger(&app, &token, request).await })
        })
        .collect();
    let mut run_ids = Vec::new();
    for answer in triggers {
        let (status, triggered) = answer.await.unwrap();
        assert_eq!(status, 201, "{triggered}");
        assert_eq!(
            triggered["jobs"].as_array().unwrap().len(),
            2,
            "{triggered}"
        );
        run_ids.push(triggered["runId"].as_str().unwrap().to_owned());
    }
    triggering.store(false, Ordering::SeqCst);
    for reader in readers {
        let without_jobs = reader.await.unwrap();
        assert!(
            without_jobs.is_empty(),
            "builds seen without their jobs: {without_jobs:#?}"
        );
    }
    assert!(
        checked.load(Ordering::SeqCst) >= 50,
        "the readers looked at only {} builds while the triggers ran",
        checked.load(Ordering::SeqCst)
    );
    for run_id in &run_ids {
        assert_eq!(jobs(&app, &token, run_id).await.len(), 2, "{run_id}");
    }
}

/// A project admin cannot point a project at another project's mirror, at a local path
/// outside the allowed directories, or at a private address; a repository the policy
/// refuses later (it changed) refuses triggers too.
async fn the_repository_policy_keeps_projects_to_their_own_code(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let pipeline = "steps:\n  - name: a\n    run: echo a\n";
    let (victim_repo, victim_sha) = repo(&[(".kiln.yml", pipeline)]);
    let setup = setup(&app, victim_repo.path()).await;
    let (status, triggered) = trigger(&app, &setup.project_token, json!({})).await;
    assert_eq!(status, 201, "{triggered}");
    // The only mirror so far: web's.
    let victim_mirror = std::fs::read_dir(common::database_git_dir(&app.database))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        victim_mirror.join("HEAD").exists(),
        "the victim's mirror exists"
    );

    let attacker = app.member_token("xp-admin@x.io", "xp", "admin").await;
    let set_repo = |repo: String| {
        let app = &app;
        let attacker = attacker.clone();
        async move {
            app.raw(
                Method::PUT,
                "/api/v1/projects/xp/repo",
                Some(&attacker),
                body(json!({"repo": repo})),
            )
            .await
        }
    };
    for (repo, says) in [
        (victim_mirror.display().to_string(), "git mirrors"),
        (format!("file://{}", victim_mirror.display()), "git mirrors"),
        ("/etc".to_owned(), "--allow-local-repos"),
        ("http://127.0.0.1:9/x".to_owned(), "--repos-allow-private"),
        (
            "git://[64:ff9b::7f00:1]/x".to_owned(),
            "--repos-allow-private",
        ),
        ("ext::sh -c id".to_owned(), "remote helpers"),
    ] {
        let (status, answer) = set_repo(repo.clone()).await;
        assert_eq!(status, 422, "{repo}: {answer}");
        assert_error(&answer, "repo_not_allowed", Some("repo"));
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{repo}: {message}");
    }
    // Checked after trimming: a leading option cannot hide behind a space.
    let (status, answer) = set_repo(" --upload-pack=touch /tmp/x".into()).await;
    assert_eq!(status, 400, "{answer}");
    assert_error(&answer, "invalid_field", Some("repo"));

    // Nothing was stored: xp has no repository, so its trigger names that.
    let (status, answer) = app
        .raw(
            Method::POST,
            "/api/v1/projects/xp/builds",
            Some(&attacker),
            body(json!({"commit": victim_sha})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_error(&answer, "unprocessable", Some("repo"));

    // A repository stored before the policy refused it (here: a server started without
    // local repositories on the same database) refuses triggers with the reason.
    let (database, clock) = (app.database.clone(), app.clock.clone());
    app.stop().await;
    let strict = TestApp::spawn_configured(database, clock, |config| {
        config.scheduler.repo_policy.allow_local.clear();
    })
    .await;
    let (status, answer) = strict
        .raw(
            Method::POST,
            "/api/v1/projects/web/builds",
            Some(&setup.project_token),
            body(json!({})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_error(&answer, "repo_not_allowed", Some("repo"));
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-local-repos"),
        "{answer}"
    );
}

/// Project secrets are write-only, reach only the steps that name them (and only on the
/// branches they allow), and never appear in a log: not as given, not in base64, not
/// URL-encoded. A repository's credentials are kept apart from its URL and encrypted.
async fn steps_get_the_secrets_they_name_masked_in_their_logs(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database.clone(), clock, |config| {
        config.scheduler.repo_policy.allow_private = true;
    })
    .await;
    let pipeline = "steps:\n  - name: deploy\n    run:\n      - echo \"token=$DEPLOY_TOKEN\"\n      - printf %s \"$DEPLOY_TOKEN\" | base64\n      - echo \"url=tok-3f9a%2Fsecret%2Bvalue\"\n      - echo \"prod=${PROD_KEY:-absent}\"\n    secrets:\n      - DEPLOY_TOKEN\n      - name: PROD_KEY\n        branches: [release]\n      - MISSING_ONE\n  - name: other\n    run: echo \"other=${DEPLOY_TOKEN:-absent}\"\n";
    let (repo_dir, _) = repo(&[(".kiln.yml", pipeline)]);
    let setup = setup(&app, repo_dir.path()).await;
    let token = setup.project_token.as_str();
    let secrets = "/api/v1/projects/web/secrets";
    let put = |name: &str, value: Value| {
        let path = format!("{secrets}/{name}");
        let app = &app;
        async move {
            app.raw(Method::PUT, &path, Some(ADMIN_TOKEN), body(value))
                .await
        }
    };
    let (status, set) = put("DEPLOY_TOKEN", json!({"value": "tok-3f9a/secret+value"})).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["name"], "DEPLOY_TOKEN");
    assert!(set.get("value").is_none(), "{set}");
    assert_eq!(
        put("PROD_KEY", json!({"value": "prod-key-value"})).await.0,
        200
    );
    for (name, value, field) in [
        ("lower", json!({"value": "x"}), "name"),
        ("KILN_X", json!({"value": "x"}), "name"),
        ("OK", json!({"value": ""}), "value"),
        ("OK", json!({"val": "x"}), "val"),
    ] {
        let (status, answer) = put(name, value).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    let (status, listed) = app.raw(Method::GET, secrets, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["secrets"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("tok-3f9a"), "{listed}");
    // A project token may trigger builds but not read secrets.
    assert_eq!(
        app.raw(Method::GET, secrets, Some(token), None).await.0,
        403
    );

    let work = tempfile::tempdir().unwrap();
    let _agent = agent(&app, &setup.agent_token, "secret-agent", &[], work.path());
    let (status, triggered) = trigger(&app, token, json!({})).await;
    assert_eq!(status, 201, "{triggered}");
    let run_id = triggered["runId"].as_str().unwrap().to_owned();
    let ended = wait_for_status(&app, token, &run_id, "success").await;
    assert_eq!(ended["status"], "success");
    let log = log_text(&app, token, &run_id, "deploy").await;
    assert!(log.contains("token=***"), "{log}");
    assert!(log.contains("url=***"), "{log}");
    assert!(log.contains("prod=absent"), "only on release: {log}");
    assert!(!log.contains("tok-3f9a"), "{log}");
    assert!(!log.contains("dG9rLTNmOWEv"), "the base64 form: {log}");
    assert!(
        log.contains("secret MISSING_ONE is named by the step but project 'web' has none"),
        "{log}"
    );
    let other = log_text(&app, token, &run_id, "other").await;
    assert!(
        other.contains("other=absent"),
        "a step that names no secret gets none: {other}"
    );

    // Deleted: gone from the list, audited.
    let delete = || async {
        app.http
            .delete(format!("{}{secrets}/PROD_KEY", app.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(delete().await, 204);
    assert_eq!(delete().await, 404);
    let (_, audit) = app
        .raw(
            Method::GET,
            "/api/v1/audit?project=web",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["action"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        actions.contains(&"secret.set") && actions.contains(&"secret.delete"),
        "{audit}"
    );

    // Credentials in a repository URL are kept apart from it, encrypted.
    let (status, answer) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/repo",
            Some(ADMIN_TOKEN),
            body(json!({"repo": "https://ci-bot:pa%40ss-9z@127.0.0.1:9/app.git"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["repo"], "https://***@127.0.0.1:9/app.git");
    let store = database.open_dyn().await;
    let stored = store.project_by_slug("web").await.unwrap().unwrap();
    assert_eq!(stored.repo.as_deref(), Some("https://127.0.0.1:9/app.git"));
    let sealed = stored.repo_credentials.unwrap();
    assert!(
        sealed.starts_with("kiln1:") && !sealed.contains("pa"),
        "{sealed}"
    );
    // Setting the same URL again (the settings form's empty field) keeps them.
    app.raw(
        Method::PUT,
        "/api/v1/projects/web/repo",
        Some(ADMIN_TOKEN),
        body(json!({"repo": "https://127.0.0.1:9/app.git"})),
    )
    .await;
    let kept = store.project_by_slug("web").await.unwrap().unwrap();
    assert_eq!(kept.repo_credentials.as_deref(), Some(sealed.as_str()));
}

/// A repository URL with credentials, stored by the previous release (schema 8), is split
/// at the first start of this one: the URL without them, the credentials encrypted.
async fn credentials_an_earlier_kiln_stored_in_a_url_are_sealed_at_start(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    database
        .at_schema_version(
            8,
            &[
                "INSERT INTO projects (slug, name, created_at, repo, default_branch) \
               VALUES ('old', 'Old', 1, 'https://bot:t0k3n@git.example.com/old.git', 'main')",
            ],
        )
        .await;
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_on(database.clone(), clock).await;
    let store = database.open_dyn().await;
    let old = store.project_by_slug("old").await.unwrap().unwrap();
    assert_eq!(old.repo.as_deref(), Some("https://git.example.com/old.git"));
    let sealed = old.repo_credentials.expect("sealed");
    assert!(!sealed.contains("t0k3n"), "{sealed}");
    let (status, answer) = app
        .raw(Method::GET, "/api/v1/projects/old", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    app.stop().await;
}

/// The log a `kiln run` reports (`POST /api/v1/builds/{runId}/log`): chunks by offset
/// (a retried chunk acknowledged, a gap refused), a live tail that ends when the log
/// is ended, and clear errors for bad input and other projects' builds.
async fn a_reported_log_takes_chunks_by_offset_and_refuses_bad_input(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (_, token) = app.project_client("web", &["ingest", "read"]).await;
    let (_, other) = app.project_client("other", &["ingest"]).await;
    let token = token.as_str();
    let (status, answer) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(token),
            body(json!({"runId": "ext-1", "event": "build_started"})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let other = other.as_str();
    let app_ref = &app;
    let append = move |path: &'static str, who: &'static str, bytes: &'static [u8]| {
        let app = app_ref;
        async move {
            let caller = if who == "web" { token } else { other };
            let bytes = (!bytes.is_empty()).then(|| bytes.to_vec());
            app.raw(Method::POST, path, Some(caller), bytes).await
        }
    };

    let (status, answer) = append("/api/v1/builds/ext-1/log?step=run", "web", b"x").await;
    assert_eq!(status, 400);
    assert_error(&answer, "invalid_field", Some("offset"));
    let (status, answer) = append("/api/v1/builds/ext-1/log?offset=0&end=done", "web", b"").await;
    assert_eq!(status, 400);
    assert_error(&answer, "invalid_field", Some("end"));
    let (status, answer) =
        append("/api/v1/builds/ext-1/log?offset=0&exitCode=300", "web", b"").await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["field"], "exitCode", "{answer}");
    let (status, answer) = append("/api/v1/builds/ext-1/log?offset=0&step=a%0Ab", "web", b"").await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["field"], "step", "{answer}");
    let (status, answer) = append("/api/v1/builds/nope/log?offset=0", "web", b"x").await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = append("/api/v1/builds/ext-1/log?offset=0", "other", b"x").await;
    assert_eq!(
        status, 404,
        "another project's build is not found: {answer}"
    );

    let mut tail = SseStream::open(
        &format!(
            "{}/api/v1/projects/web/builds/ext-1/jobs/run/log/stream",
            app.base_url
        ),
        token,
        None,
    )
    .await;
    // The tail may open before the first chunk made the job: then it is not found yet.
    let (status, answer) = append("/api/v1/builds/ext-1/log?offset=0", "web", b"one\n").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["size"].as_i64(), answer["step"].as_str()),
        (Some(4), Some("run"))
    );
    assert_eq!(answer["state"], "running");
    if tail.is_err() {
        tail = SseStream::open(
            &format!(
                "{}/api/v1/projects/web/builds/ext-1/jobs/run/log/stream",
                app.base_url
            ),
            token,
            None,
        )
        .await;
    }
    let mut tail = tail.unwrap();
    let (status, _) = append("/api/v1/builds/ext-1/log?offset=0", "web", b"one\n").await;
    assert_eq!(status, 200, "a retried chunk is acknowledged");
    let (status, answer) = append("/api/v1/builds/ext-1/log?offset=9", "web", b"gap").await;
    assert_eq!(status, 409);
    assert_error(&answer, "wrong_offset", Some("offset"));
    let (status, answer) = append(
        "/api/v1/builds/ext-1/log?offset=4&end=failed&exitCode=2",
        "web",
        b"two\n",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "failed");
    let (status, answer) = append("/api/v1/builds/ext-1/log?offset=8", "web", b"late").await;
    assert_eq!(status, 409);
    assert_error(&answer, "log_ended", None);

    let mut text = String::new();
    let ended = loop {
        match tail.next(Duration::from_secs(10)).await {
            Some(event) if event.event == "log" => text.push_str(&event.data),
            Some(event) => break event,
            None => panic!("the tail did not end; got {text:?}"),
        }
    };
    assert_eq!(ended.event, "end", "{ended:?}");
    assert_eq!(text.lines().collect::<Vec<_>>(), ["one", "two"], "{text:?}");
    let listed = jobs(&app, token, "ext-1").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            &listed[0]["state"],
            &listed[0]["exitCode"],
            &listed[0]["reported"]
        ),
        (&json!("failed"), &json!(2), &json!(true))
    );
    app.stop().await;
}

/// The claim gives the agent the project's repository credentials when it has some (read
/// only then: the claimed row says whether there are any), and none otherwise.
async fn a_claim_carries_repository_credentials_only_where_the_project_has_them(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (repo_dir, _) = repo(&[(".kiln.yml", "steps:\n  - name: build\n    run: echo hi\n")]);
    let setup = setup(&app, repo_dir.path()).await;
    let token = setup.project_token.as_str();
    let agent = common::fake_agent::register(&app, "creds", 1).await;

    // Without credentials: the claim has none.
    let (status, triggered) = trigger(&app, token, json!({})).await;
    assert_eq!(status, 201, "{triggered}");
    let job = common::fake_agent::claim(&app, &agent).await;
    assert_eq!(job["runId"], triggered["runId"], "{job}");
    assert!(job["repoCredentials"].is_null(), "{job}");
    common::fake_agent::finish(&app, &agent, &job).await;

    // Queued, then the project's repository gets credentials: the claim carries them.
    let (status, triggered) = trigger(&app, token, json!({})).await;
    assert_eq!(status, 201, "{triggered}");
    let (status, answer) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/repo",
            Some(ADMIN_TOKEN),
            body(json!({"repo": "https://ci-bot:pa%40ss-9z@93.184.215.14/app.git"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let job = common::fake_agent::claim(&app, &agent).await;
    assert_eq!(job["runId"], triggered["runId"], "{job}");
    assert_eq!(job["repo"], "https://93.184.215.14/app.git", "{job}");
    assert_eq!(
        job["repoCredentials"],
        json!({"username": "ci-bot", "password": "pa@ss-9z"}),
        "{job}"
    );
    app.stop().await;
}
