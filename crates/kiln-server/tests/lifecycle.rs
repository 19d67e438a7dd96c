//! Server behaviour over time: stale builds, restarts, concurrency, graceful shutdown.

mod common;

use kiln_store::engine_test;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::TestApp;
use kiln_client::protocol::EventPayload;
use kiln_client::{BuildQuery, Client};
use kiln_store::Engine;

engine_test!(a_silent_build_is_marked_stale_by_an_event);
engine_test!(staleness_survives_a_restart_and_the_admin_token_is_idempotent);
engine_test!(concurrent_clients_with_retries_store_every_event_once);
engine_test!(graceful_shutdown_answers_in_flight_requests);

fn event(run_id: &str, kind: &str) -> EventPayload {
    EventPayload {
        run_id: run_id.into(),
        event: kind.into(),
        ..EventPayload::default()
    }
}

/// Polls until the build has the status, or fails after 5 s of real time.
async fn wait_for_status(client: &Client, run_id: &str, status: &str) {
    for _ in 0..500 {
        if client.get_build(run_id).await.unwrap().status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("build {run_id} never became {status}");
}

async fn a_silent_build_is_marked_stale_by_an_event(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, _) = app.project_client("web", &["ingest", "read"]).await;
    web.send_events(&[
        event("quiet", "build_started"),
        EventPayload {
            heartbeat_timeout: Some(30),
            ..event("short", "build_started")
        },
        event("alive", "build_started"),
    ])
    .await
    .unwrap();
    app.clock.advance_ms(31_000);
    wait_for_status(&web, "short", "stale").await;
    app.clock.advance_ms(40_000);
    web.send_events(&[event("alive", "heartbeat")])
        .await
        .unwrap();
    app.clock.advance_ms(20_000);
    wait_for_status(&web, "quiet", "stale").await;
    // The heartbeat kept "alive" running although 91 s passed since it started.
    assert_eq!(web.get_build("alive").await.unwrap().status, "running");

    let events = web.build_events("quiet", 0, None).await.unwrap().events;
    let last = events.last().unwrap();
    assert_eq!(last["event"], "build_failed");
    assert_eq!(last["data"]["reason"], "stale");
    assert_eq!(last["origin"], "kiln");
    // The reaper keeps scanning; the build is failed exactly once.
    app.passes_of(kiln_server::Periodic::Reaper, 2).await;
    assert_eq!(
        web.build_events("quiet", 0, None)
            .await
            .unwrap()
            .events
            .len(),
        2
    );
    // A heartbeat from the revived script is ignored, a completion refused.
    let ack = web
        .send_events(&[event("quiet", "heartbeat")])
        .await
        .unwrap();
    assert_eq!(ack.events[0].status, "ignored");
    assert_eq!(
        web.send_events(&[event("quiet", "build_completed")])
            .await
            .unwrap_err()
            .status(),
        Some(409)
    );
    app.stop().await;
}

async fn staleness_survives_a_restart_and_the_admin_token_is_idempotent(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    web.send_events(&[event("r", "build_started")])
        .await
        .unwrap();
    let database = app.database.clone();
    let clock = app.clock.clone();
    app.stop().await;

    // Down for two minutes; the build went silent meanwhile.
    clock.advance_ms(120_000);
    let restarted = TestApp::spawn_on(database.clone(), clock.clone()).await;
    let web = Client::new(&restarted.base_url, Some(token));
    wait_for_status(&web, "r", "stale").await;
    // The same KILN_ADMIN_TOKEN at every start: still one admin token, still valid.
    assert_eq!(
        restarted
            .admin
            .list_projects()
            .await
            .unwrap()
            .projects
            .len(),
        1
    );
    let store = database.open().await;
    let admins = kiln_store::ProjectStore::list_tokens(&*store, None)
        .await
        .unwrap();
    assert_eq!(admins.len(), 1);
    restarted.stop().await;
}

