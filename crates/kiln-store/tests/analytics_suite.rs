//! Analytics reads with kept closed days (`analytics_days`), on both engines: they answer
//! what the builds themselves answer, days with a running build are not kept, and an
//! event on an ended build of a kept day is seen at once.

use std::collections::BTreeMap;

use kiln_core::analytics::Samples;
use kiln_core::{EventType, Millis, NewEvent, ProjectSlug, RunId, StageName};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;

engine_test!(kept_days_answer_like_the_builds);
engine_test!(an_event_on_an_ended_build_makes_its_kept_day_stale);
engine_test!(builds_of_the_previous_release_are_kept_after_the_upgrade);

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const DAY0: i64 = 1_800_000_000_000 / DAY * DAY;

fn event(run_id: &str, kind: &str, stage: Option<&str>) -> NewEvent {
    let mut event = NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", kind).unwrap(),
    );
    event.stage = stage.map(|name| StageName::parse("stage", name).unwrap());
    event
}

struct Seeder<'a> {
    store: &'a dyn Store,
    project: i64,
}

impl Seeder<'_> {
    async fn send(&self, at: i64, event: NewEvent) {
        let request = IngestRequest {
            project_id: self.project,
            events: vec![event],
            precondition: Precondition::None,
            jobs: None,
        };
        let mut results = self.store.ingest(&[request], Millis(at)).await.unwrap();
        results.remove(0).expect("accepted");
    }

    /// A build started at `at` on `branch`, with two stages; it ends with `end` (or
    /// keeps running) and reports a metric.
    async fn build(&self, run_id: &str, at: i64, branch: &str, end: Option<&str>) {
        let mut started = event(run_id, "build_started", None);
        started.branch = Some(branch.into());
        started.command = Some(format!("make {branch}"));
        self.send(at, started).await;
        self.send(at + 1_000, event(run_id, "stage_started", Some("build")))
            .await;
        self.send(at + 61_000, event(run_id, "stage_completed", Some("build")))
            .await;
        self.send(at + 61_000, event(run_id, "stage_started", Some("test")))
            .await;
        if let Some(end) = end {
            let failed = end == "build_failed";
            let stage_end = if failed {
                "stage_failed"
            } else {
                "stage_completed"
            };
            self.send(at + 121_000, event(run_id, stage_end, Some("test")))
                .await;
            let mut ended = event(run_id, end, None);
            ended.metrics = Some(BTreeMap::from([("bundle_kb".to_owned(), at as f64 / 1e9)]));
            self.send(at + 125_000, ended).await;
        }
    }
}

fn filter(project: i64, branch: Option<&str>) -> AnalyticsFilter {
    AnalyticsFilter {
        project_id: project,
        from: Millis(DAY0 + 6 * HOUR),
        to: Millis(DAY0 + 5 * DAY),
        branch: branch.map(Into::into),
        command: None,
    }
}

/// Samples in a fixed order, to compare two reads.
fn sorted(mut samples: Samples) -> Samples {
    samples.builds.sort_by_key(|b| b.started_at);
    samples
        .stages
        .sort_by_key(|s| (s.name.clone(), s.status.as_str(), s.duration_ms));
    samples.queue_waits_ms.sort_unstable();
    samples
}

fn same(a: Samples, b: Samples) {
    let (a, b) = (sorted(a), sorted(b));
    assert_eq!(a.builds, b.builds);
    assert_eq!(a.stages, b.stages);
    assert_eq!(a.queue_waits_ms, b.queue_waits_ms);
}

/// What the builds answer: a read at a time before any day closed keeps nothing.
async fn from_the_builds(store: &dyn Store, filter: &AnalyticsFilter) -> Samples {
    store.analytics_samples(filter, Millis(DAY0)).await.unwrap()
}

async fn kept_days(database: &TestDatabase) -> Vec<i64> {
    database
        .integers(
            "SELECT day FROM analytics_days WHERE data IS NOT NULL AND changed_at <= computed_through ORDER BY day",
        )
        .await
        .into_iter()
        .map(|day| (day - DAY0) / DAY)
        .collect()
}

/// A fresh database with its store and a project `web`.
async fn fresh(engine: Engine) -> (TestDatabase, std::sync::Arc<dyn Store>, Project) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let project = store
        .create_project(
            &ProjectSlug::parse("slug", "web").unwrap(),
            "web",
            Millis(1),
        )
        .await
        .unwrap();
    (database, store, project)
}

