//! Test results against the real server: JUnit reports written by real runners uploaded
//! for builds, read back per build, flaky and slowest tests across builds, history, and
//! bad reports refused whole.

mod common;

use kiln_store::engine_test;

use common::{TestApp, assert_error};
use kiln_client::protocol::{
    BuildTests, EventPayload, FlakyTests, SlowestTests, TestHistory, TestReportStored,
};
use kiln_store::Engine;
use reqwest::Method;
use serde_json::Value;

engine_test!(reports_are_stored_read_and_mined);

fn fixture(file: &str) -> Vec<u8> {
    let path = format!(
        "{}/../kiln-core/tests/fixtures/junit/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

async fn upload(app: &TestApp, token: &str, run_id: &str, body: Vec<u8>) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/api/v1/builds/{run_id}/tests", app.base_url))
        .bearer_auth(token)
        .header("content-type", "application/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get<T: serde::de::DeserializeOwned>(app: &TestApp, token: &str, path: &str) -> T {
    let (status, body) = app.raw(Method::GET, path, Some(token), None).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_value(body).unwrap()
}

/// A one-test report with the given status.
fn one(name: &str, failed: bool, seconds: f64) -> Vec<u8> {
    let outcome = if failed {
        "<failure message=\"boom\"/>"
    } else {
        ""
    };
    format!(
        r#"<testsuite name="suite"><testcase classname="c" name="{name}" time="{seconds}">{outcome}</testcase></testsuite>"#
    )
    .into_bytes()
}

async fn reports_are_stored_read_and_mined(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let (_, other_token) = app.project_client("api", &["ingest", "read"]).await;
    let start = |run_id: &str, commit: &str| EventPayload {
        run_id: run_id.into(),
        event: "build_started".into(),
        branch: Some("main".into()),
        commit: Some(commit.into()),
        ..EventPayload::default()
    };
    web.send_events(&[start("r1", "c1")]).await.unwrap();

    // Three real reports for one build: their cases add up.
    let mut total = 0;
    for (file, cases) in [("jest-junit.xml", 7), ("pytest.xml", 7), ("nextest.xml", 5)] {
        let (status, body) = upload(&app, &token, "r1", fixture(file)).await;
        assert_eq!(status, 201, "{file}: {body}");
        let stored: TestReportStored = serde_json::from_value(body).unwrap();
        assert_eq!(stored.stored.total, cases, "{file}");
        total += cases;
    }
    let tests: BuildTests = get(&app, &token, "/api/v1/builds/r1/tests").await;
    assert_eq!(tests.summary.total, total);
    assert_eq!(
        (
            tests.summary.passed,
            tests.summary.failed,
            tests.summary.errors,
            tests.summary.skipped
        ),
        (10, 6, 1, 2)
    );
    // Failures first, with their messages.
    assert!(tests.tests[..6].iter().all(|t| t.status == "failed"));
    assert!(tests.tests[0].message.is_some());

    // Bad reports are refused whole, naming the body; nothing is stored.
    for bad in [
        b"not xml at all".to_vec(),
        b"<testsuites><testcase name='x'>".to_vec(),
        br#"<!DOCTYPE x [<!ENTITY a "aaaa">]><testsuites/>"#.to_vec(),
        format!("{}{}", "<a>".repeat(200), "</a>".repeat(200)).into_bytes(),
    ] {
        let (status, body) = upload(&app, &token, "r1", bad).await;
        assert_eq!(status, 400, "{body}");
        assert_error(&body, "invalid_field", Some("body"));
    }
    // Refused before it is read, so the server closes that connection: send it on a
    // connection of its own, not one the other requests reuse.
    let huge = vec![b' '; 26 * 1024 * 1024];
    let alone = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = alone
        .post(format!("{}/api/v1/builds/r1/tests", app.base_url))
        .bearer_auth(&token)
        .header("content-type", "application/xml")
        .body(huge)
        .send()
        .await;
    match response {
        Ok(response) => assert_eq!(response.status().as_u16(), 413),
        // The server may close before the client finished sending: refused either way.
        Err(error) => assert!(error.is_request() || error.is_body(), "{error}"),
    }
    let after: BuildTests = get(&app, &token, "/api/v1/builds/r1/tests").await;
    assert_eq!(after.summary.total, total, "nothing partial was stored");
    // Another project's token cannot upload to this build; nor can an unknown build.
    let (status, _) = upload(&app, &other_token, "r1", one("t", false, 1.0)).await;
    assert_eq!(status, 404);
    let (status, _) = upload(&app, &token, "nope", one("t", false, 1.0)).await;
    assert_eq!(status, 404);

    // Flaky: "flips" passes, fails, passes across builds; "same" passes and fails on one
    // commit; "steady" always passes (slow); "broken" fails from one build on.
    let runs = [
        ("b1", "c1", [false, false, false, false]),
        ("b2", "c2", [true, false, false, true]),
        ("b3", "c2", [false, true, false, true]),
        ("b4", "c3", [false, false, false, true]),
    ];
    for (run_id, commit, outcomes) in runs {
        web.send_events(&[start(run_id, commit)]).await.unwrap();
        for (name, failed) in ["flips", "same", "steady", "broken"].iter().zip(outcomes) {
            let seconds = if *name == "steady" { 5.0 } else { 0.1 };
            let (status, body) = upload(&app, &token, run_id, one(name, failed, seconds)).await;
            assert_eq!(status, 201, "{body}");
        }
    }
    let flaky: FlakyTests = get(&app, &token, "/api/v1/projects/web/tests/flaky").await;
    let keys: Vec<&str> = flaky.flaky.iter().map(|f| f.key.as_str()).collect();
    assert!(keys.contains(&"suite › c › flips"), "{keys:?}");
    assert!(keys.contains(&"suite › c › same"), "{keys:?}");
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with("steady") || k.ends_with("broken")),
        "{keys:?}"
    );
    let same = flaky
        .flaky
        .iter()
        .find(|f| f.key.ends_with("same"))
        .unwrap();
    assert_eq!(same.same_commit_conflicts, 1);

    let slowest: SlowestTests =
        get(&app, &token, "/api/v1/projects/web/tests/slowest?limit=1").await;
    assert_eq!(slowest.tests.len(), 1);
    assert_eq!(slowest.tests[0].key, "suite › c › steady");
    assert_eq!(slowest.tests[0].p95_ms, Some(5000));

    let history: TestHistory = get(
        &app,
        &token,
        "/api/v1/projects/web/tests/history?key=suite%20%E2%80%BA%20c%20%E2%80%BA%20broken",
    )
    .await;
    let statuses: Vec<&str> = history.runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        vec!["failed", "failed", "failed", "passed"],
        "newest first"
    );
    assert_eq!(history.runs[0].run_id, "b4");

    for (path, field) in [
        ("/api/v1/projects/web/tests/flaky?days=0", "days"),
        ("/api/v1/projects/web/tests/slowest?limit=5000", "limit"),
        ("/api/v1/projects/web/tests/history", "key"),
    ] {
        let (status, body) = app.raw(Method::GET, path, Some(&token), None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_error(&body, "invalid_field", Some(field));
    }
    app.stop().await;
}
