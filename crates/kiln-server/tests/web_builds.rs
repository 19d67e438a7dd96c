//! The builds pages through the real server, as signed-in users over HTTP: the overview
//! and the build page compared with snapshots (`tests/snapshots/`, rewritten with
//! `KILN_UPDATE_SNAPSHOTS=1`), who sees which buttons, refusals as HTML pages, escaping,
//! paging, the Build / Cancel / Retry forms, and how ended builds, triggers, times and
//! exit codes read (issue 20).

mod common;

use kiln_store::engine_test;

use std::path::PathBuf;
use std::process::Command;

use common::{ADMIN_TOKEN, TestApp};
use kiln_core::jobs::JobPlan;
use kiln_core::{JobState, Millis};
use kiln_store::{ClaimRules, Engine, JobEnd, NewAgent, Store};
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(pages_render_as_their_snapshots);
engine_test!(roles_decide_buttons_and_refusals_are_pages);
engine_test!(the_overview_pages_sixty_builds);
engine_test!(build_cancel_and_retry_forms_work_without_javascript);
engine_test!(long_logs_show_their_end_numbered_from_the_start);
engine_test!(a_kiln_run_builds_log_shows_on_its_page);
engine_test!(failed_builds_show_where_they_stopped_in_the_same_words_and_times);
engine_test!(triggered_by_names_the_user_and_the_token);
engine_test!(the_build_page_lists_its_artifacts_with_download_links);

/// A signed-in browser: its session cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
    http: reqwest::Client,
    base_url: String,
}

impl Browser {
    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Posts a form; returns the status, the `Location` (redirects are not followed)
    /// and the body.
    async fn post(&self, path: &str, form: &str) -> (u16, String, String) {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, location, response.text().await.unwrap())
    }
}

