//! The authorization table, tested whole: every route of the router, called as every
//! kind of caller, answers what its rule says — and a route without a rule here fails.
//!
//! Allowed callers may still get a business refusal (400, 409, 422: a build that has not
//! ended, a body the route refuses); refused callers get exactly 401 (no or dead
//! credential), 403 (the wrong kind of credential or a missing role, named) or 404 (a
//! project the caller may not see, so its existence does not leak).

mod common;

use kiln_store::engine_test;

use std::collections::HashMap;
use std::process::Command;

use common::{ADMIN_TOKEN, TestApp};
use kiln_store::Engine;
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(every_route_answers_every_caller_by_its_rule);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    Anonymous,
    Viewer,
    Developer,
    Admin,
    OtherAdmin,
    InstanceAdmin,
    Ingest,
    Read,
    Agent,
    Revoked,
}

const EVERYONE: [Who; 10] = [
    Who::Anonymous,
    Who::Viewer,
    Who::Developer,
    Who::Admin,
    Who::OtherAdmin,
    Who::InstanceAdmin,
    Who::Ingest,
    Who::Read,
    Who::Agent,
    Who::Revoked,
];

/// Who may call a route (for project routes: about project `web`).
#[derive(Clone, Copy, Debug)]
enum Rule {
    Public,
    /// Any live credential but an agent's (lists filtered to what the caller may read).
    Authenticated,
    Viewer,
    Developer,
    ProjectAdmin,
    InstanceAdmin,
    Ingest,
    User,
    Agent,
    /// Authenticated by a signature over the body, not a token: unsigned calls get 401
    /// whoever makes them.
    Signature,
    /// A dashboard page: users only; an anonymous browser is redirected (303) to
    /// `/login`, other refusals are HTML pages.
    Page,
    /// A dashboard page about a build of project `web`: like `Page`, then 404 for other
    /// projects' users.
    PageViewer,
    /// A dashboard form that changes a build of project `web` (Build, Cancel, Retry):
    /// developers, project admins and instance admins; 403 for viewers, 404 for other
    /// projects' users.
    PageDeveloper,
    /// A dashboard page of project `web` for its admins (and instance admins): like
    /// `Page`, then 403 for members without the admin role, 404 for other projects' users.
    PageProjectAdmin,
    /// A dashboard page for instance admins (the Users page): like `Page`, then 403 for
    /// every other user.
    PageInstanceAdmin,
    /// `/metrics` with a scrape token set: only that token opens it, so every caller
    /// here (none holds it) is refused 401, whatever credential it has.
    Scrape,
}

/// The scrape token of this test's server; no caller of `EVERYONE` sends it.
const SCRAPE_TOKEN: &str = "authorization-test-scrape-token";

/// `None`: allowed; `Some(status)`: refused with exactly that status.
fn expected(rule: Rule, who: Who) -> Option<u16> {
    use Who::*;
    if matches!(rule, Rule::Public) {
        return None;
    }
    if matches!(rule, Rule::Signature | Rule::Scrape) {
        return Some(401);
    }
    if matches!(who, Anonymous | Revoked) {
        return Some(
            if matches!(
                rule,
                Rule::Page
                    | Rule::PageProjectAdmin
                    | Rule::PageViewer
                    | Rule::PageDeveloper
                    | Rule::PageInstanceAdmin
            ) {
                303
            } else {
                401
            },
        );
    }
    if who == Agent {
        return if matches!(rule, Rule::Agent) {
            None
        } else {
            Some(403)
        };
    }
    let allowed = |yes: &[Who]| if yes.contains(&who) { None } else { Some(403) };
    match rule {
        Rule::Public | Rule::Authenticated => None,
        Rule::Signature | Rule::Scrape => Some(401),
        Rule::Agent => Some(403),
        Rule::Ingest => allowed(&[Ingest]),
        Rule::User | Rule::Page => allowed(&[Viewer, Developer, Admin, OtherAdmin, InstanceAdmin]),
        Rule::InstanceAdmin | Rule::PageInstanceAdmin => allowed(&[InstanceAdmin]),
        Rule::PageViewer | Rule::PageDeveloper if who == OtherAdmin => Some(404),
        Rule::PageViewer => allowed(&[Viewer, Developer, Admin, InstanceAdmin]),
        Rule::PageDeveloper => allowed(&[Developer, Admin, InstanceAdmin]),
        Rule::Viewer | Rule::Developer | Rule::ProjectAdmin | Rule::PageProjectAdmin
            if who == OtherAdmin =>
        {
            Some(404)
        }
        Rule::PageProjectAdmin => allowed(&[Admin, InstanceAdmin]),
        Rule::Viewer => None,
        Rule::Developer => allowed(&[Developer, Admin, InstanceAdmin, Ingest]),
        Rule::ProjectAdmin => allowed(&[Admin, InstanceAdmin]),
    }
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
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
        .status()
        .unwrap();
    assert!(status.success());
}

