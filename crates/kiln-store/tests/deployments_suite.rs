//! Deployments against SQLite and PostgreSQL alike: recorded once per build and
//! environment, statuses by compare-and-set, the switch of the served deployment, and
//! rollbacks refused when the environment moved on.

use kiln_core::{EventType, Millis, NewEvent, ProjectSlug, RunId};
use kiln_store::engine_test;
use kiln_store::test_support::TestDatabase;
use kiln_store::*;

engine_test!(deployments_publish_switch_and_roll_back);

async fn build(store: &dyn Store, project: &Project, run_id: &str, commit: &str) -> i64 {
    let mut started = NewEvent::new(
        RunId::parse("runId", run_id).unwrap(),
        EventType::parse("event", "build_started").unwrap(),
    );
    started.branch = Some("main".into());
    started.commit = Some(commit.into());
    let mut results = store
        .ingest(
            &[IngestRequest {
                project_id: project.id,
                events: vec![started],
                precondition: Precondition::None,
                jobs: None,
            }],
            Millis(10),
        )
        .await
        .unwrap();
    results.remove(0).expect("accepted");
    store.build_by_run_id(run_id).await.unwrap().unwrap().id
}

fn new(project: &Project, build_id: i64) -> NewDeployment {
    NewDeployment {
        project_id: project.id,
        environment: "production".into(),
        build_id,
        step: "publish".into(),
        publish_dir: Some("dist".into()),
        url: None,
        status: "queued".into(),
        requested_by: Some("dev@example.com".into()),
        rollback_of: None,
    }
}

async fn deployments_publish_switch_and_roll_back(engine: Engine) {
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
    let first_build = build(&*store, &project, "r1", "aaa").await;
    let second_build = build(&*store, &project, "r2", "bbb").await;

    // Recorded first by a pass that does not know who asked (a claim), then by the
    // trigger that does: who asked is kept.
    let anonymous = NewDeployment {
        requested_by: None,
        ..new(&project, first_build)
    };
    let unknown = store
        .ensure_deployment(&anonymous, Millis(20))
        .await
        .unwrap();
    assert_eq!(unknown.requested_by, None);
    let first = store
        .ensure_deployment(&new(&project, first_build), Millis(20))
        .await
        .unwrap();
    assert_eq!(first.requested_by.as_deref(), Some("dev@example.com"));
    let again = store
        .ensure_deployment(&anonymous, Millis(21))
        .await
        .unwrap();
    assert_eq!(first, again, "one deployment per build and environment");
    assert_eq!(first.status, "queued");
    assert_eq!(first.run_id, "r1");
    assert_eq!(first.commit.as_deref(), Some("aaa"));
    assert_eq!(first.environment, "production");
    assert_eq!(
        store.builds_with_active_deployments(10).await.unwrap(),
        [first_build]
    );
    assert!(
        store
            .served_release("web", "production")
            .await
            .unwrap()
            .is_none()
    );

    assert!(
        store
            .set_deployment_status(first.id, "queued", "building", None, Millis(30))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_deployment_status(first.id, "queued", "cloning", None, Millis(31))
            .await
            .unwrap()
    );
    assert!(
        !store
            .publish_deployment(first.id, "queued", Millis(40))
            .await
            .unwrap()
    );
    assert!(
        store
            .publish_deployment(first.id, "building", Millis(40))
            .await
            .unwrap()
    );
    let served = store
        .served_release("web", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            served.deployment_id,
            served.build_id,
            served.publish_dir.as_str()
        ),
        (first.id, first_build, "dist")
    );
    assert!(
        store
            .builds_with_active_deployments(10)
            .await
            .unwrap()
            .is_empty()
    );

    let second = store
        .ensure_deployment(&new(&project, second_build), Millis(50))
        .await
        .unwrap();
    assert!(
        store
            .publish_deployment(second.id, "queued", Millis(60))
            .await
            .unwrap()
    );
    let second = store.deployment(second.id).await.unwrap().unwrap();
    assert_eq!(second.replaces, Some(first.id));
    assert_eq!(second.finished_at, Some(Millis(60)));
    let environment = store
        .environment(project.id, "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(environment.current_deployment_id, Some(second.id));
    assert_eq!(environment.version, 2);

    let rollback = NewDeployment {
        status: "deployed".into(),
        rollback_of: Some(first.id),
        ..new(&project, first_build)
    };
    assert!(
        store
            .roll_back(&rollback, Some(first.id), Millis(70))
            .await
            .unwrap()
            .is_none(),
        "refused: the environment serves another deployment"
    );
    let rolled = store
        .roll_back(&rollback, Some(second.id), Millis(70))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rolled.rollback_of, rolled.replaces),
        (Some(first.id), Some(second.id))
    );
    assert_eq!(rolled.status, "deployed");
    let served = store
        .served_release("web", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (served.deployment_id, served.build_id),
        (rolled.id, first_build)
    );
    assert!(served.version > environment.version);

    let listed = store
        .list_deployments(project.id, Some("production"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id).collect::<Vec<_>>(),
        [rolled.id, second.id, first.id]
    );
    assert!(
        store
            .list_deployments(project.id, Some("staging"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_deployments(project.id, None, Some(rolled.id), 1)
            .await
            .unwrap()[0]
            .id,
        second.id
    );
    assert_eq!(
        store.deployments_of_build(first_build).await.unwrap().len(),
        1
    );
    let environments = store.list_environments(project.id).await.unwrap();
    assert_eq!(environments.len(), 1);

    let failed = store
        .ensure_deployment(
            &NewDeployment {
                environment: "staging".into(),
                url: Some("https://s.test".into()),
                publish_dir: None,
                ..new(&project, second_build)
            },
            Millis(80),
        )
        .await
        .unwrap();
    assert!(
        store
            .set_deployment_status(
                failed.id,
                "queued",
                "failed",
                Some("build failed"),
                Millis(90)
            )
            .await
            .unwrap()
    );
    let failed = store.deployment(failed.id).await.unwrap().unwrap();
    assert_eq!(
        (
            failed.status.as_str(),
            failed.message.as_deref(),
            failed.finished_at
        ),
        ("failed", Some("build failed"), Some(Millis(90)))
    );
    assert_eq!(store.list_environments(project.id).await.unwrap().len(), 2);
}