async fn admin_call(app: &TestApp, method: Method, path: &str, body: Value) -> Value {
    let (status, value) = app
        .raw(
            method.clone(),
            path,
            Some(ADMIN_TOKEN),
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await;
    assert!(status < 300, "{method} {path}: {status} {value}");
    value
}

/// A user with `role` in `project` (or none), signed in.
async fn browser(app: &TestApp, email: &str, membership: Option<(&str, &str)>) -> Browser {
    let created = admin_call(
        app,
        Method::POST,
        "/api/v1/users",
        json!({"email": email, "name": email.split('@').next().unwrap()}),
    )
    .await;
    let password = created["password"].as_str().unwrap().to_owned();
    if let Some((project, role)) = membership {
        admin_call(
            app,
            Method::PUT,
            &format!("/api/v1/projects/{project}/members/{email}"),
            json!({"role": role}),
        )
        .await;
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
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
    Browser {
        cookie,
        csrf,
        http,
        base_url: app.base_url.clone(),
    }
}

async fn project(app: &TestApp, slug: &str, name: &str) -> String {
    admin_call(
        app,
        Method::POST,
        "/api/v1/projects",
        json!({"slug": slug, "name": name}),
    )
    .await;
    let created = admin_call(
        app,
        Method::POST,
        &format!("/api/v1/projects/{slug}/tokens"),
        json!({"name": "ci", "scopes": ["ingest"]}),
    )
    .await;
    created["token"].as_str().unwrap().to_owned()
}

async fn ingest(app: &TestApp, token: &str, events: Value) {
    let (status, body) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(token),
            Some(serde_json::to_vec(&events).unwrap()),
        )
        .await;
    assert!(status < 300, "ingest: {status} {body}");
}

/// Replaces what changes from run to run: the session's CSRF token and the assets'
/// content hash (which other files' edits move).
fn normalise(html: &str, browser: &Browser) -> String {
    let mut text = html.replace(&browser.csrf, "{csrf}");
    let mut out = String::with_capacity(text.len());
    while let Some(at) = text.find("?v=") {
        out.push_str(&text[..at + 3]);
        let rest = &text[at + 3..];
        let hash_len = rest.bytes().take_while(|b| b.is_ascii_hexdigit()).count();
        out.push_str("{assets}");
        text = rest[hash_len..].to_owned();
    }
    out.push_str(&text);
    out
}

/// Compares with `tests/snapshots/{name}.html`, or writes it with
/// `KILN_UPDATE_SNAPSHOTS=1`. Both engines compare with the same file.
fn assert_snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.html"));
    if std::env::var("KILN_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}: run with KILN_UPDATE_SNAPSHOTS=1 to write it, then review it",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let expected_lines: Vec<&str> = expected.lines().collect();
    let actual_lines: Vec<&str> = actual.lines().collect();
    let mut diff = String::new();
    let mut shown = 0;
    for index in 0..expected_lines.len().max(actual_lines.len()) {
        let (want, got) = (expected_lines.get(index), actual_lines.get(index));
        if want != got && shown < 12 {
            diff.push_str(&format!(
                "line {}:\n  - {}\n  + {}\n",
                index + 1,
                want.unwrap_or(&"<none>"),
                got.unwrap_or(&"<none>")
            ));
            shown += 1;
        }
    }
    panic!(
        "{name} differs from {} (KILN_UPDATE_SNAPSHOTS=1 rewrites it after review):\n{diff}",
        path.display()
    );
}

const T0: i64 = 1_800_000_000_000;

/// A Kiln-run build made directly in the store (as the runner and an agent would):
/// `checkout` passed, `test` running with a log full of colours and markup, `deploy`
/// waiting for it.
async fn kiln_run_build(app: &TestApp, store: &dyn Store, token: &str) -> i64 {
    ingest(
        app,
        token,
        json!([{"runId": "web-kiln-7", "event": "build_queued", "origin": "kiln", "branch": "main",
                "commit": "0123456789abcdef0123456789abcdef01234567", "eventId": "kiln-build-queued",
                "data": {"trigger": "api", "by": "dev@example.com", "commitMessage": "Fix the <b>build</b>\n\nlong body"}},
               {"runId": "web-kiln-7", "event": "build_started", "origin": "kiln", "eventId": "kiln-build-started"}]),
    )
    .await;
    let build = store.build_by_run_id("web-kiln-7").await.unwrap().unwrap();
    let plan = |step: &str, position: i64, depends_on: &[&str], state: JobState| JobPlan {
        step: step.into(),
        position,
        depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
        labels: Vec::new(),
        state,
        spec: json!({}),
        avoid_agent_id: None,
    };
    store
        .create_jobs(
            build.id,
            build.project_id,
            5,
            &[
                plan("checkout", 0, &[], JobState::Queued),
                plan("test", 1, &["checkout"], JobState::Blocked),
                plan("deploy", 2, &["test"], JobState::Blocked),
            ],
            Millis(T0),
        )
        .await
        .unwrap();
    let agent = store
        .register_agent(
            &NewAgent {
                name: "builder-1".into(),
                token_id: 1,
                labels: Vec::new(),
                concurrency: 1,
                executor: "process".into(),
                hostname: Some("builder-1".into()),
                version: Some("0.1.0".into()),
            },
            Millis(T0),
        )
        .await
        .unwrap();
    let rules = ClaimRules {
        lease_ms: 3_600_000,
        aging_ms: 300_000,
    };
    let checkout = store
        .claim_job(&agent, rules, Millis(T0 + 1_000))
        .await
        .unwrap()
        .unwrap();
    let end = JobEnd {
        state: JobState::Passed,
        exit_code: Some(0),
        reason: None,
    };
    assert!(
        store
            .finish_job(checkout.id, 1, Some(agent.id), &end, Millis(T0 + 4_000))
            .await
            .unwrap()
    );
    store
        .unblock_jobs(build.id, &["test".into()], &[], Millis(T0 + 4_000))
        .await
        .unwrap();
    let test = store
        .claim_job(&agent, rules, Millis(T0 + 4_000))
        .await
        .unwrap()
        .unwrap();
    let log = "2027-01-15T08:00:04.100Z kiln $ make test\n\
               2027-01-15T08:00:05.000Z out  \u{1b}[1;32mPASS\u{1b}[0m unit <script>alert(1)</script>\n\
               2027-01-15T08:00:06.000Z err  warning: \u{1b}[33mslow\u{1b}[39m & steady\n\
               2027-01-15T08:00:07.000Z out  1 test FAILED\n";
    store
        .append_log(test.id, 0, log.as_bytes(), 1 << 20)
        .await
        .unwrap();
    test.id
}

async fn pages_render_as_their_snapshots(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let store = app.database.open_dyn().await;
    let token = project(&app, "web", "Web shop").await;
    let developer = browser(&app, "dev@example.com", Some(("web", "developer"))).await;
    // Reported builds at fixed times: three successes of `make ci` on main (for the
    // ETA's median), a failure with a hostile message, and one running now.
    for (index, duration) in [(1, 60_000), (2, 90_000), (3, 120_000)] {
        ingest(
            &app,
            &token,
            json!([{"runId": format!("web-ci-{index}"), "event": "build_started", "origin": "kiln-cli",
                    "host": "ci-1", "command": "make ci", "branch": "main", "commit": format!("{index}bcdef0123456789")},
                   {"runId": format!("web-ci-{index}"), "event": "stage_started", "stage": "compile"},
                   {"runId": format!("web-ci-{index}"), "event": "stage_completed", "stage": "compile", "durationMs": duration / 2},
                   {"runId": format!("web-ci-{index}"), "event": "build_completed", "durationMs": duration}]),
        )
        .await;
        app.clock.advance_ms(1_000);
    }
    ingest(
        &app,
        &token,
        json!([{"runId": "web-bad-1", "event": "build_started", "origin": "kiln-cli", "host": "laptop",
                "command": "make ci", "branch": "feature/<x>", "data": {"ci": {"provider": "github_actions", "actor": "ada"}}},
               {"runId": "web-bad-1", "event": "stage_started", "stage": "lint"},
               {"runId": "web-bad-1", "event": "stage_failed", "stage": "lint",
                "message": "\u{1b}[31m<script>alert('x')</script>\u{1b}[0m failed"},
               {"runId": "web-bad-1", "event": "build_failed", "message": "lint failed: <img src=x onerror=alert(1)>", "durationMs": 4_000}]),
    )
    .await;
    app.clock.advance_ms(1_000);
    ingest(
        &app,
        &token,
        json!([{"runId": "web-ci-4", "event": "build_started", "origin": "kiln-cli", "host": "ci-1",
                "command": "make ci", "branch": "main", "commit": "4bcdef0123456789"},
               {"runId": "web-ci-4", "event": "stage_started", "stage": "compile"}]),
    )
    .await;
    let test_job = kiln_run_build(&app, &*store, &token).await;
    app.clock.advance_ms(30_000);

    let (status, overview) = developer.get("/").await;
    assert_eq!(status, 200, "{overview}");
    assert_snapshot("overview", &normalise(&overview, &developer));
    // The running `make ci` build: 30 s of a 90 s median (of 60, 90 and 120 s).
    assert!(overview.contains("about 1 min left"), "{overview}");

    let (status, reported) = developer.get("/builds/web-bad-1").await;
    assert_eq!(status, 200, "{reported}");
    assert_snapshot("build_reported", &normalise(&reported, &developer));

    let (status, kiln) = developer.get("/builds/web-kiln-7").await;
    assert_eq!(status, 200, "{kiln}");
    assert_snapshot("build_kiln_run", &normalise(&kiln, &developer));

    // Nothing hostile comes through unescaped, and no raw escape code.
    for page in [&overview, &reported, &kiln] {
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(!page.contains("<b>build</b>"), "{page}");
        assert!(!page.contains('\u{1b}'), "{page}");
    }
    assert!(reported.contains("&#60;script&#62;alert("), "{reported}");
    assert!(
        kiln.contains(
            "<span class=\"a-f2 a-bold\">PASS</span> unit &lt;script&gt;alert(1)&lt;/script&gt;"
        ),
        "{kiln}"
    );
    assert!(
        kiln.contains(&format!("id=\"job-{test_job}-L4\"")),
        "{kiln}"
    );

    // The raw log downloads whole, as it was written.
    let (status, raw) = developer
        .get(&format!("/builds/web-kiln-7/jobs/{test_job}/raw"))
        .await;
    assert_eq!(status, 200);
    assert!(raw.starts_with("2027-01-15T08:00:04.100Z kiln $ make test\n"));
    assert!(raw.contains("\u{1b}[1;32mPASS"));
    app.stop().await;
}

async fn roles_decide_buttons_and_refusals_are_pages(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let store = app.database.open_dyn().await;
    let token = project(&app, "web", "Web").await;
    let secret_token = project(&app, "secret", "Secret").await;
    let repo = git_repo();
    admin_call(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        json!({"repo": repo.path().display().to_string()}),
    )
    .await;
    kiln_run_build(&app, &*store, &token).await;
    ingest(
        &app,
        &secret_token,
        json!({"runId": "secret-1", "event": "build_started"}),
    )
    .await;
    let viewer = browser(&app, "viewer@example.com", Some(("web", "viewer"))).await;
    let developer = browser(&app, "dev@example.com", Some(("web", "developer"))).await;

    // A viewer sees builds but no Build or Cancel buttons; a developer sees both.
    let (_, seen) = viewer.get("/").await;
    assert!(seen.contains("data-run-id=\"web-kiln-7\""));
    assert!(!seen.contains("data-build-form"), "{seen}");
    assert!(
        !seen.contains("secret-1"),
        "another project's builds stay hidden"
    );
    let (_, seen) = developer.get("/").await;
    assert!(
        seen.contains("aria-label=\"Build web\">Build</button>"),
        "{seen}"
    );
    let (_, page) = viewer.get("/builds/web-kiln-7").await;
    assert!(!page.contains(">Cancel</button>"), "{page}");
    let (_, page) = developer.get("/builds/web-kiln-7").await;
    assert!(page.contains(">Cancel</button>"), "{page}");
    assert!(
        !page.contains(">Retry</button>"),
        "a running build is not retried"
    );

    // A viewer's form post is refused with a page naming the role.
    let form = format!("_csrf={}&branch=main", viewer.csrf);
    let (status, _, body) = viewer.post("/projects/web/build", &form).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("developer role"), "{body}");
    let (status, _, body) = viewer
        .post(
            "/builds/web-kiln-7/cancel",
            &format!("_csrf={}", viewer.csrf),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // A wrong or missing CSRF token: 403, nothing built.
    let (status, _, body) = developer
        .post("/projects/web/build", "_csrf=wrong&branch=main")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("reload the page"), "{body}");
    let (status, _, _) = developer.post("/projects/web/build", "branch=main").await;
    assert_eq!(status, 403);
    // Projects and builds the user may not read are not found, as pages.
    for path in ["/builds/secret-1", "/?project=secret", "/builds/nope"] {
        let (status, body) = developer.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("<h1>404 Not Found</h1>"), "{body}");
    }
    let (status, _, body) = developer
        .post(
            "/projects/secret/build",
            &format!("_csrf={}&branch=main", developer.csrf),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // Bad filter values: 400 pages naming the field.
    for (path, field) in [
        ("/?status=exploded", "status:"),
        ("/?before=soon", "before:"),
        ("/?before=0", "before:"),
        ("/builds/web-kiln-7?job=x", "job:"),
    ] {
        let (status, body) = developer.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(field), "{path}: {body}");
    }
    // A branch the repository lacks: the API's message, as a page.
    let (status, _, body) = developer
        .post(
            "/projects/web/build",
            &format!("_csrf={}&branch=no-such-branch", developer.csrf),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no-such-branch"), "{body}");
    // The developer's Build button: a real build of the repository's main branch.
    let (status, location, body) = developer
        .post(
            "/projects/web/build",
            &format!("_csrf={}&branch=main", developer.csrf),
        )
        .await;
    assert_eq!(status, 303, "{body}");
    let run_id = location.strip_prefix("/builds/").expect("to the new build");
    let (status, page) = developer.get(&location).await;
    assert_eq!(status, 200);
    // Who pressed it: their name and email, from the dashboard.
    assert!(
        page.contains("<dd>dev (dev@example.com), Build button"),
        "{page}"
    );
    assert!(page.contains(&format!("data-run-id=\"{run_id}\"")));
    app.stop().await;
}

