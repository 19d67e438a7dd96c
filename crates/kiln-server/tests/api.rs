//! The HTTP API against the real server: auth rules, ingest, bad input, reads.

mod common;

use kiln_store::engine_test;

use common::{ADMIN_TOKEN, TestApp, assert_error};
use kiln_client::protocol::EventPayload;
use kiln_store::Engine;
use reqwest::Method;
use serde_json::{Value, json};

fn event(run_id: &str, kind: &str) -> EventPayload {
    EventPayload {
        run_id: run_id.into(),
        event: kind.into(),
        ..EventPayload::default()
    }
}

fn body(value: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&value).unwrap())
}

engine_test!(every_route_refuses_the_wrong_caller);
engine_test!(ingest_stores_acknowledges_and_deduplicates);
engine_test!(bad_input_gets_a_clear_4xx_and_writes_nothing);
engine_test!(reads_builds_events_and_status);

async fn every_route_refuses_the_wrong_caller(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, web_token) = app.project_client("web", &["ingest"]).await;
    let (_, web_read_token) = app.project_client("web", &["read"]).await;
    let (_, api_token) = app.project_client("api", &["ingest", "read"]).await;
    web.send_events(&[event("web-run", "build_started")])
        .await
        .unwrap();

    let ingest_body = body(json!({"runId": "x1", "event": "heartbeat"}));
    let project_body = body(json!({"slug": "new", "name": "New"}));
    let token_body = body(json!({"name": "t", "scopes": ["read"]}));
    // (method, path, body, caller, expected status)
    type Case<'a> = (Method, &'a str, Option<Vec<u8>>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (Method::GET, "/api/v1/builds", None, None, 401),
        (
            Method::GET,
            "/api/v1/builds",
            None,
            Some("kiln_not_a_real_token"),
            401,
        ),
        (
            Method::POST,
            "/api/v1/events",
            ingest_body.clone(),
            None,
            401,
        ),
        (
            Method::POST,
            "/api/v1/events",
            ingest_body.clone(),
            Some(ADMIN_TOKEN),
            403,
        ),
        (
            Method::POST,
            "/api/v1/events",
            ingest_body.clone(),
            Some(&web_read_token),
            403,
        ),
        (
            Method::POST,
            "/api/v1/projects",
            project_body.clone(),
            Some(&web_token),
            403,
        ),
        (
            Method::POST,
            "/api/v1/projects",
            project_body.clone(),
            None,
            401,
        ),
        (
            Method::POST,
            "/api/v1/projects/web/tokens",
            token_body.clone(),
            Some(&web_token),
            403,
        ),
        (
            Method::GET,
            "/api/v1/projects/web/tokens",
            None,
            Some(&web_read_token),
            403,
        ),
        (
            Method::DELETE,
            "/api/v1/projects/web/tokens/1",
            None,
            Some(&web_token),
            403,
        ),
        // Another project's build, project and status look like they do not exist.
        (
            Method::GET,
            "/api/v1/builds/web-run",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/builds/web-run/events",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/builds/web-run/status",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/projects/web",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/builds?project=web",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/status?project=web",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/builds/web-run/stream",
            None,
            None,
            401,
        ),
        (
            Method::GET,
            "/api/v1/builds/web-run/stream",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/stream?project=web",
            None,
            Some(&api_token),
            404,
        ),
        (
            Method::GET,
            "/api/v1/stream",
            None,
            Some("kiln_not_a_real_token"),
            401,
        ),
        // The right callers.
        (
            Method::GET,
            "/api/v1/builds/web-run",
            None,
            Some(&web_read_token),
            200,
        ),
        (
            Method::GET,
            "/api/v1/builds/web-run",
            None,
            Some(&web_token),
            200,
        ),
        (
            Method::GET,
            "/api/v1/builds/web-run",
            None,
            Some(ADMIN_TOKEN),
            200,
        ),
        (
            Method::GET,
            "/api/v1/status?project=web",
            None,
            Some(ADMIN_TOKEN),
            200,
        ),
        (
            Method::POST,
            "/api/v1/events",
            ingest_body.clone(),
            Some(&web_token),
            201,
        ),
        (
            Method::POST,
            "/api/v1/projects",
            project_body.clone(),
            Some(ADMIN_TOKEN),
            201,
        ),
        (Method::GET, "/healthz", None, None, 200),
        (Method::GET, "/readyz", None, None, 200),
    ];
    for (method, path, request_body, caller, expected) in cases {
        let (status, response) = app.raw(method.clone(), path, caller, request_body).await;
        assert_eq!(
            status, expected,
            "{method} {path} as {caller:?}: {response}"
        );
        if status >= 400 {
            assert!(response["error"]["message"].is_string(), "{response}");
        }
    }
    // Every route of the table, with every kind of caller: tests/authorization.rs.
    // The seed's route takes the seed's header, and refuses a read token the same way.
    let seed = app
        .http
        .post(format!("{}/api/internal/build-events", app.base_url))
        .header("X-OM-BUILD-TOKEN", &web_token)
        .json(&json!({"runId": "seed-run", "event": "build_started", "env": "prod", "origin": "server", "command": "npm run build:deploy", "host": "h1", "pid": 123}))
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status().as_u16(), 201);
    let refused = app
        .http
        .post(format!("{}/api/internal/build-events", app.base_url))
        .header("X-OM-BUILD-TOKEN", &web_read_token)
        .json(&json!({"runId": "seed-run", "event": "heartbeat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);

    // Revocation applies at once.
    let tokens = app.admin.list_tokens("web").await.unwrap().tokens;
    let ingest_token = tokens.iter().find(|t| t.scopes == ["ingest"]).unwrap();
    assert!(ingest_token.last_used_at.is_some());
    app.admin
        .revoke_token("web", ingest_token.id)
        .await
        .unwrap();
    let (status, response) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(&web_token),
            ingest_body,
        )
        .await;
    assert_eq!(status, 401);
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // The listing never shows secrets.
    let listing = app
        .raw(
            Method::GET,
            "/api/v1/projects/web/tokens",
            Some(ADMIN_TOKEN),
            None,
        )
        .await
        .1
        .to_string();
    assert!(!listing.contains(&web_token) && !listing.contains(&web_read_token));
    app.stop().await;
}

async fn ingest_stores_acknowledges_and_deduplicates(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let batch = vec![
        EventPayload {
            event_id: Some("e1".into()),
            branch: Some("main".into()),
            ..event("r1", "build_started")
        },
        EventPayload {
            event_id: Some("e2".into()),
            stage: Some("Build".into()),
            ..event("r1", "stage_started")
        },
        EventPayload {
            event_id: Some("e3".into()),
            progress: Some(50.0),
            ..event("r1", "build_progress")
        },
    ];
    let first = web.send_events(&batch).await.unwrap();
    assert_eq!(
        first.events.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    assert!(first.events.iter().all(|a| a.status == "stored"));
    let retry = web.send_events(&batch).await.unwrap();
    assert_eq!(
        retry.events.iter().map(|a| a.id).collect::<Vec<_>>(),
        first.events.iter().map(|a| a.id).collect::<Vec<_>>()
    );
    assert!(retry.events.iter().all(|a| a.status == "duplicate"));

    web.send_events(&[EventPayload {
        event_id: Some("end".into()),
        ..event("r1", "build_completed")
    }])
    .await
    .unwrap();
    // Heartbeats after the end: 200, ignored.
    let (status, response) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(token.as_str()),
            body(json!({"runId": "r1", "event": "heartbeat"})),
        )
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["events"][0]["status"], "ignored");
    // Lifecycle events after the end: 409 naming the event.
    let (status, response) = app
        .raw(Method::POST, "/api/v1/events", Some(token.as_str()), body(json!([{"runId": "r2", "event": "build_started"}, {"runId": "r1", "event": "stage_started", "stage": "Late"}])))
        .await;
    assert_eq!(status, 409);
    assert_error(&response, "build_ended", Some("[1].event"));
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already ended with status 'success'")
    );
    // The refused batch wrote nothing, not even its first event.
    assert_eq!(web.get_build("r2").await.unwrap_err().status(), Some(404));
    let build = web.get_build("r1").await.unwrap();
    assert_eq!(build.status, "success");
    assert_eq!(build.branch.as_deref(), Some("main"));
    assert_eq!(build.stages.unwrap()[0].status, "success");
    app.stop().await;
}

