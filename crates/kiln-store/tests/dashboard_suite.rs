//! The dashboard's reads — builds of a set of projects, recent durations per pipeline,
//! the first event of each build — against SQLite and PostgreSQL alike.

use kiln_core::{EventType, Millis, NewEvent, ProjectSlug, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;
use serde_json::json;

engine_test!(builds_of_a_project_set_in_one_list);
engine_test!(recent_success_durations_per_pipeline);
engine_test!(first_events_of_a_page);
engine_test!(log_lines_are_counted_before_an_offset);

fn event(run_id: &str, kind: &str) -> NewEvent {
    NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", kind).unwrap(),
    )
}

async fn project(store: &dyn Store, slug: &str) -> Project {
    store
        .create_project(&ProjectSlug::parse("slug", slug).unwrap(), slug, Millis(1))
        .await
        .unwrap()
}

async fn ingest(store: &dyn Store, project: &Project, events: Vec<NewEvent>, now: i64) {
    let mut results = store
        .ingest(
            &[IngestRequest {
                project_id: project.id,
                events,
                precondition: Precondition::None,
                jobs: None,
            }],
            Millis(now),
        )
        .await
        .unwrap();
    results.remove(0).expect("request accepted");
}

fn run_ids(builds: &[BuildRecord]) -> Vec<&str> {
    builds.iter().map(|b| b.state.run_id.as_str()).collect()
}

async fn builds_of_a_project_set_in_one_list(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    let secret = project(&*store, "secret").await;
    for (index, owner) in [&web, &api, &secret, &web, &api, &secret]
        .iter()
        .enumerate()
    {
        let mut started = event(&format!("b{index}"), "build_started");
        started.branch = Some(if index < 3 { "main" } else { "dev" }.into());
        ingest(&*store, owner, vec![started], 10 + index as i64).await;
    }
    let readable = |ids: Vec<i64>| BuildFilter {
        project_ids: Some(ids),
        limit: 10,
        ..BuildFilter::default()
    };
    let listed = store
        .list_builds(&readable(vec![web.id, api.id]))
        .await
        .unwrap();
    assert_eq!(run_ids(&listed), ["b4", "b3", "b1", "b0"]);
    assert!(
        store
            .list_builds(&readable(Vec::new()))
            .await
            .unwrap()
            .is_empty(),
        "an empty set reads nothing (a user without projects)"
    );
    // The set combines with the other filters and the cursor.
    let filtered = store
        .list_builds(&BuildFilter {
            branch: Some("main".into()),
            ..readable(vec![web.id, api.id, secret.id])
        })
        .await
        .unwrap();
    assert_eq!(run_ids(&filtered), ["b2", "b1", "b0"]);
    let page = store
        .list_builds(&BuildFilter {
            before: Some(listed[1].id),
            limit: 1,
            ..readable(vec![web.id, api.id])
        })
        .await
        .unwrap();
    assert_eq!(run_ids(&page), ["b1"]);
    let one_project = store
        .list_builds(&BuildFilter {
            project_id: Some(api.id),
            ..readable(vec![web.id, api.id])
        })
        .await
        .unwrap();
    assert_eq!(run_ids(&one_project), ["b4", "b1"]);
}

/// A finished build of `branch` (and `command`) that took `duration_ms`.
async fn finished(
    store: &dyn Store,
    project: &Project,
    run_id: &str,
    branch: &str,
    command: Option<&str>,
    outcome: &str,
    duration_ms: i64,
) {
    let mut started = event(run_id, "build_started");
    started.branch = Some(branch.into());
    started.command = command.map(str::to_owned);
    let mut ended = event(run_id, outcome);
    ended.duration_ms = Some(duration_ms);
    ingest(store, project, vec![started, ended], 10).await;
}