async fn the_overview_pages_sixty_builds(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let token = project(&app, "web", "Web").await;
    let events: Vec<Value> = (0..60)
        .map(|index| json!({"runId": format!("page-{index:02}"), "event": "build_started", "branch": "main"}))
        .collect();
    ingest(&app, &token, Value::Array(events)).await;
    let viewer = browser(&app, "viewer@example.com", Some(("web", "viewer"))).await;
    let rows = |html: &str| html.matches("<tr data-run-id=").count();
    let (status, first) = viewer.get("/?status=running").await;
    assert_eq!(status, 200);
    assert_eq!(rows(&first), 50);
    assert!(first.contains("data-run-id=\"page-59\""));
    let next = first
        .split("rel=\"next\"")
        .next()
        .and_then(|head| head.rsplit("href=\"").next())
        .and_then(|tail| tail.split('"').next())
        .unwrap()
        .replace("&amp;", "&")
        .replace("&#38;", "&");
    assert!(next.contains("status=running"), "filters stay: {next}");
    let (status, second) = viewer.get(&next).await;
    assert_eq!(status, 200);
    assert_eq!(rows(&second), 10, "{next}: {second}");
    assert!(second.contains("data-run-id=\"page-00\""));
    assert!(!second.contains("rel=\"next\""));
    assert!(second.contains("data-newest"));
    let (_, none) = viewer.get("/?branch=elsewhere").await;
    assert_eq!(rows(&none), 0);
    assert!(none.contains("No builds match these filters"));
    app.stop().await;
}

