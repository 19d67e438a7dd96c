//! The dashboard's deployments page (`/projects/{slug}/deployments`) and its forms,
//! over HTTP against the real server (both engines), as signed-in users: a viewer sees
//! no buttons, a developer deploys (the build runs as a fake agent that uploads the
//! site), sees Deploy disabled while it runs, is refused with the reason on the page
//! (running, no deploy step, an invalid name, a stale CSRF token) and rolls back; the
//! page is compared with a snapshot (`tests/snapshots/deployments-viewer.html`). A
//! deployment on its way has a Cancel form (developers): it cancels the build, and a
//! viewer, a stale token, an ended deployment, another project's or a malformed id are
//! refused on the page.

mod common;

use std::time::{Duration, Instant};

use common::fake_agent::{Agent, agent_call, claim, finish, upload};
use common::page::{Browser, admin_call, form_body};
use common::snapshot::{Volatile, assert_snapshot};
use common::{TestApp, git};
use kiln_store::{Engine, engine_test};
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(the_deployments_page_deploys_and_rolls_back);
engine_test!(the_deployments_page_cancels_a_running_deployment);

const PIPELINE: &str = "steps:
  - name: build
    run: echo build
  - name: publish
    run: echo publish
    depends_on: build
    deploy: {environment: production, publish: dist}
";

const PASSWORD: &str = "correct horse battery";

/// Runs a deploy's build as the fake agent: `build`, then `publish` uploading the site.
async fn run_build(app: &TestApp, agent: &Agent, site: &[(&str, &[u8])]) {
    let first = claim(app, agent).await;
    assert_eq!(first["step"], "build");
    finish(app, agent, &first).await;
    let publish = claim(app, agent).await;
    assert_eq!(publish["step"], "publish");
    upload(app, agent, &publish, site).await;
    finish(app, agent, &publish).await;
}

