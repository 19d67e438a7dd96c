//! Live delivery over SSE against the real server: replay then live without gap or
//! duplicate under reconnects, two replicas on one database, limits, coalescing, slow
//! subscribers.

mod common;

use kiln_store::engine_test;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::TestApp;
use common::sse::SseStream;
use kiln_client::protocol::EventPayload;
use kiln_store::Engine;
use reqwest::Method;

engine_test!(a_reconnecting_subscriber_sees_exactly_the_stored_sequence);
engine_test!(events_ingested_on_one_replica_reach_subscribers_of_another);
engine_test!(build_streams_end_and_refuse_bad_requests);
engine_test!(coalescing_thins_progress_and_keeps_lifecycle);
engine_test!(a_slow_subscriber_is_dropped_without_slowing_ingest);
engine_test!(a_user_cannot_multiply_the_stream_limit_with_tokens);

const WAIT: Duration = Duration::from_secs(10);

fn event(run_id: &str, kind: &str) -> EventPayload {
    EventPayload {
        run_id: run_id.into(),
        event: kind.into(),
        ..EventPayload::default()
    }
}

/// A tiny deterministic generator for "random" moments.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

async fn a_reconnecting_subscriber_sees_exactly_the_stored_sequence(engine: Engine) {
    const WRITERS: usize = 20;
    const EVENTS_PER_WRITER: usize = 500;
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let url = format!("{}/api/v1/stream?project=web", app.base_url);
    let done = Arc::new(AtomicBool::new(false));

    let subscriber = {
        let url = url.clone();
        let token = token.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut received: Vec<i64> = Vec::new();
            let mut random = Lcg(42);
            let mut reconnects = 0;
            loop {
                // Project streams start "now" without a cursor; this one wants everything.
                let cursor = Some(received.last().copied().unwrap_or(0));
                let mut stream = SseStream::open(&url, &token, cursor)
                    .await
                    .expect("stream opens");
                // Disconnect after a random number of events, as a flaky network would.
                let quota = 1 + random.below(700);
                let mut taken = 0;
                while taken < quota {
                    match tokio::time::timeout(Duration::from_millis(500), stream.next(WAIT)).await
                    {
                        Ok(Some(event)) => {
                            received.push(event.id.expect("every event has an id"));
                            taken += 1;
                        }
                        Ok(None) => break,
                        Err(_) if done.load(Ordering::SeqCst) => return (received, reconnects),
                        Err(_) => {}
                    }
                }
                reconnects += 1;
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let web = web.clone();
        writers.push(tokio::spawn(async move {
            let run = format!("run-{writer}");
            for chunk in 0..EVENTS_PER_WRITER / 10 {
                let batch: Vec<EventPayload> = (0..10)
                    .map(|i| EventPayload {
                        event_id: Some(format!("{chunk}-{i}")),
                        ..event(&run, "heartbeat")
                    })
                    .collect();
                web.send_events(&batch).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Let the subscriber drain, then tell it to stop once it goes quiet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::SeqCst);
    let (received, reconnects) = subscriber.await.unwrap();

    let store = app.database.open().await;
    let project = kiln_store::ProjectStore::project_by_slug(&*store, "web")
        .await
        .unwrap()
        .unwrap();
    let stored: Vec<i64> =
        kiln_store::BuildStore::project_events_after(&*store, project.id, 0, 100_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
    assert_eq!(stored.len(), WRITERS * EVENTS_PER_WRITER);
    assert!(reconnects >= 5, "only {reconnects} reconnects");
    assert_eq!(
        received, stored,
        "the concatenated stream equals the stored sequence"
    );
    app.stop().await;
}

async fn events_ingested_on_one_replica_reach_subscribers_of_another(engine: Engine) {
    let replica_a = TestApp::spawn(engine).await;
    let replica_b = TestApp::spawn_on(replica_a.database.clone(), replica_a.clock.clone()).await;
    let (web_a, token) = replica_a.project_client("web", &["ingest", "read"]).await;
    let web_b = kiln_client::Client::new(&replica_b.base_url, Some(token.clone()));
    web_a
        .send_events(&[event("r", "build_started")])
        .await
        .unwrap();

    let mut on_b = SseStream::open(
        &format!("{}/api/v1/builds/r/stream", replica_b.base_url),
        &token,
        None,
    )
    .await
    .unwrap();
    let mut project_on_b = SseStream::open(
        &format!("{}/api/v1/stream", replica_b.base_url),
        &token,
        Some(0),
    )
    .await
    .unwrap();
    for index in 0..50 {
        // Alternate the ingesting replica: order must hold whichever took the write.
        let client = if index % 2 == 0 { &web_a } else { &web_b };
        client
            .send_events(&[EventPayload {
                progress: Some(index as f64),
                ..event("r", "build_progress")
            }])
            .await
            .unwrap();
    }
    web_a
        .send_events(&[event("r", "build_completed")])
        .await
        .unwrap();

    let mut ids = Vec::new();
    loop {
        let received = on_b
            .next(WAIT)
            .await
            .expect("stream stays open until the end");
        if received.event == "end" {
            break;
        }
        ids.push(received.id.unwrap());
    }
    assert_eq!(ids.len(), 52);
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free and ordered: {ids:?}"
    );
    let mut project_ids = Vec::new();
    while project_ids.len() < 52 {
        project_ids.push(project_on_b.next(WAIT).await.unwrap().id.unwrap());
    }
    assert_eq!(project_ids, ids);
    replica_b.stop().await;
    replica_a.stop().await;
}

async fn build_streams_end_and_refuse_bad_requests(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let (_, other_token) = app.project_client("other", &["read"]).await;
    web.send_events(&[event("r", "build_started"), event("r", "build_completed")])
        .await
        .unwrap();
    let url = format!("{}/api/v1/builds/r/stream", app.base_url);

    // A finished build: the history, then `end`, then the server closes.
    let mut stream = SseStream::open(&url, &token, None).await.unwrap();
    let kinds: Vec<String> = [
        stream.next(WAIT).await,
        stream.next(WAIT).await,
        stream.next(WAIT).await,
    ]
    .into_iter()
    .map(|e| e.unwrap().event)
    .collect();
    assert_eq!(kinds, ["build_started", "build_completed", "end"]);
    assert!(stream.next(WAIT).await.is_none(), "closed after end");
    // A client that already saw the end gets `end` at once.
    let mut caught_up = SseStream::open(&url, &token, Some(2)).await.unwrap();
    assert_eq!(caught_up.next(WAIT).await.unwrap().event, "end");

    for (url, token, last_event_id, status) in [
        (
            format!("{}/api/v1/builds/nope/stream", app.base_url),
            token.as_str(),
            None,
            404,
        ),
        (url.clone(), other_token.as_str(), None, 404),
        (url.clone(), "kiln_wrong", None, 401),
        (
            format!("{}/api/v1/builds/r/stream?coalesce=fast", app.base_url),
            token.as_str(),
            None,
            400,
        ),
    ] {
        let (actual, body) = SseStream::open(&url, token, last_event_id)
            .await
            .err()
            .expect("refused");
        assert_eq!(actual, status, "{url}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    let (status, body) = app
        .raw(
            Method::GET,
            "/api/v1/builds/r/stream?lastEventId=x",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("lastEventId"))
    );
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&token)
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // The per-token limit (20 in tests) refuses the 21st open stream with 429.
    web.send_events(&[event("long", "build_started")])
        .await
        .unwrap();
    let long_url = format!("{}/api/v1/builds/long/stream", app.base_url);
    let mut open = Vec::new();
    for _ in 0..20 {
        open.push(SseStream::open(&long_url, &token, None).await.unwrap());
    }
    let (status, body) = SseStream::open(&long_url, &token, None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_streams");
    drop(open);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        SseStream::open(&long_url, &token, None).await.is_ok(),
        "closing streams frees the places"
    );
    app.stop().await;
}

async fn coalescing_thins_progress_and_keeps_lifecycle(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    web.send_events(&[event("r", "build_started")])
        .await
        .unwrap();
    let mut stream = SseStream::open(
        &format!("{}/api/v1/builds/r/stream?coalesce=50ms", app.base_url),
        &token,
        None,
    )
    .await
    .unwrap();
    assert_eq!(stream.next(WAIT).await.unwrap().event, "build_started");
    // 1,000 progress events in about one second, a stage event after every 100.
    for batch in 0..20 {
        let mut events: Vec<EventPayload> = (0..50)
            .map(|i| EventPayload {
                progress: Some(((batch * 50 + i) / 10) as f64),
                ..event("r", "build_progress")
            })
            .collect();
        if batch % 2 == 1 {
            events.push(EventPayload {
                stage: Some(format!("S{batch}")),
                ..event("r", "stage_started")
            });
        }
        web.send_events(&events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    web.send_events(&[event("r", "build_completed")])
        .await
        .unwrap();
    let mut progress = 0;
    let mut lifecycle = Vec::new();
    let mut last_id = 0;
    loop {
        let received = stream.next(WAIT).await.unwrap();
        if received.event == "end" {
            break;
        }
        let id = received.id.unwrap();
        assert!(id > last_id, "ordered");
        last_id = id;
        if received.event == "build_progress" {
            progress += 1;
        } else {
            lifecycle.push(
                received.json()["stage"]
                    .as_str()
                    .unwrap_or(&received.event)
                    .to_owned(),
            );
        }
    }
    let expected: Vec<String> = (0..20)
        .filter(|b| b % 2 == 1)
        .map(|b| format!("S{b}"))
        .chain(["build_completed".to_owned()])
        .collect();
    assert_eq!(lifecycle, expected, "every lifecycle event, in order");
    // About 20 windows in a second, plus at most one released early per lifecycle event.
    assert!(progress <= 25 + 11, "{progress} progress events delivered");
    assert!(progress >= 5, "{progress} progress events delivered");
    app.stop().await;
}

async fn a_slow_subscriber_is_dropped_without_slowing_ingest(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    web.send_events(&[event("r", "build_started")])
        .await
        .unwrap();
    let url = format!("{}/api/v1/builds/r/stream", app.base_url);
    // Opened, then not read while 4,000 events (24 MB, more than loopback socket
    // buffers hold) arrive.
    let mut slow = SseStream::open(&url, &token, None).await.unwrap();
    let mut fast = SseStream::open(&url, &token, None).await.unwrap();
    let fast_reader = tokio::spawn(async move {
        let mut count = 0;
        while count < 4001 {
            let received = fast.next(WAIT).await.unwrap();
            assert_ne!(
                received.event, "dropped",
                "a reader that keeps up is never dropped"
            );
            count += 1;
        }
        count
    });
    for chunk in 0..40 {
        let batch: Vec<EventPayload> = (0..100)
            .map(|i| EventPayload {
                data: Some(serde_json::json!({"i": chunk * 100 + i, "pad": "x".repeat(6000)})),
                ..event("r", "log_line")
            })
            .collect();
        web.send_events(&batch).await.unwrap();
    }
    assert_eq!(fast_reader.await.unwrap(), 4001);
    // The slow connection has now been backed up past the room's buffer; it is dropped
    // once it has stayed so for the catch-up patience (2 s), not before.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut ids = Vec::new();
    let resume_from = loop {
        let received = slow
            .next(WAIT)
            .await
            .expect("the slow stream ends with a reason");
        if received.event == "dropped" {
            let resume = received.json()["lastEventId"].as_i64().unwrap();
            assert!(
                received.json()["reason"]
                    .as_str()
                    .unwrap()
                    .contains("behind")
            );
            break resume;
        }
        ids.push(received.id.unwrap());
    };
    assert!(slow.next(WAIT).await.is_none(), "closed after the reason");
    assert_eq!(ids.last().copied().unwrap_or(0), resume_from);
    // Resuming loses nothing.
    let mut resumed = SseStream::open(&url, &token, Some(resume_from))
        .await
        .unwrap();
    while ids.len() < 4001 {
        ids.push(resumed.next(WAIT).await.unwrap().id.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    app.stop().await;
}

engine_test!(revoking_a_token_ends_the_streams_it_opened);

async fn revoking_a_token_ends_the_streams_it_opened(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, _) = app.project_client("web", &["ingest"]).await;
    web.send_events(&[event("r", "build_started")])
        .await
        .unwrap();
    let reader = app
        .admin
        .create_token("web", "dashboard", &["read"])
        .await
        .unwrap();
    let (_, other) = app.project_client("web", &["read"]).await;
    let url = format!("{}/api/v1/builds/r/stream", app.base_url);
    let mut revoked_stream = SseStream::open(&url, &reader.token, None).await.unwrap();
    let mut kept_stream = SseStream::open(&url, &other, None).await.unwrap();
    assert_eq!(
        revoked_stream.next(WAIT).await.unwrap().event,
        "build_started"
    );
    assert_eq!(kept_stream.next(WAIT).await.unwrap().event, "build_started");

    app.admin.revoke_token("web", reader.info.id).await.unwrap();
    let notice = revoked_stream
        .next(WAIT)
        .await
        .expect("the stream says why it ends");
    assert_eq!(notice.event, "revoked");
    assert_eq!(notice.json()["lastEventId"], 1);
    assert!(revoked_stream.next(WAIT).await.is_none(), "then it ends");
    let (status, _) = SseStream::open(&url, &reader.token, None)
        .await
        .err()
        .expect("a revoked token opens no stream");
    assert_eq!(status, 401);

    // Streams of other tokens carry on.
    web.send_events(&[event("r", "heartbeat")]).await.unwrap();
    assert_eq!(kept_stream.next(WAIT).await.unwrap().event, "heartbeat");
    app.stop().await;
}

engine_test!(a_burst_larger_than_the_room_buffer_reaches_a_reader_that_keeps_up);

async fn a_burst_larger_than_the_room_buffer_reaches_a_reader_that_keeps_up(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, token) = app.project_client("web", &["ingest", "read"]).await;
    let mut stream = SseStream::open(&format!("{}/api/v1/stream", app.base_url), &token, None)
        .await
        .unwrap();
    // Four concurrent batches of 1,000 usually share one group commit: 4,000 events are
    // published at once, four times the room's buffer.
    let mut writers = Vec::new();
    for writer in 0..4 {
        let web = web.clone();
        writers.push(tokio::spawn(async move {
            let batch: Vec<EventPayload> = (0..1000)
                .map(|_| event(&format!("burst-{writer}"), "heartbeat"))
                .collect();
            web.send_events(&batch).await.unwrap();
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut ids = Vec::new();
    while ids.len() < 4000 {
        let received = stream.next(WAIT).await.expect("the stream stays open");
        assert_ne!(
            received.event, "dropped",
            "a reader that keeps up is not dropped"
        );
        ids.push(received.id.unwrap());
    }
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free and in order"
    );
    app.stop().await;
}

/// The stream limit (20 in tests) holds per user across their tokens, and a user may
/// hold at most 20 personal tokens.
async fn a_user_cannot_multiply_the_stream_limit_with_tokens(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (web, _) = app.project_client("web", &["ingest", "read"]).await;
    web.send_events(&[event("long", "build_started")])
        .await
        .unwrap();
    let (tokens, (status, refused)) = app.member_tokens("viewer@x.io", "web", "viewer", 20).await;
    assert_eq!(status, 409, "the 21st personal token: {refused}");
    assert_eq!(refused["error"]["code"], "too_many_tokens");

    let url = format!("{}/api/v1/builds/long/stream", app.base_url);
    let mut open = Vec::new();
    for token in &tokens[..2] {
        for _ in 0..10 {
            open.push(SseStream::open(&url, token, None).await.unwrap());
        }
    }
    let (status, body) = SseStream::open(&url, &tokens[2], None)
        .await
        .err()
        .expect("a third token is refused: the user holds 20 streams");
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_streams");
    drop(open);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(SseStream::open(&url, &tokens[2], None).await.is_ok());
    app.stop().await;
}
