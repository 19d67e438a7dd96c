//! `kiln webhook` end to end: a real `kiln serve` process, the real `kiln` binary and a
//! real receiver on 127.0.0.1. Every subcommand runs against the server; what the
//! receiver gets is checked with the secrets the CLI printed.

mod common;
mod webhook_receiver;

use std::process::Command;
use std::time::Duration;

use common::{ADMIN, Server, Workspace, output, project_token, stderr, stdout};
use kiln_client::protocol::{WebhookDeliveryList, WebhookDto, WebhookList, WebhookStatusDto};
use webhook_receiver::{Receiver, verify_signatures, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `kiln` and returns (success, stdout, stderr).
fn run(command: &mut Command) -> (bool, String, String) {
    let result = output(command);
    (result.status.success(), stdout(&result), stderr(&result))
}

#[test]
fn webhook_commands_manage_endpoints_and_deliveries() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &["--webhooks-allow-private"]);
    let receiver = Receiver::start();
    // Creates project web (through the CLI) and a token that may ingest and read.
    let ingest_token = project_token(&workspace, &server);
    let admin = |args: &[&str]| run(workspace.kiln(&server.url, ADMIN).args(args));
    let web = |args: &[&str]| {
        let mut command = workspace.kiln(&server.url, ADMIN);
        command
            .args(["webhook"])
            .args(args)
            .args(["--project", "web"]);
        run(&mut command)
    };

    // create: the secret alone on stdout, once; the summary on stderr.
    let hook_url = receiver.url("/hook");
    let (ok, secret, err) = web(&[
        "create",
        "--url",
        &hook_url,
        "--events",
        "build_*,deploy_started",
    ]);
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(
        err.contains("created webhook") && err.contains("shown only now"),
        "{err}"
    );
    // KILN_PROJECT picks the project when --project is not given.
    let (ok, other_secret, err) = run(workspace
        .kiln(&server.url, ADMIN)
        .env("KILN_PROJECT", "web")
        .args([
            "webhook",
            "create",
            "--url",
            &receiver.url("/other"),
            "--format",
            "cdevents",
            "--inactive",
        ]));
    assert!(ok, "{err}");
    assert!(other_secret.trim().starts_with("whsec_"));

    // list: both, never a secret; --json is the API's list.
    let (ok, listed, err) = web(&["list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].contains("\tactive\tkiln\tbuild_*,deploy_started\t")
            && lines[0].ends_with("/hook"),
        "{listed}"
    );
    assert!(
        lines[1].contains("\tinactive\tcdevents\tevery event\t"),
        "{listed}"
    );
    assert!(!listed.contains(&secret) && !listed.contains("whsec_"));
    let (ok, json, err) = web(&["list", "--json"]);
    assert!(ok, "{err}");
    let list: WebhookList = serde_json::from_str(&json).unwrap();
    let hook = list.webhooks[0].id;
    let other = list.webhooks[1].id;
    assert_eq!(list.webhooks[0].url, hook_url);
    assert!(secret.starts_with(&list.webhooks[0].secret_prefix));
    let hook_id = hook.to_string();
    let other_id = other.to_string();

    // show, and errors that say what to do next.
    let (ok, shown, err) = web(&["show", &hook_id]);
    assert!(ok, "{err}");
    assert!(shown.contains(&format!("url: {hook_url}")), "{shown}");
    assert!(shown.contains("events: build_*,deploy_started"), "{shown}");
    let (ok, _, err) = web(&["show", "9999"]);
    assert!(!ok && err.contains("not found"), "{err}");
    assert!(
        err.contains("kiln webhook list --project web"),
        "the error names the next step: {err}"
    );
    let (ok, _, err) = web(&["update", &hook_id]);
    assert!(!ok && err.contains("nothing to change"), "{err}");
    let (ok, _, err) = web(&["create", "--url", "ftp://example.com/hook"]);
    assert!(!ok && err.contains("(check --url)"), "{err}");
    let (ok, _, err) = web(&["create", "--url", &hook_url, "--format", "xml"]);
    assert!(!ok && err.contains("cdevents"), "{err}");
    // A token without the project admin role may not manage webhooks.
    let (ok, _, err) = run(workspace.kiln(&server.url, &ingest_token).args([
        "webhook",
        "list",
        "--project",
        "web",
    ]));
    assert!(!ok && err.contains("403"), "{err}");

    // update: activate the second endpoint for every event.
    let (ok, updated, err) = web(&["update", &other_id, "--active", "true", "--events", "*"]);
    assert!(ok, "{err}");
    assert!(updated.contains("\tactive\tcdevents\t*\t"), "{updated}");
    let (ok, json, err) = web(&["show", &other_id, "--json"]);
    assert!(ok, "{err}");
    let shown: WebhookDto = serde_json::from_str(&json).unwrap();
    assert!(shown.active);
    assert_eq!(shown.events, ["*"]);

    // An event reaches the receiver signed with the secret `create` printed.
    let (ok, _, err) = run(workspace.kiln(&server.url, &ingest_token).args([
        "emit",
        "build_started",
        "--run-id",
        "r1",
    ]));
    assert!(ok, "{err}");
    wait_for(
        "build_started at /hook",
        WAIT,
        || receiver.successes("/hook").len() == 1,
        || format!("{:?}", receiver.requests("/hook")),
    );
    let delivered = &receiver.requests("/hook")[0];
    assert_eq!(delivered.event_type(), "build_started");
    verify_signatures(&secret, delivered, true);
    wait_for(
        "build_started at /other",
        WAIT,
        || receiver.successes("/other").len() == 1,
        || format!("{:?}", receiver.requests("/other")),
    );
    verify_signatures(other_secret.trim(), &receiver.requests("/other")[0], true);

    // test: a webhook_test delivery goes out.
    let (ok, queued, err) = web(&["test", &hook_id]);
    assert!(ok, "{err}");
    assert!(queued.contains("queued test delivery"), "{queued}");
    wait_for(
        "the test event",
        WAIT,
        || receiver.successes("/hook").len() == 2,
        || format!("{:?}", receiver.requests("/hook")),
    );
    assert_eq!(receiver.requests("/hook")[1].event_type(), "webhook_test");

    // deliveries: newest first, as text and JSON; --limit.
    let (ok, log, err) = web(&["deliveries", &hook_id]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("\tdelivered\twebhook_test\t1 attempts\tHTTP 200\tfinished "),
        "{log}"
    );
    assert!(lines[1].contains("\tdelivered\tbuild_started\t"), "{log}");
    let (ok, log, err) = web(&["deliveries", &hook_id, "--limit", "1"]);
    assert!(ok, "{err}");
    assert_eq!(log.lines().count(), 1, "{log}");
    let (ok, json, err) = web(&["deliveries", &hook_id, "--json"]);
    assert!(ok, "{err}");
    let deliveries: WebhookDeliveryList = serde_json::from_str(&json).unwrap();
    let started = &deliveries.deliveries[1];
    assert_eq!(started.event_type, "build_started");
    assert_eq!(started.attempt_log.len(), 1);
    assert_eq!(started.attempt_log[0].status_code, Some(200));
    assert_eq!(started.webhook_id, delivered.webhook_id());
    assert!(
        started.webhook_id.starts_with("msg_"),
        "{}",
        started.webhook_id
    );

    // redeliver: the same delivery (same webhook-id) once more.
    let (ok, again, err) = web(&["redeliver", &hook_id, &started.id.to_string()]);
    assert!(ok, "{err}");
    assert!(again.contains("queued again"), "{again}");
    wait_for(
        "the redelivery",
        WAIT,
        || receiver.successes("/hook").len() == 3,
        || format!("{:?}", receiver.requests("/hook")),
    );
    assert_eq!(
        receiver.requests("/hook")[2].webhook_id(),
        delivered.webhook_id()
    );
    let (ok, _, err) = web(&["redeliver", &hook_id, "9999"]);
    assert!(
        !ok && err.contains("kiln webhook deliveries"),
        "the error names the next step: {err}"
    );

    // rotate-secret: a new secret, printed once; both sign during the overlap.
    let (ok, rotated, err) = web(&["rotate-secret", &hook_id]);
    assert!(ok, "{err}");
    let rotated = rotated.trim().to_owned();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    assert!(err.contains("previous secret also signs until"), "{err}");
    let (ok, _, err) = web(&["test", &hook_id]);
    assert!(ok, "{err}");
    wait_for(
        "a test signed with both secrets",
        WAIT,
        || receiver.successes("/hook").len() == 4,
        || format!("{:?}", receiver.requests("/hook")),
    );
    let signed = &receiver.requests("/hook")[3];
    verify_signatures(&rotated, signed, true);
    verify_signatures(&secret, signed, false);

    // status: totals and one line per endpoint, as text and JSON. /hook has three
    // deliveries (a redelivery is the same one again) from four 2xx attempts.
    // The receiver has the test delivery before Kiln records the attempt's result:
    // wait for the record, not only for the request.
    wait_for(
        "the test delivery's attempt recorded",
        WAIT,
        || {
            web(&["status"])
                .1
                .starts_with("0 pending, 4 delivered, 0 failed")
        },
        || web(&["status"]).1,
    );
    let (ok, status, err) = web(&["status"]);
    assert!(ok, "{err}");
    assert!(
        status.starts_with("0 pending, 4 delivered, 0 failed"),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "{hook}\tactive\t0 pending\t3 delivered\t0 failed\tsuccess 100%"
        )),
        "{status}"
    );
    let (ok, json, err) = admin(&["webhook", "status", "--json"]);
    assert!(ok, "{err}");
    let status: WebhookStatusDto = serde_json::from_str(&json).unwrap();
    assert_eq!((status.pending, status.delivered, status.failed), (0, 4, 0));
    assert_eq!(status.endpoints.len(), 2);

    // delete: gone from the list, with its deliveries.
    let (ok, deleted, err) = web(&["delete", &other_id]);
    assert!(ok, "{err}");
    assert!(deleted.contains("deleted webhook"), "{deleted}");
    let (ok, listed, _) = web(&["list"]);
    assert!(ok);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let (ok, _, err) = web(&["delete", &other_id]);
    assert!(!ok && err.contains("not found"), "{err}");
}