async fn call(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    // Redirects are answers here (pages send anonymous browsers to /login).
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = http.request(method.clone(), format!("{}{path}", app.base_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match body {
        // A string is a dashboard form.
        Some(Value::String(form)) => {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.clone());
        }
        Some(body) => request = request.json(body),
        None => {}
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let streaming = response.headers().get("content-type").is_some_and(|v| {
        v.to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    });
    // Live streams never end: the status says enough.
    let text = if streaming {
        String::new()
    } else {
        response.text().await.unwrap_or_default()
    };
    (status, text)
}

async fn every_route_answers_every_caller_by_its_rule(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.metrics_token = Some(kiln_server::Secret::new(SCRAPE_TOKEN));
    })
    .await;
    let admin = |method: Method, path: &str, body: Value| {
        let path = path.to_owned();
        let app = &app;
        async move {
            let (status, text) = call(app, &method, &path, Some(ADMIN_TOKEN), Some(&body)).await;
            assert!(status < 300, "setup {method} {path}: {status} {text}");
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
        }
    };
    // Projects, a repository, users with roles, tokens of every kind.
    admin(
        Method::POST,
        "/api/v1/projects",
        json!({"slug": "web", "name": "Web"}),
    )
    .await;
    admin(
        Method::POST,
        "/api/v1/projects",
        json!({"slug": "api", "name": "API"}),
    )
    .await;
    // Web's public status is published, so its page and badges answer everyone.
    admin(
        Method::PUT,
        "/api/v1/projects/web/public-status",
        json!({"enabled": true}),
    )
    .await;
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join(".kiln.yml"),
        "steps:\n  - name: a\n    run: echo a\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "c"]);
    admin(
        Method::PUT,
        "/api/v1/projects/web/repo",
        json!({"repo": repo.path().display().to_string()}),
    )
    .await;
    admin(Method::PUT, "/api/v1/projects/web/hooks/github", json!({})).await;
    let mut tokens: HashMap<Who, String> = HashMap::new();
    let mut passwords = Vec::new();
    for (who, email, instance_admin, role) in [
        (Who::Viewer, "viewer@x.io", false, Some(("web", "viewer"))),
        (
            Who::Developer,
            "dev@x.io",
            false,
            Some(("web", "developer")),
        ),
        (Who::Admin, "admin@x.io", false, Some(("web", "admin"))),
        (Who::OtherAdmin, "other@x.io", false, Some(("api", "admin"))),
        (Who::InstanceAdmin, "root@x.io", true, None),
    ] {
        let created = admin(
            Method::POST,
            "/api/v1/users",
            json!({"email": email, "name": email, "instanceAdmin": instance_admin}),
        )
        .await;
        let password = created["password"].as_str().unwrap().to_owned();
        passwords.push(password.clone());
        if let Some((project, role)) = role {
            admin(
                Method::PUT,
                &format!("/api/v1/projects/{project}/members/{email}"),
                json!({"role": role}),
            )
            .await;
        }
        // Log in, then make a personal token with the session (and its CSRF token).
        let login = app
            .http
            .post(format!("{}/api/v1/session", app.base_url))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status().as_u16(), 200);
        let cookie = login.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let csrf = login.json::<Value>().await.unwrap()["csrfToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let token = app
            .http
            .post(format!("{}/api/v1/me/tokens", app.base_url))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"name": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(token.status().as_u16(), 201);
        tokens.insert(
            who,
            token.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let project_token = |scopes: &[&str]| {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let admin = &admin;
        async move {
            admin(
                Method::POST,
                "/api/v1/projects/web/tokens",
                json!({"name": "t", "scopes": scopes}),
            )
            .await
        }
    };
    tokens.insert(
        Who::Ingest,
        project_token(&["ingest"]).await["token"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    tokens.insert(
        Who::Read,
        project_token(&["read"]).await["token"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let revoked = project_token(&["ingest", "read"]).await;
    admin(
        Method::DELETE,
        &format!("/api/v1/projects/web/tokens/{}", revoked["id"]),
        json!({}),
    )
    .await;
    tokens.insert(Who::Revoked, revoked["token"].as_str().unwrap().to_owned());
    let throwaway = project_token(&["read"]).await["id"].as_i64().unwrap();
    let agent = admin(
        Method::POST,
        "/api/v1/agent-tokens",
        json!({"name": "pool"}),
    )
    .await;
    tokens.insert(Who::Agent, agent["token"].as_str().unwrap().to_owned());
    let spare_agent_token = admin(
        Method::POST,
        "/api/v1/agent-tokens",
        json!({"name": "spare"}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    admin(
        Method::POST,
        "/api/v1/users",
        json!({"email": "member@x.io", "name": "m"}),
    )
    .await;
    // The one the Users routes deactivate, reactivate and give new passwords.
    admin(
        Method::POST,
        "/api/v1/users",
        json!({"email": "spare@x.io", "name": "s"}),
    )
    .await;
    let registered = call(
        &app,
        &Method::POST,
        "/api/v1/agent/register",
        Some(&tokens[&Who::Agent]),
        Some(&json!({"name": "a1", "concurrency": 1, "executor": "process"})),
    )
    .await;
    let agent_id = serde_json::from_str::<Value>(&registered.1).unwrap()["agentId"]
        .as_i64()
        .unwrap();
    // A self-reported build and a Kiln build with a job.
    call(
        &app,
        &Method::POST,
        "/api/v1/events",
        Some(&tokens[&Who::Ingest]),
        Some(&json!({"runId": "web-run", "event": "build_started"})),
    )
    .await;
    // A stored artifact (b.txt) and an upload declared but not sent (c.txt).
    let mut upload_ids = Vec::new();
    for (path, sha256) in [
        (
            "b.txt",
            "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d",
        ),
        (
            "c.txt",
            "2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6",
        ),
    ] {
        let upload = call(
            &app,
            &Method::POST,
            "/api/v1/builds/web-run/artifacts",
            Some(&tokens[&Who::Ingest]),
            Some(&json!({"path": path, "size": 1, "sha256": sha256})),
        )
        .await;
        let id = serde_json::from_str::<Value>(&upload.1).unwrap()["uploadId"]
            .as_str()
            .unwrap()
            .to_owned();
        upload_ids.push(id);
    }
    let stored = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/builds/web-run/artifacts/uploads/{}?offset=0",
            app.base_url, upload_ids[0]
        ))
        .bearer_auth(&tokens[&Who::Ingest])
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200, "{}", stored.text().await.unwrap());
    let upload_id = upload_ids[1].clone();
    let triggered = admin(Method::POST, "/api/v1/projects/web/builds", json!({})).await;
    let run_id = triggered["runId"].as_str().unwrap().to_owned();
    let job_id = triggered["jobs"][0]["id"].as_i64().unwrap();
    // A deployment that ended (so a cancel by an allowed caller answers 409 and stops
    // nothing).
    let deployment_id = {
        let store = app.database.open_dyn().await;
        let build = store.build_by_run_id("web-run").await.unwrap().unwrap();
        let deployment = store
            .ensure_deployment(
                &kiln_store::NewDeployment {
                    project_id: build.project_id,
                    environment: "production".into(),
                    build_id: build.id,
                    step: "publish".into(),
                    publish_dir: Some("dist".into()),
                    url: None,
                    status: "queued".into(),
                    requested_by: None,
                    rollback_of: None,
                },
                kiln_core::Millis(1),
            )
            .await
            .unwrap();
        store
            .set_deployment_status(
                deployment.id,
                "queued",
                "failed",
                None,
                kiln_core::Millis(2),
            )
            .await
            .unwrap();
        deployment.id
    };

    // (method, path, body, rule)
    let w = "/api/v1/projects/web";
    let routes: Vec<(&str, String, Value, Rule)> = vec![
        ("GET", "/healthz".into(), Value::Null, Rule::Public),
        (
            "GET",
            "/api/v1/openapi.json".into(),
            Value::Null,
            Rule::Public,
        ),
        (
            "POST",
            "/api/v1/hooks/github/web".into(),
            json!({"zen": "x"}),
            Rule::Signature,
        ),
        (
            "PUT",
            format!("{w}/hooks/github"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        ("GET", format!("{w}/analytics"), Value::Null, Rule::Viewer),
        ("GET", format!("{w}/tests/flaky"), Value::Null, Rule::Viewer),
        (
            "GET",
            format!("{w}/tests/slowest"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            format!("{w}/tests/history?key=x"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            format!("{w}/prediction?branch=main"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            format!("{w}/secrets"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "PUT",
            format!("{w}/secrets/DEPLOY_TOKEN"),
            json!({"value": "s3cret-value"}),
            Rule::ProjectAdmin,
        ),
        (
            "DELETE",
            format!("{w}/secrets/not-a-name"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        ("GET", "/readyz".into(), Value::Null, Rule::Public),
        ("GET", "/metrics".into(), Value::Null, Rule::Scrape),
        ("GET", "/status/web".into(), Value::Null, Rule::Public),
        (
            "GET",
            "/badge/web/main.svg".into(),
            Value::Null,
            Rule::Public,
        ),
        (
            "GET",
            format!("{w}/public-status"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "PUT",
            format!("{w}/public-status"),
            json!({"enabled": true}),
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            "/api/v1/session".into(),
            json!({"email": "not-an-email", "password": "x"}),
            Rule::Public,
        ),
        ("DELETE", "/api/v1/session".into(), Value::Null, Rule::User),
        ("GET", "/api/v1/me".into(), Value::Null, Rule::User),
        (
            "GET",
            "/api/v1/whoami".into(),
            Value::Null,
            Rule::Authenticated,
        ),
        (
            "POST",
            "/api/v1/me/tokens".into(),
            json!({"name": "x"}),
            Rule::User,
        ),
        ("GET", "/api/v1/me/tokens".into(), Value::Null, Rule::User),
        (
            "DELETE",
            "/api/v1/me/tokens/not-a-number".into(),
            Value::Null,
            Rule::User,
        ),
        (
            "POST",
            "/api/v1/users".into(),
            json!({"email": "root@x.io", "name": "dup"}),
            Rule::InstanceAdmin,
        ),
        (
            "GET",
            "/api/v1/users".into(),
            Value::Null,
            Rule::InstanceAdmin,
        ),
        (
            "POST",
            "/api/v1/users/spare@x.io/disable".into(),
            Value::Null,
            Rule::InstanceAdmin,
        ),
        (
            "POST",
            "/api/v1/users/spare@x.io/enable".into(),
            Value::Null,
            Rule::InstanceAdmin,
        ),
        (
            "POST",
            "/api/v1/users/spare@x.io/password".into(),
            json!({}),
            Rule::InstanceAdmin,
        ),
        (
            "GET",
            format!("{w}/members"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "PUT",
            format!("{w}/members/member@x.io"),
            json!({"role": "viewer"}),
            Rule::ProjectAdmin,
        ),
        (
            "DELETE",
            format!("{w}/members/member@x.io"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            "/api/v1/audit?project=web".into(),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            "/api/v1/projects".into(),
            json!({"slug": "web", "name": "dup"}),
            Rule::InstanceAdmin,
        ),
        (
            "GET",
            "/api/v1/projects".into(),
            Value::Null,
            Rule::Authenticated,
        ),
        ("GET", w.into(), Value::Null, Rule::Viewer),
        (
            "POST",
            format!("{w}/tokens"),
            json!({"name": "x", "scopes": ["read"]}),
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            format!("{w}/tokens"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "DELETE",
            format!("{w}/tokens/{throwaway}"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            "/api/v1/events".into(),
            json!({"runId": "web-run", "event": "heartbeat"}),
            Rule::Ingest,
        ),
        (
            "POST",
            "/api/internal/build-events".into(),
            json!({"runId": "web-run", "event": "heartbeat"}),
            Rule::Ingest,
        ),
        (
            "POST",
            "/api/v1/builds/web-run/log?offset=0&step=auth".into(),
            Value::Null,
            Rule::Ingest,
        ),
        (
            "GET",
            "/api/v1/builds?project=web".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/events".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/status".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/metrics".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "POST",
            "/api/v1/builds/web-run/tests".into(),
            json!("<testsuite name='s'><testcase name='t'/></testsuite>"),
            Rule::Ingest,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/tests".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "POST",
            "/api/v1/builds/web-run/artifacts".into(),
            json!({"path": "a.txt", "size": 1, "sha256": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}),
            Rule::Ingest,
        ),
        (
            "PUT",
            format!("/api/v1/builds/web-run/artifacts/uploads/{upload_id}?offset=0"),
            Value::Null,
            Rule::Ingest,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/artifacts".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/artifacts/files/b.txt".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/artifacts.tar.gz".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "POST",
            "/api/v1/builds/web-run/artifacts/verify".into(),
            Value::Null,
            Rule::Developer,
        ),
        (
            "GET",
            format!("{w}/artifact-retention"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "PUT",
            format!("{w}/artifact-retention"),
            json!({"keepBuilds": 100}),
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            format!("{w}/artifact-retention/run?dryRun=true"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            "/api/v1/builds/web-run/pin".into(),
            Value::Null,
            Rule::Developer,
        ),
        (
            "DELETE",
            "/api/v1/builds/web-run/pin".into(),
            Value::Null,
            Rule::Developer,
        ),
        (
            "GET",
            "/api/v1/compare?a=web-run&b=web-run".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "POST",
            "/api/v1/builds/web-run/rebuild-verify".into(),
            Value::Null,
            Rule::Developer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/verification".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/report.json".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/report.md".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/projects/web/environments".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/projects/web/deployments?environment=production".into(),
            Value::Null,
            Rule::Viewer,
        ),
        // An invalid environment name answers 400 after the project check.
        (
            "POST",
            "/api/v1/projects/web/environments/NOT-VALID/deploy".into(),
            Value::Null,
            Rule::Developer,
        ),
        (
            "POST",
            "/api/v1/projects/web/environments/NOT-VALID/rollback".into(),
            json!({"to": "web-run"}),
            Rule::Developer,
        ),
        (
            "GET",
            format!("/api/v1/deployments/{deployment_id}"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "POST",
            format!("/api/v1/deployments/{deployment_id}/cancel"),
            Value::Null,
            Rule::Developer,
        ),
        (
            "GET",
            "/api/v1/status?project=web".into(),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            "/api/v1/builds/web-run/stream".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/stream?project=web".into(),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "PUT",
            format!("{w}/repo"),
            json!({"repo": repo.path().display().to_string()}),
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            format!("{w}/branches"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            format!("{w}/branches"),
            json!({"name": "feature"}),
            Rule::ProjectAdmin,
        ),
        (
            "DELETE",
            format!("{w}/branches/feature"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            format!("{w}/builds"),
            json!({"branch": "no-such-branch"}),
            Rule::Developer,
        ),
        (
            "POST",
            format!("{w}/builds/{run_id}/retry"),
            Value::Null,
            Rule::Developer,
        ),
        (
            "POST",
            format!("{w}/builds/{run_id}/cancel"),
            Value::Null,
            Rule::Developer,
        ),
        (
            "GET",
            format!("{w}/builds/{run_id}/jobs"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            format!("{w}/builds/{run_id}/jobs/a/log"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            format!("{w}/builds/{run_id}/jobs/a/log/stream"),
            Value::Null,
            Rule::Viewer,
        ),
        (
            "GET",
            "/api/v1/queue".into(),
            Value::Null,
            Rule::Authenticated,
        ),
        (
            "GET",
            "/api/v1/agents".into(),
            Value::Null,
            Rule::Authenticated,
        ),
        (
            "POST",
            "/api/v1/agent-tokens".into(),
            json!({"name": "x"}),
            Rule::InstanceAdmin,
        ),
        (
            "GET",
            "/api/v1/agent-tokens".into(),
            Value::Null,
            Rule::InstanceAdmin,
        ),
        (
            "DELETE",
            format!("/api/v1/agent-tokens/{spare_agent_token}"),
            Value::Null,
            Rule::InstanceAdmin,
        ),
        (
            "POST",
            "/api/v1/agent/register".into(),
            json!({"name": "a1", "concurrency": 1, "executor": "process"}),
            Rule::Agent,
        ),
        (
            "POST",
            "/api/v1/agent/claim".into(),
            json!({"agentId": agent_id, "waitSecs": 0}),
            Rule::Agent,
        ),
        (
            "POST",
            "/api/v1/agent/heartbeat".into(),
            json!({"agentId": agent_id}),
            Rule::Agent,
        ),
        (
            "POST",
            format!("/api/v1/agent/jobs/{job_id}/log?agentId={agent_id}&attempt=99&offset=0"),
            json!({}),
            Rule::Agent,
        ),
        (
            "POST",
            format!("/api/v1/agent/jobs/{job_id}/tests?agentId={agent_id}&attempt=99"),
            json!("<testsuite name='s'/>"),
            Rule::Agent,
        ),
        (
            "POST",
            format!("/api/v1/agent/jobs/{job_id}/artifacts?agentId={agent_id}&attempt=99"),
            json!({"path": "a.txt", "size": 1, "sha256": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}),
            Rule::Agent,
        ),
        (
            "PUT",
            format!(
                "/api/v1/agent/jobs/{job_id}/artifacts/uploads/0123456789abcdef0123456789abcdef?agentId={agent_id}&attempt=99&offset=0"
            ),
            Value::Null,
            Rule::Agent,
        ),
        (
            "GET",
            format!(
                "/api/v1/agent/jobs/{job_id}/artifacts/ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb?agentId={agent_id}&attempt=99"
            ),
            Value::Null,
            Rule::Agent,
        ),
        (
            "POST",
            format!("/api/v1/agent/jobs/{job_id}/finish"),
            json!({"agentId": agent_id, "attempt": 99, "state": "passed"}),
            Rule::Agent,
        ),
        // Notifications: every user has an inbox (the mute is added before it is removed).
        (
            "GET",
            "/api/v1/notifications".into(),
            Value::Null,
            Rule::User,
        ),
        (
            "POST",
            "/api/v1/notifications/not-a-number/read".into(),
            Value::Null,
            Rule::User,
        ),
        (
            "POST",
            "/api/v1/notifications/read-all".into(),
            Value::Null,
            Rule::User,
        ),
        (
            "POST",
            "/api/v1/notifications/not-a-number/archive".into(),
            Value::Null,
            Rule::User,
        ),
        (
            "GET",
            "/api/v1/notifications/stats".into(),
            Value::Null,
            Rule::User,
        ),
        (
            "GET",
            "/api/v1/notifications/mutes".into(),
            Value::Null,
            Rule::User,
        ),
        (
            "POST",
            "/api/v1/notifications/mutes".into(),
            json!({"kind": "build_started"}),
            Rule::User,
        ),
        (
            "DELETE",
            "/api/v1/notifications/mutes?kind=build_started".into(),
            Value::Null,
            Rule::User,
        ),
        // Webhooks: ids that are not numbers answer 400 to allowed callers, after the
        // project check (a loopback URL is refused with 422 unless allowed).
        (
            "POST",
            format!("{w}/webhooks"),
            json!({"url": "http://127.0.0.1:9/hook", "events": ["build_*"]}),
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            format!("{w}/webhooks"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            format!("{w}/webhooks/not-a-number"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "PATCH",
            format!("{w}/webhooks/not-a-number"),
            json!({"active": false}),
            Rule::ProjectAdmin,
        ),
        (
            "DELETE",
            format!("{w}/webhooks/not-a-number"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            format!("{w}/webhooks/not-a-number/rotate-secret"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            format!("{w}/webhooks/not-a-number/test"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            format!("{w}/webhooks/not-a-number/deliveries"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "POST",
            format!("{w}/webhooks/not-a-number/deliveries/1/redeliver"),
            Value::Null,
            Rule::ProjectAdmin,
        ),
        (
            "GET",
            "/api/v1/webhooks/status?project=web".into(),
            Value::Null,
            Rule::Viewer,
        ),
        // The dashboard.
        ("GET", "/".into(), Value::Null, Rule::Page),
        ("GET", "/login?next=/".into(), Value::Null, Rule::Public),
        ("POST", "/login".into(), Value::Null, Rule::Public),
        ("GET", "/assets/kiln.css".into(), Value::Null, Rule::Public),
        ("GET", "/assets/build.js".into(), Value::Null, Rule::Public),
        (
            "POST",
            "/projects/web/build".into(),
            json!("branch=main"),
            Rule::PageDeveloper,
        ),
        (
            "GET",
            format!("/builds/{run_id}"),
            Value::Null,
            Rule::PageViewer,
        ),
        (
            "GET",
            format!("/builds/{run_id}/jobs/a/raw"),
            Value::Null,
            Rule::PageViewer,
        ),
        (
            "POST",
            format!("/builds/{run_id}/cancel"),
            Value::Null,
            Rule::PageDeveloper,
        ),
        (
            "POST",
            format!("/builds/{run_id}/retry"),
            Value::Null,
            Rule::PageDeveloper,
        ),
        ("GET", "/agents".into(), Value::Null, Rule::Page),
        ("GET", "/queue".into(), Value::Null, Rule::Page),
        (
            "GET",
            "/notifications?show=unread".into(),
            Value::Null,
            Rule::Page,
        ),
        (
            "POST",
            "/notifications/not-a-number/read".into(),
            Value::Null,
            Rule::Page,
        ),
        (
            "POST",
            "/notifications/read-all".into(),
            Value::Null,
            Rule::Page,
        ),
        (
            "POST",
            "/notifications/not-a-number/archive".into(),
            Value::Null,
            Rule::Page,
        ),
        ("GET", "/projects".into(), Value::Null, Rule::Page),
        ("GET", "/users".into(), Value::Null, Rule::PageInstanceAdmin),
        (
            "POST",
            "/users".into(),
            json!("email=root%40x.io&name=dup"),
            Rule::PageInstanceAdmin,
        ),
        (
            "POST",
            "/users/spare@x.io/deactivate".into(),
            Value::Null,
            Rule::PageInstanceAdmin,
        ),
        (
            "POST",
            "/users/spare@x.io/reactivate".into(),
            Value::Null,
            Rule::PageInstanceAdmin,
        ),
        (
            "POST",
            "/users/spare@x.io/reset-password".into(),
            Value::Null,
            Rule::PageInstanceAdmin,
        ),
        ("GET", "/account".into(), Value::Null, Rule::Page),
        (
            "POST",
            "/account/password".into(),
            json!("current=x&new=short&confirm=short"),
            Rule::Page,
        ),
        (
            "POST",
            "/api/v1/me/password".into(),
            json!({"current": "x", "new": "short"}),
            Rule::User,
        ),
        (
            "GET",
            "/projects/web/analytics".into(),
            Value::Null,
            Rule::PageViewer,
        ),
        (
            "GET",
            "/projects/web/deployments".into(),
            Value::Null,
            Rule::PageViewer,
        ),
        (
            "POST",
            "/projects/web/deploy".into(),
            json!("environment=NOT-VALID"),
            Rule::PageDeveloper,
        ),
        (
            "POST",
            "/projects/web/rollback".into(),
            json!("environment=NOT-VALID&to=x"),
            Rule::PageDeveloper,
        ),
        (
            "POST",
            format!("/projects/web/deployments/{deployment_id}/cancel"),
            Value::Null,
            Rule::PageDeveloper,
        ),
        (
            "GET",
            "/projects/web/settings".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/tokens".into(),
            json!("name=t"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/tokens/not-a-number/revoke".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/members".into(),
            json!("email=member%40x.io&role=king"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/members/member@x.io/role".into(),
            json!("role=viewer"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/members/member@x.io/remove".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/branches".into(),
            json!("name=&priority=1"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/branches/delete".into(),
            json!("name=feature"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/repo".into(),
            json!("max_concurrency=many"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/public-status".into(),
            json!("enabled=true"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/webhooks".into(),
            json!("url=not+a+url"),
            Rule::PageProjectAdmin,
        ),
        (
            "GET",
            "/projects/web/settings/webhooks/not-a-number".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/webhooks/not-a-number/active".into(),
            json!("active=true"),
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/webhooks/not-a-number/rotate-secret".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/webhooks/not-a-number/test".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/webhooks/not-a-number/delete".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        (
            "POST",
            "/projects/web/settings/webhooks/not-a-number/deliveries/1/redeliver".into(),
            Value::Null,
            Rule::PageProjectAdmin,
        ),
        // Last: it ends the caller's session (tokens keep working).
        ("POST", "/logout".into(), Value::Null, Rule::Page),
    ];

    // Every route of the router has a rule here.
    for route in kiln_server::route_table() {
        let known = routes.iter().any(|(method, path, _, _)| {
            let concrete: Vec<&str> = path.split('?').next().unwrap().split('/').collect();
            let pattern: Vec<&str> = route.path.split('/').collect();
            *method == route.method
                && concrete.len() == pattern.len()
                && concrete
                    .iter()
                    .zip(&pattern)
                    .all(|(c, p)| c == p || (p.starts_with('{') && p.ends_with('}')))
        });
        assert!(
            known,
            "route {} {} has no rule in this test: add it",
            route.method, route.path
        );
    }

    for (method, path, body, rule) in &routes {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for who in EVERYONE {
            let token = tokens.get(&who).map(String::as_str);
            let body = (!body.is_null()).then_some(body);
            // Each allowed caller deletes something that is there.
            if (method == Method::DELETE && path.ends_with("/members/member@x.io"))
                || path.ends_with("/settings/members/member@x.io/remove")
            {
                admin(
                    Method::PUT,
                    &format!("{w}/members/member@x.io"),
                    json!({"role": "viewer"}),
                )
                .await;
            }
            if (method == Method::DELETE && path.ends_with("/branches/feature"))
                || path.ends_with("/settings/branches/delete")
            {
                admin(
                    Method::POST,
                    &format!("{w}/branches"),
                    json!({"name": "feature"}),
                )
                .await;
            }
            let (status, text) = call(&app, &method, path, token, body).await;
            match expected(*rule, who) {
                Some(refused) => {
                    assert_eq!(
                        status, refused,
                        "{method} {path} as {who:?} ({rule:?}): {text}"
                    );
                    if matches!(
                        rule,
                        Rule::Page
                            | Rule::PageProjectAdmin
                            | Rule::PageViewer
                            | Rule::PageDeveloper
                            | Rule::PageInstanceAdmin
                    ) {
                        // HTML: the login redirect, or a page saying why.
                        assert!(
                            refused == 303 || text.contains("<h1>"),
                            "{method} {path} as {who:?}: {text}"
                        );
                    } else {
                        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        assert!(
                            error["error"]["message"].is_string(),
                            "{method} {path} as {who:?}: {text}"
                        );
                    }
                }
                None => assert!(
                    !matches!(status, 401 | 403 | 404) && status < 500,
                    "{method} {path} as {who:?} ({rule:?}) should be allowed: {status} {text}"
                ),
            }
        }
    }

    // Nothing secret is stored in clear: read the database's own files (SQLite) or every
    // text column (PostgreSQL) and look for each token and password.
    let secrets: Vec<&String> = tokens.values().chain(passwords.iter()).collect();
    let stored = stored_text(&app, engine).await;
    assert!(stored.len() > 1000, "the dump has the data");
    for secret in secrets {
        assert!(
            !stored.contains(secret.as_str()),
            "a secret is stored in clear"
        );
    }

    // A viewer's refusal names what is missing.
    let (_, text) = call(
        &app,
        &Method::POST,
        &format!("{w}/builds/{run_id}/cancel"),
        Some(&tokens[&Who::Viewer]),
        None,
    )
    .await;
    assert!(text.contains("developer role"), "{text}");
    app.stop().await;
}

/// Everything the database holds, as text.
async fn stored_text(app: &TestApp, engine: Engine) -> String {
    match engine {
        Engine::Sqlite => {
            let path = app.database.url.trim_start_matches("sqlite://").to_owned();
            let mut text = String::new();
            for file in [path.clone(), format!("{path}-wal")] {
                if let Ok(bytes) = std::fs::read(&file) {
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            text
        }
        Engine::Postgres => {
            use sqlx::{Connection, Row};
            let mut connection = sqlx::PgConnection::connect(&app.database.url)
                .await
                .unwrap();
            let tables: Vec<String> =
                sqlx::query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    .fetch_all(&mut connection)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| row.get::<String, _>(0))
                    .collect();
            let mut text = String::new();
            for table in tables {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT t::text FROM {table} t"
                )))
                .fetch_all(&mut connection)
                .await
                .unwrap();
                for row in rows {
                    text.push_str(&row.get::<String, _>(0));
                    text.push('\n');
                }
            }
            text
        }
    }
}