/// The project's deployments, newest first (the JSON API).
async fn deployments(app: &TestApp) -> Vec<Value> {
    admin_call(
        app,
        Method::GET,
        "/api/v1/projects/web/deployments",
        Value::Null,
    )
    .await["deployments"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the newest deployment has `status`.
async fn newest_becomes(app: &TestApp, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let newest = deployments(app).await.remove(0);
        if newest["status"] == status {
            return newest;
        }
        assert!(
            Instant::now() < deadline,
            "the newest deployment never became {status}: {newest}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces the database ids after each prefix by `{id}` (PostgreSQL's sequences skip
/// numbers an `ON CONFLICT DO NOTHING` consumed; SQLite's do not).
fn without_ids(html: &str) -> String {
    const PREFIXES: &[&str] = &[
        "data-deployment=\"",
        "Log of deployment ",
        "serves deployment ",
    ];
    let mut text = html.to_owned();
    for prefix in PREFIXES {
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(prefix) {
            let after = at + prefix.len();
            out.push_str(&rest[..after]);
            rest = &rest[after..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits > 0 {
                out.push_str("{id}");
                rest = &rest[digits..];
            }
        }
        out.push_str(rest);
        text = out;
    }
    text
}

/// The `<form>` element whose opening tag holds `marker`, through its `</form>`.
fn form_with<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker}: {html}"));
    let start = html[..at].rfind("<form").unwrap();
    let end = at + html[at..].find("</form>").unwrap();
    &html[start..end]
}

async fn the_deployments_page_deploys_and_rolls_back(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    admin_call(
        &app,
        Method::POST,
        "/api/v1/projects",
        json!({"slug": "web", "name": "Web"}),
    )
    .await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join(".kiln.yml"), PIPELINE).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "site"]);
    admin_call(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        json!({"repo": repo.path().display().to_string()}),
    )
    .await;
    for (email, name, role) in [
        ("dev@example.com", "Dee Developer", Some("developer")),
        ("vic@example.com", "Vic Viewer", Some("viewer")),
        ("otto@example.com", "Otto Outsider", None),
    ] {
        admin_call(
            &app,
            Method::POST,
            "/api/v1/users",
            json!({"email": email, "name": name, "password": PASSWORD}),
        )
        .await;
        if let Some(role) = role {
            admin_call(
                &app,
                Method::PUT,
                &format!("/api/v1/projects/web/members/{email}"),
                json!({ "role": role }),
            )
            .await;
        }
    }
    let created = admin_call(
        &app,
        Method::POST,
        "/api/v1/agent-tokens",
        json!({"name": "a"}),
    )
    .await;
    let mut agent = Agent {
        token: created["token"].as_str().unwrap().to_owned(),
        id: 0,
    };
    let (status, registered) = agent_call(
        &app,
        &agent,
        "/api/v1/agent/register",
        json!({"name": "fake", "concurrency": 4, "executor": "process"}),
    )
    .await;
    assert_eq!(status, 200, "{registered}");
    agent.id = registered["agentId"].as_i64().unwrap();

    let dev = Browser::log_in(&app, "dev@example.com", PASSWORD).await;
    let vic = Browser::log_in(&app, "vic@example.com", PASSWORD).await;
    let otto = Browser::log_in(&app, "otto@example.com", PASSWORD).await;
    let page = "/projects/web/deployments";

    // Nothing deployed yet: the developer gets the form that deploys to a named
    // environment (proposing production), the viewer no form at all.
    let empty = dev.get(page).await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    assert!(
        empty.text.contains("Nothing deployed yet."),
        "{}",
        empty.text
    );
    let form = form_with(&empty.text, r#"data-deploy-form="""#);
    assert!(form.contains(r#"name="environment" value="production""#));
    assert!(form.contains(r#"name="branch" value="main""#));
    let viewed = vic.get(page).await;
    assert_eq!(viewed.status, 200);
    assert!(
        !viewed
            .text
            .contains("<form method=\"post\" action=\"/projects/web/deploy")
    );
    assert_eq!(otto.get(page).await.status, 404, "another project's user");
    // Linked from the projects list.
    assert!(
        vic.get("/projects")
            .await
            .text
            .contains(r#"href="/projects/web/deployments" aria-label="Deployments of web""#)
    );

    // Refusals before anything runs: a viewer (403), a stale token (403), a name the
    // rules refuse (the page again, with why).
    let refused = vic
        .post("/projects/web/deploy", &[("environment", "production")])
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.text.contains("developer"), "{}", refused.text);
    let stale = dev
        .post_raw(
            "/projects/web/deploy",
            &form_body(&[("_csrf", "stale"), ("environment", "production")]),
        )
        .await;
    assert_eq!(stale.status, 403);
    assert!(stale.text.contains("out of date"), "{}", stale.text);
    let invalid = dev
        .post("/projects/web/deploy", &[("environment", "Prod uction")])
        .await;
    assert!(
        matches!(invalid.status, 400 | 422),
        "{}: {}",
        invalid.status,
        invalid.text
    );
    assert!(invalid.text.contains(r#"role="alert""#), "{}", invalid.text);
    assert!(invalid.text.contains("<h1>Deployments of Web</h1>"));
    assert!(deployments(&app).await.is_empty(), "nothing was deployed");

    // Deploy: the page says so, the history lists it queued, and Deploy is disabled
    // with the reason while it runs.
    let started = dev
        .post(
            "/projects/web/deploy",
            &[("environment", "production"), ("branch", "main")],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.text);
    assert_eq!(
        started.location,
        "/projects/web/deployments?notice=deploy-started#history"
    );
    let first = deployments(&app).await.remove(0);
    assert_eq!(first["environment"], "production");
    assert_eq!(first["requestedBy"], "dev@example.com");
    let first_run = first["runId"].as_str().unwrap().to_owned();
    let running = dev.get(&started.location).await;
    assert!(running.text.contains(r#"role="status""#));
    assert!(
        running.text.contains(&format!(
            r#"data-deployment="{}" data-status="{}" data-environment="production" data-run-id="{first_run}""#,
            first["id"], first["status"].as_str().unwrap()
        )),
        "{}",
        running.text
    );
    let deploy_form = form_with(&running.text, r#"data-deploy-form="production""#);
    assert!(
        deploy_form.contains(
            r#"aria-label="Deploy to production" disabled aria-describedby="env-production-busy""#
        ),
        "{deploy_form}"
    );
    assert!(running.text.contains("data-deploy-running"));
    assert!(
        running
            .text
            .contains("Deploy is available again once it ends.")
    );
    let again = dev
        .post("/projects/web/deploy", &[("environment", "production")])
        .await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(again.text.contains(r#"role="alert""#));
    assert!(
        again.text.contains("wait for it or cancel it"),
        "{}",
        again.text
    );
    assert_eq!(deployments(&app).await.len(), 1);

    // The build runs and uploads the site: deployed and live.
    run_build(
        &app,
        &agent,
        &[("dist/index.html", b"<p>v1</p>".as_slice())],
    )
    .await;
    newest_becomes(&app, "deployed").await;
    // A second deploy, from the environment's own form, also runs to the end.
    let second = dev
        .post(
            "/projects/web/deploy",
            &[("environment", "production"), ("branch", "main")],
        )
        .await;
    assert_eq!(second.status, 303, "{}", second.text);
    run_build(
        &app,
        &agent,
        &[("dist/index.html", b"<p>v2</p>".as_slice())],
    )
    .await;
    let second = newest_becomes(&app, "deployed").await;
    assert_ne!(second["runId"], first_run.as_str());
    let second_run = second["runId"].as_str().unwrap().to_owned();

    // The developer may switch back to build #1; the viewer sees the build, no button.
    let deployed = dev.get(page).await;
    let rollback = form_with(
        &deployed.text,
        &format!(r#"data-rollback-to="{first_run}""#),
    );
    assert!(rollback.contains(">Roll back to #1</button>"), "{rollback}");
    assert!(
        !deployed
            .text
            .contains(&format!(r#"data-rollback-to="{second_run}""#))
    );
    let deploy_form = form_with(&deployed.text, r#"data-deploy-form="production""#);
    assert!(
        deploy_form.contains(r#"aria-label="Deploy to production">Deploy</button>"#),
        "enabled again: {deploy_form}"
    );
    let viewed = vic.get(page).await;
    assert!(!viewed.text.contains("Roll back"), "{}", viewed.text);
    assert!(!viewed.text.contains("data-deploy-form"));
    assert!(
        viewed
            .text
            .contains(&format!(r#"<a href="/builds/{first_run}">build #1</a>"#))
    );
    let refused = vic
        .post(
            "/projects/web/rollback",
            &[("environment", "production"), ("to", &first_run)],
        )
        .await;
    assert_eq!(refused.status, 403);
    let stale = dev
        .post_raw(
            "/projects/web/rollback",
            &form_body(&[
                ("_csrf", "stale"),
                ("environment", "production"),
                ("to", &first_run),
            ]),
        )
        .await;
    assert_eq!(stale.status, 403);
    let not_deployed = dev
        .post(
            "/projects/web/rollback",
            &[("environment", "production"), ("to", "no-such-build")],
        )
        .await;
    assert_eq!(not_deployed.status, 422, "{}", not_deployed.text);
    assert!(not_deployed.text.contains(r#"role="alert""#));
    assert_eq!(deployments(&app).await.len(), 2, "refusals changed nothing");

    // Rollback: the environment serves build #1 again, as a new deployment.
    let rolled = dev
        .post(
            "/projects/web/rollback",
            &[("environment", "production"), ("to", &first_run)],
        )
        .await;
    assert_eq!(rolled.status, 303, "{}", rolled.text);
    assert_eq!(
        rolled.location,
        "/projects/web/deployments?notice=rolled-back#history"
    );
    let newest = deployments(&app).await.remove(0);
    assert_eq!(newest["runId"], first_run.as_str());
    assert_eq!(newest["current"], true);
    assert!(newest["rollbackOf"].is_i64(), "{newest}");
    let environments = admin_call(
        &app,
        Method::GET,
        "/api/v1/projects/web/environments",
        Value::Null,
    )
    .await;
    assert_eq!(
        environments["environments"][0]["current"]["id"],
        newest["id"]
    );
    let after = dev.get(&rolled.location).await;
    assert!(after.text.contains("Rolled back"), "{}", after.text);
    let live_row = format!(
        r#"data-deployment="{}" data-status="deployed" data-environment="production" data-run-id="{first_run}" data-rollback data-live-row"#,
        newest["id"]
    );
    assert!(after.text.contains(&live_row), "{}", after.text);
    // Now build #2 is the one to go back to.
    assert!(
        after
            .text
            .contains(&format!(r#"data-rollback-to="{second_run}""#))
    );
    assert!(
        !after
            .text
            .contains(&format!(r#"data-rollback-to="{first_run}""#))
    );

    // The viewer's page, whole.
    let commit = newest["commit"].as_str().unwrap().to_owned();
    let volatile = Volatile::new()
        .with(first_run.clone(), "run1")
        .with(second_run.clone(), "run2")
        .with(commit.clone(), "commit")
        .with(commit[..10].to_owned(), "commit10");
    let viewed = vic.get(page).await;
    assert_eq!(viewed.status, 200);
    assert!(
        viewed.text.contains("<th scope=\"row\">main</th>"),
        "last good build of main"
    );
    assert_snapshot("deployments-viewer", &without_ids(&viewed.text), &volatile);
    // An environment no step deploys to: refused before any build is made (so no
    // deployment of the pipeline's other environments is begun and cancelled).
    let no_step = dev
        .post(
            "/projects/web/deploy",
            &[("environment", "staging"), ("branch", "main")],
        )
        .await;
    assert_eq!(no_step.status, 422, "{}", no_step.text);
    assert!(
        no_step
            .text
            .contains("has no step deploying to &#39;staging&#39;")
            || no_step.text.contains("has no step deploying to 'staging'"),
        "{}",
        no_step.text
    );
    assert!(
        no_step.text.contains("nothing was built"),
        "{}",
        no_step.text
    );
    assert!(
        no_step
            .text
            .contains(r#"name="environment" value="staging""#)
    );
    app.stop().await;
}

async fn the_deployments_page_cancels_a_running_deployment(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    for slug in ["web", "other"] {
        admin_call(
            &app,
            Method::POST,
            "/api/v1/projects",
            json!({"slug": slug, "name": slug}),
        )
        .await;
    }
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join(".kiln.yml"), PIPELINE).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "site"]);
    for slug in ["web", "other"] {
        admin_call(
            &app,
            Method::PUT,
            &format!("/api/v1/projects/{slug}/repo"),
            json!({"repo": repo.path().display().to_string()}),
        )
        .await;
    }
    for (email, role) in [
        ("dev@example.com", "developer"),
        ("vic@example.com", "viewer"),
    ] {
        admin_call(
            &app,
            Method::POST,
            "/api/v1/users",
            json!({"email": email, "name": email, "password": PASSWORD}),
        )
        .await;
        admin_call(
            &app,
            Method::PUT,
            &format!("/api/v1/projects/web/members/{email}"),
            json!({ "role": role }),
        )
        .await;
    }
    let dev = Browser::log_in(&app, "dev@example.com", PASSWORD).await;
    let vic = Browser::log_in(&app, "vic@example.com", PASSWORD).await;
    let page = "/projects/web/deployments";

    let started = dev
        .post(
            "/projects/web/deploy",
            &[("environment", "production"), ("branch", "main")],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.text);
    let running = deployments(&app).await.remove(0);
    let id = running["id"].as_i64().unwrap();
    let run_id = running["runId"].as_str().unwrap().to_owned();
    let cancel_path = format!("/projects/web/deployments/{id}/cancel");

    // The developer sees Cancel in the environment and in the history; the viewer none.
    let shown = dev.get(page).await;
    let marker = format!(r#"data-cancel-deployment="{id}""#);
    assert_eq!(shown.text.matches(&marker).count(), 2, "{}", shown.text);
    let form = form_with(&shown.text, &marker);
    assert!(
        form.contains(&format!(r#"action="{cancel_path}""#)),
        "{form}"
    );
    assert!(form.contains(r#"name="_csrf""#), "{form}");
    assert!(
        form.contains(&format!(
            r#"aria-label="Cancel deployment {id} (production)">Cancel</button>"#
        )),
        "{form}"
    );
    let viewed = vic.get(page).await;
    assert!(
        !viewed.text.contains("data-cancel-deployment"),
        "{}",
        viewed.text
    );

    // Refusals: a viewer (403), a stale token (403), a malformed id, another project's
    // deployment (404 on that project's page): nothing cancelled.
    let refused = vic.post(&cancel_path, &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.text.contains("developer"), "{}", refused.text);
    let stale = dev
        .post_raw(&cancel_path, &form_body(&[("_csrf", "stale")]))
        .await;
    assert_eq!(stale.status, 403);
    assert!(stale.text.contains("out of date"), "{}", stale.text);
    let malformed = dev.post("/projects/web/deployments/x1/cancel", &[]).await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert!(
        malformed.text.contains(r#"role="alert""#),
        "{}",
        malformed.text
    );
    assert!(malformed.text.contains("id: "), "{}", malformed.text);
    let (status, elsewhere) = app
        .raw(
            Method::POST,
            "/api/v1/projects/other/environments/production/deploy",
            Some(common::ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 201, "{elsewhere}");
    let other_id = elsewhere["deployment"]["id"].as_i64().unwrap();
    let wrong_project = dev
        .post(&format!("/projects/web/deployments/{other_id}/cancel"), &[])
        .await;
    assert_eq!(wrong_project.status, 404, "{}", wrong_project.text);
    assert_eq!(deployments(&app).await[0]["status"], "queued");

    // Cancel: back to the page with the notice; the deployment and its build cancelled.
    let cancelled = dev.post(&cancel_path, &[]).await;
    assert_eq!(cancelled.status, 303, "{}", cancelled.text);
    assert_eq!(
        cancelled.location,
        "/projects/web/deployments?notice=deploy-cancelled#history"
    );
    let after = dev.get(&cancelled.location).await;
    assert!(after.text.contains(r#"role="status""#), "{}", after.text);
    assert!(after.text.contains("Cancelled:"), "{}", after.text);
    assert!(
        !after.text.contains("data-cancel-deployment"),
        "{}",
        after.text
    );
    let newest = newest_becomes(&app, "cancelled").await;
    assert_eq!(newest["id"], id);
    let build = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/builds/{run_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(build["status"], "cancelled", "{build}");

    // An ended deployment: refused on the page with the reason.
    let again = dev.post(&cancel_path, &[]).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(again.text.contains(r#"role="alert""#), "{}", again.text);
    assert!(again.text.contains("already ended"), "{}", again.text);
    assert!(
        again.text.contains("<h1>Deployments of web</h1>"),
        "{}",
        again.text
    );
    app.stop().await;
}
