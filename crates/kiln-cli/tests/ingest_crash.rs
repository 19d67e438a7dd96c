//! Crash recovery of ingest, per engine, with real processes: 16 clients send batches of
//! events to a `kiln serve` process as fast as it answers, the server is killed with
//! SIGKILL in the middle of the load, and a new server on the same database must hold
//! every event that was answered 201, once, with the id it was acknowledged with, and
//! each build's sequence without a gap. On SQLite, and on PostgreSQL when
//! `KILN_TEST_DATABASE_URL` names a server.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Server, Workspace, project_token};
use kiln_client::Client;
use kiln_client::protocol::EventPayload;
use kiln_store::Engine;
use kiln_store::test_support::{POSTGRES_URL_VAR, TestDatabase};

const CLIENTS: usize = 16;
const PER_REQUEST: usize = 5;

#[test]
fn acknowledged_events_survive_kill_9_on_sqlite() {
    acknowledged_events_survive_kill_9(None);
}

#[test]
#[cfg_attr(
    not(kiln_postgres_tests),
    ignore = "PostgreSQL skipped: set KILN_TEST_DATABASE_URL (bash .ci/run does)"
)]
fn acknowledged_events_survive_kill_9_on_postgres() {
    if std::env::var(POSTGRES_URL_VAR).is_err() {
        eprintln!("skipped: PostgreSQL ({POSTGRES_URL_VAR} is not set)");
        return;
    }
    let runtime = runtime();
    let database = runtime.block_on(TestDatabase::create(Engine::Postgres));
    acknowledged_events_survive_kill_9(Some(&database.url));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn event(run_id: &str, n: usize) -> EventPayload {
    EventPayload {
        run_id: run_id.to_owned(),
        event: if n == 0 { "build_started" } else { "heartbeat" }.to_owned(),
        event_id: Some(format!("{run_id}-{n}")),
        ..EventPayload::default()
    }
}

/// What one client had acknowledged: eventId → (id, seq).
type Acknowledged = HashMap<String, (i64, i64)>;

/// Sends batches for build `run_id` until a request fails (the server is gone).
async fn send_until_refused(client: Client, run_id: String) -> Acknowledged {
    let mut acknowledged = Acknowledged::new();
    let mut next = 0;
    loop {
        let batch: Vec<EventPayload> = (next..next + PER_REQUEST)
            .map(|n| event(&run_id, n))
            .collect();
        match client.send_events(&batch).await {
            Ok(answer) => {
                for ack in answer.events {
                    assert_eq!(ack.status, "stored", "{ack:?}");
                    acknowledged.insert(
                        ack.event_id.expect("eventId echoed"),
                        (ack.id.expect("id"), ack.seq.expect("seq")),
                    );
                }
                next += PER_REQUEST;
            }
            Err(_) => return acknowledged,
        }
    }
}

fn acknowledged_events_survive_kill_9(database_url: Option<&str>) {
    let workspace = Workspace::new();
    let mut flags = Vec::new();
    if let Some(url) = database_url {
        flags.extend(["--database-url", url]);
    }
    let server = Server::start(&workspace.data(), 0, &flags);
    let token = project_token(&workspace, &server);
    let runtime = runtime();
    let url = server.url.clone();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let client = Client::new(&url, Some(token.clone()));
            runtime.spawn(send_until_refused(client, format!("crash-{n}")))
        })
        .collect();

    // Let the load run, then kill the server in the middle of it.
    let loaded = std::time::Instant::now();
    let probe = Client::new(&url, Some(token.clone()));
    runtime.block_on(async {
        // Until at least some events are in, so the kill lands mid-load.
        loop {
            let builds = probe
                .list_builds(&Default::default())
                .await
                .map(|list| list.builds.len())
                .unwrap_or(0);
            if builds == CLIENTS || loaded.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    });
    server.kill_hard();
    let acknowledged: Vec<Acknowledged> = runtime.block_on(async {
        let mut all = Vec::new();
        for client in clients {
            all.push(client.await.unwrap());
        }
        all
    });
    let total: usize = acknowledged.iter().map(HashMap::len).sum();
    assert!(
        total >= CLIENTS * PER_REQUEST,
        "the load acknowledged only {total} events before the kill"
    );
    eprintln!("{total} events acknowledged before kill -9");

    let server = Server::start(&workspace.data(), 0, &flags);
    let reader = Client::new(&server.url, Some(token));
    for (n, acked) in acknowledged.iter().enumerate() {
        let run_id = format!("crash-{n}");
        let mut stored: HashMap<String, (i64, i64)> = HashMap::new();
        let mut seqs = Vec::new();
        let mut cursor = 0;
        runtime.block_on(async {
            loop {
                let page = reader
                    .build_events(&run_id, cursor, Some(1000))
                    .await
                    .unwrap_or_else(|error| panic!("{run_id}: {error}"));
                let Some(last) = page.events.last() else {
                    break;
                };
                cursor = last["id"].as_i64().unwrap();
                for event in &page.events {
                    let event_id = event["eventId"].as_str().unwrap().to_owned();
                    let ids = (
                        event["id"].as_i64().unwrap(),
                        event["seq"].as_i64().unwrap(),
                    );
                    seqs.push(ids.1);
                    assert!(
                        stored.insert(event_id.clone(), ids).is_none(),
                        "{event_id} stored twice"
                    );
                }
            }
        });
        for (event_id, ids) in acked {
            assert_eq!(
                stored.get(event_id),
                Some(ids),
                "{event_id} was acknowledged as {ids:?}"
            );
        }
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "{run_id}: its sequence has no gap"
        );
    }
}

