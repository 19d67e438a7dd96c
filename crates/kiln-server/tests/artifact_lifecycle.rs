//! After a build, against the real server: retention (dry run and real run, pinned and
//! last-good builds kept, shared blobs kept, blob files removed from the local store,
//! the hourly task), comparing builds, rebuild-to-verify's answer before any rebuild and
//! the agent a rebuild goes to (another than the first build's, when one claims in time),
//! and build reports as JSON and Markdown.

mod common;

use std::time::Duration;

use common::{TestApp, database_dir};
use kiln_client::{ArtifactTarget, Client};
use kiln_protocol::SetArtifactRetention;
use kiln_store::Engine;
use kiln_store::engine_test;
use serde_json::{Value, json};

engine_test!(retention_keeps_pinned_last_good_and_shared_blobs);
engine_test!(the_hourly_task_applies_each_projects_rule);
engine_test!(builds_compare_file_by_file);
engine_test!(a_report_sums_up_a_build_as_json_and_markdown);
engine_test!(a_rebuild_to_verify_prefers_another_agent);

/// Sends one event with the project token.
async fn event(app: &TestApp, token: &str, body: Value) {
    let response = app
        .http
        .post(format!("{}/api/v1/events", app.base_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{body}: {}",
        response.text().await.unwrap()
    );
}

/// A self-reported build of `branch` holding `files` (path, content), ended with
/// `outcome` (`build_completed` or `build_failed`).
async fn build(
    app: &TestApp,
    client: &Client,
    token: &str,
    run_id: &str,
    branch: &str,
    files: &[(&str, &str)],
    outcome: &str,
) {
    event(
        app,
        token,
        json!({"runId": run_id, "event": "build_started", "branch": branch, "commit": "0123456789abcdef"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let local = dir.path().join(path.replace('/', "_"));
        std::fs::write(&local, content).unwrap();
        client
            .upload_artifact(
                &ArtifactTarget::Build {
                    run_id: run_id.to_owned(),
                },
                &local,
                path,
                0o644,
                None,
            )
            .await
            .unwrap();
    }
    event(app, token, json!({"runId": run_id, "event": outcome})).await;
}

fn sha256_hex(content: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(content.as_bytes()))
}

/// Where the local blob store of the test server keeps a content.
fn blob_file(app: &TestApp, content: &str) -> std::path::PathBuf {
    let digest = sha256_hex(content);
    database_dir(&app.database, "artifacts")
        .join("blobs")
        .join(&digest[..2])
        .join(&digest[2..4])
        .join(digest)
}

async fn paths(client: &Client, run_id: &str) -> Vec<String> {
    client
        .artifact_manifest(run_id)
        .await
        .unwrap()
        .files
        .into_iter()
        .map(|f| f.path)
        .collect()
}

async fn retention_keeps_pinned_last_good_and_shared_blobs(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = app.project_client("app", &["ingest", "read"]).await;
    let ok = "build_completed";
    let failed = "build_failed";
    build(
        &app,
        &client,
        &token,
        "r1",
        "main",
        &[("shared.txt", "shared"), ("one.txt", "one")],
        ok,
    )
    .await;
    build(
        &app,
        &client,
        &token,
        "r2",
        "main",
        &[("shared.txt", "shared"), ("two.txt", "two")],
        ok,
    )
    .await;
    build(
        &app,
        &client,
        &token,
        "r3",
        "main",
        &[("shared.txt", "shared"), ("three.txt", "three")],
        failed,
    )
    .await;
    build(
        &app,
        &client,
        &token,
        "r4",
        "main",
        &[("four.txt", "four")],
        ok,
    )
    .await;
    build(
        &app,
        &client,
        &token,
        "r5",
        "main",
        &[("five.txt", "five")],
        failed,
    )
    .await;
    build(
        &app,
        &client,
        &token,
        "f1",
        "feature",
        &[("f.txt", "feature")],
        failed,
    )
    .await;
    let pinned = client.pin_build("r1").await.unwrap();
    assert!(pinned.pinned);
    assert!(pinned.pinned_by.is_some());

    // No rule: nothing goes.
    let run = app.admin.run_artifact_retention("app", true).await.unwrap();
    assert!(run.builds.is_empty() && run.bytes_freed == 0, "{run:?}");

    let rule = app
        .admin
        .set_artifact_retention(
            "app",
            &SetArtifactRetention {
                keep_builds: Some(1),
                keep_days: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(rule.keep_builds, Some(1));
    assert_eq!(client.artifact_retention("app").await.unwrap(), rule);
    let refused = app
        .admin
        .set_artifact_retention(
            "app",
            &SetArtifactRetention {
                keep_builds: Some(0),
                keep_days: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(400));

    // main keeps r5 (newest), r4 (last good) and r1 (pinned); feature keeps its only
    // build. r2 and r3 go; "shared" stays, r1 still names it.
    let dry = app.admin.run_artifact_retention("app", true).await.unwrap();
    assert!(dry.dry_run);
    let gone: Vec<&str> = dry.builds.iter().map(|b| b.run_id.as_str()).collect();
    assert_eq!(gone, vec!["r2", "r3"]);
    assert_eq!(dry.files, 4);
    assert_eq!(dry.blobs, 2);
    assert_eq!(dry.bytes_freed, ("two".len() + "three".len()) as u64);
    assert_eq!(dry.remaining, 0);
    for kept in ["r1", "r4"] {
        assert!(dry.protected.contains(&kept.to_owned()), "{dry:?}");
    }
    // A dry run deletes nothing.
    assert_eq!(paths(&client, "r2").await.len(), 2);
    assert!(blob_file(&app, "two").exists());

    let done = app
        .admin
        .run_artifact_retention("app", false)
        .await
        .unwrap();
    assert!(!done.dry_run);
    assert_eq!(done.bytes_freed, dry.bytes_freed);
    assert!(paths(&client, "r2").await.is_empty());
    assert!(paths(&client, "r3").await.is_empty());
    assert!(!blob_file(&app, "two").exists(), "the blob file is removed");
    assert!(!blob_file(&app, "three").exists());
    for content in ["shared", "one", "four", "five", "feature"] {
        assert!(blob_file(&app, content).exists(), "{content} is kept");
    }
    assert_eq!(paths(&client, "r1").await, vec!["one.txt", "shared.txt"]);
    let verified = client.verify_artifacts("r1").await.unwrap();
    assert!(verified.ok, "{verified:?}");

    // Unpinned, r1 goes at the next run; its blobs with it.
    assert!(!client.unpin_build("r1").await.unwrap().pinned);
    let again = app
        .admin
        .run_artifact_retention("app", false)
        .await
        .unwrap();
    assert_eq!(
        again
            .builds
            .iter()
            .map(|b| b.run_id.as_str())
            .collect::<Vec<_>>(),
        vec!["r1"]
    );
    assert!(!blob_file(&app, "shared").exists());
    assert!(!blob_file(&app, "one").exists());

    // The same content uploaded again is stored again.
    build(
        &app,
        &client,
        &token,
        "r6",
        "main",
        &[("shared.txt", "shared")],
        ok,
    )
    .await;
    assert!(blob_file(&app, "shared").exists());
    assert!(client.verify_artifacts("r6").await.unwrap().ok);

    // Project tokens neither set rules nor run them.
    assert_eq!(
        client
            .run_artifact_retention("app", true)
            .await
            .unwrap_err()
            .status(),
        Some(403)
    );
    app.stop().await;
}

async fn the_hourly_task_applies_each_projects_rule(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        if let Some(artifacts) = config.artifacts.as_mut() {
            artifacts.retention_interval = Duration::from_millis(50);
        }
    })
    .await;
    let (client, token) = app.project_client("app", &["ingest", "read"]).await;
    build(
        &app,
        &client,
        &token,
        "old",
        "main",
        &[("a.txt", "old")],
        "build_failed",
    )
    .await;
    app.clock.advance_ms(10 * 86_400_000);
    build(
        &app,
        &client,
        &token,
        "new",
        "main",
        &[("a.txt", "new")],
        "build_completed",
    )
    .await;
    app.admin
        .set_artifact_retention(
            "app",
            &SetArtifactRetention {
                keep_builds: None,
                keep_days: Some(7),
            },
        )
        .await
        .unwrap();
    app.passes_of(kiln_server::Periodic::Retention, 2).await;
    assert!(paths(&client, "old").await.is_empty());
    assert!(!blob_file(&app, "old").exists());
    assert_eq!(paths(&client, "new").await, vec!["a.txt"]);
    app.stop().await;
}

async fn builds_compare_file_by_file(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = app.project_client("app", &["ingest", "read"]).await;
    let ok = "build_completed";
    build(
        &app,
        &client,
        &token,
        "a",
        "main",
        &[("bin/app", "same"), ("stamp", "1")],
        ok,
    )
    .await;
    build(
        &app,
        &client,
        &token,
        "b",
        "main",
        &[("bin/app", "same"), ("stamp", "2"), ("extra", "x")],
        ok,
    )
    .await;
    build(
        &app,
        &client,
        &token,
        "c",
        "main",
        &[("stamp", "1"), ("bin/app", "same")],
        ok,
    )
    .await;
    build(&app, &client, &token, "empty", "main", &[], ok).await;

    let same = client.compare_builds("a", "c").await.unwrap();
    assert!(same.reproducible);
    assert_eq!(same.verdict, "reproducible");
    assert_eq!((same.identical, same.differs), (2, 0));

    let different = client.compare_builds("a", "b").await.unwrap();
    assert!(!different.reproducible);
    assert_eq!(different.verdict, "not_reproducible");
    assert_eq!(
        (
            different.identical,
            different.differs,
            different.only_a,
            different.only_b
        ),
        (1, 1, 0, 1)
    );
    let stamp = different.files.iter().find(|f| f.path == "stamp").unwrap();
    assert_eq!(stamp.status, "differs");
    assert_eq!(stamp.a.as_ref().unwrap().sha256, sha256_hex("1"));
    assert_eq!(stamp.b.as_ref().unwrap().sha256, sha256_hex("2"));
    let extra = different.files.iter().find(|f| f.path == "extra").unwrap();
    assert_eq!(extra.status, "only_b");
    assert!(extra.a.is_none());
    assert_eq!(extra.b.as_ref().unwrap().size, 1);

    let reversed = client.compare_builds("b", "a").await.unwrap();
    assert_eq!(reversed.only_a, 1);

    let nothing = client.compare_builds("empty", "empty").await.unwrap();
    assert_eq!(nothing.verdict, "no_artifacts");
    assert!(!nothing.reproducible);

    // Unknown builds and other projects' builds are not found; a missing side is named.
    assert_eq!(
        client
            .compare_builds("a", "nope")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    let (other, other_token) = app.project_client("other", &["ingest", "read"]).await;
    build(
        &app,
        &other,
        &other_token,
        "o",
        "main",
        &[("stamp", "1")],
        ok,
    )
    .await;
    assert_eq!(
        client.compare_builds("a", "o").await.unwrap_err().status(),
        Some(404)
    );
    let missing = app
        .http
        .get(format!("{}/api/v1/compare?a=a", app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["field"], "b");

    // Never rebuilt to verify: nothing yet. A build that reported itself cannot be
    // rebuilt.
    let verification = client.verification("a").await.unwrap();
    assert!(verification.rebuild_run_id.is_none() && verification.comparison.is_none());
    assert_eq!(
        client.rebuild_to_verify("a").await.unwrap_err().status(),
        Some(422)
    );
    app.stop().await;
}

async fn a_report_sums_up_a_build_as_json_and_markdown(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (client, token) = app.project_client("app", &["ingest", "read"]).await;
    let run = "rep-1";
    event(
        &app,
        &token,
        json!({"runId": run, "event": "build_started", "branch": "main", "commit": "abc123"}),
    )
    .await;
    event(
        &app,
        &token,
        json!({"runId": run, "event": "stage_started", "stage": "compile"}),
    )
    .await;
    app.clock.advance_ms(1500);
    event(
        &app,
        &token,
        json!({"runId": run, "event": "stage_completed", "stage": "compile"}),
    )
    .await;
    event(
        &app,
        &token,
        json!({"runId": run, "event": "stage_started", "stage": "test"}),
    )
    .await;
    // The step's log, ended as failed, as `kiln run` reports it.
    let log: String = (1..=30).map(|n| format!("line {n}\n")).collect();
    let appended = app
        .http
        .post(format!(
            "{}/api/v1/builds/{run}/log?offset=0&step=test&end=failed&exitCode=3",
            app.base_url
        ))
        .bearer_auth(&token)
        .body(log)
        .send()
        .await
        .unwrap();
    assert!(
        appended.status().is_success(),
        "{}",
        appended.text().await.unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("out"), "binary").unwrap();
    client
        .upload_artifact(
            &ArtifactTarget::Build {
                run_id: run.to_owned(),
            },
            &dir.path().join("out"),
            "dist/a_b[1].bin",
            0o755,
            None,
        )
        .await
        .unwrap();
    event(
        &app,
        &token,
        json!({"runId": run, "event": "stage_failed", "stage": "test", "message": "2 tests failed"}),
    )
    .await;
    event(
        &app,
        &token,
        json!({"runId": run, "event": "build_failed", "message": "see [here](http://evil.example) <script>"}),
    )
    .await;

    // The report once the digester filled in the artifact's MD5 and SHA-512.
    let mut report = client.build_report(run).await.unwrap();
    for _ in 0..400 {
        if report.artifacts.iter().all(|a| a.md5.is_some()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        report = client.build_report(run).await.unwrap();
    }
    assert_eq!(report.project, "app");
    assert_eq!(report.run_id, run);
    assert_eq!(report.number, 1);
    assert_eq!(report.branch.as_deref(), Some("main"));
    assert_eq!(report.commit.as_deref(), Some("abc123"));
    assert_eq!(report.status, "failed");
    assert!(report.ended_at.is_some() && report.duration_ms.is_some());
    assert_eq!(report.trigger.cause, "reported");
    let stages: Vec<(&str, &str)> = report
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(stages, vec![("compile", "success"), ("test", "failed")]);
    assert_eq!(report.stages[0].duration_ms, Some(1500));
    assert_eq!(report.failures.len(), 1);
    let failure = &report.failures[0];
    assert_eq!(failure.step, "test");
    assert_eq!(failure.exit_code, Some(3));
    assert_eq!(failure.last_log_lines.len(), 20);
    assert_eq!(failure.last_log_lines[0], "line 11");
    assert_eq!(failure.last_log_lines[19], "line 30");
    assert!(report.tests.is_none());
    assert_eq!(report.artifacts.len(), 1);
    assert_eq!(report.artifacts[0].sha256, sha256_hex("binary"));
    assert_eq!(report.artifacts[0].md5.as_ref().map(String::len), Some(32));
    assert_eq!(
        report.artifacts[0].sha512.as_ref().map(String::len),
        Some(128)
    );
    assert!(report.deployment.is_none());
    let raw: Value = app
        .http
        .get(format!("{}/api/v1/builds/{run}/report.json", app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(raw.get("deployment").is_some_and(Value::is_null), "{raw}");

    let response = app
        .http
        .get(format!("{}/api/v1/builds/{run}/report.md", app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/markdown; charset=utf-8"
    );
    let markdown = response.text().await.unwrap();
    assert!(
        markdown.starts_with("# app build #1: failed\n"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| compile | success | 1.5 s |"),
        "{markdown}"
    );
    assert!(markdown.contains("### test (exit code 3)"), "{markdown}");
    assert!(markdown.contains("```text\nline 11\n"), "{markdown}");
    assert!(!markdown.contains("line 10\n"), "{markdown}");
    // User-supplied strings cannot add links, HTML or cells.
    assert!(!markdown.contains("[here](http"), "{markdown}");
    assert!(!markdown.contains("<script>"), "{markdown}");
    assert!(markdown.contains("\\[here\\]"), "{markdown}");
    assert!(markdown.contains("dist/a\\_b\\[1\\]\\.bin"), "{markdown}");
    assert!(markdown.contains(&sha256_hex("binary")), "{markdown}");
    assert!(markdown.contains("Not deployed."), "{markdown}");
    assert_eq!(client.build_report_markdown(run).await.unwrap(), markdown);
    assert_eq!(
        client.build_report("nope").await.unwrap_err().status(),
        Some(404)
    );
    app.stop().await;
}

/// Rebuild to verify steers each step away from the agent that ran it in the original
/// build: with two agents polling, the other one gets the rebuild's job while the first
/// is passed over; with the first agent alone, it gets the job once
/// `AVOIDED_AGENT_HOLD_MS` has passed (the test clock moved on), not before.
async fn a_rebuild_to_verify_prefers_another_agent(engine: Engine) {
    use common::fake_agent::{agent_call, claim, finish, register};
    let app = TestApp::spawn(engine).await;
    let repo = tempfile::tempdir().unwrap();
    common::git(repo.path(), &["init", "-q"]);
    std::fs::write(
        repo.path().join(".kiln.yml"),
        "steps:\n  - name: build\n    run: echo build\n",
    )
    .unwrap();
    common::git(repo.path(), &["add", "."]);
    common::git(repo.path(), &["commit", "-q", "-m", "one step"]);
    app.project_client("web", &["ingest", "read"]).await;
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let app = &app;
        async move {
            app.raw(
                method,
                &path,
                Some(common::ADMIN_TOKEN),
                body.map(|body| body.to_string().into_bytes()),
            )
            .await
        }
    };
    let (status, answer) = call(
        reqwest::Method::PUT,
        "/api/v1/projects/web/repo".into(),
        Some(json!({"repo": repo.path().display().to_string()})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let first = register(&app, "first", 1).await;
    let second = register(&app, "second", 1).await;
    // Waits at most `wait_secs` for a job; `Value::Null` when none came.
    let claim_within = |agent: &common::fake_agent::Agent, wait_secs: u64| {
        let app = &app;
        let request = json!({"agentId": agent.id, "waitSecs": wait_secs});
        let token = agent.token.clone();
        let id = agent.id;
        async move {
            let agent = common::fake_agent::Agent { token, id };
            let (status, job) = agent_call(app, &agent, "/api/v1/agent/claim", request).await;
            assert!(status == 200 || status == 204, "{status} {job}");
            job
        }
    };
    let wait_for_end = |run_id: String| {
        let app = &app;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let (_, build) = app
                    .raw(
                        reqwest::Method::GET,
                        &format!("/api/v1/builds/{run_id}"),
                        Some(common::ADMIN_TOKEN),
                        None,
                    )
                    .await;
                if build["status"] == "success" {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{build}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let (status, triggered) = call(
        reqwest::Method::POST,
        "/api/v1/projects/web/builds".into(),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{triggered}");
    let original = triggered["runId"].as_str().unwrap().to_owned();
    let job = claim(&app, &first).await;
    assert_eq!(job["runId"], original.as_str());
    finish(&app, &first, &job).await;
    wait_for_end(original.clone()).await;

    // Two agents: the first is passed over, the second rebuilds.
    let (status, requested) = call(
        reqwest::Method::POST,
        format!("/api/v1/builds/{original}/rebuild-verify"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{requested}");
    let rebuild = requested["rebuildRunId"].as_str().unwrap().to_owned();
    assert_eq!(
        claim_within(&first, 0).await,
        Value::Null,
        "held from the first agent"
    );
    let job = claim_within(&second, 5).await;
    assert_eq!(job["runId"], rebuild.as_str());
    assert_eq!(job["env"]["KILN_AGENT_NAME"], "second");
    finish(&app, &second, &job).await;
    wait_for_end(rebuild.clone()).await;

    // The first agent alone: it waits out the hold, then rebuilds.
    let (status, requested) = call(
        reqwest::Method::POST,
        format!("/api/v1/builds/{original}/rebuild-verify"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{requested}");
    let rebuild = requested["rebuildRunId"].as_str().unwrap().to_owned();
    assert_eq!(claim_within(&first, 1).await, Value::Null);
    app.clock.advance_ms(kiln_store::AVOIDED_AGENT_HOLD_MS);
    let job = claim_within(&first, 5).await;
    assert_eq!(job["runId"], rebuild.as_str());
    finish(&app, &first, &job).await;
    wait_for_end(rebuild).await;
    app.stop().await;
}
