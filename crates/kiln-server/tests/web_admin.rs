//! The dashboard's agents, queue, notifications, projects, settings and account pages,
//! fetched over HTTP from the real server as signed-in users of different roles: HTML
//! compared with snapshots (`tests/snapshots/*.html`, `KILN_UPDATE_SNAPSHOTS=1` rewrites
//! them), and what the forms do — refusals by role and CSRF token, a token shown once
//! that works, roles, branches, the repository, marking read, and a webhook's delivery
//! log with an attempt to a real receiver on 127.0.0.1.

mod common;

use kiln_store::engine_test;

use std::time::Duration;

use common::page::{Browser, admin_call, answer, form_body, no_redirects};
use common::snapshot::{Volatile, assert_snapshot, normalize};
use common::{ADMIN_TOKEN, TestApp, git};
use kiln_store::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

engine_test!(pages_render_for_each_role);
engine_test!(settings_forms_do_what_the_api_does);
engine_test!(a_webhook_delivery_log_shows_the_attempt_to_a_real_receiver);
engine_test!(pages_cannot_be_framed_and_login_goes_back_only_to_plain_paths);
engine_test!(the_users_page_creates_deactivates_and_resets_like_the_api);

/// The user's unread notifications.
async fn unread(browser: &Browser) -> i64 {
    browser
        .api(Method::GET, "/api/v1/notifications/stats")
        .await["unread"]
        .as_i64()
        .unwrap()
}

