//! GitHub push webhooks queue builds: signatures checked, branches filtered, through the
//! real server with a real git repository.

mod common;

use kiln_store::engine_test;

use std::process::Command;

use common::{ADMIN_TOKEN, TestApp};
use hmac::{Hmac, Mac};
use kiln_store::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

engine_test!(pushes_queue_builds_of_built_branches);

fn git(dir: &std::path::Path, args: &[&str]) -> String {
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
        .unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(
    app: &TestApp,
    event: &str,
    body: &Value,
    signature: Option<String>,
) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let mut request = app
        .http
        .post(format!("{}/api/v1/hooks/github/web", app.base_url))
        .header("x-github-event", event)
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn pushes_queue_builds_of_built_branches(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join(".kiln.yml"),
        "steps:\n  - name: a\n    run: echo a\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "first"]);
    let sha = git(repo.path(), &["rev-parse", "HEAD"]);
    app.admin.create_project("web", "Web").await.unwrap();
    let repo_body =
        serde_json::to_vec(&json!({"repo": repo.path().display().to_string()})).unwrap();
    app.raw(
        Method::PUT,
        "/api/v1/projects/web/repo",
        Some(ADMIN_TOKEN),
        Some(repo_body),
    )
    .await;

    // No secret yet: the project takes no GitHub webhooks.
    let push = json!({"ref": "refs/heads/main", "after": sha, "deleted": false, "repository": {"full_name": "o/r"}});
    let (status, _) = deliver(&app, "push", &push, Some(sign("x", b"{}"))).await;
    assert_eq!(status, 404);

    let (status, set) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/hooks/github",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 201, "{set}");
    let secret = set["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);

    // Unsigned, or signed with another secret: refused.
    let body = serde_json::to_vec(&push).unwrap();
    assert_eq!(deliver(&app, "push", &push, None).await.0, 401);
    assert_eq!(
        deliver(&app, "push", &push, Some(sign("not the secret", &body)))
            .await
            .0,
        401
    );

    let (status, answer) = deliver(
        &app,
        "ping",
        &json!({"zen": "Keep it simple."}),
        Some(sign(
            &secret,
            &serde_json::to_vec(&json!({"zen": "Keep it simple."})).unwrap(),
        )),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // A push to the default branch queues a build of exactly that commit.
    let (status, build) = deliver(&app, "push", &push, Some(sign(&secret, &body))).await;
    assert_eq!(status, 201, "{build}");
    assert_eq!(build["branch"], "main");
    assert_eq!(build["commit"], sha.as_str());
    assert_eq!(build["status"], "queued");
    let (_, events) = app
        .raw(
            Method::GET,
            &format!("/api/v1/builds/{}/events", build["runId"].as_str().unwrap()),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(events["events"][0]["data"]["trigger"], "github");

    // Branches the project does not build, tags, deletions and other events: 202.
    for (event, payload) in [
        ("push", json!({"ref": "refs/heads/feature", "after": sha})),
        ("push", json!({"ref": "refs/tags/v1", "after": sha})),
        (
            "push",
            json!({"ref": "refs/heads/main", "after": "0000000000000000000000000000000000000000", "deleted": true}),
        ),
        ("issues", json!({"action": "opened"})),
    ] {
        let signature = sign(&secret, &serde_json::to_vec(&payload).unwrap());
        let (status, answer) = deliver(&app, event, &payload, Some(signature)).await;
        assert_eq!(status, 202, "{event} {payload}: {answer}");
        assert!(answer["ignored"].is_string());
    }
    // Adding the branch makes its pushes build.
    app.raw(
        Method::POST,
        "/api/v1/projects/web/branches",
        Some(ADMIN_TOKEN),
        Some(serde_json::to_vec(&json!({"name": "feature"})).unwrap()),
    )
    .await;
    let feature = json!({"ref": "refs/heads/feature", "after": sha});
    let (status, build) = deliver(
        &app,
        "push",
        &feature,
        Some(sign(&secret, &serde_json::to_vec(&feature).unwrap())),
    )
    .await;
    assert_eq!(status, 201, "{build}");
    assert_eq!(build["branch"], "feature");

    // A malformed but signed body is a 400.
    let garbage = json!({"no": "ref"});
    let (status, answer) = deliver(
        &app,
        "push",
        &garbage,
        Some(sign(&secret, &serde_json::to_vec(&garbage).unwrap())),
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    // A body past the route's 5 MiB limit is 413 with the documented error body.
    let huge = json!({"ref": "refs/heads/main", "pad": "x".repeat(6 * 1024 * 1024)});
    let (status, answer) = deliver(&app, "push", &huge, Some("sha256=00".into())).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "body_too_large", "{answer}");
    app.stop().await;
}
