//! The artifact lifecycle's storage on SQLite and PostgreSQL alike: retention rules,
//! pins, the protected builds, the blobs only some builds name, manifests deleted and
//! blob rows forgotten only while unnamed, and verification rebuilds.

use kiln_core::{EventType, Millis, NewEvent, ProjectSlug, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;

engine_test!(retention_rules_and_pins_are_stored);
engine_test!(protected_builds_are_the_pinned_and_each_branchs_last_good);
engine_test!(deleting_manifests_frees_only_unshared_blobs);

async fn project(store: &dyn Store, slug: &str) -> Project {
    store
        .create_project(&ProjectSlug::parse("slug", slug).unwrap(), slug, Millis(1))
        .await
        .unwrap()
}

/// A build of `branch` ended with `outcome`; its id.
async fn build(
    store: &dyn Store,
    project: &Project,
    run_id: &str,
    branch: &str,
    outcome: &str,
) -> i64 {
    let run = RunId::parse("runId", run_id).unwrap();
    let mut started = NewEvent::new(
        run.clone(),
        EventType::parse("event", "build_started").unwrap(),
    );
    started.branch = Some(branch.to_owned());
    let ended = NewEvent::new(run, EventType::parse("event", outcome).unwrap());
    let request = IngestRequest {
        project_id: project.id,
        events: vec![started, ended],
        precondition: Precondition::None,
        jobs: None,
    };
    store
        .ingest(&[request], Millis(10))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    store.build_by_run_id(run_id).await.unwrap().unwrap().id
}

async fn add(store: &dyn Store, build_id: i64, path: &str, sha256: &str, size: u64) {
    let record = ArtifactRecord {
        build_id,
        path: path.to_owned(),
        step: None,
        size,
        mode: 0o644,
        md5: Some("m".repeat(32)),
        sha256: sha256.to_owned(),
        sha512: Some("s".repeat(128)),
        created_at: Millis(20),
    };
    assert_eq!(
        store.add_artifact(&record).await.unwrap(),
        ArtifactAdded::Added
    );
}

async fn retention_rules_and_pins_are_stored(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let api = project(&*store, "api").await;
    assert_eq!(store.artifact_retention(web.id).await.unwrap(), None);
    store
        .set_artifact_retention(web.id, Some(5), None, Millis(3))
        .await
        .unwrap();
    store
        .set_artifact_retention(web.id, Some(3), Some(30), Millis(4))
        .await
        .unwrap();
    store
        .set_artifact_retention(api.id, None, None, Millis(4))
        .await
        .unwrap();
    let rule = store.artifact_retention(web.id).await.unwrap().unwrap();
    assert_eq!(
        (rule.keep_builds, rule.keep_days, rule.updated_at),
        (Some(3), Some(30), Millis(4))
    );
    // A rule that keeps everything is not a rule to apply.
    let rules = store.retention_rules().await.unwrap();
    assert_eq!(
        rules.iter().map(|r| r.project_id).collect::<Vec<_>>(),
        vec![web.id]
    );

    let id = build(&*store, &web, "r1", "main", "build_failed").await;
    assert!(store.pin_build(id, "user:1", Millis(5)).await.unwrap());
    assert!(!store.pin_build(id, "user:2", Millis(6)).await.unwrap());
    let pin = store.build_pin(id).await.unwrap().unwrap();
    assert_eq!(
        (pin.pinned_by.as_str(), pin.pinned_at),
        ("user:1", Millis(5))
    );
    assert!(store.unpin_build(id).await.unwrap());
    assert!(!store.unpin_build(id).await.unwrap());
    assert_eq!(store.build_pin(id).await.unwrap(), None);

    let rebuild = build(&*store, &web, "r2", "main", "build_completed").await;
    assert_eq!(store.latest_verification(id).await.unwrap(), None);
    store
        .record_verification(id, rebuild, Millis(7))
        .await
        .unwrap();
    let verification = store.latest_verification(id).await.unwrap().unwrap();
    assert_eq!(
        (
            verification.rebuild_id,
            verification.rebuild_run_id.as_str()
        ),
        (rebuild, "r2")
    );
}

async fn protected_builds_are_the_pinned_and_each_branchs_last_good(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let other = project(&*store, "other").await;
    let old_good = build(&*store, &web, "m1", "main", "build_completed").await;
    let last_good = build(&*store, &web, "m2", "main", "build_completed").await;
    let _failed = build(&*store, &web, "m3", "main", "build_failed").await;
    let feature_good = build(&*store, &web, "f1", "feature", "build_completed").await;
    let _feature_failed = build(&*store, &web, "f2", "feature", "build_failed").await;
    let pinned = build(&*store, &web, "x1", "exp", "build_failed").await;
    store.pin_build(pinned, "user:1", Millis(5)).await.unwrap();
    let elsewhere = build(&*store, &other, "o1", "main", "build_completed").await;
    let protected = store.protected_builds(web.id).await.unwrap();
    assert_eq!(protected, vec![last_good, feature_good, pinned]);
    assert!(!protected.contains(&old_good));
    assert_eq!(
        store.protected_builds(other.id).await.unwrap(),
        vec![elsewhere]
    );
}

async fn deleting_manifests_frees_only_unshared_blobs(engine: Engine) {
    let database = TestDatabase::create(engine).await;
    let store = database.open_dyn().await;
    let web = project(&*store, "web").await;
    let (shared, only_one, only_two) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let one = build(&*store, &web, "r1", "main", "build_failed").await;
    let two = build(&*store, &web, "r2", "main", "build_failed").await;
    let three = build(&*store, &web, "r3", "main", "build_completed").await;
    add(&*store, one, "s", &shared, 10).await;
    add(&*store, one, "x", &only_one, 3).await;
    add(&*store, two, "s", &shared, 10).await;
    add(&*store, two, "y", &only_two, 4).await;
    add(&*store, three, "s", &shared, 10).await;

    let usage = store.builds_with_artifacts(web.id).await.unwrap();
    assert_eq!(
        usage
            .iter()
            .map(|u| (u.run_id.as_str(), u.files, u.bytes))
            .collect::<Vec<_>>(),
        vec![("r1", 2, 13), ("r2", 2, 14), ("r3", 1, 10)]
    );
    assert!(usage[0].ended_at.is_some());
    let freed = store.blobs_only_named_by(&[one, two]).await.unwrap();
    assert_eq!(
        freed.iter().map(|b| b.sha256.as_str()).collect::<Vec<_>>(),
        vec![only_one.as_str(), only_two.as_str()]
    );
    assert!(store.blobs_only_named_by(&[]).await.unwrap().is_empty());

    assert!(store.unreferenced_blobs(10).await.unwrap().is_empty());
    assert!(
        !store.forget_blob(&only_one).await.unwrap(),
        "a named blob stays"
    );
    assert_eq!(store.delete_build_artifacts(&[one, two]).await.unwrap(), 4);
    assert!(store.build_artifacts(one).await.unwrap().is_empty());
    let unreferenced = store.unreferenced_blobs(10).await.unwrap();
    assert_eq!(
        unreferenced
            .iter()
            .map(|b| b.sha256.as_str())
            .collect::<Vec<_>>(),
        vec![only_one.as_str(), only_two.as_str()]
    );
    assert!(store.forget_blob(&only_one).await.unwrap());
    assert!(store.forget_blob(&only_two).await.unwrap());
    assert!(!store.forget_blob(&shared).await.unwrap());
    assert_eq!(store.artifact_blob(&only_one).await.unwrap(), None);
    assert!(store.artifact_blob(&shared).await.unwrap().is_some());
    assert_eq!(store.build_artifacts(three).await.unwrap().len(), 1);
    // The same content added again is recorded again.
    add(&*store, three, "x", &only_one, 3).await;
    assert!(store.artifact_blob(&only_one).await.unwrap().is_some());
}
