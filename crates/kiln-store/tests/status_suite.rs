//! `/metrics`' counts and public status, against SQLite and PostgreSQL alike.

use kiln_core::jobs::JobPlan;
use kiln_core::{BuildStatus, EventType, JobState, Millis, NewEvent, ProjectSlug, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;
use serde_json::json;

engine_test!(operational_counts_count_what_is_not_ended);
engine_test!(public_status_is_off_until_set_and_summaries_read_a_window);
engine_test!(projects_of_the_previous_release_are_not_public);

async fn project(store: &dyn Store, slug: &str) -> Project {
    store
        .create_project(&ProjectSlug::parse("slug", slug).unwrap(), slug, Millis(1))
        .await
        .unwrap()
}

fn event(run_id: &str, kind: &str, branch: &str) -> NewEvent {
    let mut event = NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", kind).unwrap(),
    );
    event.branch = Some(branch.into());
    event.commit = Some(format!("{run_id}-commit"));
    event
}

async fn ingest(store: &dyn Store, project: &Project, events: Vec<NewEvent>, now: i64) {
    store
        .ingest(&[IngestRequest::events(project.id, events)], Millis(now))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
}

async fn operational_counts_count_what_is_not_ended(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    assert_eq!(
        store.operational_counts().await.unwrap(),
        OperationalCounts::default(),
        "an empty database counts nothing"
    );
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    ingest(
        &*store,
        &web,
        vec![event("w1", "build_started", "main")],
        10,
    )
    .await;
    ingest(&*store, &web, vec![event("w2", "build_queued", "main")], 11).await;
    ingest(
        &*store,
        &web,
        vec![
            event("w3", "build_started", "main"),
            event("w3", "build_completed", "main"),
        ],
        12,
    )
    .await;
    ingest(&*store, &api, vec![event("a1", "build_started", "dev")], 13).await;

    // A build with two jobs, one queued and one blocked behind it, and an agent that
    // claims the queued one; a second agent idles.
    let build = store.build_by_run_id("w2").await.unwrap().unwrap();
    let plan = |step: &str, position: i64, state: JobState, depends_on: Vec<String>| JobPlan {
        step: step.into(),
        position,
        depends_on,
        labels: vec![],
        state,
        spec: json!({}),
        avoid_agent_id: None,
    };
    store
        .create_jobs(
            build.id,
            web.id,
            5,
            &[
                plan("build", 0, JobState::Queued, vec![]),
                plan("test", 1, JobState::Blocked, vec!["build".into()]),
                plan("lint", 2, JobState::Queued, vec![]),
            ],
            Millis(20),
        )
        .await
        .unwrap();
    let new_agent = |name: &str| NewAgent {
        name: name.into(),
        token_id: 1,
        labels: vec![],
        concurrency: 1,
        executor: "process".into(),
        hostname: None,
        version: None,
    };
    let busy = store
        .register_agent(&new_agent("busy"), Millis(30))
        .await
        .unwrap();
    let idle = store
        .register_agent(&new_agent("idle"), Millis(31))
        .await
        .unwrap();
    let rules = ClaimRules {
        lease_ms: 60_000,
        aging_ms: 300_000,
    };
    assert!(
        store
            .claim_job(&busy, rules, Millis(40))
            .await
            .unwrap()
            .is_some()
    );

    // Outboxes: a pending webhook delivery; the consumer has read nothing.
    let endpoint = store
        .create_webhook_endpoint(&NewWebhookEndpoint {
            project_id: web.id,
            url: "https://hooks.example.com/x".into(),
            secret: "s".into(),
            events: vec![],
            format: WebhookFormat::Kiln,
            active: true,
            created_at: Millis(50),
        })
        .await
        .unwrap();
    store
        .insert_webhook_delivery(&NewWebhookDelivery {
            endpoint_id: endpoint.id,
            event_id: Some(1),
            event_type: "build_started".into(),
            body: "{}".into(),
            created_at: Millis(55),
        })
        .await
        .unwrap();

    let counts = store.operational_counts().await.unwrap();
    assert_eq!(
        counts.active_builds,
        [
            ("api".to_owned(), BuildStatus::Running, 1),
            ("web".to_owned(), BuildStatus::Queued, 1),
            ("web".to_owned(), BuildStatus::Running, 1),
        ]
    );
    let mut jobs = counts.active_jobs.clone();
    jobs.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(
        jobs,
        [
            (JobState::Blocked, 1),
            (JobState::Queued, 1),
            (JobState::Running, 1)
        ]
    );
    assert_eq!(counts.oldest_queued_at, Some(Millis(20)));
    assert_eq!(
        counts.agents,
        [
            AgentActivity {
                id: busy.id,
                last_seen_at: Millis(30),
                running_jobs: 1
            },
            AgentActivity {
                id: idle.id,
                last_seen_at: Millis(31),
                running_jobs: 0
            },
        ]
    );
    assert_eq!(counts.webhook_pending, 1);
    assert_eq!(counts.webhook_oldest_pending_at, Some(Millis(55)));
    let max_event_id = store.max_event_id().await.unwrap();
    assert_eq!(counts.webhook_unread_events, max_event_id);
    assert_eq!(
        (counts.email_pending, counts.email_oldest_pending_at),
        (0, None)
    );
}

