//! Outbound webhooks end to end: a real receiver on 127.0.0.1 (a minimal HTTP/1.1 server
//! in this file) that fails the first attempts, answers 410 for another endpoint and 429
//! with `Retry-After` for a third; the server's manual clock moves time on, so retries
//! follow the configured schedule exactly. Signatures are recomputed here independently.
//! A second test holds one receiver's answer for seconds and checks that another
//! endpoint's deliveries went out meanwhile (the sender does not wait for a batch).

mod common;

use kiln_store::engine_test;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{ADMIN_TOKEN, TestApp};
use hmac::{Hmac, Mac};
use kiln_core::Millis;
use kiln_server::clock::ManualClock;
use kiln_store::Engine;
use kiln_store::test_support::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

engine_test!(deliveries_retry_in_order_and_verify);
engine_test!(slow_endpoint_does_not_delay_others);
engine_test!(receiver_text_with_nul_is_logged_and_sending_goes_on);
engine_test!(events_while_disabled_are_held_for_reactivation);

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    /// When the request had been read, and when its answer was written.
    received_at: Instant,
    answered_at: Instant,
}

/// Answers scripted for one path: status and optional `Retry-After`, in order.
type Script = Vec<(u16, Option<&'static str>)>;

/// How the receiver answers, per path: the statuses of the first requests, then 200;
/// the first request to a path in `hold` is answered only after that long.
#[derive(Default)]
struct Receiver {
    received: Mutex<Vec<Received>>,
    script: Mutex<HashMap<String, Script>>,
    hold: Mutex<HashMap<String, Duration>>,
    /// The answer body per path (`answer` when absent).
    bodies: Mutex<HashMap<String, Vec<u8>>>,
}

impl Receiver {
    fn requests(&self, path: &str) -> Vec<Received> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }
}

async fn start_receiver(receiver: Arc<Receiver>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let read = socket.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let path = lines
                    .next()
                    .and_then(|line| line.split(' ').nth(1))
                    .unwrap_or_default()
                    .to_owned();
                let headers: HashMap<String, String> = lines
                    .filter_map(|line| line.split_once(':'))
                    .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .get("content-length")
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0);
                while buffer.len() < head_end + length {
                    let read = socket.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                }
                let body = String::from_utf8_lossy(&buffer[head_end..]).into_owned();
                let received_at = Instant::now();
                let hold = receiver.hold.lock().unwrap().remove(&path);
                if let Some(hold) = hold {
                    tokio::time::sleep(hold).await;
                }
                let (status, retry_after) = {
                    let mut script = receiver.script.lock().unwrap();
                    match script.get_mut(&path) {
                        Some(queue) if !queue.is_empty() => queue.remove(0),
                        _ => (200, None),
                    }
                };
                let received_path = path.clone();
                receiver.received.lock().unwrap().push(Received {
                    path,
                    headers,
                    body,
                    received_at,
                    answered_at: Instant::now(),
                });
                let extra = retry_after
                    .map(|seconds| format!("Retry-After: {seconds}\r\n"))
                    .unwrap_or_default();
                let answer_body = receiver
                    .bodies
                    .lock()
                    .unwrap()
                    .get(&received_path)
                    .cloned()
                    .unwrap_or_else(|| b"answer".to_vec());
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    answer_body.len()
                )
                .into_bytes();
                answer.extend_from_slice(&answer_body);
                let _ = socket.write_all(&answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    base
}

async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    app.raw(
        method,
        path,
        Some(ADMIN_TOKEN),
        body.map(|body| serde_json::to_vec(&body).unwrap()),
    )
    .await
}