async fn build_cancel_and_retry_forms_work_without_javascript(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let token = project(&app, "web", "Web").await;
    let repo = git_repo();
    admin_call(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        json!({"repo": repo.path().display().to_string()}),
    )
    .await;
    let developer = browser(&app, "dev@example.com", Some(("web", "developer"))).await;
    let csrf = format!("_csrf={}", developer.csrf);
    let (status, location, body) = developer
        .post("/projects/web/build", &format!("{csrf}&branch=main"))
        .await;
    assert_eq!(status, 303, "{body}");
    let run_id = location.trim_start_matches("/builds/").to_owned();
    let (status, back, body) = developer
        .post(&format!("/builds/{run_id}/cancel"), &csrf)
        .await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(back, location);
    let (_, page) = developer.get(&location).await;
    assert!(page.contains("data-status=\"cancelled\""), "{page}");
    assert!(page.contains(">Retry</button>"), "{page}");
    let (status, retried, body) = developer
        .post(&format!("/builds/{run_id}/retry"), &csrf)
        .await;
    assert_eq!(status, 303, "{body}");
    assert_ne!(retried, location);
    let (_, page) = developer.get(&retried).await;
    assert!(
        page.contains("<dd>dev (dev@example.com), Retry button"),
        "{page}"
    );
    assert!(
        page.contains(&format!("href=\"/builds/{run_id}\"")),
        "{page}"
    );
    // A reported build cannot be retried: the API's reason, as a page.
    ingest(
        &app,
        &token,
        json!([{"runId": "reported-1", "event": "build_started"}, {"runId": "reported-1", "event": "build_completed"}]),
    )
    .await;
    let (status, _, body) = developer.post("/builds/reported-1/retry", &csrf).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("Kiln did not run it"), "{body}");
    app.stop().await;
}