async fn public_status_is_off_until_set_and_summaries_read_a_window(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    assert!(!web.public_status);
    let published = store.set_public_status(web.id, true).await.unwrap();
    assert!(published.public_status);
    assert!(
        store
            .project_by_slug("web")
            .await
            .unwrap()
            .unwrap()
            .public_status
    );
    assert!(
        !store
            .set_public_status(web.id, false)
            .await
            .unwrap()
            .public_status
    );
    assert!(matches!(
        store.set_public_status(9_999, true).await,
        Err(StoreError::NotFound(_))
    ));

    // Five builds: main, dev, main (failed), feature/x (running), main (passed).
    let runs = [
        ("b1", "main", Some("build_completed")),
        ("b2", "dev", Some("build_completed")),
        ("b3", "main", Some("build_failed")),
        ("b4", "feature/x", None),
        ("b5", "main", Some("build_completed")),
    ];
    for (index, (run, branch, end)) in runs.iter().enumerate() {
        let mut events = vec![event(run, "build_started", branch)];
        if let Some(end) = end {
            events.push(event(run, end, branch));
        }
        ingest(&*store, &web, events, 100 + index as i64).await;
    }
    let all = store
        .recent_build_summaries(web.id, 1000, None, 1000)
        .await
        .unwrap();
    let seen: Vec<(i64, &str, BuildStatus)> = all
        .iter()
        .map(|b| (b.number, b.branch.as_deref().unwrap(), b.status))
        .collect();
    assert_eq!(
        seen,
        [
            (5, "main", BuildStatus::Success),
            (4, "feature/x", BuildStatus::Running),
            (3, "main", BuildStatus::Failed),
            (2, "dev", BuildStatus::Success),
            (1, "main", BuildStatus::Success),
        ]
    );
    assert_eq!(all[0].commit.as_deref(), Some("b5-commit"));
    assert!(all[0].ended_at.is_some() && all[1].ended_at.is_none());

    let main = store
        .recent_build_summaries(web.id, 1000, Some("main"), 1)
        .await
        .unwrap();
    assert_eq!(main.len(), 1);
    assert_eq!((main[0].number, main[0].status), (5, BuildStatus::Success));
    // Only the newest `window` builds count: dev's build is the fourth newest.
    assert!(
        store
            .recent_build_summaries(web.id, 3, Some("dev"), 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .recent_build_summaries(web.id, 4, Some("dev"), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .recent_build_summaries(web.id, 1000, Some("nope"), 1)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A project of a database before public status (schema 11) is private after the
/// upgrade, and can be published.
async fn projects_of_the_previous_release_are_not_public(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    database
        .at_schema_version(
            11,
            &[
                "INSERT INTO projects (slug, name, created_at, default_branch) \
               VALUES ('old', 'Old', 1, 'main')",
            ],
        )
        .await;
    let store = database.open_dyn().await;
    let old = store.project_by_slug("old").await.unwrap().unwrap();
    assert!(!old.public_status);
    assert!(
        store
            .set_public_status(old.id, true)
            .await
            .unwrap()
            .public_status
    );
}
