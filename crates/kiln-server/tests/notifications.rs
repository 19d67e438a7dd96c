//! Notifications end to end: seed 000's event sequences posted to a real server, counted
//! per admin; mutes, read, archive, stats, auto-archive; email through a real local SMTP
//! server (aiosmtpd), with a retry; through STARTTLS and implicit TLS with a login
//! (aiosmtpd run by `tests/smtp_tls_server.py`, certificates made by rcgen), and what a
//! refused login, an untrusted certificate or a relay without STARTTLS leave behind.

mod common;

use kiln_store::engine_test;

use std::sync::Arc;
use std::time::Duration;

use common::TestApp;
use kiln_core::token::TokenKind;
use kiln_core::{Millis, Role};
use kiln_server::clock::ManualClock;
use kiln_store::test_support::TestDatabase;
use kiln_store::{Engine, NewToken, Store};
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(admins_get_one_notification_per_build_event);
engine_test!(emails_reach_a_real_smtp_server_after_a_retry, smtp);
engine_test!(
    emails_go_through_starttls_with_a_login_from_a_password_file,
    smtp
);
engine_test!(emails_go_through_implicit_tls_with_a_login_in_the_url, smtp);
engine_test!(
    refused_logins_untrusted_certificates_and_missing_starttls_send_nothing,
    smtp
);

/// A user of the test and their personal token.
struct User {
    token: String,
}

async fn user(
    store: &dyn Store,
    email: &str,
    instance_admin: bool,
    role_in: Option<(i64, Role)>,
) -> User {
    let record = store
        .create_user(email, email, None, instance_admin, Millis(1))
        .await
        .unwrap();
    if let Some((project_id, role)) = role_in {
        store
            .set_membership(project_id, record.id, role, Millis(1))
            .await
            .unwrap();
    }
    let token = kiln_server::generate_token();
    store
        .create_user_token(
            record.id,
            &NewToken::new(&token, TokenKind::User, None, "test", vec![]),
            Millis(1),
        )
        .await
        .unwrap();
    User { token }
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    app.raw(
        method,
        path,
        Some(token),
        body.map(|body| serde_json::to_vec(&body).unwrap()),
    )
    .await
}