async fn concurrent_clients_with_retries_store_every_event_once(engine: Engine) {
    const CLIENTS: usize = 50;
    const EVENTS: usize = 200;
    const PER_REQUEST: usize = 10;
    let app = Arc::new(TestApp::spawn(engine).await);
    let (web, _) = app.project_client("web", &["ingest", "read"]).await;
    let mut tasks = Vec::new();
    for client_index in 0..CLIENTS {
        let web = web.clone();
        tasks.push(tokio::spawn(async move {
            let run = format!("run-{client_index}");
            let events: Vec<EventPayload> = (0..EVENTS)
                .map(|i| EventPayload {
                    event_id: Some(format!("{run}-{i}")),
                    progress: Some((i % 100) as f64),
                    ..event(&run, "build_progress")
                })
                .collect();
            let mut acknowledged = Vec::new();
            for (chunk_index, chunk) in events.chunks(PER_REQUEST).enumerate() {
                let ack = web.send_events(chunk).await.unwrap();
                // Every third request is sent again, as after a lost acknowledgement.
                if chunk_index % 3 == 0 {
                    let again = web.send_events(chunk).await.unwrap();
                    assert_eq!(
                        again.events.iter().map(|a| a.id).collect::<Vec<_>>(),
                        ack.events.iter().map(|a| a.id).collect::<Vec<_>>()
                    );
                }
                acknowledged.extend(ack.events);
            }
            acknowledged
        }));
    }
    let mut all_ids = Vec::new();
    for task in tasks {
        let acknowledged = task.await.unwrap();
        assert_eq!(acknowledged.len(), EVENTS);
        all_ids.extend(acknowledged.iter().map(|a| a.id.unwrap()));
    }
    all_ids.sort();
    all_ids.dedup();
    assert_eq!(
        all_ids.len(),
        CLIENTS * EVENTS,
        "every event has its own id"
    );

    let mut ids_by_build: HashMap<String, Vec<i64>> = HashMap::new();
    for client_index in 0..CLIENTS {
        let run = format!("run-{client_index}");
        let mut cursor = 0;
        let mut seqs = Vec::new();
        loop {
            let page = web.build_events(&run, cursor, Some(1000)).await.unwrap();
            if page.events.is_empty() {
                break;
            }
            for stored in &page.events {
                let id = stored["id"].as_i64().unwrap();
                assert!(id > cursor, "ids increase within a build");
                cursor = id;
                seqs.push(stored["seq"].as_i64().unwrap());
                ids_by_build.entry(run.clone()).or_default().push(id);
            }
        }
        assert_eq!(
            seqs,
            (1..=EVENTS as i64).collect::<Vec<_>>(),
            "seq is gapless for {run}"
        );
    }
    let listed = web
        .list_builds(&BuildQuery {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.builds.len(), CLIENTS);
    Arc::into_inner(app).expect("no other owners").stop().await;
}

async fn graceful_shutdown_answers_in_flight_requests(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, _) = app.project_client("web", &["ingest", "read"]).await;
    web.send_events(&[event("r", "build_started")])
        .await
        .unwrap();
    let mut requests = Vec::new();
    for index in 0..200 {
        let web = web.clone();
        requests.push(tokio::spawn(async move {
            web.send_events(&[EventPayload {
                event_id: Some(format!("e{index}")),
                ..event("r", "heartbeat")
            }])
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let database = app.database.clone();
    let clock = app.clock.clone();
    app.stop().await;
    // Every request that was answered 201 is durable; the others were refused cleanly
    // (connection refused after the listener closed), never answered and then lost.
    let mut acknowledged = 0;
    for request in requests {
        if let Ok(ack) = request.await.unwrap() {
            assert_eq!(ack.events[0].status, "stored");
            acknowledged += 1;
        }
    }
    let restarted = TestApp::spawn_on(database, clock).await;
    let events = restarted
        .admin
        .build_events("r", 0, Some(1000))
        .await
        .unwrap();
    assert_eq!(events.events.len(), acknowledged + 1);
    restarted.stop().await;
}
