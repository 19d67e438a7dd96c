//! Deployments through the real server (both engines) and its sites listener: a deploy
//! followed through its statuses as a fake agent runs the build's jobs and uploads the
//! site, the site fetched (index pages, content types, ETag, ranges, refusals), a script
//! deployment, and a rollback while a client keeps fetching (every answer whole, one
//! version or the other, never going back), audited; a script deployment rolled back by
//! running the earlier build's deploy step again (its commit, its artifacts) in a build
//! of its own, live once the step passed, the environment unchanged when it failed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::fake_agent::{Agent, claim, finish, register, upload};
use common::{ADMIN_TOKEN, TestApp, assert_error, git};
use kiln_store::{Engine, engine_test};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

engine_test!(a_site_is_deployed_served_and_rolled_back);
engine_test!(a_script_deployment_rolls_back_by_running_its_step_again);

const PIPELINE: &str = "steps:
  - name: build
    run: echo build
  - name: publish
    run: echo publish
    depends_on: build
    deploy: {environment: production, publish: dist}
  - name: staging
    run: ./deploy.sh
    depends_on: build
    deploy: {environment: staging, url: 'https://staging.example.test/'}
";

fn body(value: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&value).unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn deployment(app: &TestApp, id: &Value) -> Value {
    let (status, deployment) = app
        .raw(
            Method::GET,
            &format!("/api/v1/deployments/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{deployment}");
    deployment
}

async fn wait_for_status(app: &TestApp, id: &Value, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let deployment = deployment(app, id).await;
        if deployment["status"] == wanted {
            return deployment;
        }
        assert!(
            Instant::now() < deadline,
            "deployment never became {wanted}: {deployment}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a deploy's build as the fake agent: `build` first, then the deploy steps, the
/// site's files uploaded by `publish`.
async fn run_build(app: &TestApp, agent: &Agent, deployment_id: &Value, site: &[(&str, &[u8])]) {
    let first = claim(app, agent).await;
    assert_eq!(first["step"], "build");
    wait_for_status(app, deployment_id, "cloning").await;
    finish(app, agent, &first).await;
    wait_for_status(app, deployment_id, "building").await;
    for _ in 0..2 {
        let job = claim(app, agent).await;
        if job["step"] == "publish" {
            assert!(
                job["artifactGlobs"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("dist")),
                "the publish directory is uploaded like an artifact: {job}"
            );
            upload(app, agent, &job, site).await;
        }
        finish(app, agent, &job).await;
    }
}

/// One request written by hand (clients normalise `..` and `%2e%2e` away).
async fn raw_get(address: &str, target: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

async fn a_site_is_deployed_served_and_rolled_back(engine: Engine) {
    let sites_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sites_address = sites_listener.local_addr().unwrap().to_string();
    let sites_config = kiln_server::SitesConfig::new(sites_listener).unwrap();
    let database = Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, move |config| {
        config.sites = Some(sites_config);
    })
    .await;
    let sites = format!("http://{sites_address}");

    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join(".kiln.yml"), PIPELINE).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "site"]);
    app.project_client("web", &["ingest", "read"]).await;
    let (status, answer) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/repo",
            Some(ADMIN_TOKEN),
            body(json!({"repo": repo.path().display().to_string()})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let agent = register(&app, "fake", 4).await;

    // Nothing deployed yet.
    let (status, environments) = app
        .raw(
            Method::GET,
            "/api/v1/projects/web/environments",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{environments}");
    assert_eq!(environments["environments"], json!([]));
    assert_eq!(raw_get(&sites_address, "/web/production/").await, 404);

    // The first deploy, followed through its statuses.
    let (status, started) = app
        .raw(
            Method::POST,
            "/api/v1/projects/web/environments/production/deploy",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let first_id = started["deployment"]["id"].clone();
    let first_run = started["build"]["runId"].as_str().unwrap().to_owned();
    assert_eq!(started["deployment"]["status"], "queued");
    assert_eq!(started["deployment"]["environment"], "production");
    assert_eq!(started["deployment"]["publish"], "dist");
    assert_eq!(
        started["deployment"]["url"],
        format!("{sites}/web/production/")
    );
    let (status, refused) = app
        .raw(
            Method::POST,
            "/api/v1/projects/web/environments/production/deploy",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_error(&refused, "deployment_running", None);
    let v1_index = b"<!doctype html><title>v1</title><script src=app.js></script>".as_slice();
    let site_v1: Vec<(&str, &[u8])> = vec![
        ("dist/index.html", v1_index),
        ("dist/app.js", b"console.log('v1')"),
        ("dist/docs/index.html", b"<p>docs v1</p>"),
        (
            "dist/assets/logo.svg",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        ),
        ("coverage/report.txt", b"not published"),
    ];
    run_build(&app, &agent, &first_id, &site_v1).await;
    let first = wait_for_status(&app, &first_id, "deployed").await;
    assert_eq!(first["current"], true);
    assert_eq!(first["runId"], first_run.as_str());
    assert_eq!(first["requestedBy"], "KILN_ADMIN_TOKEN");
    assert!(first["durationMs"].as_i64().is_some());

    // Served by the sites listener.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let index = http
        .get(format!("{sites}/web/production/"))
        .send()
        .await
        .unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(index.headers()["x-content-type-options"], "nosniff");
    assert!(index.headers().get("set-cookie").is_none());
    let etag = index.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", hex(&Sha256::digest(v1_index))));
    assert_eq!(index.bytes().await.unwrap().as_ref(), v1_index);
    let cached = http
        .get(format!("{sites}/web/production/index.html"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    let part = http
        .get(format!("{sites}/web/production/app.js"))
        .header("range", "bytes=0-6")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 0-6/17");
    assert_eq!(
        part.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(part.text().await.unwrap(), "console");
    let past = http
        .get(format!("{sites}/web/production/app.js"))
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    let docs = http
        .get(format!("{sites}/web/production/docs/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (docs.status().as_u16(), docs.text().await.unwrap().as_str()),
        (200, "<p>docs v1</p>")
    );
    for (path, location) in [
        ("/web/production", "/web/production/"),
        ("/web/production/docs", "/web/production/docs/"),
    ] {
        let moved = http.get(format!("{sites}{path}")).send().await.unwrap();
        assert_eq!(moved.status(), 301, "{path}");
        assert_eq!(moved.headers()["location"], location);
    }
    let svg = http
        .get(format!("{sites}/web/production/assets/logo.svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    for missing in [
        "/web/production/assets/",
        "/web/production/nothing.html",
        "/web/production/coverage/report.txt",
        "/web/staging/",
        "/nope/production/",
        "/",
    ] {
        assert_eq!(
            http.get(format!("{sites}{missing}"))
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{missing}"
        );
    }
    for refused in [
        "/web/production/../../etc/passwd",
        "/web/production/%2e%2e/x",
        "/web/production/a%2F..%2F..%2Fx",
        "/web/production/a%5cb",
        "/web/production/%00",
        "/web/production/a\\b",
    ] {
        assert_eq!(raw_get(&sites_address, refused).await, 400, "{refused}");
    }
    let post = http
        .post(format!("{sites}/web/production/"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    // The dashboard's API is not on the sites origin.
    assert_eq!(
        http.get(format!("{sites}/api/v1/projects"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The script deployment of the same build.
    let (status, staging) = app
        .raw(
            Method::GET,
            "/api/v1/projects/web/deployments?environment=staging",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{staging}");
    let staging = &staging["deployments"][0];
    assert_eq!(staging["status"], "deployed");
    assert_eq!(staging["url"], "https://staging.example.test/");
    assert_eq!(staging["publish"], Value::Null);

    // The build's stream carried every move.
    let (status, events) = app
        .raw(
            Method::GET,
            &format!("/api/v1/builds/{first_run}/events"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    let moves: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| {
            event["event"] == "deployment" && event["data"]["environment"] == "production"
        })
        .map(|event| event["data"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        moves,
        ["queued", "cloning", "building", "uploading", "deployed"],
        "{events}"
    );

    // A second version.
    let (status, started) = app
        .raw(
            Method::POST,
            "/api/v1/projects/web/environments/production/deploy",
            Some(ADMIN_TOKEN),
            body(json!({"branch": "main"})),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let second_id = started["deployment"]["id"].clone();
    let v2_index = b"<!doctype html><title>v2</title>".as_slice();
    run_build(
        &app,
        &agent,
        &second_id,
        &[
            ("dist/index.html", v2_index),
            ("dist/app.js", b"console.log('v2')"),
        ],
    )
    .await;
    let second = wait_for_status(&app, &second_id, "deployed").await;
    assert_eq!(second["replaces"], first_id);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http
            .get(format!("{sites}/web/production/"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        if text.as_ref() == v2_index {
            break;
        }
        assert!(Instant::now() < deadline, "v2 never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second build's site has no docs: nothing of v1 is mixed in.
    assert_eq!(
        http.get(format!("{sites}/web/production/docs/"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Rollback refusals.
    let developer = app
        .member_token("dev@example.com", "web", "developer")
        .await;
    let viewer = app
        .member_token("viewer@example.com", "web", "viewer")
        .await;
    let rollback = |token: &str, environment: &str, to: Value| {
        let token = token.to_owned();
        let path = format!("/api/v1/projects/web/environments/{environment}/rollback");
        let app = &app;
        async move { app.raw(Method::POST, &path, Some(&token), body(to)).await }
    };
    let (status, refused) = rollback(&viewer, "production", json!({"to": first_run})).await;
    assert_eq!(status, 403, "{refused}");
    let (status, refused) = rollback(
        &developer,
        "production",
        json!({"to": started["build"]["runId"]}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_error(&refused, "already_live", Some("to"));
    let (status, refused) = rollback(&developer, "production", json!({"to": "no-such-run"})).await;
    assert_eq!(status, 422, "{refused}");
    let (status, refused) = rollback(&developer, "qa", json!({"to": first_run})).await;
    assert_eq!(status, 404, "{refused}");
    let (status, refused) = rollback(&developer, "production", json!({"too": first_run})).await;
    assert_eq!(status, 400, "{refused}");
    // The script deployment's live build is the second too.
    let (status, refused) = rollback(
        &developer,
        "staging",
        json!({"to": started["build"]["runId"]}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_error(&refused, "already_live", Some("to"));

    // The rollback, while a client keeps fetching.
    let fetching = Arc::new(AtomicBool::new(true));
    let reader = {
        let fetching = fetching.clone();
        let http = http.clone();
        let url = format!("{sites}/web/production/");
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while fetching.load(Ordering::Relaxed) {
                let response = http
                    .get(&url)
                    .send()
                    .await
                    .expect("every request is answered");
                assert_eq!(response.status(), 200, "no failed answer during a rollback");
                let bytes = response.bytes().await.expect("every body arrives whole");
                let version = if bytes.as_ref() == v1_index {
                    1
                } else if bytes.as_ref() == v2_index {
                    2
                } else {
                    panic!("a mixed or partial body: {bytes:?}")
                };
                if seen.last() != Some(&version) {
                    seen.push(version);
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, rolled) = rollback(&developer, "production", json!({"to": first_run})).await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(rolled["status"], "deployed");
    assert_eq!(rolled["rollbackOf"], first_id);
    assert_eq!(rolled["replaces"], second_id);
    assert_eq!(rolled["runId"], first_run.as_str());
    assert_eq!(rolled["current"], true);
    assert_eq!(rolled["requestedBy"], "dev@example.com");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http
            .get(format!("{sites}/web/production/docs/"))
            .send()
            .await
            .unwrap();
        if text.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the rollback was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    fetching.store(false, Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert_eq!(seen, [2, 1], "v2, then v1 for good");

    // Shown and audited.
    let (status, environments) = app
        .raw(
            Method::GET,
            "/api/v1/projects/web/environments",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, 200, "{environments}");
    let production = environments["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap();
    assert_eq!(production["current"]["id"], rolled["id"]);
    assert_eq!(production["lastGood"]["id"], rolled["id"]);
    assert_eq!(production["running"], Value::Null);
    assert_eq!(environments["lastSuccessfulBuilds"][0]["branch"], "main");
    assert_eq!(
        environments["lastSuccessfulBuilds"][0]["runId"],
        started["build"]["runId"]
    );
    let (status, history) = app
        .raw(
            Method::GET,
            "/api/v1/projects/web/deployments?environment=production",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let ids: Vec<&Value> = history["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids, [&rolled["id"], &second_id, &first_id]);
    let (status, audit) = app
        .raw(Method::GET, "/api/v1/audit", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit.to_string().contains("deployment.rollback"),
        "the rollback is audited: {audit}"
    );
    let (status, refused) = rollback(&developer, "production", json!({"to": first_run})).await;
    assert_eq!(status, 409, "{refused}");
    app.stop().await;
}

const SCRIPT_PIPELINE: &str = "steps:
  - name: build
    run: ./build.sh
    artifacts: [out]
  - name: deploy
    run: ./deploy.sh
    depends_on: build
    deploy: {environment: staging, url: 'https://staging.example.test/'}
";

async fn api(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    request: Value,
) -> (u16, Value) {
    let body = (!request.is_null()).then(|| serde_json::to_vec(&request).unwrap());
    app.raw(method, path, Some(token), body).await
}

/// Finishes a claimed job as failed.
async fn fail(app: &TestApp, agent: &Agent, job: &Value) {
    let (status, answer) = common::fake_agent::agent_call(
        app,
        agent,
        &format!("/api/v1/agent/jobs/{}/finish", job["jobId"]),
        json!({"agentId": agent.id, "attempt": job["attempt"], "state": "failed", "exitCode": 1, "reason": "exit_status"}),
    )
    .await;
    assert!(status < 300, "finish: {status} {answer}");
}

/// The environment's current deployment.
async fn live(app: &TestApp, environment: &str) -> Value {
    let (status, environments) = api(
        app,
        Method::GET,
        "/api/v1/projects/web/environments",
        ADMIN_TOKEN,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{environments}");
    environments["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == environment)
        .map(|e| e["current"].clone())
        .unwrap_or(Value::Null)
}

/// A script deployment (`deploy.url`) rolled back: a build of its own (cause `rollback`)
/// at the earlier build's commit runs only its deploy step, handed the earlier build's
/// artifacts (downloadable through the agent's route), recorded as a deployment naming
/// the earlier one; the environment keeps what it served until the step passes, and
/// keeps it when a re-run fails. Refusals: a viewer, a run while one runs, the build live
/// already.
async fn a_script_deployment_rolls_back_by_running_its_step_again(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join(".kiln.yml"), SCRIPT_PIPELINE).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "v1"]);
    app.project_client("web", &["ingest", "read"]).await;
    let (status, answer) = api(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        ADMIN_TOKEN,
        json!({"repo": repo.path().display().to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let agent = register(&app, "fake", 4).await;
    let developer = app
        .member_token("dev@example.com", "web", "developer")
        .await;
    let viewer = app
        .member_token("viewer@example.com", "web", "viewer")
        .await;

    // Two deploys, each build's `build` step uploading its marker.
    let mut builds = Vec::new();
    for version in ["v1", "v2"] {
        if version == "v2" {
            std::fs::write(repo.path().join("VERSION"), version).unwrap();
            git(repo.path(), &["add", "."]);
            git(repo.path(), &["commit", "-q", "-m", version]);
        }
        let (status, started) = api(
            &app,
            Method::POST,
            "/api/v1/projects/web/environments/staging/deploy",
            &developer,
            Value::Null,
        )
        .await;
        assert_eq!(status, 201, "{started}");
        let id = started["deployment"]["id"].clone();
        let built = claim(&app, &agent).await;
        assert_eq!(built["step"], "build");
        let marker = format!("marker of {version}");
        upload(
            &app,
            &agent,
            &built,
            &[("out/marker.txt", marker.as_bytes())],
        )
        .await;
        finish(&app, &agent, &built).await;
        let deploying = claim(&app, &agent).await;
        assert_eq!(deploying["step"], "deploy");
        finish(&app, &agent, &deploying).await;
        let deployed = wait_for_status(&app, &id, "deployed").await;
        assert_eq!(deployed["current"], true);
        builds.push((
            started["build"]["runId"].as_str().unwrap().to_owned(),
            started["build"]["commit"].as_str().unwrap().to_owned(),
            id,
            marker,
        ));
    }
    let (first_run, first_commit, first_id, first_marker) = builds[0].clone();
    let (second_run, _, second_id, _) = builds[1].clone();

    let rollback = |token: &str, to: &str| {
        let token = token.to_owned();
        let to = to.to_owned();
        let app = &app;
        async move {
            api(
                app,
                Method::POST,
                "/api/v1/projects/web/environments/staging/rollback",
                &token,
                json!({ "to": to }),
            )
            .await
        }
    };
    let (status, refused) = rollback(&viewer, &first_run).await;
    assert_eq!(status, 403, "{refused}");
    let (status, refused) = rollback(&developer, &second_run).await;
    assert_eq!(status, 409, "{refused}");
    assert_error(&refused, "already_live", Some("to"));

    // The rollback: queued, in a build of its own at build #1's commit.
    let (status, rolled) = rollback(&developer, &first_run).await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(rolled["status"], "queued");
    assert_eq!(rolled["rollbackOf"], first_id);
    assert_eq!(rolled["rollbackRunId"], first_run.as_str());
    assert_eq!(rolled["rollbackBuildNumber"], 1);
    assert_eq!(rolled["commit"], first_commit.as_str());
    assert_eq!(rolled["step"], "deploy");
    assert_eq!(rolled["url"], "https://staging.example.test/");
    assert_eq!(rolled["current"], false);
    assert_eq!(rolled["requestedBy"], "dev@example.com");
    let rerun_run = rolled["runId"].as_str().unwrap().to_owned();
    assert!(rerun_run != first_run && rerun_run != second_run);
    let (status, queued) = api(
        &app,
        Method::GET,
        &format!("/api/v1/builds/{rerun_run}/events"),
        ADMIN_TOKEN,
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{queued}");
    let trigger = &queued["events"][0];
    assert_eq!(trigger["event"], "build_queued");
    assert_eq!(trigger["data"]["trigger"], "rollback");
    assert_eq!(trigger["data"]["rollbackOf"], first_run.as_str());
    assert_eq!(trigger["commit"], first_commit.as_str());
    // One deployment of an environment at a time.
    let (status, refused) = rollback(&developer, &first_run).await;
    assert_eq!(status, 409, "{refused}");
    assert_error(&refused, "deployment_running", None);
    let (status, refused) = api(
        &app,
        Method::POST,
        "/api/v1/projects/web/environments/staging/deploy",
        &developer,
        Value::Null,
    )
    .await;
    assert_eq!(status, 409, "{refused}");

    // The agent runs only the deploy step, with build #1's artifacts.
    let job = claim(&app, &agent).await;
    assert_eq!(job["step"], "deploy");
    assert_eq!(job["runId"], rerun_run.as_str());
    assert_eq!(job["commit"], first_commit.as_str());
    assert_eq!(job["commands"], json!(["./deploy.sh"]));
    let files = job["artifacts"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{job}");
    assert_eq!(files[0]["path"], "out/marker.txt");
    assert_eq!(files[0]["step"], "build");
    let sha256 = files[0]["sha256"].as_str().unwrap();
    let downloaded = app
        .http
        .get(format!(
            "{}/api/v1/agent/jobs/{}/artifacts/{sha256}?agentId={}&attempt={}",
            app.base_url, job["jobId"], agent.id, job["attempt"]
        ))
        .bearer_auth(&agent.token)
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status(), 200);
    assert_eq!(downloaded.text().await.unwrap(), first_marker);
    // Only what the step depends on: not another build's blob.
    let (_, jobs) = api(
        &app,
        Method::GET,
        &format!("/api/v1/projects/web/builds/{rerun_run}/jobs"),
        ADMIN_TOKEN,
        Value::Null,
    )
    .await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    let rolled_id = rolled["id"].clone();
    wait_for_status(&app, &rolled_id, "cloning").await;
    assert_eq!(live(&app, "staging").await["id"], second_id, "not live yet");
    finish(&app, &agent, &job).await;
    let done = wait_for_status(&app, &rolled_id, "deployed").await;
    assert_eq!(done["current"], true);
    assert_eq!(done["replaces"], second_id);
    assert_eq!(live(&app, "staging").await["id"], rolled_id);
    // Build #1 runs there now: rolling back to it (or to its re-run) again is refused.
    let (status, refused) = rollback(&developer, &first_run).await;
    assert_eq!(status, 409, "{refused}");
    assert_error(&refused, "already_live", Some("to"));
    let (status, refused) = rollback(&developer, &rerun_run).await;
    assert_eq!(status, 409, "{refused}");
    assert_error(&refused, "already_live", Some("to"));

    // A re-run that fails leaves the environment as it was.
    let (status, again) = rollback(&developer, &second_run).await;
    assert_eq!(status, 201, "{again}");
    let job = claim(&app, &agent).await;
    assert_eq!(job["step"], "deploy");
    fail(&app, &agent, &job).await;
    let failed = wait_for_status(&app, &again["id"], "failed").await;
    assert_eq!(failed["current"], false);
    assert_eq!(live(&app, "staging").await["id"], rolled_id);

    // Build #2 again (passing this time), then back to build #1 by naming its re-run:
    // the re-run of build #1's step, with build #1's artifacts.
    let (status, again) = rollback(&developer, &second_run).await;
    assert_eq!(status, 201, "{again}");
    let job = claim(&app, &agent).await;
    finish(&app, &agent, &job).await;
    wait_for_status(&app, &again["id"], "deployed").await;
    let (status, back) = rollback(&developer, &rerun_run).await;
    assert_eq!(status, 201, "{back}");
    assert_eq!(back["rollbackOf"], first_id);
    assert_eq!(back["rollbackRunId"], first_run.as_str());
    let job = claim(&app, &agent).await;
    assert_eq!(job["commit"], first_commit.as_str());
    assert_eq!(job["artifacts"][0]["sha256"], sha256);
    finish(&app, &agent, &job).await;
    wait_for_status(&app, &back["id"], "deployed").await;

    let (status, audit) = api(&app, Method::GET, "/api/v1/audit", ADMIN_TOKEN, Value::Null).await;
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit
            .to_string()
            .contains(&format!("run again as build {rerun_run}")),
        "the rollback is audited: {audit}"
    );
    app.stop().await;
}
