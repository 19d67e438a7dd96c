//! Observability against the real server: `/metrics` (what it counts, who may scrape,
//! and that `promtool` accepts it), OpenTelemetry traces decoded by a receiver built on
//! the official OTLP protobuf schema, and public status pages and badges.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, TestApp};
use kiln_store::engine_test;
use kiln_store::{Engine, test_support::TestDatabase};
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(metrics_count_ingest_builds_and_requests_by_route);
engine_test!(public_status_is_opt_in_and_shows_each_branchs_state);

/// Posts events with a token; asserts they were accepted.
async fn send(app: &TestApp, token: &str, events: Value) {
    let response = app
        .http
        .post(format!("{}/api/v1/events", app.base_url))
        .bearer_auth(token)
        .json(&events)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 201, "{}", response.text().await.unwrap());
}

fn event(run_id: &str, kind: &str, branch: &str) -> Value {
    json!({"runId": run_id, "event": kind, "branch": branch, "commit": format!("{run_id}c0ffee"), "repo": "app"})
}

fn stage(run_id: &str, kind: &str, stage: &str) -> Value {
    json!({"runId": run_id, "event": kind, "stage": stage})
}

/// `GET /metrics` with an optional bearer token and extra headers: status and body.
async fn scrape(
    app: &TestApp,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut request = app.http.get(format!("{}/metrics", app.base_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// The value of the sample line `name{labels}` (labels exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` has `value` (the build-end consumer observes after the
/// commit's answer), failing after 10 s.
async fn wait_for_sample(app: &TestApp, series: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, text) = scrape(app, None, &[]).await;
        assert_eq!(status, 200, "{text}");
        if sample(&text, series) == Some(value) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds of project `web`: r1 passed on main, r2 failed on dev, r3 still running.
async fn three_builds(app: &TestApp) -> String {
    let (_, token) = app.project_client("web", &["ingest", "read"]).await;
    send(
        app,
        &token,
        json!([
            event("r1", "build_started", "main"),
            stage("r1", "stage_started", "Build"),
            stage("r1", "stage_completed", "Build"),
            event("r1", "build_completed", "main"),
        ]),
    )
    .await;
    send(
        app,
        &token,
        json!([
            event("r2", "build_started", "dev"),
            {"runId": "r2", "event": "build_failed", "message": "secret-failure-text"},
        ]),
    )
    .await;
    send(
        app,
        &token,
        json!([event("r3", "build_started", "feature/x")]),
    )
    .await;
    token
}

async fn metrics_count_ingest_builds_and_requests_by_route(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let token = three_builds(&app).await;
    // A read by a raw path: the route template is what is counted.
    let (status, _) = app
        .raw(Method::GET, "/api/v1/builds/r1", Some(&token), None)
        .await;
    assert_eq!(status, 200);

    let text = wait_for_sample(
        &app,
        "cicd_pipeline_run_duration_seconds_count{cicd_pipeline_name=\"web\",cicd_pipeline_result=\"success\"}",
        1.0,
    )
    .await;
    let text = if sample(
        &text,
        "cicd_pipeline_run_errors_total{cicd_pipeline_name=\"web\",error_type=\"failure\"}",
    ) == Some(1.0)
    {
        text
    } else {
        wait_for_sample(
            &app,
            "cicd_pipeline_run_errors_total{cicd_pipeline_name=\"web\",error_type=\"failure\"}",
            1.0,
        )
        .await
    };
    assert_eq!(
        sample(&text, "kiln_ingest_requests_total{outcome=\"accepted\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "kiln_ingest_events_total{status=\"stored\"}"),
        Some(7.0)
    );
    assert!(sample(&text, "kiln_ingest_commit_duration_seconds_count").unwrap() >= 1.0);
    assert!(sample(&text, "kiln_ingest_request_duration_seconds_count").unwrap() >= 3.0);
    assert!(sample(&text, "kiln_ingest_commit_events_sum").unwrap() >= 7.0);
    assert_eq!(
        sample(
            &text,
            "cicd_pipeline_run_active{cicd_pipeline_name=\"web\",cicd_pipeline_run_state=\"executing\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "cicd_pipeline_run_duration_seconds_count{cicd_pipeline_name=\"web\",cicd_pipeline_result=\"failure\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "http_server_request_duration_seconds_count{http_request_method=\"POST\",http_route=\"/api/v1/events\",http_response_status_code=\"201\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_route=\"/api/v1/builds/{run_id}\",http_response_status_code=\"200\"}"
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("/api/v1/builds/r1"),
        "raw paths are never labels"
    );
    for series in [
        "kiln_jobs{state=\"queued\"} 0",
        "cicd_workers{cicd_worker_state=\"available\"} 0",
        "kiln_webhook_deliveries_pending 0",
        "kiln_email_outbox_pending 0",
        "kiln_live_subscribers{room=\"build\"} 0",
        "kiln_queue_oldest_wait_seconds 0",
    ] {
        assert!(text.lines().any(|line| line == series), "{series}:\n{text}");
    }
    app.stop().await;
}

/// The scrape token: nothing else opens `/metrics` once it is set; without one, only a
/// loopback client does (the client a trusted proxy names counts, not the proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_refuse_every_caller_but_the_scrape_token_or_loopback() {
    let scrape_token = "scrape-token-0123456789abcdef";
    let database = std::sync::Arc::new(TestDatabase::create(Engine::Sqlite).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.metrics_token = Some(kiln_server::Secret::new(scrape_token));
    })
    .await;
    let (_, ingest) = app.project_client("web", &["ingest", "read"]).await;
    for (token, why) in [
        (None, "no token"),
        (Some("scrape-token-0123456789abcdeX"), "a wrong token"),
        (Some(ADMIN_TOKEN), "the instance admin's token"),
        (Some(ingest.as_str()), "a project token"),
    ] {
        let (status, _, text) = scrape(&app, token, &[]).await;
        assert_eq!(status, 401, "{why}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--metrics-token"),
            "{text}"
        );
    }
    let (status, content_type, text) = scrape(&app, Some(scrape_token), &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(text.contains("# TYPE kiln_ingest_requests_total counter"));
    app.stop().await;

    let database = std::sync::Arc::new(TestDatabase::create(Engine::Sqlite).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.connections.trusted_proxies =
            vec![kiln_core::net::Cidr::parse("127.0.0.1/32").unwrap()];
    })
    .await;
    let (status, _, text) = scrape(&app, None, &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(status, 403, "a remote client behind the proxy: {text}");
    assert!(text.contains("--metrics-token"), "{text}");
    let (status, _, _) = scrape(&app, None, &[("x-forwarded-for", "127.0.0.1")]).await;
    assert_eq!(status, 200, "a local client behind the proxy");
    let (status, _, _) = scrape(&app, None, &[]).await;
    assert_eq!(status, 200, "the loopback client itself");
    app.stop().await;
}

/// `promtool check metrics` (Prometheus' own linter) accepts a scrape that has every
/// family filled: builds of each result, a webhook delivery, HTTP requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(kiln_promtool_tests),
    ignore = "promtool skipped: apt-get install prometheus (bash .ci/observability.sh)"
)]
async fn promtool_accepts_the_exposition() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    three_builds(&app).await;
    let (status, _) = app
        .raw(
            Method::POST,
            "/api/v1/projects/web/webhooks",
            Some(ADMIN_TOKEN),
            Some(serde_json::to_vec(&json!({"url": "https://hooks.example.com/x"})).unwrap()),
        )
        .await;
    assert!(status < 300 || status == 422, "{status}");
    let text = wait_for_sample(
        &app,
        "cicd_pipeline_run_duration_seconds_count{cicd_pipeline_name=\"web\",cicd_pipeline_result=\"failure\"}",
        1.0,
    )
    .await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    app.stop().await;
}

/// A receiver on the official OTLP schema decodes the trace of a failed build: the
/// build's span with the CI/CD attributes, a span per stage under it, statuses; the
/// first attempt is answered 503 and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(kiln_otlp_tests),
    ignore = "OTLP receiver skipped: pip install opentelemetry-proto (bash .ci/observability.sh)"
)]
async fn ended_builds_are_exported_as_otlp_traces() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let out_file = dir.path().join("spans.jsonl");
    let mut receiver = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/otlp_receiver.py"
        ))
        .arg(&port_file)
        .arg(&out_file)
        .arg("1")
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            break port;
        }
        assert!(Instant::now() < deadline, "the OTLP receiver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let database = std::sync::Arc::new(TestDatabase::create(Engine::Sqlite).await);
    let clock = kiln_server::clock::ManualClock::new(kiln_core::Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        let mut otlp = kiln_server::OtlpConfig::new(format!("http://127.0.0.1:{port}"));
        otlp.retry_delays = Some(vec![Duration::from_millis(50)]);
        config.otlp = Some(otlp);
        config.webhooks.public_url = Some("https://kiln.example.com".into());
    })
    .await;
    let (_, token) = app.project_client("web", &["ingest", "read"]).await;
    send(
        &app,
        &token,
        json!([
            {"runId": "otel-1", "event": "build_started", "branch": "main", "commit": "abc1234",
             "repo": "https://bot:hunter2@git.example.com/app.git"},
            stage("otel-1", "stage_started", "Build"),
            stage("otel-1", "stage_completed", "Build"),
            stage("otel-1", "stage_started", "Test"),
            {"runId": "otel-1", "event": "stage_failed", "stage": "Test", "message": "2 tests failed"},
            {"runId": "otel-1", "event": "build_failed", "message": "Test failed"},
        ]),
    )
    .await;
    let lines = loop {
        let text = std::fs::read_to_string(&out_file).unwrap_or_default();
        if !text.is_empty() {
            break text;
        }
        assert!(Instant::now() < deadline, "no trace reached the receiver");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(
        first.get("error").is_none(),
        "the receiver could not decode: {first}"
    );
    let spans = first["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 3, "{first:#}");
    let build = &spans[0];
    assert_eq!(build["name"], "BUILD web");
    assert_eq!(build["kind"], 2, "SERVER");
    assert_eq!(build["parentSpanId"], "");
    assert_eq!(build["resource"]["service.name"], "kiln");
    let attributes = &build["attributes"];
    assert_eq!(attributes["cicd.pipeline.name"], "web");
    assert_eq!(attributes["cicd.pipeline.run.id"], "otel-1");
    assert_eq!(attributes["cicd.pipeline.result"], "failure");
    assert_eq!(attributes["error.type"], "failure");
    assert_eq!(attributes["vcs.ref.head.name"], "main");
    assert_eq!(attributes["vcs.ref.head.revision"], "abc1234");
    assert_eq!(
        attributes["cicd.pipeline.run.url.full"],
        "https://kiln.example.com/builds/otel-1"
    );
    assert_eq!(
        attributes["vcs.repository.url.full"], "https://git.example.com/app.git",
        "credentials never leave"
    );
    assert!(!lines.contains("hunter2"));
    assert_eq!(build["statusCode"], 2, "ERROR");
    assert_eq!(build["statusMessage"], "Test failed");
    assert!(build["end"].as_u64().unwrap() >= build["start"].as_u64().unwrap());
    assert_eq!(build["start"].as_u64().unwrap() % 1_000_000, 0, "ms in ns");
    for (span, name, result, code) in [
        (&spans[1], "Build", "success", 0),
        (&spans[2], "Test", "failure", 2),
    ] {
        assert_eq!(span["name"], name);
        assert_eq!(span["kind"], 1, "INTERNAL");
        assert_eq!(span["traceId"], build["traceId"]);
        assert_eq!(span["parentSpanId"], build["spanId"]);
        assert_eq!(span["attributes"]["cicd.pipeline.task.name"], name);
        assert_eq!(span["attributes"]["cicd.pipeline.task.run.result"], result);
        assert_eq!(span["statusCode"], code);
    }

    // The first attempt was refused (503) and retried; both are counted.
    let text = wait_for_sample(&app, "kiln_otlp_traces_total{outcome=\"exported\"}", 1.0).await;
    assert_eq!(
        sample(&text, "kiln_otlp_traces_total{outcome=\"retried\"}"),
        Some(1.0)
    );
    app.stop().await;
    receiver.kill().unwrap();
    let _ = receiver.wait();
}

/// GET with optional headers: status, headers, body.
async fn get(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = app.http.get(format!("{}{path}", app.base_url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn public_status_is_opt_in_and_shows_each_branchs_state(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    three_builds(&app).await;

    // Private: the page and badges answer as for a project that does not exist.
    let (status, headers, private_page) = get(&app, "/status/web", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(headers["cache-control"], "no-store");
    let (_, _, missing_page) = get(&app, "/status/no-such-project", &[]).await;
    assert_eq!(private_page, missing_page, "existence does not leak");
    let (status, _, private_badge) = get(&app, "/badge/web/main.svg", &[]).await;
    assert_eq!(status, 404);
    let (_, _, missing_badge) = get(&app, "/badge/no-such-project/main.svg", &[]).await;
    assert_eq!(private_badge, missing_badge);

    // The admin publishes it (a bad body names its field).
    let (status, body) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/public-status",
            Some(ADMIN_TOKEN),
            Some(br#"{"enabled": "yes"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "enabled", "{body}");
    let (status, body) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/public-status",
            Some(ADMIN_TOKEN),
            Some(br#"{"enabled": true}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"enabled": true, "page": "/status/web", "badge": "/badge/web/main.svg"})
    );

    for (path, word, colour) in [
        ("/badge/web/main.svg", "passing", "#4c1"),
        ("/badge/web/dev.svg", "failing", "#e05d44"),
        ("/badge/web/feature/x.svg", "running", "#9f9f9f"),
        ("/badge/web/feature%2Fx.svg", "running", "#9f9f9f"),
        ("/badge/web/never-built.svg", "unknown", "#9f9f9f"),
    ] {
        let (status, headers, svg) = get(&app, path, &[]).await;
        assert_eq!(status, 200, "{path}: {svg}");
        assert_eq!(headers["content-type"], "image/svg+xml; charset=utf-8");
        assert_eq!(headers["cache-control"], "public, max-age=60");
        assert!(svg.contains(&format!(">{word}</text>")), "{path}: {svg}");
        assert!(svg.contains(colour), "{path}: {svg}");
        assert!(headers.get("set-cookie").is_none());
        // The same badge again is a 304 with its ETag.
        let etag = headers["etag"].to_str().unwrap().to_owned();
        let (status, headers, body) = get(&app, path, &[("if-none-match", &etag)]).await;
        assert_eq!(status, 304, "{path}");
        assert_eq!(headers["etag"].to_str().unwrap(), etag);
        assert!(body.is_empty());
    }
    let (status, _, _) = get(&app, "/badge/web/main.png", &[]).await;
    assert_eq!(status, 404, "badges are SVG");

    let (status, headers, page) = get(&app, "/status/web", &[]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(headers["cache-control"], "public, max-age=60");
    for row in [
        "data-branch=\"main\" data-state=\"passing\"",
        "data-branch=\"dev\" data-state=\"failing\"",
        "data-branch=\"feature/x\" data-state=\"running\"",
    ] {
        assert!(page.contains(row), "{row}: {page}");
    }
    assert!(
        page.contains("50% of the last 2 ended builds passed"),
        "{page}"
    );
    assert!(page.contains("data-trend"), "{page}");
    assert!(!page.contains("secret-failure-text"), "no messages");
    assert!(!page.contains("/builds/r1"), "no links into the dashboard");

    // Withdrawn: 404 again.
    let (status, body) = app
        .raw(
            Method::PUT,
            "/api/v1/projects/web/public-status",
            Some(ADMIN_TOKEN),
            Some(br#"{"enabled": false}"#.to_vec()),
        )
        .await;
    assert_eq!((status, &body["enabled"]), (200, &json!(false)));
    assert_eq!(get(&app, "/status/web", &[]).await.0, 404);
    assert_eq!(get(&app, "/badge/web/main.svg", &[]).await.0, 404);
    app.stop().await;
}