async fn post_events(app: &TestApp, token: &str, events: Value) -> Value {
    let (status, body) = call(app, Method::POST, "/api/v1/events", token, Some(events)).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Waits until the notifier has processed every committed event.
async fn settle(store: &dyn Store) {
    for _ in 0..1000 {
        let last = store.max_event_id().await.unwrap();
        if store.notifier_cursor().await.unwrap() >= last {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the notifier did not catch up");
}

async fn inbox(app: &TestApp, user: &User, query: &str) -> Vec<Value> {
    let (status, body) = call(
        app,
        Method::GET,
        &format!("/api/v1/notifications{query}"),
        &user.token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["notifications"].as_array().unwrap().clone()
}

fn kinds(notifications: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = notifications
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["runId"].as_str().unwrap(),
                n["kind"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    kinds
}

/// Seed 000's successful build: start, six stages with heartbeats, completion.
fn successful_build(run_id: &str) -> Value {
    let mut events = vec![
        json!({"runId": run_id, "event": "build_started", "eventId": format!("{run_id}-start"), "branch": "main", "commit": "abc1234"}),
    ];
    for stage in ["checkout", "install", "lint", "test", "build", "deploy"] {
        events.push(json!({"runId": run_id, "event": "stage_started", "stage": stage, "eventId": format!("{run_id}-{stage}-start")}));
        events.push(json!({"runId": run_id, "event": "heartbeat", "progress": 50}));
        events.push(json!({"runId": run_id, "event": "stage_completed", "stage": stage, "durationMs": 500, "eventId": format!("{run_id}-{stage}-done")}));
    }
    events.push(json!({"runId": run_id, "event": "heartbeat"}));
    events.push(json!({"runId": run_id, "event": "build_completed", "durationMs": 83_250, "eventId": format!("{run_id}-done")}));
    Value::Array(events)
}

async fn admins_get_one_notification_per_build_event(engine: Engine) {
    let database = Arc::new(TestDatabase::create(engine).await);
    let clock = ManualClock::new(Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.notifications.poll_interval = Duration::from_millis(50);
    })
    .await;
    let (_, ingest) = app.project_client("web", &["ingest", "read"]).await;
    app.project_client("api", &["ingest"]).await;
    let store = app.database.open_dyn().await;
    let web = store.project_by_slug("web").await.unwrap().unwrap();
    let api = store.project_by_slug("api").await.unwrap().unwrap();
    let ada = user(
        &*store,
        "ada@example.com",
        false,
        Some((web.id, Role::Admin)),
    )
    .await;
    let bob = user(
        &*store,
        "bob@example.com",
        false,
        Some((web.id, Role::Admin)),
    )
    .await;
    let root = user(&*store, "root@example.com", true, None).await;
    let viewer = user(
        &*store,
        "vic@example.com",
        false,
        Some((web.id, Role::Viewer)),
    )
    .await;
    let api_admin = user(
        &*store,
        "api@example.com",
        false,
        Some((api.id, Role::Admin)),
    )
    .await;

    // Seed 000: a build that completes, then one that fails in a stage.
    post_events(&app, &ingest, successful_build("ok-1")).await;
    post_events(
        &app,
        &ingest,
        json!([
            {"runId": "fail-1", "event": "build_started", "eventId": "fail-1-start"},
            {"runId": "fail-1", "event": "stage_started", "stage": "test", "eventId": "fail-1-test"},
            {"runId": "fail-1", "event": "heartbeat"},
            {"runId": "fail-1", "event": "build_failed", "message": "3 tests failed", "eventId": "fail-1-failed"},
        ]),
    )
    .await;
    // Retried events (the same eventId again) are duplicates: nothing new.
    let retried = post_events(
        &app,
        &ingest,
        json!([{"runId": "ok-1", "event": "build_completed", "durationMs": 83_250, "eventId": "ok-1-done"}]),
    )
    .await;
    assert_eq!(retried["events"][0]["status"], "duplicate", "{retried}");
    // A build that goes silent: the reaper fails it as stale.
    post_events(
        &app,
        &ingest,
        json!([
            {"runId": "quiet-1", "event": "build_started", "eventId": "quiet-1-start"},
            {"runId": "quiet-1", "event": "stage_started", "stage": "deploy"},
        ]),
    )
    .await;
    post_events(
        &app,
        &ingest,
        json!([{"runId": "quiet-1", "event": "build_started", "eventId": "quiet-1-start"}]),
    )
    .await;
    app.clock.advance_ms(91_000);
    for _ in 0..500 {
        if store
            .build_by_run_id("quiet-1")
            .await
            .unwrap()
            .unwrap()
            .state
            .status
            == kiln_core::BuildStatus::Stale
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settle(&*store).await;

    let expected = vec![
        "fail-1 build_failed",
        "fail-1 build_started",
        "ok-1 build_completed",
        "ok-1 build_started",
        "quiet-1 build_stale",
        "quiet-1 build_started",
    ];
    for admin in [&ada, &bob, &root] {
        assert_eq!(kinds(&inbox(&app, admin, "").await), expected);
    }
    assert!(
        inbox(&app, &viewer, "").await.is_empty(),
        "viewers are not notified"
    );
    assert!(
        inbox(&app, &api_admin, "").await.is_empty(),
        "admins of other projects are not"
    );

    // What the notifications say.
    let ada_inbox = inbox(&app, &ada, "").await;
    let find = |kind: &str| {
        ada_inbox
            .iter()
            .find(|n| n["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind}"))
            .clone()
    };
    let completed = find("build_completed");
    assert_eq!(completed["title"], "web #1 completed in 1 min 23 s");
    assert!(
        completed["body"]
            .as_str()
            .unwrap()
            .contains("Duration: 1 min 23 s (83250 ms)"),
        "{completed}"
    );
    assert!(
        completed["body"].as_str().unwrap().contains("Branch: main"),
        "{completed}"
    );
    assert_eq!(completed["project"], "web");
    assert_eq!(completed["unread"], true);
    let failed = find("build_failed");
    assert_eq!(failed["title"], "web #2 failed in stage test");
    let failed_body = failed["body"].as_str().unwrap();
    assert!(
        failed_body.contains("Stage: test") && failed_body.contains("Message: 3 tests failed"),
        "{failed}"
    );
    let stale = find("build_stale");
    assert_eq!(stale["title"], "web #3 is stale");
    assert!(
        stale["body"].as_str().unwrap().contains("Stage: deploy"),
        "{stale}"
    );
    assert!(
        stale["body"]
            .as_str()
            .unwrap()
            .contains("marked the build stale"),
        "{stale}"
    );

    // Paging, newest first.
    let (_, first_page) = call(
        &app,
        Method::GET,
        "/api/v1/notifications?limit=4",
        &ada.token,
        None,
    )
    .await;
    assert_eq!(first_page["notifications"].as_array().unwrap().len(), 4);
    let next = first_page["nextBefore"].as_i64().unwrap();
    let rest = inbox(&app, &ada, &format!("?limit=4&before={next}")).await;
    assert_eq!(rest.len(), 2);
    assert!(rest[0]["id"].as_i64().unwrap() < next);

    // Stats, read, read-all, archive.
    let (status, stats) = call(
        &app,
        Method::GET,
        "/api/v1/notifications/stats",
        &ada.token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        stats,
        json!({"unread": 6, "byKind": {"build_started": 3, "build_completed": 1, "build_failed": 1, "build_stale": 1}})
    );
    let failed_id = failed["id"].as_i64().unwrap();
    let (status, read) = call(
        &app,
        Method::POST,
        &format!("/api/v1/notifications/{failed_id}/read"),
        &ada.token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["unread"], false);
    assert!(read["readAt"].is_string());
    assert_eq!(inbox(&app, &ada, "?unread=true").await.len(), 5);
    assert_eq!(inbox(&app, &ada, "?unread=false").await.len(), 1);
    // Another user's notification does not exist for bob; bob's stays unread.
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/api/v1/notifications/{failed_id}/read"),
        &bob.token,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/notifications/x/read",
        &bob.token,
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (_, bob_stats) = call(
        &app,
        Method::GET,
        "/api/v1/notifications/stats",
        &bob.token,
        None,
    )
    .await;
    assert_eq!(bob_stats["unread"], 6);

    let (status, archived) = call(
        &app,
        Method::POST,
        &format!("/api/v1/notifications/{failed_id}/archive"),
        &ada.token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{archived}");
    assert!(archived["archivedAt"].is_string());
    assert_eq!(inbox(&app, &ada, "").await.len(), 5);
    let in_archive = inbox(&app, &ada, "?archived=true").await;
    assert_eq!(in_archive.len(), 1);
    assert_eq!(in_archive[0]["id"], failed_id);
    let (_, all_read) = call(
        &app,
        Method::POST,
        "/api/v1/notifications/read-all",
        &ada.token,
        None,
    )
    .await;
    assert_eq!(all_read, json!({"marked": 5}));
    let (_, stats) = call(
        &app,
        Method::GET,
        "/api/v1/notifications/stats",
        &ada.token,
        None,
    )
    .await;
    assert_eq!(stats["unread"], 0);

    // Mutes: ada mutes project web, bob mutes failures; root mutes nothing.
    let (status, mute) = call(
        &app,
        Method::POST,
        "/api/v1/notifications/mutes",
        &ada.token,
        Some(json!({"project": "web"})),
    )
    .await;
    assert_eq!(status, 201, "{mute}");
    assert_eq!(mute["project"], "web");
    assert_eq!(mute["kind"], Value::Null);
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/notifications/mutes",
        &bob.token,
        Some(json!({"kind": "build_failed"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, error) = call(
        &app,
        Method::POST,
        "/api/v1/notifications/mutes",
        &bob.token,
        Some(json!({"kind": "everything"})),
    )
    .await;
    assert_eq!(status, 400);
    common::assert_error(&error, "invalid_field", Some("kind"));
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/notifications/mutes",
        &bob.token,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400);
    // A project bob may not see does not exist for him.
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/notifications/mutes",
        &bob.token,
        Some(json!({"project": "api"})),
    )
    .await;
    assert_eq!(status, 404);
    let (_, mutes) = call(
        &app,
        Method::GET,
        "/api/v1/notifications/mutes",
        &bob.token,
        None,
    )
    .await;
    assert_eq!(mutes["mutes"].as_array().unwrap().len(), 1);
    assert_eq!(mutes["mutes"][0]["kind"], "build_failed");

    post_events(
        &app,
        &ingest,
        json!([
            {"runId": "fail-2", "event": "build_started"},
            {"runId": "fail-2", "event": "stage_failed", "stage": "lint", "message": "style"},
            {"runId": "fail-2", "event": "build_failed", "message": "lint failed"},
        ]),
    )
    .await;
    settle(&*store).await;
    assert_eq!(
        inbox(&app, &ada, "?unread=true").await.len(),
        0,
        "ada muted web"
    );
    assert_eq!(
        kinds(&inbox(&app, &bob, "?unread=true").await)
            .iter()
            .filter(|k| k.starts_with("fail-2"))
            .count(),
        1
    );
    assert!(kinds(&inbox(&app, &bob, "").await).contains(&"fail-2 build_started".to_owned()));
    let root_new = kinds(&inbox(&app, &root, "").await);
    assert!(
        root_new.contains(&"fail-2 build_failed".to_owned())
            && root_new.contains(&"fail-2 build_started".to_owned())
    );
    let root_failed = inbox(&app, &root, "")
        .await
        .into_iter()
        .find(|n| n["runId"] == "fail-2" && n["kind"] == "build_failed")
        .unwrap();
    assert_eq!(root_failed["title"], "web #4 failed in stage lint");

    // Unmuting (as query parameters or a body) brings notifications back.
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/api/v1/notifications/mutes?project=web",
        &ada.token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &app,
        Method::DELETE,
        "/api/v1/notifications/mutes",
        &ada.token,
        Some(json!({"project": "web"})),
    )
    .await;
    assert_eq!(status, 404);
    post_events(
        &app,
        &ingest,
        json!([{"runId": "ok-2", "event": "build_started"}]),
    )
    .await;
    settle(&*store).await;
    assert_eq!(
        kinds(&inbox(&app, &ada, "?unread=true").await),
        vec!["ok-2 build_started"]
    );

    // Project tokens and the admin token have no inbox.
    let (status, error) = call(&app, Method::GET, "/api/v1/notifications", &ingest, None).await;
    assert_eq!(status, 403, "{error}");
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/v1/notifications/stats",
        common::ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 403);

    // After 30 days notifications leave the inbox by themselves (ok-2 ends first, or the
    // reaper would find it silent and notify again).
    post_events(
        &app,
        &ingest,
        json!([{"runId": "ok-2", "event": "build_completed"}]),
    )
    .await;
    settle(&*store).await;
    app.clock.advance_ms(31 * 86_400_000);
    let mut archived_all = false;
    for _ in 0..500 {
        if inbox(&app, &root, "").await.is_empty() {
            archived_all = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(archived_all, "auto-archive");
    assert_eq!(inbox(&app, &root, "?archived=true").await.len(), 10);
    let (_, stats) = call(
        &app,
        Method::GET,
        "/api/v1/notifications/stats",
        &root.token,
        None,
    )
    .await;
    assert_eq!(stats["unread"], 0);

    // A restart does not notify anyone again (the cursor is stored).
    let database = app.database.clone();
    let clock = app.clock.clone();
    app.stop().await;
    let app = TestApp::spawn_on(database, clock).await;
    settle(&*store).await;
    app.passes_of(kiln_server::Periodic::Notifier, 2).await;
    assert_eq!(inbox(&app, &root, "?archived=true").await.len(), 10);
    assert!(inbox(&app, &root, "").await.is_empty());
    app.stop().await;
}

/// Whether aiosmtpd is importable; `KILN_REQUIRE_SMTP=1` turns its absence into a failure.
fn aiosmtpd_available() -> bool {
    let available = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available && std::env::var("KILN_REQUIRE_SMTP").as_deref() == Ok("1") {
        panic!("KILN_REQUIRE_SMTP=1 but python3 cannot import aiosmtpd: run `bash .ci/smtp.sh`");
    }
    available
}

/// Messages aiosmtpd's Mailbox handler stored, as text.
fn mailbox(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("new")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .collect()
}

async fn emails_reach_a_real_smtp_server_after_a_retry(engine: Engine) {
    if !aiosmtpd_available() {
        println!(
            "skipped: python3 cannot import aiosmtpd (pip install aiosmtpd, or bash .ci/smtp.sh)"
        );
        return;
    }
    // A free port, for a relay that is not listening yet.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let database = Arc::new(TestDatabase::create(engine).await);
    let clock = ManualClock::new(Millis(1_800_000_000_000));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.notifications.poll_interval = Duration::from_millis(50);
        let mut email = kiln_server::EmailConfig::parse(
            &format!("smtp://127.0.0.1:{port}"),
            "kiln@example.com",
            &kiln_server::SmtpFiles::default(),
        )
        .unwrap();
        email.first_backoff = Duration::from_secs(10);
        email.send_timeout = Duration::from_secs(5);
        config.notifications.email = Some(email);
    })
    .await;
    let (_, ingest) = app.project_client("web", &["ingest"]).await;
    let store = app.database.open_dyn().await;
    let web = store.project_by_slug("web").await.unwrap().unwrap();
    user(
        &*store,
        "ada@example.com",
        false,
        Some((web.id, Role::Admin)),
    )
    .await;
    user(&*store, "root@example.com", true, None).await;
    user(
        &*store,
        "vic@example.com",
        false,
        Some((web.id, Role::Viewer)),
    )
    .await;

    post_events(
        &app,
        &ingest,
        json!([{"runId": "r1", "event": "build_started", "eventId": "s"}]),
    )
    .await;
    settle(&*store).await;
    // Nothing listens: both sends fail and wait for their retry (ingest was answered).
    for _ in 0..500 {
        let failed = app
            .database
            .integers("SELECT COUNT(*) FROM notification_emails WHERE attempts = 1 AND last_error IS NOT NULL")
            .await[0];
        if failed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let maildir_parent = tempfile::tempdir().unwrap();
    // aiosmtpd's Mailbox creates the maildir (tmp, new, cur) only where nothing exists.
    let maildir = maildir_parent.path().join("mail");
    let mut smtpd = std::process::Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&maildir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut listening = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(listening, "aiosmtpd did not start");
    // Not due yet: the retry waits its backoff (server time).
    app.passes_of(kiln_server::Periodic::Mail, 2).await;
    assert!(mailbox(&maildir).is_empty());
    app.clock.advance_ms(11_000);
    let mut messages = Vec::new();
    for _ in 0..1000 {
        messages = mailbox(&maildir);
        if messages.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both admins, once each; and no more arrive.
    app.passes_of(kiln_server::Periodic::Mail, 2).await;
    // Past any claim, short of the heartbeat timeout (a stale build would notify again).
    app.clock.advance_ms(60_000);
    app.passes_of(kiln_server::Periodic::Notifier, 2).await;
    app.passes_of(kiln_server::Periodic::Mail, 2).await;
    let messages_after = mailbox(&maildir);
    let _ = smtpd.kill();
    let _ = smtpd.wait();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages_after.len(), 2);
    let mut recipients: Vec<&str> = messages
        .iter()
        .map(|m| m.lines().find(|l| l.starts_with("To: ")).unwrap())
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        vec!["To: ada@example.com", "To: root@example.com"]
    );
    for message in &messages {
        assert!(message.contains("Subject: web #1 started"), "{message}");
        assert!(message.contains("From: kiln@example.com"), "{message}");
        assert!(message.contains("Run: r1"), "{message}");
    }
    let sent = app
        .database
        .integers(
            "SELECT COUNT(*) FROM notification_emails WHERE sent_at IS NOT NULL AND attempts = 2",
        )
        .await[0];
    assert_eq!(sent, 2);
    app.stop().await;
}

/// A throwaway CA and a certificate for 127.0.0.1 that it signed, as PEM files.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    fn create() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Kiln test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        TestPki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.pem")).unwrap()
    }
}

/// aiosmtpd with TLS and AUTH (`tests/smtp_tls_server.py`); killed when dropped.
struct TlsSmtpServer {
    port: u16,
    dir: tempfile::TempDir,
    process: tokio::process::Child,
}

/// The login the test servers accept.
const SMTP_USER: &str = "kiln";
const SMTP_PASSWORD: &str = "s3cret@:/pw";

impl TlsSmtpServer {
    /// `mode`: `starttls`, `smtps` or `plain` (see the script).
    async fn start(mode: &str, pki: &TestPki) -> TlsSmtpServer {
        use tokio::io::AsyncBufReadExt;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut process = tokio::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/smtp_tls_server.py"
            ))
            .arg(mode)
            .arg(port.to_string())
            .arg(dir.path().join("mail"))
            .arg(dir.path().join("auth.log"))
            .arg(pki.path("server.pem"))
            .arg(pki.path("server.key"))
            .args([SMTP_USER, SMTP_PASSWORD])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        assert!(
            matches!(&ready, Ok(Ok(Some(line))) if line == "ready"),
            "smtp_tls_server.py {mode} did not start: {ready:?}\n{log}"
        );
        TlsSmtpServer { port, dir, process }
    }

    fn messages(&self) -> Vec<String> {
        mailbox(&self.dir.path().join("mail"))
    }

    /// Login attempts the server saw: `MECHANISM USER ok|refused`.
    fn logins(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("auth.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TlsSmtpServer {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}

/// The outbox row of the one email a test sends.
#[derive(Debug)]
struct OutboxRow {
    attempts: i64,
    sent: bool,
    given_up: bool,
    last_error: String,
}

/// Starts a server mailing through `smtp_url` (with `files`), has a build start notify one
/// instance admin, and waits until that email was sent or its first attempt failed.
async fn send_one_email(
    engine: Engine,
    smtp_url: &str,
    files: kiln_server::SmtpFiles,
) -> OutboxRow {
    let database = Arc::new(TestDatabase::create(engine).await);
    let clock = ManualClock::new(Millis(1_800_000_000_000));
    let email = kiln_server::EmailConfig::parse(smtp_url, "kiln@example.com", &files)
        .unwrap_or_else(|error| panic!("{smtp_url}: {error}"));
    let app = TestApp::spawn_configured(database, clock, |config| {
        config.notifications.poll_interval = Duration::from_millis(50);
        let mut email = email;
        email.send_timeout = Duration::from_secs(10);
        config.notifications.email = Some(email);
    })
    .await;
    let (_, ingest) = app.project_client("web", &["ingest"]).await;
    let store = app.database.open_dyn().await;
    user(&*store, "ada@example.com", true, None).await;
    post_events(
        &app,
        &ingest,
        json!([{"runId": "r1", "event": "build_started", "eventId": "s"}]),
    )
    .await;
    settle(&*store).await;
    let mut row = None;
    for _ in 0..2000 {
        let found = app
            .database
            .rows(
                "SELECT attempts, CASE WHEN sent_at IS NULL THEN 0 ELSE 1 END, \
                 CASE WHEN failed_at IS NULL THEN 0 ELSE 1 END, last_error FROM notification_emails \
                 WHERE sent_at IS NOT NULL OR last_error IS NOT NULL",
            )
            .await;
        if let Some(found) = found.first() {
            let number = |column: usize| {
                found[column]
                    .as_deref()
                    .and_then(|text| text.parse::<i64>().ok())
                    .expect("an integer column")
            };
            row = Some(OutboxRow {
                attempts: number(0),
                sent: number(1) == 1,
                given_up: number(2) == 1,
                last_error: found[3].clone().unwrap_or_default(),
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
    row.expect("the email was neither sent nor failed")
}

fn assert_one_notification_email(server: &TlsSmtpServer) {
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    for expected in [
        "From: kiln@example.com",
        "To: ada@example.com",
        "Subject: web #1 started",
        "Run: r1",
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
}

async fn emails_go_through_starttls_with_a_login_from_a_password_file(engine: Engine) {
    if !aiosmtpd_available() {
        println!("skipped: python3 cannot import aiosmtpd (bash .ci/smtp.sh installs it)");
        return;
    }
    let pki = TestPki::create();
    let server = TlsSmtpServer::start("starttls", &pki).await;
    // The user in the URL, the password (one line) in its file: STARTTLS is required.
    let row = send_one_email(
        engine,
        &format!("smtp://{SMTP_USER}@127.0.0.1:{}", server.port),
        kiln_server::SmtpFiles {
            password: Some(kiln_server::Secret::new(format!("{SMTP_PASSWORD}\n"))),
            ca_certificates_pem: Some(pki.ca_pem()),
        },
    )
    .await;
    assert!(row.sent && row.attempts == 1, "{row:?}");
    assert_eq!(server.logins(), vec!["PLAIN kiln ok"]);
    assert_one_notification_email(&server);
}

async fn emails_go_through_implicit_tls_with_a_login_in_the_url(engine: Engine) {
    if !aiosmtpd_available() {
        println!("skipped: python3 cannot import aiosmtpd (bash .ci/smtp.sh installs it)");
        return;
    }
    let pki = TestPki::create();
    let server = TlsSmtpServer::start("smtps", &pki).await;
    let row = send_one_email(
        engine,
        // The password percent-encoded: "s3cret@:/pw".
        &format!(
            "smtps://{SMTP_USER}:s3cret%40%3A%2Fpw@127.0.0.1:{}",
            server.port
        ),
        kiln_server::SmtpFiles {
            password: None,
            ca_certificates_pem: Some(pki.ca_pem()),
        },
    )
    .await;
    assert!(row.sent && row.attempts == 1, "{row:?}");
    assert_eq!(server.logins(), vec!["PLAIN kiln ok"]);
    assert_one_notification_email(&server);
}

async fn refused_logins_untrusted_certificates_and_missing_starttls_send_nothing(engine: Engine) {
    if !aiosmtpd_available() {
        println!("skipped: python3 cannot import aiosmtpd (bash .ci/smtp.sh installs it)");
        return;
    }
    let pki = TestPki::create();
    let with_ca = || kiln_server::SmtpFiles {
        password: None,
        ca_certificates_pem: Some(pki.ca_pem()),
    };

    // A wrong password: the relay's 535 is permanent, so the email is given up at once
    // with a message that says what to fix (and not the password).
    let server = TlsSmtpServer::start("starttls", &pki).await;
    let row = send_one_email(
        engine,
        &format!("smtp://{SMTP_USER}:wrong-pw@127.0.0.1:{}", server.port),
        with_ca(),
    )
    .await;
    assert!(!row.sent && row.given_up && row.attempts == 1, "{row:?}");
    assert!(
        row.last_error
            .contains("refused the credentials of user 'kiln'")
            && row.last_error.contains("535")
            && row.last_error.contains("--smtp-password-file"),
        "{row:?}"
    );
    assert!(!row.last_error.contains("wrong-pw"), "{row:?}");
    assert!(server.messages().is_empty());
    assert!(
        server
            .logins()
            .iter()
            .all(|login| login.ends_with("refused")),
        "{:?}",
        server.logins()
    );

    // No --smtp-ca-file: the private CA is not trusted, the handshake fails, nothing is
    // sent (no login either), and the email waits for a retry.
    let server = TlsSmtpServer::start("smtps", &pki).await;
    let row = send_one_email(
        engine,
        &format!(
            "smtps://{SMTP_USER}:{}@127.0.0.1:{}",
            "s3cret%40%3A%2Fpw", server.port
        ),
        kiln_server::SmtpFiles::default(),
    )
    .await;
    assert!(!row.sent && !row.given_up && row.attempts == 1, "{row:?}");
    assert!(
        row.last_error
            .contains("TLS handshake with the SMTP relay smtps://kiln@127.0.0.1:")
            && row.last_error.contains("--smtp-ca-file"),
        "{row:?}"
    );
    assert!(server.messages().is_empty());
    assert!(server.logins().is_empty(), "{:?}", server.logins());

    // The same over STARTTLS.
    let server = TlsSmtpServer::start("starttls", &pki).await;
    let row = send_one_email(
        engine,
        &format!("smtp://127.0.0.1:{}?tls=required", server.port),
        kiln_server::SmtpFiles::default(),
    )
    .await;
    assert!(!row.sent && !row.given_up, "{row:?}");
    assert!(
        row.last_error.contains("TLS handshake") && row.last_error.contains("--smtp-ca-file"),
        "{row:?}"
    );
    assert!(server.messages().is_empty());

    // tls=required against a relay that offers no STARTTLS (but would take mail and even
    // a password in plain): nothing is sent, the email waits for a retry.
    let server = TlsSmtpServer::start("plain", &pki).await;
    let row = send_one_email(
        engine,
        &format!("smtp://127.0.0.1:{}?tls=required", server.port),
        with_ca(),
    )
    .await;
    assert!(!row.sent && !row.given_up && row.attempts == 1, "{row:?}");
    assert!(
        row.last_error.contains("does not offer STARTTLS"),
        "{row:?}"
    );
    assert!(server.messages().is_empty());

    // A login without ?tls= requires STARTTLS too: the password never travels in plain.
    let row = send_one_email(
        engine,
        &format!(
            "smtp://{SMTP_USER}:s3cret%40%3A%2Fpw@127.0.0.1:{}",
            server.port
        ),
        with_ca(),
    )
    .await;
    assert!(!row.sent && !row.given_up, "{row:?}");
    assert!(
        row.last_error.contains("does not offer STARTTLS"),
        "{row:?}"
    );
    assert!(server.logins().is_empty(), "{:?}", server.logins());
    assert!(server.messages().is_empty());
}