async fn long_logs_show_their_end_numbered_from_the_start(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let store = app.database.open_dyn().await;
    let token = project(&app, "web", "Web").await;
    let job = kiln_run_build(&app, &*store, &token).await;
    let viewer = browser(&app, "viewer@example.com", Some(("web", "viewer"))).await;
    // 4 lines already there, then 3,000 more in chunks: about 100 KB.
    let mut size = store.read_log(job, 0, 0).await.unwrap().1;
    let mut line = 4;
    for _ in 0..30 {
        let mut chunk = String::new();
        for _ in 0..100 {
            line += 1;
            chunk.push_str(&format!(
                "2027-01-15T08:00:08.000Z out  line {line:05} of the long log\n"
            ));
        }
        store
            .append_log(job, size, chunk.as_bytes(), 1 << 30)
            .await
            .unwrap();
        size += chunk.len() as i64;
    }
    let first_shown = |html: &str| -> i64 {
        let at = html.find(&format!("id=\"job-{job}-L")).expect("log lines");
        let rest = &html[at + format!("id=\"job-{job}-L").len()..];
        rest[..rest.find('"').unwrap()].parse().unwrap()
    };
    for _ in 0..2 {
        // The second time the count comes from the page cache.
        let (status, page) = viewer.get("/builds/web-kiln-7").await;
        assert_eq!(status, 200);
        let first = first_shown(&page);
        assert!(first > 2000, "only the end is shown: {first}");
        assert!(page.contains(&format!("id=\"job-{job}-L{first}\"><a class=\"ln\" href=\"#job-{job}-L{first}\" title=\"08:00:08.000\">{first}</a><span class=\"txt s-out\">line {first:05} of")));
        assert!(page.contains(&format!("id=\"job-{job}-L3004\"")));
        assert!(page.contains("Load earlier lines"));
    }
    // The log grows: numbers continue from the remembered count.
    let chunk = "2027-01-15T08:00:09.000Z out  line 03005 of the long log\n";
    store
        .append_log(job, size, chunk.as_bytes(), 1 << 30)
        .await
        .unwrap();
    let (_, page) = viewer.get("/builds/web-kiln-7").await;
    let first = first_shown(&page);
    assert!(page.contains(&format!(
        ">{first}</a><span class=\"txt s-out\">line {first:05} of"
    )));
    assert!(page.contains(&format!("id=\"job-{job}-L3005\"")));
    // An earlier part, by link, numbered the same way.
    let (status, part) = viewer
        .get(&format!("/builds/web-kiln-7?job={job}&from=1000"))
        .await;
    assert_eq!(status, 200);
    let first = first_shown(&part);
    assert!(part.contains(&format!(
        ">{first}</a><span class=\"txt s-out\">line {first:05} of"
    )));
    assert!(part.contains("Load later lines"), "{part}");
    app.stop().await;
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

/// A local repository with a one-step pipeline on `main`.
fn git_repo() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join(".kiln.yml"),
        "steps:\n  - name: test\n    run: echo ok\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "First commit"]);
    repo
}