async fn recent_success_durations_per_pipeline(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    // web/main: 25 successes (only the newest 20 count), failures in between ignored.
    for index in 0..25 {
        finished(
            &*store,
            &web,
            &format!("m{index}"),
            "main",
            None,
            "build_completed",
            1000 + index,
        )
        .await;
        if index % 5 == 0 {
            finished(
                &*store,
                &web,
                &format!("f{index}"),
                "main",
                None,
                "build_failed",
                99_999,
            )
            .await;
        }
    }
    // web/main with a command is another pipeline; so is web/dev and api/main.
    finished(
        &*store,
        &web,
        "c0",
        "main",
        Some("npm test"),
        "build_completed",
        7000,
    )
    .await;
    finished(&*store, &web, "d0", "dev", None, "build_completed", 500).await;
    finished(&*store, &api, "a0", "main", None, "build_completed", 42).await;

    let key = |project: &Project, branch: &str, command: Option<&str>| PipelineKey {
        project_id: project.id,
        branch: Some(branch.into()),
        command: command.map(str::to_owned),
    };
    let keys = vec![
        key(&web, "main", None),
        key(&web, "main", Some("npm test")),
        key(&web, "dev", None),
        key(&api, "main", None),
        key(&api, "nowhere", None),
    ];
    let found = store.recent_success_durations(&keys, 20).await.unwrap();
    assert_eq!(found.len(), 4, "a pipeline without successes is left out");
    let durations = |index: usize| -> (PipelineKey, Vec<i64>) {
        let (key, samples) = &found[index];
        (key.clone(), samples.iter().map(|s| s.duration_ms).collect())
    };
    assert_eq!(found[0].0, keys[0]);
    assert_eq!(
        durations(0).1,
        (5..25).rev().map(|i| 1000 + i).collect::<Vec<i64>>()
    );
    assert!(
        found[0]
            .1
            .windows(2)
            .all(|w| w[0].started_at >= w[1].started_at),
        "newest first, with their start times"
    );
    assert_eq!(durations(1), (keys[1].clone(), vec![7000]));
    assert_eq!(durations(2), (keys[2].clone(), vec![500]));
    assert_eq!(durations(3), (keys[3].clone(), vec![42]));
    assert!(
        store
            .recent_success_durations(&[], 20)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn first_events_of_a_page(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let mut queued = event("q1", "build_queued");
    queued.data = Some(json!({"trigger": "api", "by": "dev@example.com"}));
    ingest(
        &*store,
        &web,
        vec![queued, event("q1", "build_started")],
        10,
    )
    .await;
    let mut started = event("s1", "build_started");
    started.host = Some("laptop".into());
    ingest(&*store, &web, vec![started, event("s1", "heartbeat")], 11).await;
    let builds = store
        .list_builds(&BuildFilter {
            limit: 10,
            ..BuildFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
    let firsts = store.first_events(&ids).await.unwrap();
    assert_eq!(firsts.len(), 2);
    let queued = firsts.iter().find(|e| e.build_id == builds[1].id).unwrap();
    assert_eq!(queued.event_type, "build_queued");
    assert_eq!(queued.payload["data"]["by"], "dev@example.com");
    let started = firsts.iter().find(|e| e.build_id == builds[0].id).unwrap();
    assert_eq!(started.event_type, "build_started");
    assert_eq!(started.payload["host"], "laptop");
    assert!(store.first_events(&[]).await.unwrap().is_empty());

    let latest = store.latest_events(builds[0].id, 1).await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].event_type, "heartbeat", "newest first");
    let both = store.latest_events(builds[0].id, 10).await.unwrap();
    assert_eq!(both.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 1]);
}

async fn log_lines_are_counted_before_an_offset(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    ingest(&*store, &web, vec![event("l1", "build_queued")], 10).await;
    let build = store.build_by_run_id("l1").await.unwrap().unwrap();
    let plan = kiln_core::jobs::JobPlan {
        step: "test".into(),
        position: 0,
        depends_on: Vec::new(),
        labels: Vec::new(),
        state: kiln_core::JobState::Queued,
        spec: json!({}),
        avoid_agent_id: None,
    };
    store
        .create_jobs(build.id, web.id, 5, &[plan], Millis(10))
        .await
        .unwrap();
    let job = store.jobs_of_build(build.id).await.unwrap().remove(0);
    // Three chunks with invalid UTF-8, NUL and ANSI bytes beside the newlines.
    let chunks: [&[u8]; 3] = [
        b"one\ntwo\n",
        b"\xff\x00\x1b[31mred\nno end",
        b" yet\nlast\n",
    ];
    let mut whole = Vec::new();
    for chunk in chunks {
        store
            .append_log(job.id, whole.len() as i64, chunk, 1 << 20)
            .await
            .unwrap();
        whole.extend_from_slice(chunk);
    }
    for offset in 0..=whole.len() + 2 {
        let expected = whole[..offset.min(whole.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as i64;
        assert_eq!(
            store.log_lines_before(job.id, offset as i64).await.unwrap(),
            expected,
            "newlines before byte {offset}"
        );
    }
}