/// Waits until `condition` holds, polling (the sender runs on its own task).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..400 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the store has recorded `count` attempts to the endpoint: its sender has
/// finished them (not just sent the requests), so moving the manual clock now cannot
/// overtake an attempt still in flight (whose claim would then look expired).
async fn attempts_recorded(app: &TestApp, endpoint_id: i64, count: usize) {
    let path = format!("/api/v1/projects/web/webhooks/{endpoint_id}/deliveries");
    let mut recorded = 0;
    for _ in 0..400 {
        let (_, body) = call(app, Method::GET, &path, None).await;
        recorded = body["deliveries"]
            .as_array()
            .map(|deliveries| {
                deliveries
                    .iter()
                    .map(|d| d["attemptLog"].as_array().map_or(0, Vec::len))
                    .sum::<usize>()
            })
            .unwrap_or(0);
        if recorded == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("endpoint {endpoint_id}: {recorded} attempts recorded, expected {count}");
}

/// Checks the Standard Webhooks signature made with `secret` and, when it is the
/// endpoint's current secret, the seed's `X-Webhook-Signature`.
fn verify(secret: &str, request: &Received, current: bool) {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = &request.headers["webhook-id"];
    let timestamp = &request.headers["webhook-timestamp"];
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", request.body).as_bytes());
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    let presented: Vec<&str> = request.headers["webhook-signature"].split(' ').collect();
    assert!(
        presented.contains(&expected.as_str()),
        "{presented:?} lacks {expected}"
    );
    if !current {
        return;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(request.body.as_bytes());
    assert_eq!(
        request.headers["x-webhook-signature"],
        hex::encode(mac.finalize().into_bytes())
    );
}

async fn deliveries_retry_in_order_and_verify(engine: Engine) {
    let database = Arc::new(TestDatabase::create(engine).await);
    let clock = ManualClock::new(Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock.clone(), |config| {
        config.webhooks_allow_private = true;
        config.webhooks.poll_interval = Duration::from_millis(20);
    })
    .await;
    let receiver = Arc::new(Receiver::default());
    let base = start_receiver(receiver.clone()).await;
    {
        let mut script = receiver.script.lock().unwrap();
        script.insert("/flaky".into(), vec![(500, None), (500, None)]);
        script.insert("/gone".into(), vec![(410, None)]);
        script.insert("/limited".into(), vec![(429, Some("1"))]);
    }
    let (_, ingest) = app.project_client("web", &["ingest"]).await;

    let mut secrets = HashMap::new();
    for (path, events, format) in [
        ("/flaky", json!(["build_*"]), "kiln"),
        ("/gone", json!([]), "kiln"),
        ("/limited", json!(["build_started", "stage_*"]), "cdevents"),
    ] {
        let (status, created) = call(
            &app,
            Method::POST,
            "/api/v1/projects/web/webhooks",
            Some(json!({"url": format!("{base}{path}"), "events": events, "format": format})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"));
        secrets.insert(path, (created["id"].as_i64().unwrap(), secret));
    }
    // The list never shows secrets.
    let (_, listed) = call(&app, Method::GET, "/api/v1/projects/web/webhooks", None).await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 3);
    assert!(listed["webhooks"][0].get("secret").is_none());

    let (status, body) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(&ingest),
            Some(
                serde_json::to_vec(&json!([
                    {"runId": "r1", "event": "build_started", "eventId": "a"},
                    {"runId": "r1", "event": "stage_started", "stage": "test", "eventId": "b"},
                    {"runId": "r1", "event": "heartbeat"},
                    {"runId": "r1", "event": "build_completed", "eventId": "c"},
                ]))
                .unwrap(),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // 410: one request, the endpoint disabled, nothing more sent to it.
    eventually("the 410", || receiver.requests("/gone").len() == 1).await;
    let gone_id = secrets["/gone"].0;
    for _ in 0..100 {
        let (_, endpoint) = call(
            &app,
            Method::GET,
            &format!("/api/v1/projects/web/webhooks/{gone_id}"),
            None,
        )
        .await;
        if endpoint["active"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, endpoint) = call(
        &app,
        Method::GET,
        &format!("/api/v1/projects/web/webhooks/{gone_id}"),
        None,
    )
    .await;
    assert_eq!(endpoint["active"], false, "{endpoint}");
    assert!(endpoint["disabledReason"].is_string());

    // 429 with Retry-After: 1 — retried once a second has passed, not before.
    eventually("the 429", || receiver.requests("/limited").len() == 1).await;
    eventually("the first 500", || receiver.requests("/flaky").len() == 1).await;
    attempts_recorded(&app, secrets["/limited"].0, 1).await;
    attempts_recorded(&app, secrets["/flaky"].0, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.requests("/limited").len(), 1);
    clock.advance_ms(1_000);
    eventually("the retried 429", || {
        receiver.requests("/limited").len() == 3
    })
    .await;
    attempts_recorded(&app, secrets["/limited"].0, 3).await;
    // The first retry of /flaky is due after 1 minute (+ at most 10% jitter).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.requests("/flaky").len(), 1);
    clock.advance_ms(58_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receiver.requests("/flaky").len(),
        1,
        "retried before 1 minute"
    );
    clock.advance_ms(7_001);
    eventually("the second attempt", || {
        receiver.requests("/flaky").len() == 2
    })
    .await;
    attempts_recorded(&app, secrets["/flaky"].0, 2).await;
    // The second retry waits 2 minutes.
    clock.advance_ms(119_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receiver.requests("/flaky").len(),
        2,
        "retried before 2 minutes"
    );
    clock.advance_ms(13_001);
    eventually("every /flaky event", || {
        receiver.requests("/flaky").len() == 4
    })
    .await;

    // /flaky: build_started three times (same webhook-id), then build_completed; in order,
    // each signed, stage events and heartbeats filtered out.
    let flaky = receiver.requests("/flaky");
    let types: Vec<String> = flaky
        .iter()
        .map(|request| {
            serde_json::from_str::<Value>(&request.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        [
            "build_started",
            "build_started",
            "build_started",
            "build_completed"
        ]
    );
    assert_eq!(
        flaky[0].headers["webhook-id"],
        flaky[2].headers["webhook-id"]
    );
    assert_ne!(
        flaky[0].headers["webhook-id"],
        flaky[3].headers["webhook-id"]
    );
    let first: Value = serde_json::from_str(&flaky[0].body).unwrap();
    assert_eq!(first["buildId"], "r1");
    assert_eq!(first["data"]["event"], "build_started");
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    for request in &flaky {
        verify(&secrets["/flaky"].1, request, true);
    }
    let timestamps: Vec<i64> = flaky
        .iter()
        .map(|request| request.headers["webhook-timestamp"].parse().unwrap())
        .collect();
    assert!(
        (60..=66).contains(&(timestamps[1] - timestamps[0])),
        "{timestamps:?}"
    );
    assert!(
        (120..=132).contains(&(timestamps[2] - timestamps[1])),
        "{timestamps:?}"
    );

    // /limited: CloudEvents with CDEvents types, build_started then the stage.
    let limited = receiver.requests("/limited");
    let cdevent: Value = serde_json::from_str(&limited[1].body).unwrap();
    assert_eq!(cdevent["specversion"], "1.0");
    assert_eq!(cdevent["type"], "dev.cdevents.pipelinerun.started.0.2.0");
    assert_eq!(cdevent["data"]["subject"]["id"], "r1");
    let stage: Value = serde_json::from_str(&limited[2].body).unwrap();
    assert_eq!(stage["type"], "dev.cdevents.taskrun.started.0.2.0");
    assert_eq!(stage["data"]["subject"]["content"]["taskName"], "test");
    for request in &limited {
        verify(&secrets["/limited"].1, request, true);
    }

    // The log and the status.
    let flaky_id = secrets["/flaky"].0;
    let (_, log) = call(
        &app,
        Method::GET,
        &format!("/api/v1/projects/web/webhooks/{flaky_id}/deliveries"),
        None,
    )
    .await;
    let deliveries = log["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    let (_, newest) = call(
        &app,
        Method::GET,
        &format!("/api/v1/projects/web/webhooks/{flaky_id}/deliveries?limit=1"),
        None,
    )
    .await;
    assert_eq!(newest["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(newest["deliveries"][0]["id"], deliveries[0]["id"]);
    let (status, refused) = call(
        &app,
        Method::GET,
        &format!("/api/v1/projects/web/webhooks/{flaky_id}/deliveries?limit=0"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    common::assert_error(&refused, "invalid_field", Some("limit"));
    let started = &deliveries[1];
    assert_eq!(started["state"], "delivered");
    assert_eq!(started["attemptLog"].as_array().unwrap().len(), 3);
    assert_eq!(started["attemptLog"][0]["statusCode"], 500);
    assert_eq!(started["attemptLog"][0]["responseExcerpt"], "answer");
    assert!(started["attemptLog"][0]["requestHeaders"]["webhook-signature"].is_string());
    let (status, summary) = call(
        &app,
        Method::GET,
        "/api/v1/webhooks/status?project=web",
        None,
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    // /gone's other three events wait for it to be reactivated.
    assert_eq!(summary["pending"], 3, "{summary}");
    assert_eq!(summary["delivered"], 4, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    // Every event has been looked at by the consumer; the figure is for instance admins.
    assert_eq!(summary["unqueuedEvents"], 0, "{summary}");
    let (_, reader) = app.project_client("web", &["read"]).await;
    let (status, read) = app
        .raw(
            Method::GET,
            "/api/v1/webhooks/status?project=web",
            Some(reader.as_str()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["pending"], 3, "{read}");
    assert!(read.get("unqueuedEvents").is_none(), "{read}");

    // Rotation: both secrets sign during the overlap; a test event and a redelivery go out.
    let (status, rotated) = call(
        &app,
        Method::POST,
        &format!("/api/v1/projects/web/webhooks/{flaky_id}/rotate-secret"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/projects/web/webhooks/{flaky_id}/test"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    eventually("the test event", || receiver.requests("/flaky").len() == 5).await;
    let test = &receiver.requests("/flaky")[4];
    assert_eq!(test.headers["webhook-signature"].split(' ').count(), 2);
    verify(&new_secret, test, true);
    verify(&secrets["/flaky"].1, test, false);
    let delivery_id = started["id"].as_i64().unwrap();
    let (status, redelivered) = call(
        &app,
        Method::POST,
        &format!("/api/v1/projects/web/webhooks/{flaky_id}/deliveries/{delivery_id}/redeliver"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{redelivered}");
    eventually("the redelivery", || receiver.requests("/flaky").len() == 6).await;
    assert_eq!(
        receiver.requests("/flaky")[5].headers["webhook-id"],
        flaky[0].headers["webhook-id"]
    );
    // The id is globally unique (not the row number another instance also has), and the
    // delivery log names it.
    assert!(flaky[0].headers["webhook-id"].starts_with("msg_"));
    assert_eq!(
        started["webhookId"],
        flaky[0].headers["webhook-id"].as_str()
    );

    // A private target is refused unless the instance allows it (checked here through
    // the URL parser: this instance allows them).
    let (status, refused) = call(
        &app,
        Method::POST,
        "/api/v1/projects/web/webhooks",
        Some(json!({"url": "ftp://example.com/x"})),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "url");
    app.stop().await;
}

/// Types of the kiln-format bodies received on `path`, in order.
fn received_types(receiver: &Receiver, path: &str) -> Vec<String> {
    receiver
        .requests(path)
        .iter()
        .map(|request| {
            serde_json::from_str::<Value>(&request.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A server whose sender polls every 20 ms and may call loopback, and a receiver for it.
async fn spawn_with_receiver(engine: Engine) -> (TestApp, Arc<Receiver>, String) {
    let database = Arc::new(TestDatabase::create(engine).await);
    let clock = ManualClock::new(Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.webhooks_allow_private = true;
        config.webhooks.poll_interval = Duration::from_millis(20);
    })
    .await;
    let receiver = Arc::new(Receiver::default());
    let base = start_receiver(receiver.clone()).await;
    (app, receiver, base)
}

/// Creates one endpoint of project `web` per path of the receiver at `base`; their ids.
async fn create_endpoints(app: &TestApp, base: &str, paths: &[&str], events: Value) -> Vec<i64> {
    let mut endpoint_ids = Vec::new();
    for path in paths {
        let (status, created) = call(
            app,
            Method::POST,
            "/api/v1/projects/web/webhooks",
            Some(json!({"url": format!("{base}{path}"), "events": events})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        endpoint_ids.push(created["id"].as_i64().unwrap());
    }
    endpoint_ids
}

async fn slow_endpoint_does_not_delay_others(engine: Engine) {
    const HOLD: Duration = Duration::from_secs(4);
    // Polling (every 20 ms) would not hide a batch-at-a-time sender: it is the wait for
    // the batch, not the poll, that would hold the fast endpoint back.
    let (app, receiver, base) = spawn_with_receiver(engine).await;
    receiver.hold.lock().unwrap().insert("/slow".into(), HOLD);
    let (_, ingest) = app.project_client("web", &["ingest"]).await;
    create_endpoints(
        &app,
        &base,
        &["/slow", "/fast"],
        json!(["build_*", "stage_*"]),
    )
    .await;
    let (status, body) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(&ingest),
            Some(
                serde_json::to_vec(&json!([
                    {"runId": "r1", "event": "build_started", "eventId": "a"},
                    {"runId": "r1", "event": "stage_started", "stage": "test", "eventId": "b"},
                    {"runId": "r1", "event": "stage_completed", "stage": "test", "eventId": "c"},
                    {"runId": "r1", "event": "build_completed", "eventId": "d"},
                ]))
                .unwrap(),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let expected = [
        "build_started",
        "stage_started",
        "stage_completed",
        "build_completed",
    ];
    // Both endpoints get every event, each in order (the wait covers the held answer).
    eventually("every delivery", || {
        receiver.requests("/fast").len() == 4 && receiver.requests("/slow").len() == 4
    })
    .await;
    assert_eq!(received_types(&receiver, "/fast"), expected);
    assert_eq!(received_types(&receiver, "/slow"), expected);

    // The receivers' own clocks: the fast endpoint had all four answered before the
    // slow one answered its first request, which it held for HOLD.
    let slow = receiver.requests("/slow");
    let fast = receiver.requests("/fast");
    assert!(
        slow[0].answered_at - slow[0].received_at >= HOLD,
        "the slow receiver held its answer"
    );
    for (index, request) in fast.iter().enumerate() {
        assert!(
            request.answered_at < slow[0].answered_at,
            "fast delivery {index} waited for the slow endpoint: answered {:?} after the slow one's first request arrived, which was answered after {:?}",
            request.answered_at - slow[0].received_at,
            slow[0].answered_at - slow[0].received_at,
        );
    }
    // The slow endpoint itself stayed one at a time, in order: its second delivery
    // arrived only after its first was answered.
    assert!(slow[1].received_at >= slow[0].answered_at);
    app.stop().await;
}

/// A receiver whose answer holds NUL bytes (which PostgreSQL's text cannot store): the
/// attempt is logged with the replacement character, the delivery counts as delivered,
/// and the sender goes on with the next events, this endpoint's and another's. (Before,
/// the batch of results was refused again and again, and every endpoint stood still.)
async fn receiver_text_with_nul_is_logged_and_sending_goes_on(engine: Engine) {
    let (app, receiver, base) = spawn_with_receiver(engine).await;
    receiver
        .bodies
        .lock()
        .unwrap()
        .insert("/nul".into(), b"ok\0\0done".to_vec());
    let (_, ingest) = app.project_client("web", &["ingest"]).await;
    let endpoint_ids = create_endpoints(&app, &base, &["/nul", "/plain"], json!(["build_*"])).await;
    for (run, event) in [("n1", "build_started"), ("n1", "build_completed")] {
        let (status, body) = app
            .raw(
                Method::POST,
                "/api/v1/events",
                Some(&ingest),
                Some(serde_json::to_vec(&json!({"runId": run, "event": event})).unwrap()),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    eventually("both events at both endpoints", || {
        receiver.requests("/nul").len() == 2 && receiver.requests("/plain").len() == 2
    })
    .await;
    attempts_recorded(&app, endpoint_ids[0], 2).await;
    attempts_recorded(&app, endpoint_ids[1], 2).await;
    let path = format!(
        "/api/v1/projects/web/webhooks/{}/deliveries",
        endpoint_ids[0]
    );
    let (status, log) = call(&app, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{log}");
    for delivery in log["deliveries"].as_array().unwrap() {
        assert_eq!(delivery["state"], "delivered", "{delivery}");
        let attempt = &delivery["attemptLog"][0];
        assert_eq!(attempt["statusCode"], 200, "{attempt}");
        assert_eq!(
            attempt["responseExcerpt"], "ok\u{FFFD}\u{FFFD}done",
            "{attempt}"
        );
    }
    // Each endpoint got its events once, in order.
    assert_eq!(
        received_types(&receiver, "/nul"),
        ["build_started", "build_completed"]
    );
    assert_eq!(
        received_types(&receiver, "/plain"),
        ["build_started", "build_completed"]
    );
    app.stop().await;
}

/// Polls `GET path` until `done` holds for the answer (10 s at most); the last answer.
async fn poll_json(app: &TestApp, path: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = call(app, Method::GET, path, None).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts `build_started` for each run of `runs`.
async fn start_builds(app: &TestApp, ingest: &str, runs: &[&str]) {
    let events: Vec<Value> = runs
        .iter()
        .map(|run| json!({"runId": run, "event": "build_started", "eventId": "s"}))
        .collect();
    let (status, body) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(ingest),
            Some(serde_json::to_vec(&events).unwrap()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Issue 21, point 1: events sent while an endpoint is disabled (by a 410) are held and go
/// out, in order, once it is re-activated; past the cap (3 here) they are counted in
/// `droppedWhileDisabled`, not lost silently; `discardHeld` lets the user drop them at
/// re-activation instead (failed in the log, redeliverable).
async fn events_while_disabled_are_held_for_reactivation(engine: Engine) {
    let database = Arc::new(TestDatabase::create(engine).await);
    let clock = ManualClock::new(Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.webhooks_allow_private = true;
        config.webhooks.poll_interval = Duration::from_millis(20);
        config.webhooks.held_while_disabled = 3;
    })
    .await;
    let receiver = Arc::new(Receiver::default());
    let base = start_receiver(receiver.clone()).await;
    receiver
        .script
        .lock()
        .unwrap()
        .insert("/gone".into(), vec![(410, None)]);
    let (_, ingest) = app.project_client("web", &["ingest"]).await;
    let id = create_endpoints(&app, &base, &["/gone"], json!(["build_started"])).await[0];
    let endpoint_path = format!("/api/v1/projects/web/webhooks/{id}");
    let status_path = "/api/v1/webhooks/status?project=web";

    start_builds(&app, &ingest, &["run-a"]).await;
    let endpoint = poll_json(&app, &endpoint_path, |endpoint| endpoint["active"] == false).await;
    assert_eq!(endpoint["active"], false, "{endpoint}");
    assert_eq!(receiver.requests("/gone").len(), 1);

    // Four events while disabled: three held, one past the cap counted.
    start_builds(&app, &ingest, &["run-b", "run-c", "run-d", "run-e"]).await;
    let status = poll_json(&app, status_path, |status| {
        status["endpoints"][0]["droppedWhileDisabled"] == 1
    })
    .await;
    assert_eq!(
        status["endpoints"][0]["droppedWhileDisabled"], 1,
        "{status}"
    );
    assert_eq!(status["endpoints"][0]["pending"], 3, "{status}");
    let (_, endpoint) = call(&app, Method::GET, &endpoint_path, None).await;
    assert_eq!(endpoint["droppedWhileDisabled"], 1, "{endpoint}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.requests("/gone").len(), 1, "sent while disabled");

    // discardHeld needs a re-activation.
    let (status, body) = call(
        &app,
        Method::PATCH,
        &endpoint_path,
        Some(json!({"discardHeld": true})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("discardHeld")),
        "{body}"
    );

    // Re-activated: the held ones go out, in order.
    let (status, body) = call(
        &app,
        Method::PATCH,
        &endpoint_path,
        Some(json!({"active": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually("the held deliveries", || {
        receiver.requests("/gone").len() == 4
    })
    .await;
    let runs: Vec<String> = receiver
        .requests("/gone")
        .iter()
        .map(|request| {
            serde_json::from_str::<Value>(&request.body).unwrap()["buildId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(runs, ["run-a", "run-b", "run-c", "run-d"]);

    // Disabled by hand, two more events, re-activated discarding them.
    let (status, _) = call(
        &app,
        Method::PATCH,
        &endpoint_path,
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(status, 200);
    start_builds(&app, &ingest, &["run-f", "run-g"]).await;
    let status = poll_json(&app, status_path, |status| {
        status["endpoints"][0]["pending"] == 2
    })
    .await;
    assert_eq!(status["endpoints"][0]["pending"], 2, "{status}");
    let (status, body) = call(
        &app,
        Method::PATCH,
        &endpoint_path,
        Some(json!({"active": true, "discardHeld": true})),
    )
    .await;
    assert_eq!(
        (status, body["active"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.requests("/gone").len(),
        4,
        "discarded ones were sent"
    );
    let (_, log) = call(
        &app,
        Method::GET,
        &format!("{endpoint_path}/deliveries"),
        None,
    )
    .await;
    let discarded: Vec<&Value> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|delivery| delivery["state"] == "failed" && delivery["attempts"] == 0)
        .collect();
    assert_eq!(discarded.len(), 2, "{log}");
    for delivery in discarded {
        assert_eq!(
            delivery["lastError"],
            "discarded when the endpoint was re-activated"
        );
    }
}