/// A build `kiln run` reports shows the log it shipped (a reported job) in the same
/// viewer, and is not offered for retry (Kiln did not run it).
async fn a_kiln_run_builds_log_shows_on_its_page(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let token = project(&app, "web", "Web").await;
    ingest(
        &app,
        &token,
        json!({"runId": "wrapped-1", "event": "build_started", "branch": "main", "commit": "abc1234"}),
    )
    .await;
    let log = "2027-01-15T08:00:01.000Z out  compiling kiln\n2027-01-15T08:00:02.000Z err  warning: unused\n";
    let (status, answer) = app
        .raw(
            Method::POST,
            "/api/v1/builds/wrapped-1/log?offset=0&end=passed&exitCode=0",
            Some(&token),
            Some(log.as_bytes().to_vec()),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    ingest(
        &app,
        &token,
        json!({"runId": "wrapped-1", "event": "build_completed"}),
    )
    .await;
    let viewer = browser(&app, "dev@example.com", Some(("web", "developer"))).await;
    let (status, page) = viewer.get("/builds/wrapped-1").await;
    assert_eq!(status, 200);
    assert!(page.contains("compiling kiln"), "{page}");
    assert!(
        page.contains("<span class=\"txt s-err\">warning: unused"),
        "{page}"
    );
    assert!(
        !page.contains("Retry"),
        "a reported build is not retried: {page}"
    );
    app.stop().await;
}

/// The page's visible text holds no raw RFC 3339 instant: times are `<time>` elements
/// whose text is "… ago" and whose `title` is the exact UTC time.
fn assert_times_read_one_way(page: &str) {
    let mut rest = page;
    while let Some(at) = rest.find("<time ") {
        let element = &rest[at..];
        let end = element.find("</time>").expect("a closed <time>");
        let element = &element[..end];
        assert!(element.contains(" title=\""), "{element}");
        assert!(element.contains(" UTC\""), "{element}");
        let text = &element[element.find('>').unwrap() + 1..];
        assert!(
            text.ends_with(" ago") || text.starts_with("in "),
            "{element}"
        );
        rest = &rest[at + end..];
    }
    for line in page.lines() {
        // Outside attributes, an instant would follow a '>'.
        assert!(
            !line.contains(">2027-") && !line.contains(">2026-"),
            "a raw timestamp is shown: {line}"
        );
    }
}

async fn failed_builds_show_where_they_stopped_in_the_same_words_and_times(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let store = app.database.open_dyn().await;
    let token = project(&app, "web", "Web").await;
    let developer = browser(&app, "dev@example.com", Some(("web", "developer"))).await;
    // A Kiln-run build: checkout passed, test exits with 2, deploy is skipped; 1 of 3
    // jobs passed, so the bar stops at a third, not full.
    let test_job = kiln_run_build(&app, &*store, &token).await;
    let build = store.build_by_run_id("web-kiln-7").await.unwrap().unwrap();
    let test = store
        .jobs_of_build(build.id)
        .await
        .unwrap()
        .into_iter()
        .find(|job| job.id == test_job)
        .unwrap();
    let end = JobEnd {
        state: JobState::Failed,
        exit_code: Some(2),
        reason: Some("exit_status".into()),
    };
    assert!(
        store
            .finish_job(test.id, 1, test.agent_id, &end, Millis(T0 + 8_000))
            .await
            .unwrap()
    );
    store
        .unblock_jobs(build.id, &[], &["deploy".into()], Millis(T0 + 8_000))
        .await
        .unwrap();
    ingest(
        &app,
        &token,
        json!([{"runId": "web-kiln-7", "event": "stage_started", "origin": "kiln", "stage": "test"},
               {"runId": "web-kiln-7", "event": "stage_failed", "origin": "kiln", "stage": "test",
                "message": "exit status 2"},
               {"runId": "web-kiln-7", "event": "build_failed", "origin": "kiln", "message": "step test failed"}]),
    )
    .await;
    let (status, page) = developer.get("/builds/web-kiln-7").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(
            "aria-valuenow=\"33\" aria-valuetext=\"failed at 33%\" data-progress-bar><div class=\"bar\" style=\"width: 33.3%\">"
        ),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"small\" data-percent>failed at 33%</span>"),
        "{page}"
    );
    // Exit codes in one set of words, on the steps and in the events.
    assert!(
        page.contains("<span class=\"muted\">exit code 0</span>"),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"muted\">exit code 2</span>"),
        "{page}"
    );
    assert!(page.contains("<td>test</td><td>exit code 2</td>"), "{page}");
    assert!(!page.contains("exit_status"), "{page}");
    assert!(!page.contains("exit status"), "{page}");
    assert!(page.contains("skipped: a step it depends on did not pass"));
    assert_times_read_one_way(&page);

    // A reported build that said 40% and then failed stops at 40%; one that never said
    // stops nowhere.
    ingest(
        &app,
        &token,
        json!([{"runId": "reported-40", "event": "build_started"},
               {"runId": "reported-40", "event": "build_progress", "progress": 40},
               {"runId": "reported-40", "event": "build_cancelled"},
               {"runId": "reported-none", "event": "build_started"},
               {"runId": "reported-none", "event": "build_failed"}]),
    )
    .await;
    let (_, page) = developer.get("/builds/reported-40").await;
    assert!(
        page.contains("aria-valuetext=\"cancelled at 40%\""),
        "{page}"
    );
    assert!(page.contains("style=\"width: 40.0%\""), "{page}");
    let (_, overview) = developer.get("/").await;
    let row = |run_id: &str| {
        let start = overview.find(&format!("data-run-id=\"{run_id}\"")).unwrap();
        let end = overview[start..].find("</tr>").unwrap() + start;
        overview[start..end].to_owned()
    };
    assert!(row("web-kiln-7").contains("failed at 33%"));
    assert!(row("reported-40").contains("cancelled at 40%"));
    let none = row("reported-none");
    assert!(none.contains("failed, progress unknown"), "{none}");
    assert!(none.contains("style=\"width: 0%\""), "{none}");
    assert_times_read_one_way(&overview);
    app.stop().await;
}

