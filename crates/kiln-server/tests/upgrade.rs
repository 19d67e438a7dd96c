//! A database an earlier Kiln wrote keeps working: real fixtures made by an earlier
//! release's own binary through its own API (`tests/fixtures/upgrade/make.sh`), a SQLite
//! file and a PostgreSQL dump, opened by today's server — the migrations since apply at
//! start, and the old rows serve reads, writes, idempotency and authentication as if this
//! Kiln had written them.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{ADMIN_TOKEN, TestApp};
use kiln_core::Millis;
use kiln_store::test_support::TestDatabase;
use kiln_store::{Engine, engine_test};
use reqwest::Method;
use serde_json::{Value, json};

engine_test!(an_earlier_kilns_database_opens_and_works);

/// The release the fixtures come from (its commit).
const VERSION: &str = "5d925a7";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upgrade")
        .join(name)
}

/// The fixture's database for `engine`, and the ingest token the earlier Kiln issued.
async fn earlier_database(engine: Engine) -> (TestDatabase, String) {
    let tokens: Value = serde_json::from_slice(
        &std::fs::read(fixture(&format!("kiln-{VERSION}.tokens.json"))).unwrap(),
    )
    .unwrap();
    match engine {
        Engine::Sqlite => (
            TestDatabase::from_sqlite_file(&fixture(&format!("kiln-{VERSION}.sqlite"))),
            tokens["sqlite"].as_str().unwrap().to_owned(),
        ),
        Engine::Postgres => {
            let dump = std::fs::read_to_string(fixture(&format!("kiln-{VERSION}.pg.sql"))).unwrap();
            (
                TestDatabase::from_postgres_dump(&dump).await,
                tokens["postgres"].as_str().unwrap().to_owned(),
            )
        }
    }
}

fn body(value: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&value).unwrap())
}

async fn an_earlier_kilns_database_opens_and_works(engine: Engine) {
    let (database, token) = earlier_database(engine).await;
    // The clock stands just after the fixture's last event, so its running build is
    // still running (not stale) when the server starts.
    let (last_event_at, last_old_id) = {
        let store = database.open_dyn().await;
        let running = store.build_by_run_id("legacy-3").await.unwrap().unwrap();
        (
            running.state.last_event_at,
            store.max_event_id().await.unwrap(),
        )
    };
    assert_eq!(
        last_old_id, 14,
        "the fixture's three builds hold 7 + 4 + 3 events"
    );
    let clock = kiln_server::clock::ManualClock::new(Millis(last_event_at.0 + 5_000));
    let app = TestApp::spawn_on(Arc::new(database), clock).await;

    // The earlier Kiln's ingest token (stored hashed) still authenticates and reads.
    let list = app.get_ok("/api/v1/builds?project=legacy", &token).await;
    let mut statuses: Vec<(String, String)> = list["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["runId"].as_str().unwrap().to_owned(),
                b["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            ("legacy-1".to_owned(), "success".to_owned()),
            ("legacy-2".to_owned(), "failed".to_owned()),
            ("legacy-3".to_owned(), "running".to_owned()),
        ]
    );
    let done = app.get_ok("/api/v1/builds/legacy-1", &token).await;
    assert_eq!(done["branch"], "main", "{done}");
    assert_eq!(done["commit"], "0123456789abcdef0123456789abcdef01234567");
    let stages: Vec<(&str, &str)> = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(stages, [("Build", "success"), ("Test", "success")]);
    let failed = app.get_ok("/api/v1/builds/legacy-2", &token).await;
    assert_eq!(failed["stages"][0]["status"], "failed", "{failed}");

    // Its events replay in order, with the cursors the earlier Kiln gave them.
    let events = app.get_ok("/api/v1/builds/legacy-1/events", &token).await;
    let events = events["events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "build_started",
            "stage_started",
            "build_progress",
            "stage_completed",
            "stage_started",
            "stage_completed",
            "build_completed"
        ]
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let old_ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(old_ids.windows(2).all(|w| w[0] < w[1]), "{old_ids:?}");

    // An eventId the earlier Kiln stored is recognised: the same event, not a second.
    let (status, ack) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(&token),
            body(json!({"runId": "legacy-1", "eventId": "legacy-1-3", "event": "stage_completed", "stage": "Build"})),
        )
        .await;
    assert_eq!(status, 201, "{ack}");
    assert_eq!(ack["events"][0]["status"], "duplicate", "{ack}");
    assert_eq!(ack["events"][0]["id"], json!(old_ids[3]));

    // The running build goes on where it stopped; a new build starts after the old ids.
    let (status, ack) = app
        .raw(
            Method::POST,
            "/api/v1/events",
            Some(&token),
            body(json!([
                {"runId": "legacy-3", "eventId": "legacy-3-3", "event": "stage_completed", "stage": "Build"},
                {"runId": "legacy-3", "eventId": "legacy-3-4", "event": "build_completed"},
                {"runId": "legacy-4", "event": "build_started", "branch": "main"},
            ])),
        )
        .await;
    assert_eq!(status, 201, "{ack}");
    let acks = ack["events"].as_array().unwrap();
    assert!(acks.iter().all(|a| a["status"] == "stored"), "{ack}");
    assert_eq!(acks[0]["seq"], 4, "legacy-3 had three events");
    let new_ids: Vec<i64> = acks.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert_eq!(new_ids, [last_old_id + 1, last_old_id + 2, last_old_id + 3]);
    let running = app.get_ok("/api/v1/builds/legacy-3", &token).await;
    assert_eq!(running["status"], "success", "{running}");
    assert_eq!(running["stages"][0]["status"], "success", "{running}");
    let new_build = app.get_ok("/api/v1/builds/legacy-4", &token).await;
    assert_eq!(new_build["number"], 4, "{new_build}");

    // The rest of what the earlier Kiln held: its user and membership, the project's
    // secret (listed, value never shown), its webhook endpoint.
    let members = app
        .get_ok("/api/v1/projects/legacy/members", ADMIN_TOKEN)
        .await;
    let text = members.to_string();
    assert!(
        text.contains("alice@example.com") && text.contains("developer"),
        "{text}"
    );
    let secrets = app
        .get_ok("/api/v1/projects/legacy/secrets", ADMIN_TOKEN)
        .await;
    assert!(secrets.to_string().contains("DEPLOY_KEY"), "{secrets}");
    assert!(!secrets.to_string().contains("s3cr3t"), "{secrets}");
    let hooks = app
        .get_ok("/api/v1/projects/legacy/webhooks", ADMIN_TOKEN)
        .await;
    assert!(
        hooks.to_string().contains("https://93.184.215.14/kiln"),
        "{hooks}"
    );
    // And the user signs in with the password the earlier Kiln hashed.
    let response = app
        .http
        .post(format!("{}/api/v1/session", app.base_url))
        .json(&json!({"email": "alice@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    app.stop().await;
}
