//! The clock jumping forward and back (NTP steps, a suspended VM, a mis-set clock fixed)
//! around the two things time decides: stale builds and job leases. Part of the chaos
//! suite (tests/chaos runs it and reports its `FIGURE` lines); runs on both engines.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kiln_store::{Engine, engine_test};
use reqwest::Method;
use serde_json::{Value, json};

use common::fake_agent::{Agent, agent_call, register};
use common::{ADMIN_TOKEN, TestApp, git};

engine_test!(stale_detection_survives_clock_jumps);
engine_test!(leases_survive_clock_jumps);

const MINUTE: i64 = 60_000;

fn figure(name: &str, value: impl std::fmt::Display) {
    eprintln!("FIGURE {name}: {value}");
}

async fn send(app: &TestApp, token: &str, events: Value) -> (u16, Value) {
    app.raw(
        Method::POST,
        "/api/v1/events",
        Some(token),
        Some(events.to_string().into_bytes()),
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

async fn events(app: &TestApp, token: &str, run_id: &str) -> Vec<Value> {
    let (status, answer) = app
        .raw(
            Method::GET,
            &format!("/api/v1/builds/{run_id}/events?lastEventId=0&limit=1000"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["events"].as_array().unwrap().clone()
}

async fn stale_detection_survives_clock_jumps(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (_, token) = app.project_client("web", &["ingest", "read"]).await;
    let started = json!([
        {"runId": "jumped", "eventId": "s", "event": "build_started", "heartbeatTimeout": 30},
        {"runId": "back", "eventId": "s", "event": "build_started", "heartbeatTimeout": 30},
    ]);
    let (status, answer) = send(&app, &token, started).await;
    assert_eq!(status, 201, "{answer}");

    // Backwards by an hour: the builds' last events now lie in the future. Nothing is
    // stale, however many scans run, and heartbeats are still taken.
    app.clock.advance_ms(-60 * MINUTE);
    app.passes_of(kiln_server::Periodic::Reaper, 3).await;
    assert_eq!(build(&app, &token, "back").await["status"], "running");
    let (status, answer) = send(
        &app,
        &token,
        json!({"runId": "back", "eventId": "h1", "event": "heartbeat"}),
    )
    .await;
    assert_eq!(status, 201, "a heartbeat after a backward jump: {answer}");
    // 29 s of silence after that heartbeat: still within the timeout.
    app.clock.advance_ms(29_000);
    app.passes_of(kiln_server::Periodic::Reaper, 2).await;
    assert_eq!(build(&app, &token, "back").await["status"], "running");
    // A build that ends before its start (by the clock) has no negative duration.
    let (status, answer) = send(
        &app,
        &token,
        json!({"runId": "back", "eventId": "done", "event": "build_completed"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let back = build(&app, &token, "back").await;
    assert_eq!(back["status"], "success");
    let duration = back["durationMs"].as_i64().unwrap();
    assert!(duration >= 0, "a negative duration: {back}");
    figure(
        "duration of a build ended after a 1 h backward jump (ms)",
        duration,
    );

    // Forward by ten hours in one step: the silent build is failed stale exactly once,
    // however many scans see it past its timeout.
    app.clock.advance_ms(600 * MINUTE);
    for _ in 0..500 {
        if build(&app, &token, "jumped").await["status"] == "stale" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.passes_of(kiln_server::Periodic::Reaper, 3).await;
    let jumped = events(&app, &token, "jumped").await;
    let stale = jumped
        .iter()
        .filter(|event| event["event"] == "build_failed")
        .count();
    assert_eq!(stale, 1, "{jumped:?}");
    assert_eq!(build(&app, &token, "jumped").await["status"], "stale");
    figure("stale events after a 10 h forward jump", stale);
    assert_eq!(
        build(&app, &token, "back").await["status"],
        "success",
        "an ended build is never failed stale"
    );
    app.stop().await;
}

const PIPELINE: &str = "steps:
  - name: retried
    run: 'true'
    retry:
      automatic:
        on: [agent_lost]
        limit: 2
  - name: once
    run: 'true'
    depends_on: retried
";

async fn job(app: &TestApp, run_id: &str, step: &str) -> Value {
    let (status, answer) = app
        .raw(
            Method::GET,
            &format!("/api/v1/projects/web/builds/{run_id}/jobs"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["step"] == step)
        .unwrap()
        .clone()
}

async fn wait_job(app: &TestApp, run_id: &str, step: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let job = job(app, run_id, step).await;
        if done(&job) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{step} never reached the expected state: {}",
        job(app, run_id, step).await
    );
}

async fn claim_step(app: &TestApp, agent: &Agent, step: &str) -> Value {
    for _ in 0..20 {
        let (status, job) = agent_call(
            app,
            agent,
            "/api/v1/agent/claim",
            json!({"agentId": agent.id, "waitSecs": 2}),
        )
        .await;
        assert!(status == 200 || status == 204, "claim: {status} {job}");
        if status == 200 {
            assert_eq!(job["step"], step, "{job}");
            return job;
        }
    }
    panic!("{step} was never claimed");
}

async fn heartbeat(app: &TestApp, agent: &Agent, jobs: &[&Value]) -> Value {
    let ids: Vec<&Value> = jobs.iter().map(|job| &job["jobId"]).collect();
    let (status, answer) = agent_call(
        app,
        agent,
        "/api/v1/agent/heartbeat",
        json!({"agentId": agent.id, "jobs": ids}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn leases_survive_clock_jumps(engine: Engine) {
    let database = Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    // A 60 s lease, checked every 15 ms of real time (the check is a quarter of the
    // lease in real time; the expiry itself is judged by the manual clock).
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.scheduler.job_lease = Duration::from_millis(60);
    })
    .await;
    let lease_ms = 60;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join(".kiln.yml"), PIPELINE).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "pipeline"]);
    app.project_client("web", &["ingest", "read"]).await;
    let (status, answer) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/repo",
            Some(ADMIN_TOKEN),
            Some(
                json!({"repo": repo.path().display().to_string()})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let agent = register(&app, "jumper", 1).await;
    let (status, build) = app
        .raw(
            Method::POST,
            "/api/v1/projects/web/builds",
            Some(ADMIN_TOKEN),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, 201, "{build}");
    let run_id = build["runId"].as_str().unwrap().to_owned();

    // Backwards by an hour while the agent holds the job: its lease now ends an hour
    // and a minute ahead, and heartbeats keep renewing it; nothing expires.
    let first = claim_step(&app, &agent, "retried").await;
    app.clock.advance_ms(-60 * MINUTE);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = heartbeat(&app, &agent, &[&first]).await;
    assert_eq!(answer["lost"], json!([]), "{answer}");
    app.clock.advance_ms(lease_ms / 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = job(&app, &run_id, "retried").await;
    assert_eq!(held["state"], "running", "{held}");
    assert_eq!(held["attempt"], 1, "{held}");

    // Forward by a day in one step, no heartbeat: the job is requeued exactly once
    // (attempt 2, not the whole retry budget), and the old attempt's report is refused.
    app.clock.advance_ms(24 * 60 * MINUTE);
    wait_job(&app, &run_id, "retried", |job| job["state"] == "queued").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = job(&app, &run_id, "retried").await;
    assert_eq!(settled["state"], "queued", "{settled}");
    assert_eq!(settled["agent"], Value::Null, "{settled}");
    figure("attempts used by one lease expiry across a 24 h jump", 1);
    let (status, refused) = agent_call(
        &app,
        &agent,
        &format!("/api/v1/agent/jobs/{}/finish", first["jobId"]),
        json!({"agentId": agent.id, "attempt": 1, "state": "passed", "exitCode": 0}),
    )
    .await;
    assert_eq!(status, 409, "the lost attempt's report: {refused}");
    let answer = heartbeat(&app, &agent, &[&first]).await;
    assert_eq!(answer["lost"], json!([first["jobId"]]), "{answer}");

    // The retry runs and passes; the next step, without a retry rule, is failed
    // agent_lost by a forward jump, once.
    let second = claim_step(&app, &agent, "retried").await;
    assert_eq!(second["attempt"], 2, "one requeue per expiry: {second}");
    let (status, answer) = agent_call(
        &app,
        &agent,
        &format!("/api/v1/agent/jobs/{}/finish", second["jobId"]),
        json!({"agentId": agent.id, "attempt": 2, "state": "passed", "exitCode": 0}),
    )
    .await;
    assert!(status < 300, "{status} {answer}");
    let third = claim_step(&app, &agent, "once").await;
    app.clock.advance_ms(7 * 24 * 60 * MINUTE);
    let failed = wait_job(&app, &run_id, "once", |job| job["state"] == "failed").await;
    assert_eq!(failed["reason"], "agent_lost", "{failed}");
    assert_eq!(failed["attempt"], 1, "{failed}");
    let _ = third;
    // The build ends with its last job (an event the scheduler appends just after).
    let mut ended = Value::Null;
    for _ in 0..500 {
        let (status, build) = app
            .raw(
                Method::GET,
                &format!("/api/v1/builds/{run_id}"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{build}");
        ended = build;
        if ended["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(ended["durationMs"].as_i64().unwrap() >= 0, "{ended}");
    figure("builds left running after the jumps", 0);
    app.stop().await;
}
