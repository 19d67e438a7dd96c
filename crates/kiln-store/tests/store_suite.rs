//! The store's test suite, run against SQLite and PostgreSQL alike.

use std::collections::HashSet;
use std::sync::Arc;

use kiln_core::token::{Scope, TokenKind};
use kiln_core::{BuildStatus, EventType, Millis, NewEvent, ProjectSlug, RunId, StageName};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;
use serde_json::json;

engine_test!(projects_and_tokens);
engine_test!(readiness_survives_its_connection_being_cut);
engine_test!(a_build_runs_through_its_lifecycle);
engine_test!(event_ids_make_retries_idempotent);
engine_test!(a_rejected_request_leaves_its_group_intact);
engine_test!(terminal_builds);
engine_test!(builds_are_listed_newest_first_with_filters);
engine_test!(stale_builds_are_found_and_failed_once);
engine_test!(concurrent_writers_on_two_stores_leave_no_gaps);
engine_test!(two_stores_writing_one_build_keep_its_sequence);
engine_test!(overlapping_group_commits_on_one_build_keep_its_sequence);
engine_test!(migrations_are_idempotent_across_reopen);
engine_test!(a_database_of_the_previous_release_upgrades);
engine_test!(a_group_commit_of_5000_events);
engine_test!(jobs_of_the_previous_release_stay_agents_jobs);

fn event(run_id: &str, kind: &str) -> NewEvent {
    NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", kind).unwrap(),
    )
}

fn stage_event(run_id: &str, kind: &str, stage: &str) -> NewEvent {
    let mut event = event(run_id, kind);
    event.stage = Some(StageName::parse("stage", stage).unwrap());
    event
}

fn with_id(mut event: NewEvent, client_event_id: &str) -> NewEvent {
    event.client_event_id =
        Some(kiln_core::ClientEventId::parse("eventId", client_event_id).unwrap());
    event
}

fn request(project: &Project, events: Vec<NewEvent>) -> IngestRequest {
    IngestRequest {
        project_id: project.id,
        events,
        precondition: Precondition::None,
        jobs: None,
    }
}

async fn project(store: &dyn Store, slug: &str) -> Project {
    store
        .create_project(&ProjectSlug::parse("slug", slug).unwrap(), slug, Millis(1))
        .await
        .unwrap()
}

async fn ingest_one(store: &dyn Store, request: IngestRequest, now: i64) -> Vec<EventOutcome> {
    let mut results = store.ingest(&[request], Millis(now)).await.unwrap();
    results.remove(0).expect("request accepted")
}

async fn projects_and_tokens(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let duplicate = store
        .create_project(
            &ProjectSlug::parse("slug", "web").unwrap(),
            "again",
            Millis(2),
        )
        .await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(message)) if message.contains("'web'")));
    assert_eq!(
        store.project_by_slug("web").await.unwrap(),
        Some(web.clone())
    );
    assert_eq!(
        store.project_by_id(web.id).await.unwrap(),
        Some(web.clone())
    );
    assert_eq!(store.project_by_slug("nope").await.unwrap(), None);

    let new_token = NewToken {
        project_id: Some(web.id),
        kind: TokenKind::Project,
        name: "ci".into(),
        scopes: vec![Scope::Ingest, Scope::Read],
        token_hash: "h1".into(),
        display_prefix: "kiln_abcd".into(),
    };
    let token = store.create_token(&new_token, Millis(5)).await.unwrap();
    assert_eq!(token.scopes, vec![Scope::Ingest, Scope::Read]);
    // A unique violation is a conflict in Kiln's words, never the driver's text.
    match store.create_token(&new_token, Millis(6)).await {
        Err(StoreError::Conflict(message)) => {
            assert!(
                !message.contains("UNIQUE") && !message.contains("duplicate key"),
                "driver text in {message:?}"
            );
            assert!(message.contains("exists already"), "{message}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        store.create_token(&new_token, Millis(5)).await,
        Err(StoreError::Conflict(_))
    ));
    let admin = NewToken {
        project_id: None,
        kind: TokenKind::Admin,
        name: "bootstrap".into(),
        scopes: vec![],
        token_hash: "admin-hash".into(),
        display_prefix: "kiln_zzzz".into(),
    };
    let first = store.ensure_token(&admin, Millis(6)).await.unwrap();
    let second = store.ensure_token(&admin, Millis(7)).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(
        store.list_tokens(Some(web.id)).await.unwrap(),
        vec![token.clone()]
    );
    assert_eq!(store.list_tokens(None).await.unwrap(), vec![first.clone()]);

    // A project's revoke cannot reach an instance token, nor another project's.
    assert!(matches!(
        store.revoke_token(Some(web.id), first.id, Millis(8)).await,
        Err(StoreError::NotFound(_))
    ));
    let revoked = store
        .revoke_token(Some(web.id), token.id, Millis(9))
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(Millis(9)));
    store.touch_token(token.id, Millis(10)).await.unwrap();
    let reread = store.token_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(reread.last_used_at, Some(Millis(10)));
    assert_eq!(reread.revoked_at, Some(Millis(9)));
}

