//! Webhook delivery across failures and a `kill -9`, end to end with real processes: a
//! `kiln serve` process with short retry intervals (`--webhook-retry-schedule 1,4`),
//! endpoints made with `kiln webhook create`, and real receivers on 127.0.0.1 that fail
//! the first attempts (A), answer 410 (B), answer 429 with `Retry-After` (C), and are
//! down while Kiln is killed with SIGKILL and restarted on the same database (D). At the
//! end every event is delivered as scheduled, in order per endpoint, and none is answered
//! 2xx twice; every request's signatures are checked with the secrets the CLI printed.
//! On SQLite, and on PostgreSQL when `KILN_TEST_DATABASE_URL` names a server.

mod common;
mod webhook_receiver;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{ADMIN, Server, Workspace, output, project_token, stderr, stdout};
use kiln_client::Client;
use kiln_client::protocol::{
    EventPayload, WebhookDeliveryList, WebhookDto, WebhookList, WebhookStatusDto,
};
use kiln_store::Engine;
use kiln_store::test_support::{POSTGRES_URL_VAR, TestDatabase};
use webhook_receiver::{Received, Receiver, verify_signatures, wait_for};

/// `--webhook-retry-schedule`: the first retry after 1 s, the second (and later) after 4 s.
const SCHEDULE: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];
/// C's `Retry-After`: longer than the schedule's first retry (1 s + 10% jitter + the
/// sender's 1 s poll), so a retry that ignored it would come too early to pass.
const RETRY_AFTER: Duration = Duration::from_secs(3);
/// Kiln's jitter adds up to a tenth of the scheduled wait; its sender looks for due
/// retries every second. A retry later than that plus this slack (a loaded machine)
/// means the schedule was not followed.
const SLACK: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_secs(1);
/// Long enough for a delivery claimed by the killed server (its claim runs 45 s).
const WAIT: Duration = Duration::from_secs(120);

#[test]
fn webhooks_survive_failures_and_kill_9_on_sqlite() {
    deliveries_survive_failures_and_kill_9(None);
}

#[test]
#[cfg_attr(
    not(kiln_postgres_tests),
    ignore = "PostgreSQL skipped: set KILN_TEST_DATABASE_URL (bash .ci/run does)"
)]
fn webhooks_survive_failures_and_kill_9_on_postgres() {
    if std::env::var(POSTGRES_URL_VAR).is_err() {
        eprintln!("skipped: PostgreSQL ({POSTGRES_URL_VAR} is not set)");
        return;
    }
    let runtime = runtime();
    let database = runtime.block_on(TestDatabase::create(Engine::Postgres));
    deliveries_survive_failures_and_kill_9(Some(&database.url));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run(command: &mut Command) -> (bool, String, String) {
    let result = output(command);
    (result.status.success(), stdout(&result), stderr(&result))
}

/// Runs `kiln webhook ARGS --project web --json` and parses its answer.
fn webhook_json<T: serde::de::DeserializeOwned>(
    workspace: &Workspace,
    server: &Server,
    args: &[&str],
) -> T {
    let (ok, json, err) = run(workspace
        .kiln(&server.url, ADMIN)
        .arg("webhook")
        .args(args)
        .args(["--project", "web", "--json"]));
    assert!(ok, "kiln webhook {args:?}: {err}");
    serde_json::from_str(&json).unwrap_or_else(|error| panic!("{error}: {json}"))
}

fn status(workspace: &Workspace, server: &Server) -> WebhookStatusDto {
    webhook_json(workspace, server, &["status"])
}

/// (pending, delivered, failed) of one endpoint, as Kiln recorded them.
fn counts(status: &WebhookStatusDto, id: i64) -> (i64, i64, i64) {
    let endpoint = status
        .endpoints
        .iter()
        .find(|endpoint| endpoint.id == id)
        .unwrap_or_else(|| panic!("endpoint {id} in {status:?}"));
    (endpoint.pending, endpoint.delivered, endpoint.failed)
}

fn events(run_id: &str, types: &[&str]) -> Vec<EventPayload> {
    types
        .iter()
        .map(|event_type| EventPayload {
            run_id: run_id.into(),
            event: (*event_type).into(),
            event_id: Some(format!("{run_id}-{event_type}")),
            stage: event_type.starts_with("stage_").then(|| "test".into()),
            ..EventPayload::default()
        })
        .collect()
}

fn types(requests: &[Received]) -> Vec<&str> {
    requests.iter().map(Received::event_type).collect()
}

fn statuses(requests: &[Received]) -> Vec<u16> {
    requests.iter().map(|request| request.status).collect()
}

/// Each delivery (webhook-id) answered 2xx exactly once, in delivery order.
fn assert_each_delivered_once(path: &str, requests: &[Received]) {
    let mut successes: HashMap<&str, usize> = HashMap::new();
    for request in requests.iter().filter(|request| request.succeeded()) {
        *successes.entry(request.webhook_id()).or_default() += 1;
    }
    for (id, count) in &successes {
        assert_eq!(
            *count, 1,
            "{path}: delivery {id} was answered 2xx {count} times"
        );
    }
    // Delivery order is event order: the Kiln format carries the event's id.
    let ids: Vec<i64> = requests
        .iter()
        .filter(|request| request.succeeded())
        .map(|request| {
            assert!(
                request.webhook_id().starts_with("msg_"),
                "{}",
                request.webhook_id()
            );
            let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
            // Kiln's format: data.id; CDEvents: the CloudEvents id `kiln-event-{id}`.
            body["data"]["id"].as_i64().unwrap_or_else(|| {
                body["id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix("kiln-event-"))
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| panic!("no event id in {body}"))
            })
        })
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "{path}: deliveries out of order: {ids:?}"
    );
}