async fn kept_days_answer_like_the_builds(engine: Engine) {
    let (database, store, project) = fresh(engine).await;
    let seed = Seeder {
        store: &*store,
        project: project.id,
    };
    // Days 0–4: two builds a day on main and dev (one fails on day 1), none on day 3, and
    // one build of day 2 still running.
    for day in [0, 1, 2, 4] {
        let at = DAY0 + day * DAY + 9 * HOUR;
        let end = if day == 1 {
            "build_failed"
        } else {
            "build_completed"
        };
        seed.build(&format!("m{day}"), at, "main", Some(end)).await;
        seed.build(
            &format!("d{day}"),
            at + HOUR,
            "dev",
            Some("build_completed"),
        )
        .await;
    }
    seed.build("running", DAY0 + 2 * DAY + 20 * HOUR, "main", None)
        .await;

    // Day 5, 00:30: days 1–3 are whole closed days of the range (day 0 starts before
    // it, day 4 ended only 30 minutes ago).
    let now = Millis(DAY0 + 5 * DAY + 30 * 60_000);
    let all = filter(project.id, None);
    let oracle = from_the_builds(&*store, &all).await;
    assert_eq!(oracle.builds.len(), 9, "day 0 starts before the range");
    assert!(kept_days(&database).await.is_empty());

    let first = store.analytics_samples(&all, now).await.unwrap();
    assert_eq!(
        kept_days(&database).await,
        vec![1, 3],
        "day 2 has a running build"
    );
    same(first, oracle.clone());
    let second = store.analytics_samples(&all, now).await.unwrap();
    same(second, oracle);

    // A filter applies to the kept days as to the builds.
    let main = filter(project.id, Some("main"));
    let kept = store.analytics_samples(&main, now).await.unwrap();
    assert_eq!(kept.builds.len(), 5, "four ended and the running one");
    same(kept, from_the_builds(&*store, &main).await);

    // The running build ends: its day is kept on the next read.
    seed.send(now.0, event("running", "build_cancelled", None))
        .await;
    let after = store.analytics_samples(&all, now).await.unwrap();
    assert_eq!(kept_days(&database).await, vec![1, 2, 3]);
    same(after, from_the_builds(&*store, &all).await);
}

async fn an_event_on_an_ended_build_makes_its_kept_day_stale(engine: Engine) {
    let (database, store, project) = fresh(engine).await;
    let seed = Seeder {
        store: &*store,
        project: project.id,
    };
    seed.build("b1", DAY0 + DAY + 9 * HOUR, "main", Some("build_completed"))
        .await;
    seed.build(
        "b2",
        DAY0 + 2 * DAY + 9 * HOUR,
        "main",
        Some("build_completed"),
    )
    .await;
    let now = Millis(DAY0 + 10 * DAY);
    let all = filter(project.id, None);
    store.analytics_samples(&all, now).await.unwrap();
    assert_eq!(kept_days(&database).await, vec![1, 2, 3, 4]);

    // A deploy step reports a measurement on b1 days later.
    let mut measured = event("b1", "deployed", None);
    measured.metrics = Some(BTreeMap::from([("bundle_kb".to_owned(), 999.0)]));
    seed.send(now.0, measured).await;
    assert_eq!(kept_days(&database).await, vec![2, 3, 4], "day 1 is stale");
    let samples = store.analytics_samples(&all, now).await.unwrap();
    let b1 = samples
        .builds
        .iter()
        .find(|b| b.started_at.0 == DAY0 + DAY + 9 * HOUR)
        .unwrap();
    assert_eq!(b1.metrics, vec![("bundle_kb".into(), 999.0)]);
    assert_eq!(
        kept_days(&database).await,
        vec![1, 2, 3, 4],
        "computed again"
    );
    same(samples, from_the_builds(&*store, &all).await);

    // A row without data (as a change to a day never read leaves it) is computed.
    database
        .integers(&format!(
            "UPDATE analytics_days SET data = NULL WHERE day = {} RETURNING day",
            DAY0 + 2 * DAY
        ))
        .await;
    assert_eq!(kept_days(&database).await, vec![1, 3, 4]);
    let samples = store.analytics_samples(&all, now).await.unwrap();
    assert_eq!(samples.builds.len(), 2);
    assert_eq!(kept_days(&database).await, vec![1, 2, 3, 4]);
}

async fn builds_of_the_previous_release_are_kept_after_the_upgrade(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let at = DAY0 + DAY + 9 * HOUR;
    database
        .at_schema_version(
            18,
            &[
                "INSERT INTO projects (slug, name, created_at) VALUES ('old', 'Old', 1)",
                &format!(
                    "INSERT INTO builds (project_id, run_id, number, status, branch, created_at, started_at, \
                     ended_at, duration_ms, last_event_at, last_event_id, last_seq, metrics) \
                     VALUES (1, 'old-1', 1, 'success', 'main', {at}, {at}, {end}, 90000, {end}, 0, 3, '{{\"bundle_kb\": 5}}')",
                    end = at + 90_000
                ),
                &format!(
                    "INSERT INTO stages (build_id, name, position, status, started_at, ended_at, duration_ms) \
                     VALUES (1, 'build', 0, 'success', {at}, {end}, 60000)",
                    end = at + 60_000
                ),
            ],
        )
        .await;
    let store = database.open_dyn().await;
    let old = store.project_by_slug("old").await.unwrap().unwrap();
    let range = AnalyticsFilter {
        project_id: old.id,
        from: Millis(DAY0),
        to: Millis(DAY0 + 3 * DAY),
        branch: None,
        command: None,
    };
    let now = Millis(DAY0 + 10 * DAY);
    let first = store.analytics_samples(&range, now).await.unwrap();
    assert_eq!(first.builds.len(), 1);
    assert_eq!(first.builds[0].metrics, vec![("bundle_kb".into(), 5.0)]);
    assert_eq!(first.stages.len(), 1);
    assert_eq!(kept_days(&database).await, vec![0, 1, 2]);
    same(store.analytics_samples(&range, now).await.unwrap(), first);
}