async fn agent_call(app: &TestApp, token: &str, path: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn create_user(app: &TestApp, email: &str, name: &str, project_role: Option<&str>) {
    admin_call(
        app,
        Method::POST,
        "/api/v1/users",
        json!({"email": email, "name": name, "password": "correct horse battery"}),
    )
    .await;
    if let Some(role) = project_role {
        admin_call(
            app,
            Method::PUT,
            &format!("/api/v1/projects/web/members/{email}"),
            json!({ "role": role }),
        )
        .await;
    }
}

/// Projects `web` (with a repository) and `api`; an admin, a viewer of `web`, and a user
/// of `api` only.
async fn world(app: &TestApp) -> tempfile::TempDir {
    for (slug, name) in [("web", "Web"), ("api", "API")] {
        admin_call(
            app,
            Method::POST,
            "/api/v1/projects",
            json!({"slug": slug, "name": name}),
        )
        .await;
    }
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join(".kiln.yml"),
        "steps:\n  - name: lint\n    run: echo lint\n    agents: [linux]\n  - name: gpu-tests\n    run: echo gpu\n    agents: [gpu]\n  - name: package\n    run: echo package\n    depends_on: [gpu-tests]\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "c"]);
    admin_call(
        app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        json!({"repo": repo.path().display().to_string()}),
    )
    .await;
    create_user(app, "ada@example.com", "Ada Admin", Some("admin")).await;
    create_user(app, "vic@example.com", "Vic Viewer", Some("viewer")).await;
    create_user(app, "otto@example.com", "Otto Outsider", None).await;
    admin_call(
        app,
        Method::PUT,
        "/api/v1/projects/api/members/otto@example.com",
        json!({"role": "admin"}),
    )
    .await;
    repo
}

/// Waits until `check` holds (the notifier and webhook sender run on their own tasks).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn pages_render_for_each_role(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let repo = world(&app).await;

    // An agent with labels and figures, running the `lint` job of a triggered build.
    let agent_token = admin_call(
        &app,
        Method::POST,
        "/api/v1/agent-tokens",
        json!({"name": "pool"}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // An agent silent for longer than a lease: offline.
    agent_call(
        &app,
        &agent_token,
        "/api/v1/agent/register",
        json!({"name": "old-mac", "labels": ["macos"], "concurrency": 1, "executor": "process"}),
    )
    .await;
    app.clock.advance_ms(3_600_000);
    let (_, registered) = agent_call(
        &app,
        &agent_token,
        "/api/v1/agent/register",
        json!({"name": "builder-1", "labels": ["linux", "x86_64"], "concurrency": 2,
               "executor": "process", "hostname": "rack-1", "version": "0.1.0"}),
    )
    .await;
    let agent_id = registered["agentId"].as_i64().unwrap();
    let build = admin_call(&app, Method::POST, "/api/v1/projects/web/builds", json!({})).await;
    let run_id = build["runId"].as_str().unwrap().to_owned();
    let (status, claimed) = agent_call(
        &app,
        &agent_token,
        "/api/v1/agent/claim",
        json!({"agentId": agent_id, "waitSecs": 0}),
    )
    .await;
    assert_eq!(status, 200, "{claimed}");
    let (status, _) = agent_call(
        &app,
        &agent_token,
        "/api/v1/agent/heartbeat",
        json!({"agentId": agent_id, "jobs": [claimed["jobId"]], "metrics": {
            "cpuPercent": 37.5, "memoryBytes": 3221225472u64, "memoryTotalBytes": 8589934592u64,
            "diskFreeBytes": 53687091200u64, "diskTotalBytes": 107374182400u64}}),
    )
    .await;
    assert_eq!(status, 200);

    let ada = Browser::log_in(&app, "ada@example.com", "correct horse battery").await;
    let vic = Browser::log_in(&app, "vic@example.com", "correct horse battery").await;
    let otto = Browser::log_in(&app, "otto@example.com", "correct horse battery").await;
    // A build reports its start: its project admin hears of it.
    let ingest = admin_call(
        &app,
        Method::POST,
        "/api/v1/projects/web/tokens",
        json!({"name": "nightly", "scopes": ["ingest"]}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reported = app
        .http
        .post(format!("{}/api/v1/events", app.base_url))
        .bearer_auth(&ingest)
        .json(&json!({"runId": "nightly-1", "event": "build_started"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reported.status().as_u16(), 201);
    eventually("Ada's notification", || async { unread(&ada).await == 1 }).await;
    app.clock.advance_ms(7_000);
    let volatile = Volatile::new()
        .with(run_id.clone(), "run")
        .with(repo.path().display().to_string(), "repo");

    // Agents: both, online first, labels, gauges, the running job linking to its build.
    let agents = vic.get("/agents").await;
    assert_eq!(agents.status, 200);
    assert!(
        agents.text.contains(r#"data-agent="builder-1""#),
        "{}",
        agents.text
    );
    assert!(agents.text.contains(r#"<li data-label="linux">linux</li>"#));
    assert!(agents.text.contains(r#"aria-label="CPU of builder-1""#));
    assert!(agents.text.contains(&format!(r#"href="/builds/{run_id}""#)));
    assert!(agents.text.contains("7 s ago"), "heartbeat age");
    assert!(
        agents
            .text
            .contains(r#"data-agent="old-mac" data-agent-id="#)
    );
    assert!(agents.text.contains("1 of 2 online."));
    assert_snapshot("agents-viewer", &agents.text, &volatile);
    // Otto reads nothing of `web`: he sees the agents but not the job.
    let agents = otto.get("/agents").await;
    assert!(agents.text.contains(r#"data-agent="builder-1""#));
    assert!(!agents.text.contains(&run_id), "another project's job");

    // Queue: the gpu job waits for an agent with its label, package for its dependency.
    let queue = vic.get("/queue").await;
    assert_eq!(queue.status, 200);
    assert!(
        queue
            .text
            .contains("no matching agent: no connected agent has labels gpu"),
        "{}",
        queue.text
    );
    assert!(queue.text.contains("dependency: waiting for gpu-tests"));
    assert_snapshot("queue-viewer", &queue.text, &volatile);
    assert!(!otto.get("/queue").await.text.contains(&run_id));

    // Notifications, projects, settings, account.
    let inbox = ada.get("/notifications").await;
    assert_eq!(inbox.status, 200);
    assert!(
        inbox.text.contains("data-unread-count>1<"),
        "{}",
        inbox.text
    );
    assert_snapshot("notifications-admin", &inbox.text, &volatile);
    assert_snapshot(
        "projects-viewer",
        &vic.get("/projects").await.text,
        &volatile,
    );
    let projects = ada.get("/projects").await;
    assert!(projects.text.contains(r#"href="/projects/web/settings""#));
    assert_snapshot("projects-admin", &projects.text, &volatile);
    let settings = ada.get("/projects/web/settings").await;
    assert_eq!(settings.status, 200, "{}", settings.text);
    assert_snapshot("settings-admin", &settings.text, &volatile);
    assert_snapshot("account-viewer", &vic.get("/account").await.text, &volatile);

    // Refusals: a viewer gets 403, another project's admin 404, both as HTML pages;
    // an anonymous browser goes to the login page.
    let refused = vic.get("/projects/web/settings").await;
    assert_eq!(refused.status, 403);
    assert!(refused.text.contains("<h1>403 Forbidden</h1>") && refused.text.contains("admin"));
    assert!(
        !vic.get("/projects")
            .await
            .text
            .contains("/projects/web/settings")
    );
    let hidden = otto.get("/projects/web/settings").await;
    assert_eq!(hidden.status, 404);
    assert!(hidden.text.contains("<h1>404 Not Found</h1>"));
    let anonymous = answer(
        no_redirects()
            .get(format!("{}/projects/web/settings", app.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.location, "/login?next=/projects/web/settings");
    let bad_filter = ada.get("/notifications?show=everything").await;
    assert_eq!(bad_filter.status, 400);
    assert!(
        bad_filter
            .text
            .contains("show: use all, unread or archived")
    );
    app.stop().await;
}

async fn settings_forms_do_what_the_api_does(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let _repo = world(&app).await;
    let ada = Browser::log_in(&app, "ada@example.com", "correct horse battery").await;
    let vic = Browser::log_in(&app, "vic@example.com", "correct horse battery").await;

    // A wrong or missing CSRF token is refused before anything happens.
    let forged = ada
        .post_raw(
            "/projects/web/settings/tokens",
            "_csrf=forged&name=x&scopes=read",
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(forged.text.contains("reload the page"), "{}", forged.text);
    let missing = ada.post_raw("/notifications/read-all", "").await;
    assert_eq!(missing.status, 403);
    // A viewer may not use the forms either, CSRF token or not.
    let refused = vic
        .post(
            "/projects/web/settings/tokens",
            &[("name", "x"), ("scopes", "read")],
        )
        .await;
    assert_eq!(refused.status, 403);

    // Tokens: created with scopes, shown once, working against the API; revoked.
    let created = ada
        .post(
            "/projects/web/settings/tokens",
            &[
                ("name", "ci reader"),
                ("scopes", "read"),
                ("scopes", "ingest"),
            ],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let token = created
        .text
        .split("data-secret readonly value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("kiln_"), "{token}");
    let normal = normalize(&created.text, &Volatile::new());
    assert!(normal.contains("Copy the token now"));
    let listed = app
        .http
        .get(format!("{}/api/v1/builds?project=web", app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status().as_u16(), 200, "the new token reads");
    let settings = ada.get("/projects/web/settings").await;
    assert!(settings.text.contains("ci reader"));
    assert!(!settings.text.contains(&token), "shown once");
    let token_id = admin_call(
        &app,
        Method::GET,
        "/api/v1/projects/web/tokens",
        json!(null),
    )
    .await["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci reader")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let revoked = ada
        .post(
            &format!("/projects/web/settings/tokens/{token_id}/revoke"),
            &[],
        )
        .await;
    assert_eq!(revoked.status, 303);
    assert_eq!(
        revoked.location,
        "/projects/web/settings?notice=token-revoked#tokens"
    );
    assert!(
        ada.get(&revoked.location)
            .await
            .text
            .contains("Token revoked")
    );
    let refused = app
        .http
        .get(format!("{}/api/v1/builds?project=web", app.base_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401, "revoked");
    // No scope ticked: the page again, saying what to do.
    let no_scope = ada
        .post("/projects/web/settings/tokens", &[("name", "x")])
        .await;
    assert_eq!(no_scope.status, 400);
    assert!(
        no_scope
            .text
            .contains("role=\"alert\">scopes: tick ingest, read or both")
    );

    // Members: add by email, change the role, remove; an unknown user is a clear 404.
    let added = ada
        .post(
            "/projects/web/settings/members",
            &[("email", "Otto@Example.com"), ("role", "developer")],
        )
        .await;
    assert_eq!(added.status, 303, "{}", added.text);
    let members = admin_call(
        &app,
        Method::GET,
        "/api/v1/projects/web/members",
        json!(null),
    )
    .await;
    let otto = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["email"] == "otto@example.com")
        .unwrap()
        .clone();
    assert_eq!(otto["role"], "developer");
    let otto_id = otto["user"]["id"].as_i64().unwrap();
    let set = ada
        .post(
            &format!("/projects/web/settings/members/{otto_id}/role"),
            &[("role", "admin")],
        )
        .await;
    assert_eq!(set.status, 303);
    let page = ada.get("/projects/web/settings").await.text;
    assert!(page.contains(r#"data-member="otto@example.com""#));
    let bad_role = ada
        .post(
            &format!("/projects/web/settings/members/{otto_id}/role"),
            &[("role", "king")],
        )
        .await;
    assert_eq!(bad_role.status, 400);
    assert!(bad_role.text.contains("role"), "{}", bad_role.text);
    let removed = ada
        .post(
            &format!("/projects/web/settings/members/{otto_id}/remove"),
            &[],
        )
        .await;
    assert_eq!(removed.status, 303);
    assert!(
        !ada.get("/projects/web/settings")
            .await
            .text
            .contains("data-member=\"otto@example.com\"")
    );
    let unknown = ada
        .post(
            "/projects/web/settings/members",
            &[("email", "nobody@example.com"), ("role", "viewer")],
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown
            .text
            .contains("user &#x27;nobody@example.com&#x27; not found")
            || unknown.text.contains("nobody@example.com")
    );

    // Branches with slashes, priority and auto-build; bad priority refused; deleted.
    let branch = ada
        .post(
            "/projects/web/settings/branches",
            &[
                ("name", "release/1.x"),
                ("priority", "2"),
                ("auto_build", "true"),
            ],
        )
        .await;
    assert_eq!(branch.status, 303, "{}", branch.text);
    let branches = admin_call(
        &app,
        Method::GET,
        "/api/v1/projects/web/branches",
        json!(null),
    )
    .await;
    assert_eq!(branches["branches"][0]["name"], "release/1.x");
    assert_eq!(branches["branches"][0]["priority"], 2);
    assert_eq!(branches["branches"][0]["autoBuild"], true);
    let bad = ada
        .post(
            "/projects/web/settings/branches",
            &[("name", "main"), ("priority", "11")],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("priority"));
    let deleted = ada
        .post(
            "/projects/web/settings/branches/delete",
            &[("name", "release/1.x")],
        )
        .await;
    assert_eq!(deleted.status, 303);
    let branches = admin_call(
        &app,
        Method::GET,
        "/api/v1/projects/web/branches",
        json!(null),
    )
    .await;
    assert_eq!(branches["branches"], json!([]));

    // Repository: keep the URL (empty field), change branch and concurrency.
    let before = admin_call(&app, Method::GET, "/api/v1/projects/web", json!(null)).await;
    let saved = ada
        .post(
            "/projects/web/settings/repo",
            &[
                ("repo", ""),
                ("default_branch", "trunk"),
                ("max_concurrency", "3"),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.text);
    let page = ada.get("/projects/web/settings").await.text;
    assert!(page.contains("<dt>Jobs at once</dt><dd>3</dd>"), "{page}");
    assert!(page.contains("<dt>Default branch</dt><dd><code>trunk</code></dd>"));
    let after = admin_call(&app, Method::GET, "/api/v1/projects/web", json!(null)).await;
    assert_eq!(before["repo"], after["repo"]);
    let bad = ada
        .post(
            "/projects/web/settings/repo",
            &[("max_concurrency", "lots")],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("maxConcurrency: must be a whole number"));

    // Notifications: a build starts (an ingested one), Ada hears; mark read, archive.
    let (_, ingest) = {
        let created = admin_call(
            &app,
            Method::POST,
            "/api/v1/projects/web/tokens",
            json!({"name": "ingest", "scopes": ["ingest"]}),
        )
        .await;
        (
            created["id"].clone(),
            created["token"].as_str().unwrap().to_owned(),
        )
    };
    for run in ["r1", "r2"] {
        let response = app
            .http
            .post(format!("{}/api/v1/events", app.base_url))
            .bearer_auth(&ingest)
            .json(&json!({"runId": run, "event": "build_started"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    eventually("two notifications", || async { unread(&ada).await == 2 }).await;
    let inbox = ada.get("/notifications").await.text;
    let first_id = inbox
        .split("data-notification-id=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let read = ada
        .post(
            &format!("/notifications/{first_id}/read"),
            &[("show", "unread")],
        )
        .await;
    assert_eq!(read.status, 303);
    assert_eq!(read.location, "/notifications?show=unread");
    assert_eq!(
        unread(&ada).await,
        1,
        "marking read changes the unread count"
    );
    let unread_page = ada.get("/notifications?show=unread").await.text;
    assert!(!unread_page.contains(&format!("data-notification-id=\"{first_id}\"")));
    assert!(unread_page.contains("data-unread-count>1<"));
    let archived = ada
        .post(&format!("/notifications/{first_id}/archive"), &[])
        .await;
    assert_eq!(archived.status, 303);
    assert!(
        ada.get("/notifications?show=archived")
            .await
            .text
            .contains(&format!("data-notification-id=\"{first_id}\""))
    );
    let all = ada.post("/notifications/read-all", &[]).await;
    assert_eq!(all.status, 303);
    assert_eq!(unread(&ada).await, 0);
    assert!(
        ada.get("/notifications")
            .await
            .text
            .contains("data-unread-count hidden>0<")
    );
    // Someone else's notification is not found.
    let theirs = vic
        .post(&format!("/notifications/{first_id}/read"), &[])
        .await;
    assert_eq!(theirs.status, 404);

    // The account page changes the password; the old one stops working.
    let mismatch = vic
        .post(
            "/account/password",
            &[
                ("current", "correct horse battery"),
                ("new", "new secret 1"),
                ("confirm", "new secret 2"),
            ],
        )
        .await;
    assert_eq!(mismatch.status, 400);
    let wrong = vic
        .post(
            "/account/password",
            &[
                ("current", "wrong"),
                ("new", "new secret 1"),
                ("confirm", "new secret 1"),
            ],
        )
        .await;
    assert_eq!(wrong.status, 400);
    assert!(wrong.text.contains("not your current password"));
    let changed = vic
        .post(
            "/account/password",
            &[
                ("current", "correct horse battery"),
                ("new", "new secret 1"),
                ("confirm", "new secret 1"),
            ],
        )
        .await;
    assert_eq!(changed.status, 303, "{}", changed.text);
    Browser::log_in(&app, "vic@example.com", "new secret 1").await;
    // And the JSON route, as the API documents it.
    let response = app
        .http
        .post(format!("{}/api/v1/me/password", app.base_url))
        .header("cookie", &ada.cookie)
        .header("x-csrf-token", &ada.csrf)
        .json(&json!({"current": "correct horse battery", "new": "another secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    Browser::log_in(&app, "ada@example.com", "another secret").await;
    app.stop().await;
}

/// A receiver on 127.0.0.1 that answers every request 200 with a short body.
async fn receiver() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Ok(read) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nthanks, kiln!\n")
                    .await;
            });
        }
    });
    (url, task)
}

async fn a_webhook_delivery_log_shows_the_attempt_to_a_real_receiver(engine: Engine) {
    let database =
        std::sync::Arc::new(kiln_store::test_support::TestDatabase::create(engine).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.webhooks_allow_private = true;
    })
    .await;
    let _repo = world(&app).await;
    let ada = Browser::log_in(&app, "ada@example.com", "correct horse battery").await;
    let (url, receiver_task) = receiver().await;

    let created = ada
        .post(
            "/projects/web/settings/webhooks",
            &[
                ("url", &url),
                ("format", "kiln"),
                ("events", "build_*, stage_failed"),
                ("active", "true"),
            ],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(created.text.contains("Copy the signing secret now"));
    let secret = created
        .text
        .split("data-secret readonly value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert!(!secret.is_empty());
    let hooks = admin_call(
        &app,
        Method::GET,
        "/api/v1/projects/web/webhooks",
        json!(null),
    )
    .await;
    let id = hooks["webhooks"][0]["id"].as_i64().unwrap();
    assert_eq!(
        hooks["webhooks"][0]["events"],
        json!(["build_*", "stage_failed"])
    );
    let settings = ada.get("/projects/web/settings").await.text;
    assert!(settings.contains(&format!("data-webhook-id=\"{id}\"")));
    assert!(!settings.contains(&secret), "the secret is shown once");

    // Send a test event; the log lists the delivered attempt with its response.
    let page_path = format!("/projects/web/settings/webhooks/{id}");
    let sent = ada.post(&format!("{page_path}/test"), &[]).await;
    assert_eq!(sent.status, 303);
    assert_eq!(sent.location, format!("{page_path}?notice=test-queued"));
    eventually("the delivery", || async {
        ada.get(&page_path)
            .await
            .text
            .contains("data-state=\"delivered\"")
    })
    .await;
    let log = ada.get(&page_path).await.text;
    assert!(log.contains("data-event-type=\"webhook_test\""), "{log}");
    assert!(
        log.contains("data-attempt=\"1\" data-status-code=\"200\""),
        "{log}"
    );
    assert!(log.contains("thanks, kiln!"), "the response excerpt");
    assert!(
        log.contains("<dt>webhook-signature</dt>"),
        "the request headers: {log}"
    );
    assert!(log.contains("100% of 1 attempt"));

    // Redeliver it: a second attempt, answered the same.
    let delivery_id = log
        .split("data-delivery-id=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let again = ada
        .post(
            &format!("{page_path}/deliveries/{delivery_id}/redeliver"),
            &[],
        )
        .await;
    assert_eq!(again.status, 303, "{}", again.text);
    eventually("the redelivery", || async {
        ada.get(&page_path)
            .await
            .text
            .contains("data-attempt=\"2\" data-status-code=\"200\"")
    })
    .await;

    // Disable, enable, rotate (the new secret shown once), delete.
    let disabled = ada
        .post(&format!("{page_path}/active"), &[("active", "false")])
        .await;
    assert_eq!(disabled.status, 303);
    assert!(
        ada.get(&page_path)
            .await
            .text
            .contains("<dd data-webhook-state>disabled</dd>")
    );
    let bad = ada
        .post(&format!("{page_path}/active"), &[("active", "maybe")])
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("active: must be true or false"));
    ada.post(&format!("{page_path}/active"), &[("active", "true")])
        .await;
    let rotated = ada.post(&format!("{page_path}/rotate-secret"), &[]).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert!(rotated.text.contains("Webhook secret rotated"));
    assert!(!rotated.text.contains(&secret));
    let refused = ada
        .post(
            "/projects/web/settings/webhooks",
            &[("url", "ftp://example.com/x")],
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    let deleted = ada.post(&format!("{page_path}/delete"), &[]).await;
    assert_eq!(deleted.status, 303);
    assert_eq!(ada.get(&page_path).await.status, 404);
    receiver_task.abort();
    app.stop().await;
}

#[test]
fn normalize_replaces_volatile_parts() {
    let html = r#"<meta name="csrf-token" content="abc"><input name="_csrf" value="abc"><link href="/x.css?v=0123abcd"><code>kiln_Ab1_x</code> <tr data-token-id="12"><a href="/builds/r-1">"#;
    assert_eq!(
        normalize(html, &Volatile::new().with("r-1", "run")),
        r#"<meta name="csrf-token" content="{csrf}"><input name="_csrf" value="{csrf}"><link href="/x.css?v={version}"><code>kiln_{secret}</code> <tr data-token-id="{id}"><a href="/builds/{run}">"#
    );
}

/// Every answer carries the security headers (pages: a CSP without inline script and
/// `frame-ancestors 'none'`), and the login form's `next` with a control character or
/// another origin goes to `/` instead of failing (it was a 500).
async fn pages_cannot_be_framed_and_login_goes_back_only_to_plain_paths(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let http = no_redirects();
    for path in ["/login", "/healthz", "/api/v1/nope", "/assets/kiln.css"] {
        let response = http
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(policy.contains("script-src 'self';"), "{path}: {policy}");
        assert!(
            !policy.contains("script-src 'self' 'unsafe-inline'"),
            "{policy}"
        );
    }

    let app_ref = &app;
    app.project_client("web", &["read"]).await;
    create_user(app_ref, "ada@example.com", "Ada", Some("viewer")).await;
    for (next, expected) in [
        ("/\n", "/"),
        ("/\r\nSet-Cookie: x=1", "/"),
        ("/\u{1}", "/"),
        ("/\u{7f}", "/"),
        ("//evil.example/x", "/"),
        ("/projects", "/projects"),
    ] {
        let response = http
            .post(format!("{}/login", app.base_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("email", "ada@example.com"),
                ("password", "correct horse battery"),
                ("next", next),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 303, "next {next:?}");
        assert_eq!(response.headers()["location"], expected, "next {next:?}");
    }
}

/// Whether the login form accepts these credentials (303 onwards) without keeping the
/// session.
async fn can_log_in(app: &TestApp, email: &str, password: &str) -> bool {
    no_redirects()
        .post(format!("{}/login", app.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("email", email),
            ("password", password),
            ("next", "/"),
        ]))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
        == 303
}

/// The password a "shown once" page holds.
fn shown_secret(page: &str) -> String {
    let start = page.find("data-secret readonly value=\"").expect(page) + 28;
    let end = page[start..].find('"').unwrap() + start;
    page[start..end].to_owned()
}

async fn the_users_page_creates_deactivates_and_resets_like_the_api(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let password = "correct horse battery";
    admin_call(
        &app,
        Method::POST,
        "/api/v1/users",
        json!({"email": "root@x.io", "name": "Root", "password": password, "instanceAdmin": true}),
    )
    .await;
    admin_call(
        &app,
        Method::POST,
        "/api/v1/projects",
        json!({"slug": "web", "name": "Web"}),
    )
    .await;
    create_user(&app, "ada@x.io", "Ada", Some("viewer")).await;
    let root = Browser::log_in(&app, "root@x.io", password).await;
    let ada = Browser::log_in(&app, "ada@x.io", password).await;
    let ada_token = ada
        .http
        .post(format!("{}/api/v1/me/tokens", app.base_url))
        .header("cookie", &ada.cookie)
        .header("x-csrf-token", &ada.csrf)
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ada_id = ada.api(Method::GET, "/api/v1/me").await["user"]["id"]
        .as_i64()
        .unwrap();
    let root_id = root.api(Method::GET, "/api/v1/me").await["user"]["id"]
        .as_i64()
        .unwrap();

    // Only instance admins see the link and the page.
    assert!(root.get("/").await.text.contains("<a href=\"/users\""));
    assert!(!ada.get("/").await.text.contains("href=\"/users\""));
    let refused = ada.get("/users").await;
    assert_eq!(refused.status, 403);
    assert!(refused.text.contains("instance admins"), "{}", refused.text);
    let page = root.get("/users").await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("aria-current=\"page\">Users</a>"));
    assert!(
        page.text
            .contains("<tr data-user=\"ada@x.io\" data-state=\"active\">")
    );
    assert!(page.text.contains("aria-label=\"Deactivate ada@x.io\""));
    assert!(
        !page.text.contains("aria-label=\"Deactivate root@x.io\""),
        "no button locks you out"
    );

    // Create: a generated password, shown once, that logs in.
    let created = root
        .post(
            "/users",
            &[
                ("email", " Grace@X.io "),
                ("name", "Grace"),
                ("password", ""),
            ],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let grace_password = shown_secret(&created.text);
    assert!(grace_password.len() >= 16, "{grace_password}");
    assert!(can_log_in(&app, "grace@x.io", &grace_password).await);
    // With a chosen password and the admin flag.
    let created = root
        .post(
            "/users",
            &[
                ("email", "lin@x.io"),
                ("name", "Lin"),
                ("password", "a long enough password"),
                ("instance_admin", "true"),
            ],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.text);
    assert_eq!(created.location, "/users?notice=user-created");
    let users = admin_call(&app, Method::GET, "/api/v1/users", json!({})).await;
    let lin = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["email"] == "lin@x.io")
        .unwrap()
        .clone();
    assert_eq!(lin["instanceAdmin"], true);
    // Bad input: the page again, with the reason and the status; never a 500.
    for (fields, status, words) in [
        (vec![("email", "not-an-email"), ("name", "X")], 400, "email"),
        (vec![("email", "x@x.io"), ("name", "")], 400, "name"),
        (
            vec![("email", "x@x.io"), ("name", "X"), ("password", "short")],
            400,
            "password",
        ),
        (
            vec![("email", "ada@x.io"), ("name", "Again")],
            409,
            "exists already",
        ),
    ] {
        let refused = root.post("/users", &fields).await;
        assert_eq!(refused.status, status, "{fields:?}: {}", refused.text);
        assert!(refused.text.contains("role=\"alert\""), "{}", refused.text);
        assert!(refused.text.contains(words), "{fields:?}: {}", refused.text);
    }
    let kept = root
        .post("/users", &[("email", "kept@x.io"), ("name", "")])
        .await;
    assert!(kept.text.contains("value=\"kept@x.io\""), "{}", kept.text);
    let forged = root
        .post_raw("/users", "_csrf=wrong&email=eve%40x.io&name=Eve")
        .await;
    assert_eq!(forged.status, 403);

    // Deactivate: Ada's session, token and password stop working at once.
    let done = root.post(&format!("/users/{ada_id}/deactivate"), &[]).await;
    assert_eq!(done.status, 303, "{}", done.text);
    assert_eq!(done.location, "/users?notice=user-deactivated");
    let page = root.get(&done.location).await;
    assert!(
        page.text
            .contains("<tr data-user=\"ada@x.io\" data-state=\"deactivated\">")
    );
    assert!(page.text.contains("role=\"status\""));
    assert_eq!(ada.get("/").await.status, 303, "the session ended");
    let (status, _) = app
        .raw(Method::GET, "/api/v1/me", Some(&ada_token), None)
        .await;
    assert_eq!(status, 401, "the personal token is refused");
    assert!(!can_log_in(&app, "ada@x.io", password).await);
    // Not yourself.
    let own = root
        .post(&format!("/users/{root_id}/deactivate"), &[])
        .await;
    assert_eq!(own.status, 409, "{}", own.text);
    assert!(own.text.contains("your own account"), "{}", own.text);
    let own = root
        .post(&format!("/users/{root_id}/reset-password"), &[])
        .await;
    assert_eq!(own.status, 409, "{}", own.text);
    let missing = root.post("/users/999999/deactivate", &[]).await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert!(missing.text.contains("not found"), "{}", missing.text);
    // Reactivate.
    let done = root.post(&format!("/users/{ada_id}/reactivate"), &[]).await;
    assert_eq!(done.location, "/users?notice=user-reactivated");
    assert!(can_log_in(&app, "ada@x.io", password).await);
    let (status, _) = app
        .raw(Method::GET, "/api/v1/me", Some(&ada_token), None)
        .await;
    assert_eq!(status, 200, "the personal token works again");

    // Reset: a new password shown once; the old one and Ada's sessions end.
    let ada = Browser::log_in(&app, "ada@x.io", password).await;
    let reset = root
        .post(&format!("/users/{ada_id}/reset-password"), &[])
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert!(reset.text.contains("New password for ada@x.io"));
    let new_password = shown_secret(&reset.text);
    assert!(!can_log_in(&app, "ada@x.io", password).await);
    assert!(can_log_in(&app, "ada@x.io", &new_password).await);
    assert_eq!(ada.get("/").await.status, 303, "the session ended");

    // The JSON API does the same (what `kiln user` calls).
    let disabled = admin_call(
        &app,
        Method::POST,
        "/api/v1/users/grace@x.io/disable",
        json!({}),
    )
    .await;
    assert_eq!(disabled["user"]["disabled"], true);
    assert!(!can_log_in(&app, "grace@x.io", &grace_password).await);
    let enabled = admin_call(
        &app,
        Method::POST,
        "/api/v1/users/grace@x.io/enable",
        json!({}),
    )
    .await;
    assert_eq!(enabled["user"]["disabled"], false);
    let chosen = admin_call(
        &app,
        Method::POST,
        "/api/v1/users/grace@x.io/password",
        json!({"password": "grace's new password"}),
    )
    .await;
    assert!(chosen.get("password").is_none(), "{chosen}");
    assert!(can_log_in(&app, "grace@x.io", "grace's new password").await);
    let generated = admin_call(
        &app,
        Method::POST,
        "/api/v1/users/grace@x.io/password",
        json!({}),
    )
    .await;
    let generated = generated["password"].as_str().unwrap().to_owned();
    assert!(can_log_in(&app, "grace@x.io", &generated).await);
    let (status, body) = app
        .raw(
            Method::POST,
            "/api/v1/users/grace@x.io/password",
            Some(ADMIN_TOKEN),
            Some(br#"{"password": "short"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "password");
    // Every action is in the audit log.
    let audit = admin_call(&app, Method::GET, "/api/v1/audit?limit=100", json!({})).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    for action in [
        "user.create",
        "user.disable",
        "user.enable",
        "user.password_reset",
    ] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
    app.stop().await;
}