/// The wait between two attempts, as the receiver saw it, followed the schedule: not
/// before `base`, and not much after `base` plus its jitter and the sender's poll.
fn assert_waited(what: &str, earlier: &Received, later: &Received, base: Duration) {
    let gap = later.at - earlier.at;
    assert!(
        gap >= base,
        "{what}: retried after {gap:?}, before {base:?}"
    );
    let latest = base + base / 10 + POLL + SLACK;
    assert!(
        gap <= latest,
        "{what}: retried after {gap:?}, long after {base:?}"
    );
}

fn deliveries_survive_failures_and_kill_9(database_url: Option<&str>) {
    let workspace = Workspace::new();
    let mut flags = vec![
        "--webhooks-allow-private",
        "--webhook-retry-schedule",
        "1,4",
        // D is down for several retries; it must not run out of them meanwhile.
        "--webhook-max-retries",
        "20",
    ];
    if let Some(url) = database_url {
        flags.extend(["--database-url", url]);
    }
    let server = Server::start(&workspace.data(), 0, &flags);
    let receiver = Receiver::start();
    let mut down = Receiver::start();
    let ingest_token = project_token(&workspace, &server);

    // The endpoints, made with the CLI; each secret as it printed it.
    let endpoints = [
        ("/a", receiver.url("/a"), "build_*", "kiln"),
        ("/b", receiver.url("/b"), "", "kiln"),
        (
            "/c",
            receiver.url("/c"),
            "build_started,stage_*",
            "cdevents",
        ),
        ("/d", down.url("/d"), "", "kiln"),
    ];
    let mut secrets = HashMap::new();
    for (path, url, events, format) in &endpoints {
        let mut command = workspace.kiln(&server.url, ADMIN);
        command.args([
            "webhook",
            "create",
            "--project",
            "web",
            "--url",
            url,
            "--format",
            format,
        ]);
        if !events.is_empty() {
            command.args(["--events", events]);
        }
        let (ok, secret, err) = run(&mut command);
        assert!(ok, "{err}");
        secrets.insert(*path, secret.trim().to_owned());
    }
    let list: WebhookList = webhook_json(&workspace, &server, &["list"]);
    let id = |path: &str| -> i64 {
        list.webhooks
            .iter()
            .find(|webhook| webhook.url.ends_with(path))
            .unwrap()
            .id
    };
    receiver.script("/a", &[(500, None), (500, None)]);
    receiver.script("/b", &[(410, None)]);
    receiver.script("/c", &[(429, Some(RETRY_AFTER.as_secs()))]);
    down.stop();

    let runtime = runtime();
    let client = Client::new(&server.url, Some(ingest_token.clone()));
    runtime
        .block_on(client.send_events(&events(
            "r1",
            &[
                "build_started",
                "stage_started",
                "stage_completed",
                "build_completed",
            ],
        )))
        .unwrap();

    // A, B and C run their course, and Kiln has recorded every answer they gave (so no
    // 2xx is in flight when the server is killed); D has failed at least once.
    wait_for(
        "A, B and C to be answered and recorded, and D to have failed",
        WAIT,
        || {
            let status = status(&workspace, &server);
            let d_log: WebhookDeliveryList =
                webhook_json(&workspace, &server, &["deliveries", &id("/d").to_string()]);
            counts(&status, id("/a")) == (0, 2, 0)
                && counts(&status, id("/b")) == (3, 0, 1)
                && counts(&status, id("/c")) == (0, 3, 0)
                && d_log
                    .deliveries
                    .iter()
                    .any(|delivery| !delivery.attempt_log.is_empty())
        },
        || format!("{:?}", status(&workspace, &server)),
    );
    let b: WebhookDto = webhook_json(&workspace, &server, &["show", &id("/b").to_string()]);
    assert!(!b.active, "410 disables the endpoint: {b:?}");
    assert!(
        b.disabled_reason
            .as_deref()
            .unwrap_or_default()
            .contains("410"),
        "{b:?}"
    );

    // Events stored (answered 201) just before the kill: whether or not the consumer
    // queued them in time, the restarted server delivers them. They are custom events,
    // which only D (every event) wants.
    runtime
        .block_on(client.send_events(&events("r1", &["deploy_started", "deploy_finished"])))
        .unwrap();
    server.kill_hard();
    down.restart();
    let server = Server::start(&workspace.data(), 0, &flags);

    wait_for(
        "D to receive every event after the restart",
        WAIT,
        || {
            counts(&status(&workspace, &server), id("/d")) == (0, 6, 0)
                && down.successes("/d").len() >= 6
        },
        || {
            format!(
                "D received {:?}; Kiln: {:?}",
                types(&down.requests("/d")),
                status(&workspace, &server)
            )
        },
    );

    // A: build_started failed twice and was delivered on attempt 3 (the same delivery),
    // the retries waiting 1 s and then 4 s; then build_completed.
    let a = receiver.requests("/a");
    assert_eq!(statuses(&a), [500, 500, 200, 200], "{a:?}");
    assert_eq!(
        types(&a),
        [
            "build_started",
            "build_started",
            "build_started",
            "build_completed"
        ]
    );
    assert!(a[..3].iter().all(|r| r.webhook_id() == a[0].webhook_id()));
    assert_waited("A's first retry", &a[0], &a[1], SCHEDULE[0]);
    assert_waited("A's second retry", &a[1], &a[2], SCHEDULE[1]);
    let a_log: WebhookDeliveryList =
        webhook_json(&workspace, &server, &["deliveries", &id("/a").to_string()]);
    let started = a_log.deliveries.last().unwrap();
    assert_eq!(started.state, "delivered");
    assert_eq!(started.attempts, 3);
    let logged: Vec<Option<i64>> = started
        .attempt_log
        .iter()
        .map(|attempt| attempt.status_code)
        .collect();
    assert_eq!(logged, [Some(500), Some(500), Some(200)]);

    // B: one request, 410, and nothing more after it was disabled. Its other three
    // events of r1 wait, also across the restart, and so do the two custom events stored
    // while it was disabled (held for its re-activation, not dropped).
    let b = receiver.requests("/b");
    assert_eq!(statuses(&b), [410], "{b:?}");
    wait_for(
        "B to hold the events stored while it was disabled",
        WAIT,
        || counts(&status(&workspace, &server), id("/b")) == (5, 0, 1),
        || format!("{:?}", status(&workspace, &server)),
    );

    // C: the 429's Retry-After was honoured, then the stage events followed in order.
    let c = receiver.requests("/c");
    assert_eq!(statuses(&c), [429, 200, 200, 200], "{c:?}");
    assert_eq!(
        types(&c),
        [
            "build_started",
            "build_started",
            "stage_started",
            "stage_completed"
        ]
    );
    assert_eq!(c[0].webhook_id(), c[1].webhook_id());
    assert_waited("C's retry after 429", &c[0], &c[1], RETRY_AFTER);
    let cdevent: serde_json::Value = serde_json::from_str(&c[1].body).unwrap();
    assert_eq!(cdevent["type"], "dev.cdevents.pipelinerun.started.0.2.0");

    // D: nothing reached it before the restart; afterwards every event, in order, once.
    let d = down.requests("/d");
    assert_eq!(
        types(&down.successes("/d")),
        [
            "build_started",
            "stage_started",
            "stage_completed",
            "build_completed",
            "deploy_started",
            "deploy_finished"
        ],
        "{d:?}"
    );
    let d_log: WebhookDeliveryList =
        webhook_json(&workspace, &server, &["deliveries", &id("/d").to_string()]);
    let first = d_log.deliveries.last().unwrap();
    assert!(
        first.attempt_log.len() >= 2
            && first.attempt_log[0].status_code.is_none()
            && first.attempt_log[0].error.is_some(),
        "D's first delivery failed while it was down, then succeeded: {first:?}"
    );

    for (path, requests) in [("/a", &a), ("/b", &b), ("/c", &c), ("/d", &d)] {
        assert_each_delivered_once(path, requests);
        for request in requests.iter() {
            verify_signatures(&secrets[path], request, true);
        }
    }
    let totals = status(&workspace, &server);
    assert_eq!(
        (totals.pending, totals.delivered, totals.failed),
        (5, 2 + 3 + 6, 1),
        "only B's five events wait (held while it is disabled); only its first failed"
    );
}