async fn bad_input_gets_a_clear_4xx_and_writes_nothing(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let token = Some(token.as_str());
    let long = "x".repeat(300);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"runId": "big", "event": "heartbeat", "eventId": i.to_string()}))
        .collect();
    let cases: Vec<(Vec<u8>, u16, &str, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, "invalid_json", Some("body")),
        (b"".to_vec(), 400, "invalid_json", Some("body")),
        (serde_json::to_vec(&json!({"event": "heartbeat"})).unwrap(), 400, "invalid_field", Some("runId")),
        (serde_json::to_vec(&json!({"runId": "r"})).unwrap(), 400, "invalid_field", Some("event")),
        (serde_json::to_vec(&json!({"runId": "r", "event": "Not-Snake"})).unwrap(), 400, "invalid_field", Some("event")),
        (serde_json::to_vec(&json!({"runId": "r", "event": "heartbeat", "host": long})).unwrap(), 400, "invalid_field", Some("host")),
        (serde_json::to_vec(&json!({"runId": "r", "event": "heartbeat", "progress": 140})).unwrap(), 400, "invalid_field", Some("progress")),
        (serde_json::to_vec(&json!({"runId": "has space", "event": "heartbeat"})).unwrap(), 400, "invalid_field", Some("runId")),
        (serde_json::to_vec(&json!([])).unwrap(), 400, "invalid_field", Some("body")),
        (serde_json::to_vec(&json!("a string")).unwrap(), 400, "invalid_field", Some("body")),
        (serde_json::to_vec(&json!([{"runId": "ok", "event": "build_started"}, {"runId": "ok", "event": "stage_started"}])).unwrap(), 400, "invalid_field", Some("[1].stage")),
        (serde_json::to_vec(&too_many).unwrap(), 400, "batch_too_large", Some("body")),
        // U+0000 anywhere is refused with its field (PostgreSQL's text cannot hold it; it
        // used to fail the whole group commit there with a 503).
        (serde_json::to_vec(&json!({"runId": "r", "event": "heartbeat", "message": "a\u{0}b"})).unwrap(), 400, "invalid_field", Some("message")),
        // An integer beyond 64 bits would come back as a float: refused, not changed.
        (br#"{"runId": "r", "event": "heartbeat", "data": {"big": 123456789012345678901234567890}}"#.to_vec(), 400, "invalid_field", Some("data.big")),
        (serde_json::to_vec(&json!([{"runId": "ok", "event": "build_started"}, {"runId": "ok", "event": "build_started", "branch": "x\u{0}"}])).unwrap(), 400, "invalid_field", Some("[1].branch")),
        (serde_json::to_vec(&json!({"runId": "r", "event": "plan_generated", "data": {"steps": ["a", "b\u{0}"]}})).unwrap(), 400, "invalid_field", Some("data.steps[1]")),
        (format!("{{\"runId\":\"r\",\"event\":\"heartbeat\",\"message\":\"{}\"}}", "m".repeat(1024 * 1024 + 10)).into_bytes(), 413, "body_too_large", None),
    ];
    for (request_body, expected_status, code, field) in cases {
        let (status, response) = app
            .raw(Method::POST, "/api/v1/events", token, Some(request_body))
            .await;
        assert_eq!(status, expected_status, "{response}");
        assert_error(&response, code, field);
    }
    // Nothing of any refused request was stored.
    let builds = web.list_builds(&Default::default()).await.unwrap();
    assert!(builds.builds.is_empty(), "{:?}", builds.builds);

    // Bad query parameters and bodies on other routes are JSON 4xx too.
    for (method, path, request_body, status, field) in [
        (
            Method::GET,
            "/api/v1/builds?limit=abc",
            None,
            400,
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/v1/builds?limit=100000",
            None,
            400,
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/v1/builds?status=weird",
            None,
            400,
            Some("status"),
        ),
        (
            Method::GET,
            "/api/v1/builds/nope/events?lastEventId=-1",
            None,
            400,
            Some("lastEventId"),
        ),
        (Method::GET, "/api/v1/builds/nope", None, 404, None),
        (
            Method::GET,
            "/api/v1/builds?branch=%00",
            None,
            400,
            Some("url"),
        ),
        (
            Method::GET,
            "/api/v1/builds/%00/events",
            None,
            400,
            Some("url"),
        ),
        (
            Method::GET,
            "/api/v1/projects/web%00",
            None,
            400,
            Some("url"),
        ),
        (Method::GET, "/api/v1/nowhere", None, 404, None),
    ] {
        let (actual, response) = app.raw(method, path, token, request_body).await;
        assert_eq!(actual, status, "{path}: {response}");
        assert_eq!(
            response["error"]["field"].as_str(),
            field,
            "{path}: {response}"
        );
    }
    for (request_body, field) in [
        (json!({"slug": "Bad Slug", "name": "x"}), "slug"),
        (json!({"slug": "ok"}), "name"),
        (json!({"slug": 5, "name": "x"}), "slug"),
        (json!({"slug": "ok", "name": "a\u{0}b"}), "name"),
    ] {
        let (status, response) = app
            .raw(
                Method::POST,
                "/api/v1/projects",
                Some(ADMIN_TOKEN),
                body(request_body),
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(response["error"]["field"], field);
    }
    let (status, response) = app
        .raw(
            Method::POST,
            "/api/v1/projects",
            Some(ADMIN_TOKEN),
            body(json!({"slug": "web", "name": "again"})),
        )
        .await;
    assert_eq!(status, 409);
    assert_error(&response, "project_exists", Some("slug"));
    let (status, response) = app
        .raw(
            Method::POST,
            "/api/v1/projects/web/tokens",
            Some(ADMIN_TOKEN),
            body(json!({"name": "t", "scopes": ["admin"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&response, "invalid_field", Some("scopes[0]"));

    // A request head is read into one 8 KiB buffer: larger heads are refused by the HTTP
    // layer (431, no body); a head just under the limit and large bodies still work.
    let http = reqwest::Client::new();
    let refused = http
        .get(format!("{}/healthz", app.base_url))
        .header("x-pad", "p".repeat(16 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 431);
    let accepted = http
        .get(format!("{}/healthz", app.base_url))
        .header("x-pad", "p".repeat(7 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 200);
    let large: Vec<EventPayload> = (0..1000)
        .map(|i| EventPayload {
            message: Some(format!("{i}:{}", "m".repeat(800))),
            ..event("large-body", "heartbeat")
        })
        .collect();
    assert_eq!(web.send_events(&large).await.unwrap().events.len(), 1000);
    app.stop().await;
}

async fn reads_builds_events_and_status(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, _) = app.project_client("web", &["ingest", "read"]).await;
    for index in 0..3 {
        let run = format!("run-{index}");
        web.send_events(&[EventPayload {
            branch: Some(if index == 1 { "dev" } else { "main" }.into()),
            ..event(&run, "build_started")
        }])
        .await
        .unwrap();
        app.clock.advance_ms(1000);
    }
    web.send_events(&[EventPayload {
        stage: Some("Compile".into()),
        ..event("run-2", "stage_started")
    }])
    .await
    .unwrap();
    app.clock.advance_ms(2500);
    web.send_events(&[
        EventPayload {
            stage: Some("Compile".into()),
            ..event("run-2", "stage_completed")
        },
        EventPayload {
            stage: Some("Test".into()),
            progress: Some(60.0),
            ..event("run-2", "stage_started")
        },
    ])
    .await
    .unwrap();

    let page = web
        .list_builds(&kiln_client::BuildQuery {
            branch: Some("main".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.builds[0].run_id, "run-2");
    let next = web
        .list_builds(&kiln_client::BuildQuery {
            branch: Some("main".into()),
            limit: Some(1),
            before: page.next_before,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.builds[0].run_id, "run-0");

    let build = web.get_build("run-2").await.unwrap();
    assert_eq!(build.number, 3);
    assert_eq!(build.current_stage.as_deref(), Some("Test"));
    let stages = build.stages.unwrap();
    assert_eq!(stages[0].duration_ms, Some(2500));
    assert_eq!(stages[1].status, "running");

    let events = web.build_events("run-2", 0, Some(2)).await.unwrap();
    assert_eq!(events.events.len(), 2);
    assert!(events.has_more);
    assert_eq!(events.events[0]["event"], "build_started");
    assert_eq!(events.events[0]["seq"], 1);
    let rest = web
        .build_events("run-2", events.last_event_id, None)
        .await
        .unwrap();
    assert_eq!(
        rest.events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["stage_completed", "stage_started"]
    );
    let empty = web
        .build_events("run-2", rest.last_event_id, None)
        .await
        .unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.last_event_id, rest.last_event_id);

    let status = web.build_status("run-2").await.unwrap();
    assert_eq!(status.status, "running");
    assert_eq!(status.progress, Some(60.0));
    assert_eq!((status.stages_total, status.stages_completed), (2, 1));

    // Seed 000's project status is for project admins (here the instance admin).
    let denied = web.project_status(None, Some(90)).await.unwrap_err();
    assert_eq!(denied.status(), Some(403));
    let project = app
        .admin
        .project_status(Some("web"), Some(90))
        .await
        .unwrap();
    assert!(project.success && project.running);
    assert_eq!(project.active_run.unwrap().run_id, "run-2");
    app.clock.advance_ms(60_000);
    // Silent for 60 s: not active under a 30 s timeout, still under the default 90 s.
    assert!(
        !app.admin
            .project_status(Some("web"), Some(30))
            .await
            .unwrap()
            .running
    );
    assert!(
        app.admin
            .project_status(Some("web"), None)
            .await
            .unwrap()
            .running
    );
    app.stop().await;
}