/// PostgreSQL drops every connection of Kiln's database again and again for 2.5 s (what
/// a database restart or failover looks like from Kiln) while 8 clients send events:
/// every answer is 201 or 503 with nothing lost of what was answered 201, and ingest
/// resumes by itself once the database holds its connections again.
#[test]
#[cfg_attr(
    not(kiln_postgres_tests),
    ignore = "PostgreSQL skipped: set KILN_TEST_DATABASE_URL (bash .ci/run does)"
)]
fn ingest_rides_out_lost_database_connections_on_postgres() {
    if std::env::var(POSTGRES_URL_VAR).is_err() {
        eprintln!("skipped: PostgreSQL ({POSTGRES_URL_VAR} is not set)");
        return;
    }
    let runtime = runtime();
    let database = runtime.block_on(TestDatabase::create(Engine::Postgres));
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &["--database-url", &database.url]);
    let token = project_token(&workspace, &server);
    let database_name = database.url.rsplit('/').next().unwrap().to_owned();
    let started = std::time::Instant::now();
    const LOAD: Duration = Duration::from_secs(7);
    const CHAOS: std::ops::Range<Duration> = Duration::from_secs(1)..Duration::from_millis(3_500);

    let clients: Vec<_> = (0..8)
        .map(|n| {
            let client = Client::new(&server.url, Some(token.clone()));
            runtime.spawn(async move {
                let run_id = format!("outage-{n}");
                let mut acknowledged = Acknowledged::new();
                // (refused with 503, the time of the last 201)
                let mut refused = 0;
                let mut last_stored = Duration::ZERO;
                let mut next = 0;
                while started.elapsed() < LOAD {
                    match client.send_events(&[event(&run_id, next)]).await {
                        Ok(answer) => {
                            let ack = &answer.events[0];
                            acknowledged.insert(
                                ack.event_id.clone().unwrap(),
                                (ack.id.unwrap(), ack.seq.unwrap()),
                            );
                            last_stored = started.elapsed();
                            next += 1;
                        }
                        Err(error) => {
                            assert_eq!(error.status(), Some(503), "{error}");
                            refused += 1;
                            // The next attempt repeats the same eventId, as a client
                            // retrying after a 503 would.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (run_id, acknowledged, refused, last_stored)
            })
        })
        .collect();

    // The outage: every backend of the database is terminated every 100 ms.
    let mut terminated = 0;
    while started.elapsed() < CHAOS.end {
        if started.elapsed() >= CHAOS.start {
            let output = std::process::Command::new("psql")
                .arg(&database.url)
                .args(["-tAc"])
                .arg(format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = '{database_name}' AND pid <> pg_backend_pid()"
                ))
                .output()
                .expect("psql runs");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            terminated += String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<usize>()
                .unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let results: Vec<_> = runtime.block_on(async {
        let mut all = Vec::new();
        for client in clients {
            all.push(client.await.unwrap());
        }
        all
    });
    assert!(terminated > 0, "the outage terminated no connection");
    let refused: usize = results.iter().map(|r| r.2).sum();
    let stored: usize = results.iter().map(|r| r.1.len()).sum();
    eprintln!(
        "{terminated} connections terminated; {stored} events stored, {refused} requests refused with 503"
    );

    for (run_id, acknowledged, _, last_stored) in &results {
        assert!(
            *last_stored > CHAOS.end,
            "{run_id}: nothing stored after the outage (last at {last_stored:?})"
        );
        let mut cursor = 0;
        let mut stored: HashMap<String, (i64, i64)> = HashMap::new();
        runtime.block_on(async {
            let reader = Client::new(&server.url, Some(token.clone()));
            loop {
                let page = reader
                    .build_events(run_id, cursor, Some(1000))
                    .await
                    .unwrap();
                let Some(last) = page.events.last() else {
                    break;
                };
                cursor = last["id"].as_i64().unwrap();
                for event in &page.events {
                    stored.insert(
                        event["eventId"].as_str().unwrap().to_owned(),
                        (
                            event["id"].as_i64().unwrap(),
                            event["seq"].as_i64().unwrap(),
                        ),
                    );
                }
            }
        });
        for (event_id, ids) in acknowledged {
            assert_eq!(
                stored.get(event_id),
                Some(ids),
                "{event_id} acknowledged, then lost"
            );
        }
    }
}