async fn triggered_by_names_the_user_and_the_token(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let token = project(&app, "web", "Web").await;
    let repo = git_repo();
    admin_call(
        &app,
        Method::PUT,
        "/api/v1/projects/web/repo",
        json!({"repo": repo.path().display().to_string()}),
    )
    .await;
    let developer = browser(&app, "dev@example.com", Some(("web", "developer"))).await;
    let tokens = admin_call(&app, Method::GET, "/api/v1/projects/web/tokens", json!({})).await;
    let ci_id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["name"] == "ci")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    // The developer's personal token.
    let laptop = developer
        .http
        .post(format!("{}/api/v1/me/tokens", app.base_url))
        .header("cookie", &developer.cookie)
        .header("x-csrf-token", &developer.csrf)
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let laptop_id = laptop["id"].as_i64().unwrap();
    let laptop = laptop["token"].as_str().unwrap().to_owned();
    let trigger = |credential: String, path: String| {
        let app = &app;
        async move {
            let (status, body) = app
                .raw(Method::POST, &path, Some(&credential), Some(b"{}".to_vec()))
                .await;
            assert_eq!(status, 201, "{path}: {body}");
            body["runId"].as_str().unwrap().to_owned()
        }
    };
    let by_project_token = trigger(token.clone(), "/api/v1/projects/web/builds".into()).await;
    let by_personal_token = trigger(laptop.clone(), "/api/v1/projects/web/builds".into()).await;
    let triggered_words = |run_id: String| {
        let developer = &developer;
        async move {
            let (status, page) = developer.get(&format!("/builds/{run_id}")).await;
            assert_eq!(status, 200, "{page}");
            let label = "<dt>Triggered by</dt><dd>";
            let start = page.find(label).unwrap() + label.len();
            let end = page[start..].find("</dd>").unwrap() + start;
            page[start..end].to_owned()
        }
    };
    assert_eq!(
        triggered_words(by_project_token.clone()).await,
        format!("token &#39;ci&#39; (#{ci_id}), API")
    );
    assert_eq!(
        triggered_words(by_personal_token.clone()).await,
        format!("dev (dev@example.com) with token &#39;laptop&#39; (#{laptop_id}), API")
    );
    // What the event records, for the API's readers.
    let (_, events) = app
        .raw(
            Method::GET,
            &format!("/api/v1/builds/{by_personal_token}/events"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let data = &events["events"][0]["data"];
    assert_eq!(data["by"], "dev@example.com", "{events}");
    assert_eq!(data["byName"], "dev");
    assert_eq!(data["via"], "api");
    assert_eq!(data["token"], json!({"id": laptop_id, "name": "laptop"}));

    // Cancelled by the project token, then retried with it: both name it.
    let (status, body) = app
        .raw(
            Method::POST,
            &format!("/api/v1/projects/web/builds/{by_project_token}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, page) = developer.get(&format!("/builds/{by_project_token}")).await;
    assert!(
        page.contains(&format!("cancelled by token &#39;ci&#39; (#{ci_id})")),
        "{page}"
    );
    let retried = trigger(
        token.clone(),
        format!("/api/v1/projects/web/builds/{by_project_token}/retry"),
    )
    .await;
    assert_eq!(
        triggered_words(retried).await,
        format!(
            "token &#39;ci&#39; (#{ci_id}), retry through the API (retry of <a href=\"/builds/{by_project_token}\">an earlier build</a>)"
        )
    );
    // The overview says the same.
    let (_, overview) = developer.get("/").await;
    assert!(
        overview.contains(&format!(
            "<td class=\"optional small\">token &#39;ci&#39; (#{ci_id}), API</td>"
        )),
        "{overview}"
    );
    app.stop().await;
}

/// A build's artifacts on its page: each file with its size and a download link the
/// viewer's session may follow, and the whole build as a .tar.gz.
async fn the_build_page_lists_its_artifacts_with_download_links(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let token = project(&app, "web", "Web").await;
    ingest(
        &app,
        &token,
        json!({"runId": "art-1", "event": "build_started"}),
    )
    .await;
    let client = kiln_client::Client::new(&app.base_url, Some(token.clone()));
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("app.js");
    std::fs::write(&local, "console.log('hi');\n".repeat(200)).unwrap();
    let target = kiln_client::ArtifactTarget::Build {
        run_id: "art-1".into(),
    };
    let stored = client
        .upload_artifact(&target, &local, "dist/app & co.js", 0o644, Some("build"))
        .await
        .unwrap();
    let viewer = browser(&app, "viewer@example.com", Some(("web", "viewer"))).await;
    let (status, page) = viewer.get("/builds/art-1").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<h2 id=\"artifacts-h\">Artifacts</h2>"),
        "{page}"
    );
    assert!(page.contains("1 files, 3.7 KiB"), "{page}");
    let href = "/api/v1/builds/art-1/artifacts/files/dist/app%20%26%20co.js";
    assert!(
        page.contains(&format!(
            "<a href=\"{href}\" download>dist/app &#38; co.js</a>"
        )),
        "{page}"
    );
    assert!(page.contains(&stored.sha256[..12]), "{page}");
    // The link works with the viewer's session.
    let (status, body) = viewer.get(href).await;
    assert_eq!(status, 200);
    assert_eq!(body, "console.log('hi');\n".repeat(200));
    // A build without artifacts has no such section.
    ingest(
        &app,
        &token,
        json!({"runId": "art-2", "event": "build_started"}),
    )
    .await;
    let (_, page) = viewer.get("/builds/art-2").await;
    assert!(!page.contains("artifacts-h"), "{page}");
    app.stop().await;
}