async fn a_build_runs_through_its_lifecycle(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let mut started = event("r1", "build_started");
    started.branch = Some("main".into());
    started.commit = Some("abc1234".into());
    started.command = Some("npm run build".into());
    let outcomes = ingest_one(
        &*store,
        request(
            &web,
            vec![started, stage_event("r1", "stage_started", "Install")],
        ),
        1_000,
    )
    .await;
    assert_eq!(
        outcomes.iter().map(|o| o.seq).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );
    let first_id = outcomes[0].id.unwrap();
    assert_eq!(outcomes[1].id, Some(first_id + 1));

    let mut done = stage_event("r1", "stage_completed", "Install");
    done.duration_ms = Some(1500);
    let mut progress = event("r1", "build_progress");
    progress.progress = Some(55.5);
    ingest_one(
        &*store,
        request(
            &web,
            vec![done, progress, stage_event("r1", "stage_started", "Test")],
        ),
        2_500,
    )
    .await;

    let build = store.build_by_run_id("r1").await.unwrap().unwrap();
    assert_eq!(build.number, 1);
    assert_eq!(build.project_slug, "web");
    assert_eq!(build.state.status, BuildStatus::Running);
    assert_eq!(build.state.branch.as_deref(), Some("main"));
    assert_eq!(build.state.progress, Some(55.5));
    assert_eq!(
        build.state.current_stage.as_ref().map(|s| s.as_str()),
        Some("Test")
    );
    assert_eq!(build.state.stages.len(), 2);
    assert_eq!(build.state.stages[0].duration_ms, Some(1500));
    assert_eq!(build.last_event_id, first_id + 4);

    let mut failed = event("r1", "build_failed");
    failed.message = Some("3 tests failed".into());
    ingest_one(&*store, request(&web, vec![failed]), 4_000).await;
    let build = store.build_by_run_id("r1").await.unwrap().unwrap();
    assert_eq!(build.state.status, BuildStatus::Failed);
    assert_eq!(build.state.duration_ms, Some(3_000));
    assert_eq!(build.state.stages[1].status, kiln_core::StageStatus::Failed);
    assert_eq!(build.state.message.as_deref(), Some("3 tests failed"));

    let events = store.events_after(build.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(events[0].payload["branch"], json!("main"));
    let page = store.events_after(build.id, events[2].id, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    let everything = store.project_events_after(web.id, 0, 100).await.unwrap();
    assert_eq!(everything, events);
}

async fn event_ids_make_retries_idempotent(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let batch = vec![
        with_id(event("r1", "build_started"), "a"),
        with_id(event("r1", "heartbeat"), "b"),
        // The same eventId twice in one batch is one event.
        with_id(event("r1", "heartbeat"), "b"),
    ];
    let first = ingest_one(&*store, request(&web, batch.clone()), 10).await;
    assert_eq!(first[2].status, OutcomeStatus::Duplicate);
    assert_eq!(first[2].id, first[1].id);
    let retry = ingest_one(&*store, request(&web, batch.clone()), 20).await;
    assert!(retry.iter().all(|o| o.status == OutcomeStatus::Duplicate));
    assert_eq!(
        retry.iter().map(|o| o.id).collect::<Vec<_>>(),
        first.iter().map(|o| o.id).collect::<Vec<_>>()
    );
    // Two requests with the same ids in one group commit.
    let results = store
        .ingest(
            &[
                request(&web, vec![with_id(event("r2", "build_started"), "x")]),
                request(&web, vec![with_id(event("r2", "build_started"), "x")]),
            ],
            Millis(30),
        )
        .await
        .unwrap();
    let a = results[0].as_ref().unwrap();
    let b = results[1].as_ref().unwrap();
    assert_eq!(a[0].status, OutcomeStatus::Stored);
    assert_eq!(b[0].status, OutcomeStatus::Duplicate);
    assert_eq!(a[0].id, b[0].id);
    // Events without an eventId are always new.
    let twice = ingest_one(
        &*store,
        request(
            &web,
            vec![event("r1", "heartbeat"), event("r1", "heartbeat")],
        ),
        40,
    )
    .await;
    assert!(twice.iter().all(|o| o.status == OutcomeStatus::Stored));
    let build = store.build_by_run_id("r1").await.unwrap().unwrap();
    assert_eq!(build.state.last_seq, 4);
}

async fn a_rejected_request_leaves_its_group_intact(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    ingest_one(
        &*store,
        request(&web, vec![event("done", "build_completed")]),
        10,
    )
    .await;
    ingest_one(
        &*store,
        request(&api, vec![event("api-run", "build_started")]),
        10,
    )
    .await;

    let results = store
        .ingest(
            &[
                request(&web, vec![event("ok-1", "build_started")]),
                // Rejected at its second event: nothing of it may be written.
                request(
                    &web,
                    vec![
                        event("partial", "build_started"),
                        event("done", "stage_started_x"),
                    ],
                ),
                request(
                    &web,
                    vec![
                        event("partial2", "build_started"),
                        stage_event("done", "stage_started", "S"),
                    ],
                ),
                request(&web, vec![event("api-run", "heartbeat")]),
                request(&web, vec![event("ok-2", "build_started")]),
            ],
            Millis(20),
        )
        .await
        .unwrap();
    assert!(results[0].is_ok());
    // A custom event after the end is an annotation, accepted.
    assert!(results[1].is_ok());
    let rejection = results[2].as_ref().unwrap_err();
    assert_eq!(rejection.index(), 1);
    assert!(
        rejection
            .to_string()
            .contains("already ended with status 'success'")
    );
    assert!(matches!(
        results[3],
        Err(IngestRejection::RunIdTaken { index: 0, .. })
    ));
    assert!(results[4].is_ok());
    assert!(store.build_by_run_id("partial2").await.unwrap().is_none());
    let ok_2 = store.build_by_run_id("ok-2").await.unwrap().unwrap();
    // ok-1 and partial were created in this group: numbers follow arrival order.
    assert_eq!(ok_2.number, 4);
    let ids: Vec<i64> = store
        .project_events_after(web.id, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(
        store
            .build_by_run_id("api-run")
            .await
            .unwrap()
            .unwrap()
            .state
            .last_seq,
        1
    );
}

async fn terminal_builds(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    ingest_one(
        &*store,
        request(
            &web,
            vec![
                event("r", "build_started"),
                with_id(event("r", "build_cancelled"), "end"),
            ],
        ),
        10,
    )
    .await;
    let late = ingest_one(&*store, request(&web, vec![event("r", "heartbeat")]), 20).await;
    assert_eq!(late[0].status, OutcomeStatus::Ignored);
    assert_eq!(late[0].id, None);
    // Retrying the terminal event itself is idempotent, not a conflict.
    let retry = ingest_one(
        &*store,
        request(&web, vec![with_id(event("r", "build_cancelled"), "end")]),
        30,
    )
    .await;
    assert_eq!(retry[0].status, OutcomeStatus::Duplicate);
    let refused = store
        .ingest(
            &[request(&web, vec![event("r", "build_completed")])],
            Millis(40),
        )
        .await
        .unwrap();
    assert!(
        refused[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("'cancelled'")
    );
    assert_eq!(
        store
            .build_by_run_id("r")
            .await
            .unwrap()
            .unwrap()
            .state
            .last_seq,
        2
    );
}

async fn builds_are_listed_newest_first_with_filters(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    for index in 0..5 {
        let mut started = event(&format!("w{index}"), "build_started");
        started.branch = Some(if index % 2 == 0 { "main" } else { "dev" }.into());
        ingest_one(&*store, request(&web, vec![started]), 10 + index).await;
    }
    ingest_one(
        &*store,
        request(&api, vec![event("a0", "build_completed")]),
        100,
    )
    .await;
    let all = store
        .list_builds(&BuildFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter()
            .map(|b| b.state.run_id.as_str())
            .collect::<Vec<_>>(),
        vec!["a0", "w4", "w3", "w2", "w1", "w0"]
    );
    let main = store
        .list_builds(&BuildFilter {
            project_id: Some(web.id),
            branch: Some("main".into()),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        main.iter()
            .map(|b| b.state.run_id.as_str())
            .collect::<Vec<_>>(),
        vec!["w4", "w2"]
    );
    let next = store
        .list_builds(&BuildFilter {
            project_id: Some(web.id),
            branch: Some("main".into()),
            limit: 2,
            before: Some(main[1].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|b| b.state.run_id.as_str())
            .collect::<Vec<_>>(),
        vec!["w0"]
    );
    let success = store
        .list_builds(&BuildFilter {
            status: Some(BuildStatus::Success),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(success.len(), 1);
    assert_eq!(success[0].project_slug, "api");
}

async fn stale_builds_are_found_and_failed_once(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    ingest_one(
        &*store,
        request(&web, vec![event("old", "build_started")]),
        0,
    )
    .await;
    let mut short = event("short", "build_started");
    short.heartbeat_timeout_secs = Some(10);
    ingest_one(&*store, request(&web, vec![short]), 0).await;
    ingest_one(
        &*store,
        request(&web, vec![event("fresh", "build_started")]),
        50_000,
    )
    .await;

    let stale = store.stale_builds(Millis(60_000), 90, 100).await.unwrap();
    assert_eq!(
        stale
            .iter()
            .map(|b| b.state.run_id.as_str())
            .collect::<Vec<_>>(),
        vec!["short"]
    );
    let stale = store.stale_builds(Millis(95_000), 90, 100).await.unwrap();
    assert_eq!(stale.len(), 2);

    // A heartbeat lands between the scan and the reaper's write: the guard ignores it.
    ingest_one(
        &*store,
        request(&web, vec![event("old", "heartbeat")]),
        95_000,
    )
    .await;
    let mut reap = event("old", "build_failed");
    reap.data = Some(json!({"reason": "stale"}));
    let guarded = IngestRequest {
        project_id: web.id,
        events: vec![reap.clone()],
        precondition: Precondition::BuildIsStale {
            default_timeout_secs: 90,
        },
        jobs: None,
    };
    let outcome = ingest_one(&*store, guarded.clone(), 95_001).await;
    assert_eq!(outcome[0].status, OutcomeStatus::Ignored);
    let outcome = ingest_one(&*store, guarded.clone(), 186_000).await;
    assert_eq!(outcome[0].status, OutcomeStatus::Stored);
    assert_eq!(
        store
            .build_by_run_id("old")
            .await
            .unwrap()
            .unwrap()
            .state
            .status,
        BuildStatus::Stale
    );
    // Once stale, the guard (and the state machine) keep it from failing twice.
    let outcome = ingest_one(&*store, guarded, 300_000).await;
    assert_eq!(outcome[0].status, OutcomeStatus::Ignored);
}

async fn concurrent_writers_on_two_stores_leave_no_gaps(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    // Two stores on one database stand for two server replicas.
    let replicas: [Arc<dyn Store>; 2] = [database.open_dyn().await, database.open_dyn().await];
    let web = project(&*replicas[0], "web").await;
    const WRITERS: usize = 8;
    const REQUESTS: usize = 40;
    let reader_store = replicas[1].clone();
    let project_id = web.id;
    let reader = tokio::spawn(async move {
        // Tails the project's events by cursor the way live clients do: every page must
        // continue exactly where the last one ended.
        let mut cursor = 0;
        let mut seen = 0;
        while seen < WRITERS * REQUESTS * 2 {
            let page = reader_store
                .project_events_after(project_id, cursor, 500)
                .await
                .unwrap();
            for stored in &page {
                assert_eq!(stored.id, cursor + 1, "gap or reorder after id {cursor}");
                cursor = stored.id;
                seen += 1;
            }
            tokio::task::yield_now().await;
        }
        seen
    });
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = replicas[writer % 2].clone();
        let web = web.clone();
        writers.push(tokio::spawn(async move {
            for index in 0..REQUESTS {
                let run = format!("run-{writer}");
                let events = vec![
                    with_id(event(&run, "heartbeat"), &format!("{index}-a")),
                    with_id(event(&run, "build_progress"), &format!("{index}-b")),
                ];
                let outcome =
                    ingest_one(&*store, request(&web, events.clone()), 1000 + index as i64).await;
                // Every second request is retried, as a client would after a timeout.
                if index % 2 == 0 {
                    let retry =
                        ingest_one(&*store, request(&web, events), 1000 + index as i64).await;
                    assert_eq!(
                        retry.iter().map(|o| o.id).collect::<Vec<_>>(),
                        outcome.iter().map(|o| o.id).collect::<Vec<_>>()
                    );
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), WRITERS * REQUESTS * 2);
    for writer in 0..WRITERS {
        let build = replicas[0]
            .build_by_run_id(&format!("run-{writer}"))
            .await
            .unwrap()
            .unwrap();
        let events = replicas[0].events_after(build.id, 0, 1000).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=(REQUESTS as i64 * 2)).collect::<Vec<_>>()
        );
        let unique: HashSet<i64> = events.iter().map(|e| e.id).collect();
        assert_eq!(unique.len(), REQUESTS * 2);
    }
}

/// Group commits in flight at once on one store (PostgreSQL overlaps two: the second's
/// reads must wait for the first's commit, or both would number their events from the
/// same last seq) all extend one build without a gap or a repeat.
async fn overlapping_group_commits_on_one_build_keep_its_sequence(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    ingest_one(
        &*store,
        request(&web, vec![event("shared", "build_started")]),
        1,
    )
    .await;
    const TASKS: usize = 8;
    const REQUESTS: usize = 20;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let web = web.clone();
        tasks.push(tokio::spawn(async move {
            for index in 0..REQUESTS {
                let outcome = ingest_one(
                    &*store,
                    request(
                        &web,
                        vec![with_id(
                            event("shared", "heartbeat"),
                            &format!("{task}-{index}"),
                        )],
                    ),
                    2 + index as i64,
                )
                .await;
                assert_eq!(outcome[0].status, OutcomeStatus::Stored);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let build = store.build_by_run_id("shared").await.unwrap().unwrap();
    let events = store.events_after(build.id, 0, 1000).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=(TASKS * REQUESTS) as i64 + 1).collect::<Vec<_>>()
    );
    assert_eq!(build.state.last_seq, (TASKS * REQUESTS) as i64 + 1);
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "{ids:?}");
}

/// A writer that remembers builds between transactions (SQLite's) must notice that
/// another connection wrote the same build in between, and continue from there.
async fn two_stores_writing_one_build_keep_its_sequence(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let stores: [Arc<dyn Store>; 2] = [database.open_dyn().await, database.open_dyn().await];
    let web = project(&*stores[0], "web").await;
    let first = ingest_one(
        &*stores[0],
        request(&web, vec![event("shared", "build_started")]),
        1,
    )
    .await;
    assert_eq!(first[0].seq, Some(1));
    for index in 0..10_i64 {
        let store = &stores[(index % 2) as usize ^ 1];
        let stage = format!("stage-{index}");
        let outcome = ingest_one(
            &**store,
            request(
                &web,
                vec![with_id(
                    stage_event("shared", "stage_started", &stage),
                    &format!("e{index}"),
                )],
            ),
            2 + index,
        )
        .await;
        assert_eq!(outcome[0].status, OutcomeStatus::Stored);
        assert_eq!(
            outcome[0].seq,
            Some(index + 2),
            "seq continues across stores"
        );
    }
    // A retry through the other store is still recognised as a duplicate.
    let retry = ingest_one(
        &*stores[0],
        request(
            &web,
            vec![with_id(
                stage_event("shared", "stage_started", "stage-9"),
                "e9",
            )],
        ),
        50,
    )
    .await;
    assert_eq!(retry[0].status, OutcomeStatus::Duplicate);
    assert_eq!(retry[0].seq, Some(11));
    let build = stores[1].build_by_run_id("shared").await.unwrap().unwrap();
    assert_eq!(build.state.last_seq, 11);
    assert_eq!(build.state.stages.len(), 10);
    assert_eq!(
        build.state.current_stage.as_ref().map(|s| s.as_str()),
        Some("stage-9")
    );
    let ended = ingest_one(
        &*stores[1],
        request(&web, vec![event("shared", "build_completed")]),
        60,
    )
    .await;
    assert_eq!(ended[0].seq, Some(12));
    let after = stores[0]
        .ingest(
            &[request(
                &web,
                vec![stage_event("shared", "stage_started", "late")],
            )],
            Millis(61),
        )
        .await
        .unwrap();
    assert!(
        after[0].is_err(),
        "the ended build refuses lifecycle events on either store"
    );
}

async fn migrations_are_idempotent_across_reopen(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    ingest_one(&*store, request(&web, vec![event("r", "build_started")]), 1).await;
    drop(store);
    let reopened = database.open_dyn().await;
    assert_eq!(
        reopened
            .build_by_run_id("r")
            .await
            .unwrap()
            .unwrap()
            .state
            .last_seq,
        1
    );
    let next = ingest_one(&*reopened, request(&web, vec![event("r", "heartbeat")]), 2).await;
    assert_eq!(next[0].id, Some(2));
}

async fn event_ids_are_per_build_even_when_prefetched_together(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    ingest_one(
        &*store,
        request(
            &web,
            vec![
                with_id(event("a", "heartbeat"), "x"),
                with_id(event("b", "heartbeat"), "y"),
            ],
        ),
        1,
    )
    .await;
    // The same eventIds on the other build are new events: a group that looks both up at
    // once must not confuse (a, y) with (b, y).
    let results = store
        .ingest(
            &[
                request(&web, vec![with_id(event("a", "heartbeat"), "y")]),
                request(
                    &web,
                    vec![
                        with_id(event("b", "heartbeat"), "x"),
                        with_id(event("b", "heartbeat"), "y"),
                    ],
                ),
            ],
            Millis(2),
        )
        .await
        .unwrap();
    assert_eq!(
        results[0].as_ref().unwrap()[0].status,
        OutcomeStatus::Stored
    );
    let second = results[1].as_ref().unwrap();
    assert_eq!(second[0].status, OutcomeStatus::Stored);
    assert_eq!(second[1].status, OutcomeStatus::Duplicate);
    assert_eq!(second[1].seq, Some(1));
    // Many builds in one group: numbers in arrival order, every build written.
    let many: Vec<IngestRequest> = (0..700)
        .map(|i| request(&web, vec![event(&format!("m{i:03}"), "build_started")]))
        .collect();
    let results = store.ingest(&many, Millis(3)).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        store.build_by_run_id("m000").await.unwrap().unwrap().number,
        3
    );
    assert_eq!(
        store.build_by_run_id("m699").await.unwrap().unwrap().number,
        702
    );
    let updates: Vec<IngestRequest> = (0..700)
        .map(|i| {
            request(
                &web,
                vec![stage_event(&format!("m{i:03}"), "stage_started", "S")],
            )
        })
        .collect();
    store.ingest(&updates, Millis(4)).await.unwrap();
    let last = store.build_by_run_id("m699").await.unwrap().unwrap();
    assert_eq!((last.state.last_seq, last.state.stages.len()), (2, 1));
}

engine_test!(event_ids_are_per_build_even_when_prefetched_together);

/// A database written by the previous release (schema 8) opens with this one: the
/// migrations after it apply, its rows read as before, the new tables work.
async fn a_database_of_the_previous_release_upgrades(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    database
        .at_schema_version(
            8,
            &[
                "INSERT INTO projects (slug, name, created_at, repo, default_branch) \
                 VALUES ('old', 'Old', 1, 'https://bot:tok@git.example.com/old.git', 'main')",
            ],
        )
        .await;
    let store = database.open_dyn().await;
    let old = store.project_by_slug("old").await.unwrap().unwrap();
    assert_eq!(
        old.repo.as_deref(),
        Some("https://bot:tok@git.example.com/old.git")
    );
    assert_eq!(old.repo_credentials, None);
    store
        .set_project_secret(old.id, "TOKEN", "kiln1:00", Millis(2))
        .await
        .unwrap();
    assert_eq!(store.list_project_secrets(old.id).await.unwrap().len(), 1);
    let web = project(&*store, "web").await;
    ingest_one(&*store, request(&web, vec![event("r", "build_started")]), 3).await;
    assert!(store.build_by_run_id("r").await.unwrap().is_some());
}

/// One build's 50 events of the big group commit: started, a stage done, a stage
/// running, then heartbeats; every one with an eventId (`{run}-{n}`).
fn fifty_events(run_id: &str, from: usize) -> Vec<NewEvent> {
    (from..from + 50)
        .map(|n| {
            let event = match n {
                0 => event(run_id, "build_started"),
                1 => stage_event(run_id, "stage_started", "Build"),
                2 => stage_event(run_id, "stage_completed", "Build"),
                3 => stage_event(run_id, "stage_started", "Test"),
                _ => event(run_id, "heartbeat"),
            };
            with_id(event, &format!("{run_id}-{n}"))
        })
        .collect()
}

/// 5,000 events in one group commit (100 requests of 50, 100 new builds), then 5,000
/// more of which half repeat eventIds of the first: every event is stored once, with
/// contiguous ids, and each build's state is whole.
async fn a_group_commit_of_5000_events(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let runs: Vec<String> = (0..100).map(|n| format!("big-{n}")).collect();

    let first: Vec<IngestRequest> = runs
        .iter()
        .map(|run| request(&web, fifty_events(run, 0)))
        .collect();
    let results = store.ingest(&first, Millis(1_000)).await.unwrap();
    let mut first_ids = std::collections::HashMap::new();
    let mut ids = Vec::new();
    for (run, result) in runs.iter().zip(&results) {
        let outcomes = result.as_ref().expect("accepted");
        assert_eq!(outcomes.len(), 50);
        for (n, outcome) in outcomes.iter().enumerate() {
            assert_eq!(outcome.status, OutcomeStatus::Stored, "{run} #{n}");
            assert_eq!(outcome.seq, Some(n as i64 + 1));
            first_ids.insert(format!("{run}-{n}"), outcome.id.unwrap());
            ids.push(outcome.id.unwrap());
        }
    }
    // Ids are contiguous, in request order.
    let base = ids[0];
    assert_eq!(ids, (base..base + 5_000).collect::<Vec<_>>());
    assert_eq!(store.max_event_id().await.unwrap(), base + 4_999);

    // A second group: the first 25 events of each build again (a client retrying), and
    // 25 new ones.
    let second: Vec<IngestRequest> = runs
        .iter()
        .map(|run| {
            let mut events = fifty_events(run, 0);
            events.truncate(25);
            events.extend(fifty_events(run, 50).into_iter().take(25));
            request(&web, events)
        })
        .collect();
    let results = store.ingest(&second, Millis(2_000)).await.unwrap();
    let mut new_ids = Vec::new();
    for (run, result) in runs.iter().zip(&results) {
        let outcomes = result.as_ref().expect("accepted");
        for (n, outcome) in outcomes.iter().take(25).enumerate() {
            assert_eq!(outcome.status, OutcomeStatus::Duplicate, "{run} #{n}");
            assert_eq!(outcome.id, Some(first_ids[&format!("{run}-{n}")]));
        }
        for (n, outcome) in outcomes.iter().skip(25).enumerate() {
            assert_eq!(outcome.status, OutcomeStatus::Stored, "{run} #{}", 50 + n);
            assert_eq!(outcome.seq, Some(51 + n as i64));
            new_ids.push(outcome.id.unwrap());
        }
    }
    assert_eq!(
        new_ids,
        (base + 5_000..base + 7_500).collect::<Vec<_>>(),
        "the new events continue the ids without a gap"
    );

    // Everything is stored once, and readable in id order.
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after_global(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        stored.extend(page);
    }
    assert_eq!(stored.len(), 7_500);
    let distinct: HashSet<i64> = stored.iter().map(|event| event.id).collect();
    assert_eq!(distinct.len(), 7_500);

    let mut numbers = HashSet::new();
    for (position, run) in runs.iter().enumerate() {
        let build = store.build_by_run_id(run).await.unwrap().unwrap();
        assert_eq!(build.state.status, BuildStatus::Running, "{run}");
        assert_eq!(build.state.last_seq, 75, "{run}");
        // Its 25 new events of the second group end at this id.
        assert_eq!(
            build.last_event_id,
            base + 5_000 + position as i64 * 25 + 24,
            "{run}"
        );
        let stages: Vec<(&str, &str)> = build
            .state
            .stages
            .iter()
            .map(|stage| (stage.name.as_str(), stage.status.as_str()))
            .collect();
        assert_eq!(stages, [("Build", "success"), ("Test", "running")], "{run}");
        numbers.insert(build.number);
    }
    assert_eq!(
        numbers,
        (1..=100).collect::<HashSet<i64>>(),
        "build numbers"
    );
}

/// A database of the release before reported jobs (schema 10) with a build Kiln ran:
/// after the upgrade its job is an agent's job, still claimable, and a reported job can
/// be added beside it to another build.
async fn jobs_of_the_previous_release_stay_agents_jobs(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    database
        .at_schema_version(
            10,
            &[
                "INSERT INTO projects (id, slug, name, created_at, default_branch) \
                 VALUES (7, 'old', 'Old', 1, 'main')",
                "INSERT INTO builds (id, project_id, run_id, number, status, created_at, \
                 started_at, last_event_at, last_event_id, last_seq) \
                 VALUES (70, 7, 'old-run', 1, 'queued', 1, 1, 1, 0, 0)",
                "INSERT INTO jobs (id, build_id, project_id, step, position, state, priority, \
                 depends_on, labels, spec, created_at, queued_at) \
                 VALUES (700, 70, 7, 'test', 0, 'queued', 5, '[]', '[]', '{}', 1, 1)",
            ],
        )
        .await;
    let store = database.open_dyn().await;
    let job = store.job_by_id(700).await.unwrap().unwrap();
    assert!(!job.reported);
    assert_eq!(store.unfinished_jobs(10).await.unwrap().len(), 1);
    let old = store.project_by_slug("old").await.unwrap().unwrap();
    ingest_one(
        &*store,
        request(&old, vec![event("ext", "build_started")]),
        3,
    )
    .await;
    let ext = store.build_by_run_id("ext").await.unwrap().unwrap();
    let reported = store
        .reported_job(ext.id, old.id, "run", Millis(4))
        .await
        .unwrap();
    assert!(reported.reported);
    assert!(
        store
            .reported_job(70, old.id, "test", Millis(4))
            .await
            .is_err()
    );
}

/// The readiness check answers from its own connection: when the database cut it (a
/// restart, an administrator's `pg_terminate_backend`), the next check connects again
/// instead of reporting the database down.
async fn readiness_survives_its_connection_being_cut(engine: Engine) {
    let db = TestDatabase::create(engine).await;
    let store = db.open().await;
    store.ping().await.unwrap();
    if engine == Engine::Postgres {
        assert!(
            db.cut_connections().await >= 1,
            "the check's connection was open"
        );
    }
    store.ping().await.unwrap();
    store.ping().await.unwrap();
}
